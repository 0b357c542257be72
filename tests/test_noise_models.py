"""Noise models, the Poisson-Gaussian fit and the generalised Anscombe transform (n2x.noise), and the normalisation
that wraps a method in the transform."""
import numpy as np
import pytest

from n2x.data.normalize import Normalization
from n2x.noise import (CorrelatedNoise, GaussianNoise, GeneralizedAnscombe, PoissonGaussianNoise,
                       fit_poisson_gaussian, noise_model_from_dict, selection_factor)

GAIN, READ_SIGMA = 0.05, 0.02


def _pg(photons, n, seed, offset=0.0):
    rng = np.random.default_rng(seed)
    return offset + GAIN * rng.poisson(photons, n) + rng.normal(0, READ_SIGMA, n)


@pytest.mark.parametrize("photons", [0.5, 1.0, 2.0, 5.0])
def test_exact_unbiased_inverse_preserves_the_mean_at_low_counts(photons):
    """An ideal denoiser of the stabilised image returns E[GAT(z)]; the exact unbiased inverse maps that back to the
    true mean, where the algebraic inverse of the GAT is clearly biased at these counts."""
    gat = GeneralizedAnscombe(GAIN, READ_SIGMA ** 2, offset=0.1)
    z = _pg(photons, 400_000, seed=int(photons * 10), offset=0.1)
    expected = gat.forward(z).astype(np.float64).mean()
    true_mean = 0.1 + GAIN * photons
    back = float(gat.inverse(np.array([expected]))[0])
    assert back == pytest.approx(true_mean, abs=0.01 * GAIN * max(photons, 1.0) + 0.002 * GAIN)
    algebraic = 0.1 + GAIN * ((expected / 2) ** 2 - 3 / 8 - gat.s2)
    assert abs(algebraic - true_mean) > 0.1 * GAIN  # biased by more than 0.1 photon: what the exact inverse is for
    assert abs(algebraic - true_mean) > 5 * abs(back - true_mean)


@pytest.mark.parametrize("photons", [3.0, 10.0, 100.0])
def test_stabilised_variance_is_about_one(photons):
    gat = GeneralizedAnscombe(GAIN, READ_SIGMA ** 2)
    stabilised = gat.forward(_pg(photons, 200_000, seed=1))
    assert np.var(stabilised) == pytest.approx(1.0, abs=0.06)


def test_inverse_is_continuous_where_the_table_ends_and_monotone():
    gat = GeneralizedAnscombe(1.0, 0.3)
    d = np.linspace(0.5, 40, 4000)  # 40 ~ 400 photons: past the tabulated 200
    out = gat.inverse(d)
    assert np.all(np.diff(out) >= 0)
    assert np.max(np.diff(out)) < 0.5  # no jump: steps of 0.01 in d move at most ~0.2 photons here
    assert float(gat.inverse(np.array([0.0]))[0]) == pytest.approx(0.0)  # below E[f | 0 photons]: the black level


def test_anscombe_needs_a_positive_gain():
    with pytest.raises(ValueError, match="positive gain"):
        GeneralizedAnscombe(0.0, 1.0)


def test_noise_models_round_trip_and_variance():
    pg = PoissonGaussianNoise(0.05, 4e-4, offset=0.1)
    assert pg.variance(np.array([0.1, 1.1])) == pytest.approx([4e-4, 0.05 + 4e-4])
    for model in (GaussianNoise(0.1), pg, CorrelatedNoise(0.1, 2, [[0.0]])):
        assert noise_model_from_dict(model.to_dict()) == model
    with pytest.raises(ValueError, match="unknown noise model"):
        noise_model_from_dict({"kind": "speckle"})


def test_fit_recovers_a_line_from_block_variances():
    """Blocks at many signal levels with chi-square scattered variances (58 degrees of freedom, as the probe's 8 x 8
    quadratic fit leaves) and a fifth of them inflated by texture: the line comes back."""
    rng = np.random.default_rng(0)
    means = rng.uniform(0.0, 1.0, 4000)
    true = GAIN * means + READ_SIGMA ** 2
    variances = true * rng.chisquare(58, means.size) / 58
    textured = rng.random(means.size) < 0.2
    variances[textured] *= rng.uniform(1.5, 10, textured.sum())
    fit = fit_poisson_gaussian(means, variances, 58)
    assert fit.gain == pytest.approx(GAIN, rel=0.05)
    assert fit.intercept == pytest.approx(READ_SIGMA ** 2, rel=0.3)  # 0.0004 under variances up to 0.05
    assert fit.signal_dependent and fit.r2 > 0.9
    flat = fit_poisson_gaussian(means, 0.01 * rng.chisquare(58, means.size) / 58, 58)
    assert not flat.signal_dependent
    assert flat.gaussian().sigma == pytest.approx(0.1, rel=0.05)


def test_selection_factor_is_below_one_and_grows_with_dof():
    assert 0 < selection_factor(10) < selection_factor(58) < 1


def test_normalization_with_vst_round_trips_and_old_files_load():
    gat = [GeneralizedAnscombe(GAIN, READ_SIGMA ** 2)]
    rng = np.random.default_rng(0)
    clean = rng.uniform(0.05, 1.0, (1, 64, 64))
    noisy = GAIN * rng.poisson(clean / GAIN) + rng.normal(0, READ_SIGMA, clean.shape)
    norm = Normalization.fit([noisy], "meanstd", vst=gat)
    normed = norm.apply(noisy)
    assert abs(float(normed.mean())) < 1e-3 and float(normed.std()) == pytest.approx(1.0, rel=1e-3)
    # The noise in the normalised domain is ~ 1 / scale whatever the signal: stabilised
    assert norm.scale[0] == pytest.approx(float(np.std(gat[0].forward(noisy))), rel=1e-3)
    again = Normalization.from_dict(norm.to_dict())
    assert again.vst == gat and again.to_dict() == norm.to_dict()
    # The exact unbiased inverse of the (expected) transformed clean image is close to the clean image
    assert np.allclose(norm.invert(norm.apply(clean)), clean, atol=0.02)
    # Channels along another axis
    two = np.stack([noisy[0], noisy[0]], -1)
    norm2 = Normalization.fit([np.moveaxis(two, -1, 0)], "meanstd", vst=gat * 2)
    assert np.allclose(norm2.invert(norm2.apply(two, channel_axis=-1), channel_axis=-1),
                       norm2.invert(norm2.apply(two, -1), -1))
    old = {"mode": "meanstd", "offset": [0.5], "scale": [2.0], "percentiles": [1.0, 99.8]}
    loaded = Normalization.from_dict(old)
    assert loaded.vst is None and loaded.to_dict() == old
