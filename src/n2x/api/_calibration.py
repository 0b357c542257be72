"""The data a trained network is calibrated on: patches, and regions predicted as inference predicts them.

A network trained on patches sees zeros near every patch edge where the image goes on; at inference each pixel sees
its whole receptive field (:func:`n2x.inference.tiling.predict_image`: tiles with a halo). Its output can depend on
that context. The prior mean of ``bsn`` on moon/PG (180 s) was offset from the noisy image by -0.002 (normalised) on
64 x 64 patches, +0.016 on 128 x 128 tiles and +0.027 on the whole image, so what corrects a prediction is measured
on the prediction as inference makes it (:func:`context_windows`, :func:`predict_in_context`).
"""
from __future__ import annotations

from math import prod
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.patches import PatchSampler
from ..inference.tiling import default_tile, predict_image, run_network

#: the seed of the fixed draw of training patches and regions a run is calibrated on (repeatable)
CALIBRATION_SEED = 4242
#: pixels whose prediction :func:`predict_in_context` measures: a 512 x 512 image, or 64^3 voxels
CONTEXT_PIXELS = 2 ** 18


def calibration_patches(sampler: PatchSampler, meth: Any, patch: tuple[int, ...]) -> tuple | None:
    """The held-out patches, then :attr:`~n2x.methods.base.Method.calibration_pixels` pixels of training patches
    (a fixed draw, so that a run's calibration is repeatable)."""
    held_out = sampler.val_patches
    if not meth.calibration_pixels:
        return held_out
    drawn = sampler.sample(max(1, meth.calibration_pixels // int(np.prod(patch))), seed=CALIBRATION_SEED)
    return drawn if held_out is None else tuple(np.concatenate(pair) for pair in zip(held_out, drawn))


def context_windows(sampler: PatchSampler, halo: int, pixels: int = CONTEXT_PIXELS,
                    seed: int = CALIBRATION_SEED) -> list[tuple[np.ndarray, tuple[slice, ...]]]:
    """Windows of the training data, normalised ``(C, *spatial)``, each with the slices of its core: the pixels
    whose whole receptive field (``halo`` px on each side) lies in the window or past the image's edge, as at
    inference. Cores of up to ``pixels ** (1 / ndim)`` px per axis, from random regions, until they hold
    ``pixels``. Regions read lazily from a larger image have edges inside it, so their cores keep ``halo`` px away
    from them; a region too small for that gives none (an empty list: the caller falls back to patches)."""
    regions, whole = sampler.held_regions()
    rng = np.random.default_rng(seed)
    side = max(1, round(pixels ** (1 / sampler.ndim)))
    margin = 0 if whole else halo
    out, counted = [], 0
    for k in rng.permutation(len(regions)):
        block = regions[k]
        shape = block.shape[1:]
        if any(n - 2 * margin < 1 for n in shape):
            continue
        starts = [int(rng.integers(margin, max(margin, n - margin - side) + 1)) for n in shape]
        stops = [min(a + side, n - margin) for a, n in zip(starts, shape)]
        lo = [max(0, a - halo) for a in starts]
        hi = [min(n, b + halo) for b, n in zip(stops, shape)]
        window = block[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))]
        out.append((window, tuple(slice(a - w, b - w) for a, b, w in zip(starts, stops, lo))))
        counted += prod(b - a for a, b in zip(starts, stops))
        if counted >= pixels:
            break
    return out


def predict_in_context(meth: Any, net: nn.Module, windows: list[tuple[np.ndarray, tuple[slice, ...]]], *,
                       device: torch.device, fold_channels: bool, halo: int,
                       multiple: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(noisy, prediction)`` at the cores of ``windows`` (:func:`context_windows`), ``(C, N)`` float32 each, where
    the prediction is ``meth.blind_prediction(net, tile)`` made tile by tile with ``halo`` as inference makes it;
    ``C`` is the network's channels (one where ``fold_channels`` folds independent channels). None without
    windows."""
    if not windows:
        return None

    def predict_batch(tiles: np.ndarray, positions: list) -> np.ndarray:
        b, c = tiles.shape[:2]
        x = tiles.reshape((b * c, 1) + tiles.shape[2:]) if fold_channels and c > 1 else tiles
        y = run_network(lambda t: meth.blind_prediction(net, t), x, device, None)
        return y.reshape(tiles.shape)

    noisy, predicted = [], []
    was_training = net.training
    net.eval()
    for window, core in windows:
        pred = predict_image(predict_batch, window, default_tile(window.shape[1:], multiple, halo), halo, multiple)
        cut = (slice(None),) + core
        for values, into in ((window[cut], noisy), (pred[cut], predicted)):
            into.append(values.reshape(1 if fold_channels else values.shape[0], -1))
    net.train(was_training)
    return np.concatenate(noisy, axis=1), np.concatenate(predicted, axis=1)
