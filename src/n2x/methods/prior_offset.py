"""The offset of a blind-spot network's prior mean, as a function of that mean: measured after training, removed when
denoising.

A network trained for minutes on patches of one image does not predict the mean of a pixel given its surroundings
exactly. Its prediction ``mu`` is off, and by an amount that depends on ``mu``: on the 180 s ``bsn`` models of the
benchmark, pulled towards the middle at the darkest and brightest values (camera/G25: +0.034 and -0.039 in the
extreme eighths, normalised units, noise sigma 0.33) and, on a noisier textured image, shrunk towards the mean
everywhere (brick/PG10: +0.29 to -0.45). A single offset (the mean) cannot undo that.

The error is measurable without the clean image. The noise has zero mean and is independent from pixel to pixel,
and ``mu`` is blind to its own pixel, so ``E[y - mu | mu] = E[x - mu | mu]`` (``y`` noisy, ``x`` clean): the mean
noisy residual over the pixels whose prediction is about ``mu`` is the prediction's mean error there. The pixels are
grouped by ``mu`` into equal groups (:func:`fit_offset_curve`), and the correction is the curve through each group's
mean ``mu`` and mean residual, linear in between and flat beyond the ends (:func:`offset_curve`). It is the
regression of the clean value on the prediction, fitted on the noisy image: ``mu + b(mu)`` approximates
``E[x | mu]``, the best estimate from ``mu`` alone. Each group's mean carries the noise's error, which the output
inherits: ``K / N`` of the noise variance over ``N`` pixels and ``K`` groups, so there are at least
:data:`PIXELS_PER_KNOT` pixels per group.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..nets.shifted_bsn import OFFSET_KNOTS

#: the fewest pixels per group: the noise's share of a group's mean residual is then at most 1/4096 of its variance
PIXELS_PER_KNOT = 4096


def fit_offset_curve(residual: np.ndarray, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(knots, values)``, each ``(C, OFFSET_KNOTS)`` float32: per channel, the mean prior mean ``mu`` and the mean
    ``residual`` (``y - mu``, normalised units) of equal groups of pixels sorted by ``mu`` (``(C, N)`` arrays).

    At most :data:`~n2x.nets.shifted_bsn.OFFSET_KNOTS` groups and at least :data:`PIXELS_PER_KNOT` pixels per group (one group: the mean offset).
    Groups of one value of ``mu`` (a flat, saturated region) merge, so the knots rise strictly.
    """
    mu, residual = np.asarray(mu, np.float64), np.asarray(residual, np.float64)
    groups = int(np.clip(mu.shape[1] // PIXELS_PER_KNOT, 1, OFFSET_KNOTS))
    out_k = np.zeros((mu.shape[0], OFFSET_KNOTS), np.float32)
    out_v = np.zeros_like(out_k)
    for c in range(mu.shape[0]):
        parts = np.array_split(np.argsort(mu[c], kind="stable"), groups)
        at = np.array([mu[c, p].mean() for p in parts])
        sums, counts = np.array([residual[c, p].sum() for p in parts]), np.array([len(p) for p in parts], float)
        at, which = np.unique(at, return_inverse=True)
        values = np.bincount(which, sums) / np.bincount(which, counts)
        out_k[c], out_v[c] = at[-1], values[-1]
        out_k[c, :len(at)], out_v[c, :len(at)] = at, values
    return out_k, out_v


def offset_curve(mu: torch.Tensor, knots: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The offset at each value of ``mu`` ``(B, C, ...)``: the curve through ``(knots, values)`` (``(C, K)``, knots
    rising), linear between knots and flat beyond the ends. All zeros (a network not calibrated): zero.

    Written with minimum, maximum and sums only, so that TorchScript and ONNX export it as it is."""
    # The segments along a last axis, not in a loop over indexed columns, for which the ONNX exporter wrote an
    # invalid graph. The temporary is OFFSET_KNOTS - 1 times the tile, less than the network's features.
    shape = (1, mu.shape[1]) + (1,) * (mu.ndim - 2) + (knots.shape[1] - 1,)
    k, v = knots.float(), values.float()
    lo, hi = k[:, :-1].reshape(shape), k[:, 1:].reshape(shape)
    slope = ((v[:, 1:] - v[:, :-1]) / (k[:, 1:] - k[:, :-1]).clamp_min(1e-12)).reshape(shape)
    m = mu.unsqueeze(-1)
    return v[:, :1].reshape(shape[:-1]) + (slope * (torch.minimum(torch.maximum(m, lo), hi) - lo)).sum(-1)


def clear_offset(net: nn.Module) -> None:
    """Zero the offset of ``net`` (a :class:`~n2x.nets.shifted_bsn.ShiftedBSN`): its mean and its curve."""
    with torch.no_grad():
        for buffer in (net.mean_offset, net.offset_knots, net.offset_values):
            buffer.zero_()


def set_offset(net: nn.Module, noisy: np.ndarray, mu: np.ndarray) -> None:
    """Set the offset of ``net``, a network without one, from noisy values and its prior means, ``(C, N)``
    (normalised): the mean residual per channel, and the curve of what remains (:func:`fit_offset_curve`)."""
    residual = noisy.astype(np.float64) - mu
    mean = residual.mean(axis=1)
    knots, values = fit_offset_curve(residual - mean[:, None], mu)
    # linear between the groups' centres, the curve's mean over the pixels is not quite theirs: shift it to be
    curve = offset_curve(torch.as_tensor(mu, dtype=torch.float32)[None], torch.from_numpy(knots),
                         torch.from_numpy(values))[0].double().numpy()
    values = values + (residual - mean[:, None] - curve).mean(axis=1, keepdims=True).astype(np.float32)
    with torch.no_grad():
        for buffer, value in ((net.mean_offset, mean), (net.offset_knots, knots), (net.offset_values, values)):
            buffer.copy_(torch.as_tensor(value, dtype=torch.float32))
