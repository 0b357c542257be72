"""A noise probe: how strong the noise is and whether it is correlated between neighbouring pixels.

Noise2Void (and sub-sampled Noise2Noise) assume noise that is independent from pixel to pixel; spatially correlated
noise (camera pattern noise, demosaicking, compression, resampling) needs AP-BSN with a pixel-shuffle stride larger
than the distance over which the noise is correlated.

How: each 2D plane is cut into 8 x 8 blocks and a quadratic surface is fitted to every block (a high-pass filter
that removes smooth signal such as blurred nuclei); what is left is noise plus the block's texture. The flattest
blocks (lowest residual variance, the lowest fifth, constant blocks excluded) are where texture is weakest, so their
residuals are mostly noise: their standard deviation is the noise level and their normalised autocorrelation at lags
1..4 along Y and X is the noise's correlation. The fit itself makes the residuals of white noise slightly
anti-correlated; that bias is computed exactly from the fit's projection and removed. The decision (correlated or
not) uses the lag-1 figure of these 8 x 8 blocks, which signal texture barely moves; once the noise is found
correlated, its profile over longer lags (the correlation length, hence AP-BSN's blind box or stride) is measured
on 16 x 16 blocks with a plane fit. A fit absorbs part of any correlated noise, increasingly so at longer lags
(a 5 x 5 box correlation, 0.2 at lag 4, reads 0.0 in the residuals), and a blind box one pixel too small lets a
network learn the noise; so the profile is not read off the residuals but solved for: the residuals' lag products
are linear in the noise's autocovariance at every 2D lag up to 6, through the fit's projection, and that small
linear system (condition number about 5) gives the noise's own correlation at each lag. Only a few planes (at most 8)
and a central crop of each (at most 1024 x 1024) are read, so lazy stacks stay on disk.

The noise model (:mod:`n2x.noise`): the same 8 x 8 blocks, all of them, give mean-variance pairs (block mean, noise
variance from neighbour differences of the residual); :func:`n2x.noise.fit_poisson_gaussian` fits
``var = gain * mean + intercept`` to them. The kind is
``"correlated"`` when the correlation length is above 0, else ``"poisson-gaussian"`` when the variance grows with the
signal significantly (:attr:`n2x.noise.PoissonGaussianFit.signal_dependent`), else ``"gaussian"``.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..errors import InputError
from ..noise import (CorrelatedNoise, GaussianNoise, NoiseModel, PoissonGaussianFit, fit_poisson_gaussian,
                     selection_factor)
from .axes import check_dtype, check_finite, make_layout
from .motion import frame_motion
from .noise_report import CORRELATED, NoiseReport

__all__ = ["probe_noise", "NoiseReport", "CORRELATED"]

BLOCK = 8
MAX_LAG = 4
#: blocks (plane fit) for the correlation profile at longer lags, once the noise is found correlated
LONG_BLOCK = 16
LONG_LAG = 6
LONG_QUADRATIC = True
#: see NoiseReport.texture_ratio
TEXTURE_RATIO = 1.5
FLAT_FRACTION = 0.2
#: later lags count towards the correlation length above this (on the fit-corrected profile; white noise reads
#: within +-0.02, signal texture leaks up to about 0.04)
CORRELATED_LAG = 0.05
MAX_PLANES = 8
MAX_SIDE = 1024


def _residual_projector(block: int = BLOCK, quadratic: bool = True) -> np.ndarray:
    """``I - H`` for the least-squares fit of ``1, y, x`` (and ``y^2, x^2, xy``) on a block of ``block**2`` pixels."""
    yy, xx = np.mgrid[0:block, 0:block]
    yy, xx = yy.ravel() - (block - 1) / 2, xx.ravel() - (block - 1) / 2
    cols = [np.ones(block * block), yy, xx] + ([yy * yy, xx * xx, yy * xx] if quadratic else [])
    design = np.stack(cols, 1)
    return np.eye(block * block) - design @ np.linalg.pinv(design)


def _block_residuals(plane: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """Residuals ``(N, B, B)`` of the fit ``proj`` to each full ``B x B`` block of ``plane`` (float64)."""
    bs = int(round(np.sqrt(proj.shape[0])))
    h, w = (plane.shape[0] // bs) * bs, (plane.shape[1] // bs) * bs
    blocks = plane[:h, :w].reshape(h // bs, bs, w // bs, bs).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(-1, bs * bs).astype(np.float64)
    return (blocks @ proj.T).reshape(-1, bs, bs)


def _white_bias(proj: np.ndarray, axis: int, lag: int) -> float:
    """Expected lag correlation of the fit residuals of white noise (``E r r^T = sigma^2 (I - H)``)."""
    bs = int(round(np.sqrt(proj.shape[0])))
    p = proj.reshape(bs, bs, bs, bs)
    idx = [(y, x) for y in range(bs) for x in range(bs)]
    if axis == 1:
        pairs = [((y, x), (y + lag, x)) for y, x in idx if y + lag < bs]
    else:
        pairs = [((y, x), (y, x + lag)) for y, x in idx if x + lag < bs]
    num = sum(p[a + b] for a, b in pairs)
    den = np.sqrt(sum(p[a + a] for a, _ in pairs) * sum(p[b + b] for _, b in pairs))
    return float(num / den)


def _planes(image: Any, axes: str | None) -> list[np.ndarray]:
    """Up to ``MAX_PLANES`` evenly spaced 2D planes ``(C, Y, X)`` of the image, centrally cropped."""
    layout = make_layout(tuple(image.shape), axes, 2)
    picks = np.unique(np.linspace(0, layout.n_samples - 1, min(MAX_PLANES, layout.n_samples)).round().astype(int))
    region = []
    for n in layout.spatial_shape:
        lo = max(0, (n - MAX_SIDE) // 2)
        region.append(slice(lo, lo + min(n, MAX_SIDE)))
    planes = []
    for s in picks:
        block = layout.read(image, int(s), tuple(region))
        check_finite(block)
        planes.append(block)
    return planes


def _autocorr(res: np.ndarray, axis: int, lag: int) -> float:
    n = res.shape[axis]
    a = res.take(range(0, n - lag), axis=axis)
    b = res.take(range(lag, n), axis=axis)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def probe_noise(image: Any, axes: str | None = None) -> "NoiseReport":
    """Estimate the noise level and its spatial correlation in ``image``, and recommend a method.

    ``image``: numpy, dask or zarr array with ``axes`` (``S T C Z Y X``; default ``YX`` for 2D). Each 2D plane and
    channel is measured on its own and the figures are averaged. Returns a :class:`NoiseReport`.
    """
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    check_dtype(image.dtype)
    planes = _planes(image, axes)
    if all(float(np.ptp(p)) == 0 for p in planes):
        raise InputError(f"the image is too small or too flat to measure its noise: it is constant (every pixel is "
                         f"{planes[0].flat[0]:g})")
    n_ch = planes[0].shape[0]
    quad, long_fit = _residual_projector(BLOCK, True), _residual_projector(LONG_BLOCK, LONG_QUADRATIC)
    sigmas, lag1, profile, short_profile, autocov, ratios, fits, n_blocks = [], [], [], [], [], [], [], 0
    for c in range(n_ch):
        flat, var, dof = _flattest([p[c] for p in planes], quad)
        fits.append(_fit_variance_line([p[c] for p in planes], quad))
        # The flattest fifth of the blocks has a lower variance than the mean by a factor fixed by the chi-square
        # distribution of a block's variance (dof degrees of freedom); undo it.
        sigmas.append(float(np.sqrt(np.mean(var) * BLOCK ** 2 / dof / selection_factor(dof))))
        lag1.append(max(_corrected(flat, quad, axis, 1) for axis in (1, 2)))
        short = _noise_autocovariance(flat, BLOCK, MAX_LAG, True)
        short_profile.append([max(short[(k, 0)], short[(0, k)]) / short[(0, 0)] for k in range(1, MAX_LAG + 1)])
        long_flat, _, _ = _flattest([p[c] for p in planes], long_fit, required=False)
        if len(long_flat) >= 4:
            cov = _noise_autocovariance(long_flat, LONG_BLOCK, LONG_LAG, LONG_QUADRATIC)
            square = _square(cov, LONG_LAG)
            # Like sigma: the flattest blocks hold lower-than-average noise; undo the selection, for the degrees of
            # freedom this correlated noise leaves a block's variance.
            square = square / selection_factor(round(_effective_dof(square, long_fit), 1))
            # The same variance from the 8 x 8 blocks: correlated noise reads lower there (the quadratic fit in
            # small blocks absorbs more of it), by a factor of 1.2-1.4 on the dev images; image texture inside the
            # 16 x 16 blocks raises the larger-block figure further. Beyond TEXTURE_RATIO the autocovariance is not
            # trusted for what needs its scale (AP-BSN's box filter).
            short_sq = _square(short, MAX_LAG)
            short_var = short_sq[MAX_LAG, MAX_LAG] / selection_factor(round(_effective_dof(short_sq, quad), 1))
            ratios.append(float(square[LONG_LAG, LONG_LAG] / max(short_var, 1e-300)))
            autocov.append(square.tolist())
            rho = {d: v / cov[(0, 0)] for d, v in cov.items()}
            profile.append({"Y": [rho[(k, 0)] for k in range(1, LONG_LAG + 1)],
                            "X": [rho[(0, k)] for k in range(1, LONG_LAG + 1)]})
        else:  # a small image: the 8 x 8 blocks, corrected for white noise only
            profile.append({ax: [_corrected(flat, quad, axis, k) for k in range(1, MAX_LAG + 1)]
                            for ax, axis in (("Y", 1), ("X", 2))})
        n_blocks += len(flat)
    n_lags = min(len(p["Y"]) for p in profile)
    correlation = {ax: {k + 1: round(float(np.mean([p[ax][k] for p in profile])), 4) for k in range(n_lags)}
                   for ax in "YX"}
    lag1_highpass = float(np.mean(lag1))
    length = 0
    if lag1_highpass > CORRELATED:
        # Up to lag 4 from the 8 x 8 blocks (a quadratic fit in small blocks leaves little signal texture, which
        # larger blocks can read as long-range correlation); beyond, where the noise is still correlated at lag 4,
        # from the 16 x 16 blocks.
        short_mean = np.mean(short_profile, axis=0)
        length = 1
        for k in range(2, n_lags + 1):
            value = short_mean[k - 1] if k <= MAX_LAG else max(correlation["Y"][k], correlation["X"][k])
            if value <= CORRELATED_LAG:
                break
            length = k
    recommended = "apbsn" if length > 0 else "n2v"
    stride = length + 1 if recommended == "apbsn" else None
    autocov_ok = autocov if len(autocov) == n_ch and max(ratios) <= TEXTURE_RATIO else None
    kind, models = _noise_models(length, sigmas, fits, autocov_ok)
    return NoiseReport(sigma=float(np.mean(sigmas)), correlation=correlation, correlation_length=length,
                       recommended=recommended, stride=stride, n_blocks=n_blocks, sigma_per_channel=sigmas,
                       lag1_highpass=round(lag1_highpass, 4), autocovariance=autocov_ok,
                       texture_ratio=round(max(ratios), 3) if ratios else None, kind=kind, noise_models=models,
                       noise_fits=fits, motion=_time_lapse_motion(image, axes))


def _time_lapse_motion(image: Any, axes: str | None) -> float | None:
    """The median motion between neighbouring frames in pixels (:func:`n2x.data.motion.frame_motion`) when
    ``axes`` has a T axis of at least 2 frames, else None: it decides between ``pairs`` adjacent and f2f."""
    if not axes or "T" not in axes.upper() or image.shape[axes.upper().index("T")] < 2:
        return None
    return round(frame_motion(image, axes.upper()), 3)


def _fit_variance_line(planes: list[np.ndarray], proj: np.ndarray) -> PoissonGaussianFit:
    """The Poisson-Gaussian fit to every block's (mean, noise variance) pair.

    A block's noise variance is read from the differences between neighbouring pixels of its fit residual (along Y
    and X), scaled to be unbiased for white noise through the fit's projection: image texture, which varies over
    several pixels, moves neighbouring pixels together and adds far less to these differences than to the residual's
    variance (textured cells under white noise read as signal-dependent from the residual's variance, not from
    these). Its degrees of freedom, for the flat-block selection, are Satterthwaite's."""
    bs = int(round(np.sqrt(proj.shape[0])))
    form, dof = _difference_form(bs)
    means, variances = [], []
    for plane in planes:
        h, w = (plane.shape[0] // bs) * bs, (plane.shape[1] // bs) * bs
        blocks = plane[:h, :w].reshape(h // bs, bs, w // bs, bs).transpose(0, 2, 1, 3).reshape(-1, bs * bs)
        blocks = blocks.astype(np.float64)
        means.append(blocks.mean(axis=1))
        variances.append(np.einsum("ni,ij,nj->n", blocks, form, blocks))
    return fit_poisson_gaussian(np.concatenate(means), np.concatenate(variances), dof)


@functools.lru_cache(maxsize=2)
def _difference_form(bs: int) -> tuple[np.ndarray, float]:
    """``(Q, dof)``: ``x^T Q x`` is the mean squared neighbour difference of the fit residual ``P x`` of a block
    ``x`` (flattened), scaled so that its expectation is ``sigma^2`` for white noise; ``dof``: its Satterthwaite
    degrees of freedom."""
    proj = _residual_projector(bs, True)
    diff = []
    for dy, dx in ((1, 0), (0, 1)):
        i, j = _lag_pairs(bs, (dy, dx))
        d = np.zeros((len(i), bs * bs))
        d[np.arange(len(i)), i], d[np.arange(len(i)), j] = 1.0, -1.0
        diff.append(d)
    d = np.concatenate(diff) @ proj
    form = d.T @ d
    form /= np.trace(form)  # E[n^T P D^T D P n] = sigma^2 tr(P D^T D P)
    return form, float(np.trace(form) ** 2 / np.trace(form @ form))


def _noise_models(length: int, sigmas: list[float], fits: list[PoissonGaussianFit],
                  autocov: list | None) -> tuple[str, list[NoiseModel]]:
    """The kind of the noise and its model per channel: correlated when the correlation length is above 0, else
    Poisson-Gaussian when any channel's variance grows with the signal significantly, else white Gaussian."""
    if length > 0:
        return "correlated", [CorrelatedNoise(s, length, autocov[c] if autocov else None)
                              for c, s in enumerate(sigmas)]
    if any(f.signal_dependent for f in fits):
        return "poisson-gaussian", [f.model for f in fits]
    return "gaussian", [GaussianNoise(s) for s in sigmas]


def _flattest(planes: list[np.ndarray], proj: np.ndarray, required: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """Residuals of the flattest fifth of the blocks of ``planes``, their variances and the fit's dof."""
    bs = int(round(np.sqrt(proj.shape[0])))
    res = [r for r in (_block_residuals(p, proj) for p in planes) if len(r)]
    res = np.concatenate(res) if res else np.zeros((0, bs, bs))
    var = res.reshape(len(res), bs * bs).var(axis=1)
    # Constant blocks (saturation, zero padding, masked areas) hold no noise.
    scale = float(np.median(var)) if len(var) else 0.0
    ok = var > 1e-6 * scale if scale > 0 else var > 0
    res, var = res[ok], var[ok]
    if len(res) < 4:
        if not required:
            return np.zeros((0, bs, bs)), np.zeros(0), float(np.trace(proj))
        raise InputError(f"the image is too small or too flat to measure its noise: it needs at least four "
                         f"{bs} x {bs} blocks with some variation in each channel")
    order = np.argsort(var)[:max(4, int(round(len(res) * FLAT_FRACTION)))]
    return res[order], var[order], float(np.trace(proj))


def _lags(max_lag: int) -> list[tuple[int, int]]:
    """2D lags ``(dy, dx)`` up to ``max_lag``, one of each pair ``d, -d``; ``(0, 0)`` first."""
    return [(dy, dx) for dy in range(max_lag + 1) for dx in range(-max_lag, max_lag + 1) if dy > 0 or dx >= 0]


def _lag_pairs(block: int, lag: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices ``(i, j)`` of the pixel pairs of a ``block x block`` block that are ``lag`` apart."""
    dy, dx = lag
    ys, xs = np.mgrid[0:block, 0:block]
    ok = (ys + dy < block) & (xs + dx >= 0) & (xs + dx < block)
    return (ys * block + xs)[ok], ((ys + dy) * block + xs + dx)[ok]


@functools.lru_cache(maxsize=4)
def _fit_response(block: int, max_lag: int, quadratic: bool) -> np.ndarray:
    """``A[a, b]``: mean residual product at lag ``a`` of the block fit when the noise's autocovariance is 1 at lag
    ``b`` (and ``-b``) and 0 elsewhere (``E r r^T = P C P``)."""
    proj = _residual_projector(block, quadratic)
    lags = _lags(max_lag)
    pairs = [_lag_pairs(block, d) for d in lags]
    resp = np.zeros((len(lags), len(lags)))
    for b, (i, j) in enumerate(pairs):
        cov = np.zeros((block * block, block * block))
        cov[i, j] = 1
        cov[j, i] = 1
        m = proj @ cov @ proj
        resp[:, b] = [m[ii, jj].mean() for ii, jj in pairs]
    return resp


def _noise_autocovariance(res: np.ndarray, block: int, max_lag: int,
                          quadratic: bool) -> dict[tuple[int, int], float]:
    """The noise's autocovariance at each 2D lag of :func:`_lags`, solved from the block-fit residuals
    ``(N, block, block)``."""
    lags = _lags(max_lag)
    flat = res.reshape(len(res), -1)
    products = np.array([(flat[:, i] * flat[:, j]).mean() for i, j in (_lag_pairs(block, d) for d in lags)])
    cov = np.linalg.solve(_fit_response(block, max_lag, quadratic), products)
    return {d: float(c) for d, c in zip(lags, cov)}


def _effective_dof(autocov: np.ndarray, proj: np.ndarray) -> float:
    """Degrees of freedom of a block's residual variance for noise of this autocovariance (square, lags up to its
    half-width): ``tr(M)^2 / tr(M^2)`` with ``M = P C P`` (Satterthwaite)."""
    lag = autocov.shape[0] // 2
    bs = int(round(np.sqrt(proj.shape[0])))
    ys, xs = (v.ravel() for v in np.mgrid[0:bs, 0:bs])
    dy, dx = ys[:, None] - ys[None], xs[:, None] - xs[None]
    near = (np.abs(dy) <= lag) & (np.abs(dx) <= lag)
    cov = np.zeros((bs * bs, bs * bs))
    cov[near] = autocov[(dy + lag)[near], (dx + lag)[near]]
    m = proj @ cov @ proj
    return float(np.trace(m) ** 2 / max(np.trace(m @ m), 1e-300))


def _square(cov: dict[tuple[int, int], float], max_lag: int) -> np.ndarray:
    """The ``(2 max_lag + 1)``-square array of an autocovariance given for one of each lag pair ``d, -d``."""
    out = np.zeros((2 * max_lag + 1, 2 * max_lag + 1))
    for (dy, dx), v in cov.items():
        out[max_lag + dy, max_lag + dx] = out[max_lag - dy, max_lag - dx] = v
    return out


def _corrected(res: np.ndarray, proj: np.ndarray, axis: int, lag: int) -> float:
    """Lag correlation of the residuals with the fit's own white-noise bias removed."""
    bias = _white_bias(proj, axis, lag)
    return float((_autocorr(res, axis, lag) - bias) / (1 - bias))

