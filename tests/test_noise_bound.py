"""The all-pixel blind-spot method's noise variance, bounded after training by the residuals at held-out pixels:
it corrects a measure that read the noise too high, keeps one that did not, and the posterior gains from it."""
import numpy as np
import pytest
import torch

from n2x.methods.bsn import posterior_mean, prior_and_noise
from n2x.methods.noise_bound import residual_bound, tighten_noise_var, tightened_noise_var
from n2x.nets.shifted_bsn import ShiftedBSN

CPU = torch.device("cpu")
NOISE_VAR = 0.04


def _textured(n: int = 96, images: int = 6, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``(clean, noisy, prior error, its variance)`` ``(images, 1, n, n)``: a texture, Gaussian noise of
    :data:`NOISE_VAR`, and the error of a blind prior mean, independent of the noise, larger where the texture is
    steep."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n] / n
    clean = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (3 + k) * xx) * np.cos(2 * np.pi * 5 * yy) for k in range(images)])
    err_var = (0.005 + 0.01 * n * np.abs(np.gradient(clean, axis=-1))) ** 2
    err = rng.normal(0, 1, clean.shape) * np.sqrt(err_var)
    noisy = clean + rng.normal(0, np.sqrt(NOISE_VAR), clean.shape)
    return tuple(v[:, None].astype(np.float32) for v in (clean, noisy, err, err_var))


class _KnownPrior:
    """The prior a network would give on ``noisy``: ``clean + err``, and the variance of ``err`` less what the noise
    measure has too much (``excess``), as the likelihood fits ``s_p^2 + s_n^2`` to the residual (floored like the
    network's); plus the network's ``prior_var_offset``, as at inference."""

    def __init__(self, clean: np.ndarray, noisy: np.ndarray, err: np.ndarray, err_var: np.ndarray, excess: float):
        self.noisy = torch.from_numpy(noisy)
        self.mu = torch.from_numpy(clean + err)
        self.var = torch.from_numpy((err_var - excess).clip(1e-6))

    def __call__(self, net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for start in range(len(self.noisy)):  # the batch's place among the images
            if torch.equal(self.noisy[start:start + len(x)], x):
                i = slice(start, start + len(x))
                return self.mu[i], self.var[i] + net.prior_var_offset.reshape(1, 1, 1, 1)
        raise AssertionError("unknown batch")


def _network(noise_var: float) -> ShiftedBSN:
    net = ShiftedBSN(features=4, dilations=(1,))
    net.set_noise_var(torch.tensor([noise_var]))
    return net


def test_residual_bound_is_above_the_noise_and_close_to_it_where_the_prior_is_sure():
    rng = np.random.default_rng(0)
    prior_var = rng.uniform(0, 0.05, 40000)
    squared = (rng.normal(0, np.sqrt(prior_var)) + rng.normal(0, 0.2, prior_var.size)) ** 2
    everyone, _ = residual_bound(squared, prior_var, share=1.0)
    sure, se = residual_bound(squared, prior_var, share=0.5)
    assert everyone == pytest.approx(0.04 + 0.025, rel=0.03)
    assert 0.04 < sure < everyone and sure == pytest.approx(0.04 + 0.0125, rel=0.03)
    assert se == pytest.approx(np.sqrt(2) * sure / np.sqrt(20000), rel=0.1)
    assert residual_bound(np.zeros(0), np.zeros(0)) == (float("inf"), float("inf"))


def test_the_bound_replaces_the_measure_only_where_clearly_lower():
    assert tightened_noise_var(1.0, 0.9, 0.01) == 0.9
    assert tightened_noise_var(1.0, 0.99, 0.01) == 1.0  # within two standard errors
    assert tightened_noise_var(1.0, 1.2, 0.01) == 1.0  # a bound above the measure says nothing


@pytest.mark.parametrize("excess", [0.15 * NOISE_VAR, 0.0])
def test_tightening_corrects_a_high_measure_and_the_posterior_gains(excess):
    """A noise measure 15% high (texture read as noise): the bound brings it within 6% of the truth, gives the prior
    variance the difference back, and the posterior mean's error falls. A right measure stays as it is."""
    clean, noisy, err, err_var = _textured()
    prior = _KnownPrior(clean, noisy, err, err_var, excess)
    net = _network(NOISE_VAR + excess).eval()
    held = torch.from_numpy(np.random.default_rng(1).random(noisy.shape) < 0.1)

    def posterior(n: torch.nn.Module) -> np.ndarray:
        mu, pvar = prior(n, prior.noisy)
        nvar = n.noise_var.reshape(1, 1, 1, 1)
        return (mu + pvar / (pvar + nvar) * (prior.noisy - mu)).numpy()

    before = float(np.mean((posterior(net) - clean) ** 2))
    tighten_noise_var(prior, [net], prior.noisy, held, CPU)
    after = float(np.mean((posterior(net) - clean) ** 2))
    if excess:
        assert 0.98 * NOISE_VAR < float(net.noise_var) < 1.06 * NOISE_VAR  # an upper bound: a little above
        assert float(net.prior_var_offset) == pytest.approx(NOISE_VAR + excess - float(net.noise_var), abs=1e-7)
        assert float(net.noise_floor) == float(net.noise_var)
        assert 10 * np.log10(before / after) > 0.1, (before, after)
    else:
        assert float(net.noise_var) == pytest.approx(NOISE_VAR) and float(net.prior_var_offset) == 0.0
        assert after == before


def test_the_offset_counts_at_inference_only_and_old_files_load_without_it():
    net = _network(0.1)
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        net.eval()
        base = prior_and_noise(net, x)[1]
        net.prior_var_offset.fill_(0.05)
        torch.testing.assert_close(prior_and_noise(net, x)[1], base + 0.05)
        assert not torch.equal(posterior_mean(net, x), posterior_mean(_copy_without_offset(net), x))
        net.train()
        torch.testing.assert_close(prior_and_noise(net, x)[1], base)
    old = {k: v for k, v in net.state_dict().items() if k != "prior_var_offset"}
    back = ShiftedBSN(features=4, dilations=(1,))
    back.load_state_dict(old)
    assert float(back.prior_var_offset.abs().sum()) == 0.0


def _copy_without_offset(net: ShiftedBSN) -> ShiftedBSN:
    back = ShiftedBSN(features=4, dilations=(1,)).eval()
    back.load_state_dict(net.state_dict())
    back.prior_var_offset.zero_()
    return back
