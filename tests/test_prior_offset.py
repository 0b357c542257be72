"""The offset of the all-pixel blind-spot network's prior mean as a curve in that mean: fitted from the noisy
residuals alone, removed when denoising, stored with the weights."""
import numpy as np
import torch

from n2x.methods.bsn import measure_mean_offset, prior_and_noise
from n2x.methods.prior_offset import PIXELS_PER_KNOT, fit_offset_curve, offset_curve
from n2x.nets.shifted_bsn import OFFSET_KNOTS, ShiftedBSN

CPU = torch.device("cpu")


def _curve_at(mu: np.ndarray, knots: np.ndarray, values: np.ndarray) -> np.ndarray:
    return offset_curve(torch.from_numpy(mu).float()[None], torch.from_numpy(knots),
                        torch.from_numpy(values))[0].double().numpy()


def test_the_curve_recovers_an_offset_that_depends_on_the_prediction():
    rng = np.random.default_rng(0)
    mu = rng.uniform(0, 1, (1, 2 ** 17))
    bias = 0.1 * np.sin(6 * mu) - 0.05
    noisy = mu + bias + rng.normal(0, 0.3, mu.shape)  # the noise is 3 times the largest offset
    knots, values = fit_offset_curve(noisy - mu, mu)
    assert len(np.unique(knots[0])) == OFFSET_KNOTS, "2^17 pixels fill every group"
    assert np.all(np.diff(knots[0]) > 0)
    assert np.sqrt(np.mean((_curve_at(mu, knots, values) - bias) ** 2)) < 0.01


def test_few_pixels_give_one_group_and_ties_merge():
    rng = np.random.default_rng(1)
    mu = rng.uniform(0, 1, (1, PIXELS_PER_KNOT + 100))
    knots, values = fit_offset_curve(np.full(mu.shape, 0.2), mu)
    np.testing.assert_allclose(_curve_at(mu, knots, values), 0.2, atol=1e-6)  # one group: the mean offset
    # a saturated half (one value of mu) is one group, whatever the split put there
    mu = np.concatenate([np.ones((1, 2 ** 15)), rng.uniform(0, 0.9, (1, 2 ** 15))], axis=1)
    residual = np.where(mu == 1, -0.3, 0.1)
    knots, values = fit_offset_curve(residual, mu)
    assert np.all(np.diff(np.unique(knots[0])) > 0) and knots[0, -1] == 1.0
    np.testing.assert_allclose(_curve_at(mu, knots, values)[mu == 1], -0.3, atol=1e-6)
    zeros = np.zeros((1, OFFSET_KNOTS), np.float32)
    assert not _curve_at(mu, zeros, zeros).any(), "a network never calibrated has no offset"


def test_a_prediction_shrunk_towards_zero_is_corrected_by_intensity():
    """A network whose prior mean is 0.7 times the neighbours' mean is off by 0.3 times the intensity: one mean
    offset leaves that error at the dark and bright ends, the curve removes it."""
    torch.manual_seed(0)
    net = ShiftedBSN(features=4, dilations=(1,)).eval()
    with torch.no_grad():
        net.set_noise_var(torch.tensor([0.01]))
        net.shortcut.weight.mul_(0.7)
        net.head[-1].weight.zero_()
    rng = np.random.default_rng(2)
    clean = np.broadcast_to(np.linspace(0, 2, 64, dtype=np.float32), (16, 1, 64, 64)).copy()
    noisy = (clean + rng.normal(0, 0.1, clean.shape)).astype(np.float32)

    def error_by_decile() -> np.ndarray:
        with torch.no_grad():
            mu = prior_and_noise(net, torch.from_numpy(noisy))[0].numpy()
        edges = np.quantile(mu, np.linspace(0, 1, 11))
        which = np.clip(np.searchsorted(edges, mu, side="right") - 1, 0, 9)
        return np.array([(clean - mu)[which == d].mean() for d in range(10)])

    measure_mean_offset(net, noisy, CPU, fold_channels=False)
    curve_errors = error_by_decile()
    with torch.no_grad():
        net.offset_values.zero_()  # the mean offset alone
    mean_errors = error_by_decile()
    assert np.abs(mean_errors).max() > 0.2, "one offset cannot fix a shrunk prediction"
    assert np.abs(curve_errors).max() < 0.03
