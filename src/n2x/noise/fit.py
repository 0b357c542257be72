"""Fit a Poisson-Gaussian noise model to mean-variance pairs (in the style of Foi et al. 2008, "Practical
Poissonian-Gaussian noise modeling and fitting for single-image raw-data", IEEE TIP 17(10)).

Input: for many small blocks of an image, the block's mean (input units) and an estimate of its noise variance from
the residual after a smooth surface was fitted and removed (so that smooth signal does not count as noise), in input
units squared, with that estimate's degrees of freedom. Blocks are sorted by mean into up to :data:`MAX_LEVELS`
level sets of equal size. In each level set, image texture only ever adds variance, so the noise variance is read
off the flattest blocks: the mean of the lowest :data:`FLAT_FRACTION` of the variances, divided by the expected mean
of the lowest fraction of chi-square draws (the selection would otherwise bias it low). A straight line
``var = gain * mean + intercept`` is fitted to the level sets by iteratively re-weighted least squares (weights from
the fitted variance, to which a level's standard error is proportional), with Tukey-bisquare weights so that a level
set that is textured throughout does not pull the line. Clipping (saturated or zero-clipped data) is not modelled.

Fit quality: the weighted R^2 of the line, the root mean square of the level sets' relative deviations from it, and
the ``t`` figure of the gain (gain over its standard error). The noise counts as signal-dependent when the gain is
significant (``t`` above :data:`SIGNIFICANT_T`), the line holds (R^2 above :data:`MIN_R2`) and the fitted variance
changes by more than :data:`MIN_SPREAD` between the darker and the brighter level sets.

Accuracy on a noise-free quadratic ramp of 512 x 512 pixels (gain 0.02-0.5, read sigma 0.03-0.2, 8 draws each):
gain within 4%, read-noise sigma within 8.2%, on average 2% high (the flattest blocks of a level set are also its
darker ones). Fine texture in nearly every bright block biases the gain up (synthetic cells with sharp filaments,
read sigma 0.02 and gain 0.05: 0.072).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .models import GaussianNoise, PoissonGaussianNoise

#: the share of each level set's blocks, the flattest, whose variances make the level's noise variance (a larger
#: share reads the read noise of a noise-free ramp closer, 5-20% instead of 7-30% high, but lets texture through:
#: a 100 x 100 crop of camera with white noise then read as Poisson-Gaussian)
FLAT_FRACTION = 0.2
#: gain over its standard error above which the variance is taken to grow with the signal (white noise on the dev
#: images reads -3 to 6.3, texture making the brighter coins look noisier; Poisson-Gaussian noise 13 to 75, on
#: 100 x 100 crops too)
SIGNIFICANT_T = 10.0
#: weighted R^2 of the line above which it describes the level sets (white noise on textured coins: 0.54;
#: Poisson-Gaussian on the dev images: above 0.97; the real nuclei2d image: 0.79; the scatter of 64 narrow level
#: sets keeps R^2 of real data below 1)
MIN_R2 = 0.7
#: fitted variance at the brighter level sets (90th percentile of the means) over that at the darker ones (10th):
#: below this the variance hardly changes over the image and a transform would change little
MIN_SPREAD = 1.1
MIN_BLOCKS_PER_LEVEL = 20
#: narrow level sets: within a wide one the flattest blocks are also the darker ones, and the dark end of the line
#: (the read noise) bends (24 levels: read noise 5-15% high on a noise-free ramp; 64: within 8% on 512 x 512)
MAX_LEVELS = 64

_FACTORS: dict[tuple[float, float], float] = {}


def selection_factor(dof: float, fraction: float = FLAT_FRACTION) -> float:
    """Mean of the lowest ``fraction`` of ``chi2(dof) / dof`` draws (a fixed-seed Monte Carlo, cached): how much
    lower than the true variance the mean variance of the flattest blocks reads."""
    if not dof > 0:  # no degrees of freedom left (blocks of rounding noise): nothing to correct
        return 1.0
    key = (round(float(dof), 1), float(fraction))
    if key not in _FACTORS:
        draws = np.sort(np.random.default_rng(0).chisquare(key[0], 200_000) / key[0])
        _FACTORS[key] = float(draws[: max(1, int(len(draws) * fraction))].mean())
    return _FACTORS[key]


@dataclass
class PoissonGaussianFit:
    """The fitted line ``var = gain * mean + intercept`` and how well it holds.

    ``model``: the :class:`~n2x.noise.models.PoissonGaussianNoise` it gives (``offset`` 0 unless the intercept is
    negative: then ``read_variance`` 0 and ``offset = -intercept / gain``). ``levels``: the ``(mean, variance)``
    pairs of the level sets (input units), ``weights`` their final weights. ``r2``: weighted R^2; ``rms_relative``:
    root mean square of ``(measured - fitted) / fitted`` over the level sets; ``gain_t``: gain over its standard
    error; ``spread``: fitted variance at the 90th percentile of the block means over that at the 10th.
    """

    gain: float
    intercept: float
    gain_t: float
    r2: float
    rms_relative: float
    spread: float
    levels: list[tuple[float, float]] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    @property
    def signal_dependent(self) -> bool:
        """Whether the variance grows with the signal clearly enough to call the noise Poisson-Gaussian."""
        return self.gain > 0 and self.gain_t > SIGNIFICANT_T and self.r2 > MIN_R2 and self.spread > MIN_SPREAD

    @property
    def model(self) -> PoissonGaussianNoise:
        gain = max(self.gain, 1e-12)
        if self.intercept >= 0:
            return PoissonGaussianNoise(gain, self.intercept, 0.0)
        return PoissonGaussianNoise(gain, 0.0, -self.intercept / gain)

    def gaussian(self) -> GaussianNoise:
        """The best constant-variance model of the same level sets (weighted mean variance)."""
        v, w = np.array([lv[1] for lv in self.levels]), np.asarray(self.weights)
        return GaussianNoise(float(np.sqrt(max(np.sum(w * v) / max(np.sum(w), 1e-300), 0.0))))

    def describe(self) -> str:
        return (f"fit of variance vs mean over {len(self.levels)} intensity levels: R^2 {self.r2:.3f}, rms relative "
                f"deviation {self.rms_relative:.1%}, gain {self.gain_t:.1f} standard errors above 0, variance "
                f"x{self.spread:.2f} from darker to brighter regions")

    def to_dict(self) -> dict[str, Any]:
        return {"gain": float(self.gain), "intercept": float(self.intercept), "gain_t": float(self.gain_t),
                "r2": float(self.r2), "rms_relative": float(self.rms_relative), "spread": float(self.spread),
                "levels": [[float(m), float(v)] for m, v in self.levels], "weights": [float(w) for w in self.weights]}


def _level_sets(means: np.ndarray, variances: np.ndarray, dof: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, noise variance, relative standard error)`` of each level set of blocks with similar means."""
    order = np.argsort(means)
    n_levels = int(np.clip(len(means) // MIN_BLOCKS_PER_LEVEL, 3, MAX_LEVELS))
    factor = selection_factor(dof, FLAT_FRACTION)
    out = []
    for idx in np.array_split(order, n_levels):
        k = max(2, int(round(len(idx) * FLAT_FRACTION)))
        flat = idx[np.argsort(variances[idx])[:k]]
        # A mean of k chi-square(dof) variances: relative standard error sqrt(2 / (k dof)) (the selection narrows
        # it further; the re-weighting absorbs the rest). Photon noise at very low counts (under about one photon
        # per pixel) scatters more than chi-square; not modelled.
        out.append((float(means[flat].mean()), float(variances[flat].mean() / factor), np.sqrt(2.0 / (k * dof))))
    arr = np.array(out)
    return arr[:, 0], arr[:, 1], arr[:, 2]


def _weighted_line(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float, float]:
    """Weighted least squares ``y = a x + c``: ``(a, c, standard error of a)``."""
    design = np.stack([x, np.ones_like(x)], 1)
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(design * sw[:, None], y * sw, rcond=None)
    resid = y - design @ coef
    dof = max(len(x) - 2, 1)
    scale2 = float(np.sum(w * resid ** 2) / dof)
    cov = np.linalg.pinv(design.T @ (design * w[:, None])) * max(scale2, 1e-300)
    return float(coef[0]), float(coef[1]), float(np.sqrt(max(cov[0, 0], 1e-300)))


def _robust_line(x: np.ndarray, y: np.ndarray, rel_se: np.ndarray) -> tuple[float, float, float, np.ndarray]:
    """``(gain, intercept, gain's standard error, weights)`` of the line through the level sets.

    The standard error of a level's variance is proportional to the true variance there: weights come from the
    fitted line, not from the measured values (which would favour the levels that happen to read low), iterated
    (IRLS), with Tukey-bisquare weights on the relative residuals so that a textured level set gets no weight.
    """
    a, c, se_a = _weighted_line(x, y, 1.0 / (y * rel_se) ** 2)
    w = 1.0 / (y * rel_se) ** 2
    for _ in range(10):
        fitted = np.maximum(a * x + c, 1e-9 * float(np.max(y)) + 1e-300)
        z = (y - fitted) / (fitted * rel_se)
        scale = max(1.4826 * float(np.median(np.abs(z))), 1.0)
        u = z / (4.685 * scale)
        w = np.where(np.abs(u) < 1, (1 - u ** 2) ** 2, 0.0) / (fitted * rel_se) ** 2
        a, c, se_a = _weighted_line(x, y, w)
    return a, c, se_a, w


def fit_poisson_gaussian(means: Any, variances: Any, dof: float) -> PoissonGaussianFit:
    """Fit ``var = gain * mean + intercept`` to blocks: ``means`` (input units), ``variances`` (each block's noise
    variance estimate, input units squared, e.g. its residual sum of squares over ``dof``), ``dof`` (the estimate's
    degrees of freedom, chi-square). Needs at least 3 x :data:`MIN_BLOCKS_PER_LEVEL` blocks with variation
    for a meaningful fit; fewer give a fit with ``gain_t`` 0."""
    means, variances = np.asarray(means, np.float64).ravel(), np.asarray(variances, np.float64).ravel()
    ok = np.isfinite(means) & np.isfinite(variances) & (variances > 0)
    means, variances = means[ok], variances[ok]
    if len(means) < 3 * MIN_BLOCKS_PER_LEVEL // 2:
        var = float(np.median(variances)) if len(variances) else 0.0
        return PoissonGaussianFit(0.0, var, 0.0, 0.0, 0.0, 1.0, [(float(np.mean(means)) if len(means) else 0.0, var)],
                                  [1.0])
    x, y, rel_se = _level_sets(means, variances, dof)
    a, c, se_a, w = _robust_line(x, y, rel_se)
    fitted = a * x + c
    wm = np.sum(w * y) / max(np.sum(w), 1e-300)
    r2 = 1.0 - np.sum(w * (y - fitted) ** 2) / max(np.sum(w * (y - wm) ** 2), 1e-300)
    kept = w > 0
    rms = float(np.sqrt(np.mean(((y - fitted) / np.maximum(np.abs(fitted), 1e-300))[kept] ** 2)))
    lo, hi = np.percentile(means, [10, 90])
    v_lo, v_hi = a * lo + c, a * hi + c
    spread = float(v_hi / v_lo) if v_lo > 0 else float("inf") if v_hi > 0 else 1.0
    return PoissonGaussianFit(a, c, a / se_a, float(r2), rms, spread, list(zip(x.tolist(), y.tolist())),
                              (w / max(float(w.max()), 1e-300)).tolist())
