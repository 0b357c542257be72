"""The box filter of AP-BSN's blind-box design: it puts back the detail of the pixels the network could not see.

A blind-box network predicts each pixel without seeing the ``(2b + 1)``-square box around it (``b``: the blind
radius in pixels), so its prediction misses the detail inside the box. The filter ``w`` adds ``w * (noisy -
prediction)`` (``*``: correlation over the box), fitted after training without the clean image, from the residuals
on held-out and training patches and the noise's autocovariance (the noise probe's, or, better, that of the
residual where the network is surest: :func:`certain_autocovariance`).

One filter cannot serve flat and textured regions alike: where the surroundings tell the value, the residual is
noise and the filter should be near zero; at an edge it holds detail. A network that also predicts the variance of
its residual ``v`` (noise plus what it missed) tells them apart, per pixel and without seeing the box: the filter is
then piecewise linear in the noise share ``t = s_n^2 / v`` (``s_n^2``: the noise variance at the centre), between
:data:`FILTER_KNOTS` knots at quantiles of ``t``, fitted by the same unbiased least squares (for white noise and a
1 x 1 box it approximates Laine et al.'s posterior weight ``1 - t``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


#: knots of the adaptive filter in the noise share ``t``, at its quantiles (camera/CORR, 1300 steps, the same
#: network: one filter 26.14 dB, 2 knots 27.18, 4 27.21, 8 27.20; coins/CORR 24.57, 24.87, 24.85, 24.83)
FILTER_KNOTS = 4
#: the share of pixels, those with the smallest predicted residual variance, whose residual autocovariance stands
#: for the noise's (:func:`certain_autocovariance`). The surer the pixels, the less of the prediction's error their
#: residual holds: after 80 steps on a 256 x 256 camera crop, the half read the noise variance 20% higher than the
#: tenth and the filter gained 0.3 dB instead of 1.4; on 180 s networks the two were within 0.15 dB (camera, coins,
#: moon, cell). A tenth of the calibration patches is still 50 thousand pixels.
CERTAIN_FRACTION = 0.1


def fit_box_filter(residual: torch.Tensor, covariance: np.ndarray) -> np.ndarray:
    """The ``(2b + 1)``-square filter ``w`` that minimises an unbiased estimate of the error of
    ``prediction + w * (noisy - prediction)`` (``*``: correlation), by linear least squares.

    ``residual``: ``noisy - prediction`` on training data ``(N, 1, Y, X)``, the prediction being blind to the
    ``(2b + 1)``-box. ``covariance``: the noise's autocovariance at the box's lags, same units, ``(2b + 1)``-square.
    With ``s`` the clean value and ``n`` the noise, ``E (s - out)^2 = E (noisy - out)^2 - E n^2 + 2 w . E[n_c n_box]``
    (the prediction does not see the box's noise), so minimising ``mean (r_c - w . r_box)^2 + 2 w . cov`` over
    ``w`` minimises the error against the clean image without knowing it.
    """
    return _solve_sure(residual, torch.ones((1,) + tuple(residual.shape), dtype=torch.float64), covariance)[0]


def fit_adaptive_box_filter(residual: torch.Tensor, share: torch.Tensor, covariance: np.ndarray,
                            knots: int = FILTER_KNOTS) -> tuple[np.ndarray, list[float]]:
    """Filters ``(K, 2b + 1, 2b + 1)`` at ``K`` knots of the noise share, and the knots: the filter at a pixel is
    the piecewise-linear interpolation between them at its share ``t`` (:func:`knot_weights`). Fitted as
    :func:`fit_box_filter`, the share being a function of the prediction at the pixel only (blind to its box).

    ``residual``: ``(N, 1, Y, X)`` as in :func:`fit_box_filter`; ``share``: ``t`` at each of its pixels, same shape.
    """
    t = share.double().reshape(-1)
    at = torch.quantile(t[:: max(1, t.numel() // 2 ** 20)], torch.linspace(0, 1, knots, dtype=torch.float64))
    at = torch.unique(torch.round(at.clamp(0, 1) * 1e6) / 1e6)  # rounded as stored, then distinct
    if at.numel() < 2:  # one share everywhere: one filter
        return fit_box_filter(residual, covariance)[None], [float(at[0])]
    grid = [float(a) for a in at]
    phi = knot_weights(share.double(), torch.tensor(grid, dtype=torch.float64))
    return _solve_sure(residual, phi, covariance), grid


def certain_autocovariance(residual: torch.Tensor, variance: torch.Tensor, blind: int,
                           fraction: float = CERTAIN_FRACTION) -> np.ndarray:
    """The noise autocovariance over the ``(2 * blind + 1)``-square box, from the residual ``noisy - prediction``
    ``(N, 1, Y, X)`` at the ``fraction`` of pixels whose predicted residual ``variance`` (same shape) is smallest.

    There the surroundings tell the value, so the residual is the noise plus a small error of the prediction; the
    network, not a plane fit of small blocks, has taken the signal out. Normalised units, like ``residual``."""
    k = 2 * blind + 1
    cols = _box_columns(residual, k)
    y, x = residual.shape[-2:]
    var = variance.double()[..., blind:y - blind, blind:x - blind].reshape(-1)
    # at most 2^20 pixels decide the threshold (torch.quantile's limit is 2^24)
    certain = var <= torch.quantile(var[:: max(1, var.numel() // 2 ** 20)], fraction)
    chosen = cols[:, certain]
    return (chosen * chosen[(k * k) // 2]).mean(1).reshape(k, k).numpy()


def _box_columns(residual: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-square box of every pixel of ``residual`` ``(N, 1, Y, X)`` whose box lies inside it, as
    ``(k * k, pixels)`` float64 columns (N, then rows, then columns)."""
    cols = torch.nn.functional.unfold(residual.double(), k)  # (N, k * k, L)
    return cols.permute(1, 0, 2).reshape(k * k, -1)


def _solve_sure(residual: torch.Tensor, phi: torch.Tensor, covariance: np.ndarray) -> np.ndarray:
    """Filters ``(K, k, k)`` minimising ``mean (r_c - sum_j phi_j w_j . r_box)^2 + 2 sum_j mean(phi_j) w_j . cov``
    over the pixels whose box lies inside ``residual`` ``(N, 1, Y, X)``; ``phi``: ``(K, N, 1, Y, X)``, the weight of
    each filter at each pixel."""
    k, kk, h = covariance.shape[0], covariance.size, covariance.shape[0] // 2
    cols = _box_columns(residual, k)
    y, x = residual.shape[-2:]
    phi = phi[..., h:y - h, h:x - h].reshape(phi.shape[0], -1)
    centre = cols[kk // 2]
    feats = (phi[:, None, :] * cols[None]).reshape(phi.shape[0] * kk, -1)
    n = feats.shape[1]
    gram = (feats @ feats.T) / n
    cov = torch.from_numpy(covariance.ravel()).double()
    rhs = (feats @ centre) / n - (phi.mean(1)[:, None] * cov[None]).reshape(-1)
    # A whisker of ridge keeps the solve well posed on flat (constant) training data.
    gram += torch.eye(gram.shape[0], dtype=gram.dtype) * 1e-6 * float(gram.diagonal().mean() + 1e-12)
    w = torch.linalg.solve(gram, rhs)
    return w.reshape(phi.shape[0], k, k).numpy()


def knot_weights(share: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation weights ``(K, *share.shape)`` of the ``K`` increasing ``knots`` at ``share``
    (clamped to the knots' range); they sum to 1. Elementwise operations only, so the function exports to ONNX."""
    kn = knots.to(share.dtype)
    t = torch.clamp(share, kn[0], kn[-1])[None]
    kn = kn.reshape((-1,) + (1,) * share.ndim)
    left = torch.cat([kn[:1] - 1, kn[:-1]])  # the first knot has no left neighbour: flat to its left
    right = torch.cat([kn[1:], kn[-1:] + 1])
    rise = (t - left) / (kn - left)
    fall = (right - t) / (right - kn)
    return torch.minimum(rise, fall).clamp(0, 1)


def box_covariance(autocovariance: np.ndarray, scale: list[float], blind: int) -> np.ndarray | None:
    """The noise autocovariance at the lags of the ``blind``-radius box, in normalised units, averaged over channels.

    ``autocovariance``: the probe's ``(C, 2L + 1, 2L + 1)`` in input units (lags up to ``L`` pixels); ``scale``:
    the normalisation's scale per channel. None when the box reaches beyond the measured lags.
    """
    lag = autocovariance.shape[-1] // 2
    if blind > lag:
        return None
    scale2 = np.asarray(scale, np.float64)[:, None, None] ** 2
    return (autocovariance / scale2).mean(axis=0)[lag - blind:lag + blind + 1, lag - blind:lag + blind + 1]


def apply_box_filter(noisy: torch.Tensor, prediction: torch.Tensor, kernel: Any,
                     share: torch.Tensor | None = None, knots: Any = None) -> torch.Tensor:
    """``prediction + kernel * (noisy - prediction)`` for ``(B, C, Y, X)`` tensors, each channel on its own (float).

    ``kernel``: one ``(k, k)`` filter, or ``(K, k, k)`` filters at the ``knots`` of the noise ``share`` (shaped like
    ``prediction``), interpolated per pixel (:func:`fit_adaptive_box_filter`). Lists, arrays or tensors (an
    exported module holds them as buffers: ONNX's exporter cannot fold tensors made while tracing)."""
    k = _as_tensor(kernel, prediction)
    k = k.reshape((-1,) + tuple(k.shape[-2:]))
    b, c = noisy.shape[:2]
    residual = noisy.to(prediction.dtype) - prediction
    # one convolution per knot and channel: (B, C * K, Y, X), knot fastest
    w = k[None].expand(c, *k.shape).reshape(c * k.shape[0], 1, *k.shape[-2:]).contiguous()
    fixed = torch.nn.functional.conv2d(residual, w, padding=k.shape[-1] // 2, groups=c)
    if k.shape[0] == 1:
        return prediction + fixed
    if share is None or knots is None:
        raise ValueError("filters at knots need the noise share and the knots")
    phi = knot_weights(share.to(prediction.dtype), _as_tensor(knots, prediction))
    fixed = fixed.reshape(b, c, k.shape[0], *fixed.shape[-2:]).movedim(2, 0)
    return prediction + (phi * fixed).sum(0)


def _as_tensor(values: Any, like: torch.Tensor) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.to(like.dtype)
    return torch.as_tensor(np.asarray(values), dtype=like.dtype, device=like.device)
