"""Tiles with a halo: the output of every tile is exact, so tiled and untiled predictions agree.

A tile covers ``core`` output pixels and reads ``halo`` more on each side. The image is mirror-padded by ``halo`` at its
borders (numpy ``reflect``), so a pixel near the border sees the same context whatever the tiling; tiles start on
multiples of the network's downsampling factor so pooling grids line up. The halo is cropped from each output.
"""
from __future__ import annotations

import itertools
from math import prod
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

PAD_MODE = "reflect"


def round_up(n: int, m: int) -> int:
    return -(-int(n) // m) * m


def tile_starts(length: int, core: int) -> list[int]:
    return list(range(0, length, core))


def default_tile(spatial_shape: Sequence[int], multiple: int, halo: int) -> tuple[int, ...]:
    """A core tile size that keeps halo overhead small while bounding memory: 512 px in 2D, 32 x 192 x 192 in 3D."""
    if len(spatial_shape) == 2:
        target = (512, 512)
    else:
        target = (32, 192, 192)
    return tuple(min(round_up(n, multiple), round_up(t, multiple)) for n, t in zip(spatial_shape, target))


def pad_block(block: np.ndarray, before: Sequence[int], after: Sequence[int]) -> np.ndarray:
    """Mirror-pad the trailing spatial axes of ``block`` ``(C, *spatial)``; tolerates pads longer than the axis."""
    pads = [(0, 0)] * (block.ndim - len(before)) + list(zip(before, after))
    return np.pad(block, pads, mode=PAD_MODE)


def iter_tiles(spatial_shape: Sequence[int], core: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Start coordinates of the core tiles covering ``spatial_shape``."""
    yield from itertools.product(*[tile_starts(n, c) for n, c in zip(spatial_shape, core)])


def predict_image(predict_batch: Callable[[np.ndarray, list[tuple[int, ...]]], np.ndarray], image: np.ndarray,
                  core: Sequence[int], halo: int, multiple: int, batch_size: int = 4,
                  origin: Sequence[int] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> np.ndarray:
    """Tiled prediction of one normalised sample ``image`` ``(C, *spatial)``.

    ``predict_batch(tiles, positions)`` maps ``(B, C, *tile)`` to the same shape; ``positions`` are the tiles' global
    spatial origins (``origin`` plus the tile start), which seed any randomness so that results do not depend on
    the tiling. Returns float32 ``(C_out, *spatial)``.
    """
    spatial = image.shape[1:]
    ndim = len(spatial)
    core = tuple(min(int(c), round_up(n, multiple)) for c, n in zip(core, spatial))
    origin = tuple(origin) if origin is not None else (0,) * ndim
    # Padded so every tile window [start - halo, start + core + halo) exists, rounded to the network's multiple.
    ends = [round_up(n, c) for n, c in zip(spatial, core)]
    padded = pad_block(image, [halo] * ndim, [halo + e - n for e, n in zip(ends, spatial)])
    out = None
    pending: list[tuple[int, ...]] = []

    def flush() -> None:
        nonlocal out
        tiles = np.stack([padded[(slice(None),) + tuple(slice(s, s + c + 2 * halo) for s, c in zip(st, core))]
                          for st in pending])
        pos = [tuple(o + s - halo for o, s in zip(origin, st)) for st in pending]
        res = predict_batch(tiles, pos)
        if out is None:
            out = np.empty((res.shape[1],) + tuple(spatial), np.float32)
        for st, r in zip(pending, res):
            dst = tuple(slice(s, min(s + c, n)) for s, c, n in zip(st, core, spatial))
            src = (slice(None),) + tuple(slice(halo, halo + (d.stop - d.start)) for d in dst)
            out[(slice(None),) + dst] = r[src]
        pending.clear()

    for st in iter_tiles(spatial, core):
        if should_stop is not None and should_stop():
            break
        pending.append(st)
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    return out


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
