"""Tiles with a halo: the output of every tile is exact, so tiled and untiled predictions agree.

The reference ("untiled") prediction is one forward pass over the whole normalised image, zero-padded at its end up
to a multiple of the network's downsampling factor. A tile computes ``core`` output pixels from a window that reaches
``halo`` pixels (at least the network's receptive radius) beyond the core on every side that lies inside the image,
and stops at the image border on the others, where it sees the same border as the whole-image pass. Window origins
are multiples of the downsampling factor, so pooling grids line up. Hence each cropped core equals the whole-image
result, and border tiles cost no padding at all (a 32-plane stack is one window deep, not 32 + 2 halos).
"""
from __future__ import annotations

import itertools
from collections import defaultdict
from math import prod
from typing import Callable, Sequence

import numpy as np
import torch

from .._numbers import round_up  # noqa: F401 - re-exported: tiling's users round tiles up


class Stopped(Exception):
    """A stop request seen between two batches of tiles."""


def default_tile(spatial_shape: Sequence[int], multiple: int, halo: int) -> tuple[int, ...]:
    """Core tile: 1024 px in 2D, 64 x 256 x 256 in 3D (large tiles waste little on halos), at most the image."""
    target = (1024, 1024) if len(spatial_shape) == 2 else (64, 256, 256)
    return tuple(min(round_up(n, multiple), round_up(t, multiple)) for n, t in zip(spatial_shape, target))


def axis_tiles(start: int, stop: int, core: int, halo: int, multiple: int,
               length: int) -> list[tuple[int, int, int, int]]:
    """``(core_start, core_stop, window_start, window_stop)`` of the tiles covering ``[start, stop)`` of an axis of
    ``length`` pixels; windows end at most at the padded end ``round_up(length, multiple)``."""
    end = round_up(length, multiple)
    out = []
    for s in range(start, stop, core):
        e = min(s + core, stop)
        out.append((s, e, max(0, s - halo), min(end, round_up(e, multiple) + halo)))
    return out


def region_window(start: Sequence[int], stop: Sequence[int], halo: int, multiple: int,
                  shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Global ``(window_start, window_stop)`` of the input needed to predict the region ``[start, stop)``."""
    lo = tuple(max(0, a - halo) for a in start)
    hi = tuple(min(round_up(n, multiple), round_up(b, multiple) + halo) for b, n in zip(stop, shape))
    return lo, hi


def pad_to_window(block: np.ndarray, window_shape: Sequence[int]) -> np.ndarray:
    """Zero-pad the end of the trailing spatial axes of a normalised ``block`` to ``window_shape``."""
    pads = [(0, 0)] * (block.ndim - len(window_shape)) + [(0, w - n) for w, n in zip(window_shape,
                                                                                     block.shape[-len(window_shape):])]
    return np.pad(block, pads) if any(p[1] for p in pads) else block


def predict_region(predict_batch: Callable[[np.ndarray, list[tuple[int, ...]]], np.ndarray], buf: np.ndarray,
                   buf_start: Sequence[int], shape: Sequence[int], start: Sequence[int], stop: Sequence[int],
                   core: Sequence[int], halo: int, multiple: int, batch_size: int = 1,
                   should_stop: Callable[[], bool] | None = None) -> np.ndarray:
    """Predict the region ``[start, stop)`` (global spatial pixels) of ``G`` samples.

    ``buf`` ``(G, C, *w)`` holds the normalised input over the global window starting at ``buf_start`` as given by
    :func:`region_window` (zeros past the image end). ``predict_batch(tiles, positions)`` maps ``(B, C, *tile)`` to
    ``(B, C_out, *tile)``; ``positions`` are the tiles' global window origins, which seed any randomness (AP-BSN's
    R3) so that results do not depend on the tiling. Tiles of equal window shape are batched ``batch_size`` at a
    time. Returns float32 ``(G, C_out, *(stop - start))``; raises :class:`Stopped` when ``should_stop()`` turns true.
    """
    g_count = buf.shape[0]
    per_axis = [axis_tiles(a, b, int(c), halo, multiple, n) for a, b, c, n in zip(start, stop, core, shape)]
    groups: dict[tuple[int, ...], list] = defaultdict(list)
    for g in range(g_count):
        for combo in itertools.product(*per_axis):
            groups[tuple(we - ws for _, _, ws, we in combo)].append((g, combo))
    out: np.ndarray | None = None
    first = True
    for items in groups.values():
        for i in range(0, len(items), batch_size):
            if not first and should_stop is not None and should_stop():
                raise Stopped
            first = False
            batch = items[i:i + batch_size]
            tiles = np.stack([buf[(g, slice(None)) + tuple(slice(ws - b0, we - b0) for (_, _, ws, we), b0
                                                          in zip(combo, buf_start))] for g, combo in batch])
            res = predict_batch(tiles, [tuple(ws for _, _, ws, _ in combo) for _, combo in batch])
            if out is None:
                out = np.empty((g_count, res.shape[1]) + tuple(b - a for a, b in zip(start, stop)), np.float32)
            for (g, combo), r in zip(batch, res):
                dst = (g, slice(None)) + tuple(slice(s - a, e - a) for (s, e, _, _), a in zip(combo, start))
                out[dst] = r[(slice(None),) + tuple(slice(s - ws, e - ws) for s, e, ws, _ in combo)]
    assert out is not None
    return out


def predict_image(predict_batch: Callable[[np.ndarray, list[tuple[int, ...]]], np.ndarray], image: np.ndarray,
                  core: Sequence[int], halo: int, multiple: int, batch_size: int = 1,
                  should_stop: Callable[[], bool] | None = None) -> np.ndarray:
    """Tiled prediction of one normalised in-memory sample ``image`` ``(C, *spatial)``: float32 ``(C_out, *spatial)``."""
    spatial = image.shape[1:]
    zero = (0,) * len(spatial)
    lo, hi = region_window(zero, spatial, halo, multiple, spatial)
    buf = pad_to_window(image, hi)[None]
    return predict_region(predict_batch, buf, lo, spatial, zero, spatial, core, halo, multiple, batch_size,
                          should_stop)[0]


def tiles_per_batch(core: Sequence[int], halo: int, channels: int, features: int, budget_bytes: float) -> int:
    """How many tiles fit a memory budget, from a rough activation size per pixel (features x 6 floats)."""
    px = prod(c + 2 * halo for c in core)
    per_tile = px * max(channels, 1) * max(features, 1) * 6 * 4
    return int(max(1, min(16, budget_bytes // max(per_tile, 1))))


@torch.inference_mode()
def run_network(fn: Callable[[torch.Tensor], torch.Tensor], tiles: np.ndarray, device: torch.device,
                autocast: torch.dtype | None) -> np.ndarray:
    """Run ``fn`` on a numpy batch on ``device`` (with autocast where given); float32 numpy back."""
    x = torch.from_numpy(np.ascontiguousarray(tiles)).to(device)
    if autocast is not None:
        with torch.autocast(device.type, dtype=autocast):
            y = fn(x)
    else:
        y = fn(x)
    return y.float().cpu().numpy()
