"""The resolution pyramid of an OME-Zarr output: which levels, which block of a level comes from which chunks of the
level below, and computing one block.

Level 0 is the full-resolution result. Level ``k`` halves Y and X of level ``k - 1`` (and Z where the voxel is near
isotropic, see :func:`pyramid_factors`) until Y and X are at most :data:`PYRAMID_MIN_SIZE` pixels. Every level has
the same chunk shape in pixels, so one chunk of level ``k`` is computed from at most 2 x 2 (x 2) chunks of level
``k - 1``: a pyramid block can be computed as soon as those chunks are recorded, and a partial output can already be
browsed zoomed out. Each pixel of level ``k`` is the mean of its 2 x 2 (x 2) pixels of level ``k - 1``; past an odd
image end the last pixel is repeated (the mean of what exists), so a block computed alone equals the same block of
the whole level downsampled at once (:func:`downsample_mean`).

Keys are chunk indices over the output's axes (NGFF order), as :class:`n2x.io.ome_zarr.ChunkLog` records them.
"""
from __future__ import annotations

import itertools
from math import ceil
from typing import Any, Iterable, Sequence

import numpy as np

#: a pyramid stops once Y and X are at most this many pixels
PYRAMID_MIN_SIZE = 256
#: Z is halved with Y and X while the Z voxel is at most this many times the Y/X voxel (near isotropic)
ISOTROPY_RATIO = 1.5


def pyramid_factors(spatial: str, shape: Sequence[int], scale: dict[str, float] | None = None,
                    levels: int | None = None, min_size: int = PYRAMID_MIN_SIZE) -> list[tuple[int, ...]]:
    """Downsampling factor per spatial axis (``spatial``, e.g. ``"ZYX"``, of ``shape`` pixels) for every level.

    Level 0 is all 1s. Y and X halve at every level; Z halves too while its physical voxel size (``scale``, units
    per pixel) is at most :data:`ISOTROPY_RATIO` times that of Y/X at that level. ``levels``: the number of levels
    (1: no pyramid); default: until Y and X are at most ``min_size`` pixels.
    """
    scale = scale or {}
    factors = [(1,) * len(spatial)]
    yx = [i for i, a in enumerate(spatial) if a in "YX"]
    while True:
        last = factors[-1]
        sizes = [ceil(n / f) for n, f in zip(shape, last)]
        if levels is not None and len(factors) >= levels:
            return factors
        if levels is None and max(sizes[i] for i in yx) <= min_size:
            return factors
        if max(sizes[i] for i in yx) <= 1:
            return factors
        nxt = []
        for i, a in enumerate(spatial):
            if a in "YX":
                nxt.append(last[i] * 2)
            else:
                vox = float(scale.get(a, 1.0)) * last[i]
                yx_vox = float(scale.get("Y", scale.get("X", 1.0))) * last[yx[0]]
                halve = sizes[i] > 1 and vox <= ISOTROPY_RATIO * yx_vox
                nxt.append(last[i] * (2 if halve else 1))
        factors.append(tuple(nxt))


def level_shape(shape: Sequence[int], factors: Sequence[int]) -> tuple[int, ...]:
    """Spatial shape of a level of ``factors`` (level-0 ``shape`` in pixels, rounded up)."""
    return tuple(ceil(n / f) for n, f in zip(shape, factors))


def downsample_mean(block: np.ndarray, ratio: Sequence[int]) -> np.ndarray:
    """Mean over windows of ``ratio`` pixels along the trailing ``len(ratio)`` axes of ``block`` (float32).

    An axis whose length is not a multiple of its ratio is extended by repeating its last pixel first.
    """
    nd = len(ratio)
    lead = block.shape[:block.ndim - nd]
    pads = [(0, 0)] * len(lead) + [(0, (-n) % r) for n, r in zip(block.shape[len(lead):], ratio)]
    if any(p[1] for p in pads):
        block = np.pad(block, pads, mode="edge")
    shape = list(lead)
    for n, r in zip(block.shape[len(lead):], ratio):
        shape += [n // r, r]
    axes = tuple(len(lead) + 2 * i + 1 for i in range(nd))
    return block.reshape(shape).mean(axis=axes, dtype=np.float64).astype(np.float32)


class PyramidGrid:
    """The chunk grids of all levels of an output and how they nest.

    ``out_axes``: the stored axes (NGFF order); ``spatial``: those downsampled (the model's spatial axes, in the
    same order; a Z that a 2D model treats as samples is not); ``shape``: level-0 shape over ``out_axes``;
    ``chunks``: the chunk shape (the same at every level); ``factors``: per level, the factor per axis of
    ``spatial`` (:func:`pyramid_factors`).
    """

    def __init__(self, out_axes: str, spatial: str, shape: Sequence[int], chunks: Sequence[int],
                 factors: Sequence[Sequence[int]]):
        self.out_axes, self.spatial = out_axes, spatial
        self.spatial_pos = [out_axes.index(a) for a in spatial]
        self.chunks = tuple(int(c) for c in chunks)
        self.factors = [tuple(int(f) for f in fs) for fs in factors]
        self.shapes = []
        for fs in self.factors:
            s = list(shape)
            for i, f in zip(self.spatial_pos, fs):
                s[i] = ceil(shape[i] / f)
            self.shapes.append(tuple(int(n) for n in s))

    @property
    def n_levels(self) -> int:
        return len(self.factors)

    def ratio(self, level: int) -> tuple[int, ...]:
        """Factor per spatial axis from level ``level - 1`` to ``level``."""
        return tuple(a // b for a, b in zip(self.factors[level], self.factors[level - 1]))

    def nblocks(self, level: int) -> tuple[int, ...]:
        return tuple(ceil(n / c) for n, c in zip(self.shapes[level], self.chunks))

    def blocks(self, level: int) -> Iterable[tuple[int, ...]]:
        return (tuple(int(i) for i in b) for b in np.ndindex(*self.nblocks(level)))

    def parent(self, level: int, block: Sequence[int]) -> tuple[int, ...]:
        """The block of level ``level + 1`` that block ``block`` of ``level`` contributes to."""
        out = list(block)
        for i, r in zip(self.spatial_pos, self.ratio(level + 1)):
            out[i] = block[i] // r
        return tuple(out)

    def children(self, level: int, block: Sequence[int]) -> list[tuple[int, ...]]:
        """The blocks of level ``level - 1`` that block ``block`` of ``level`` is computed from."""
        below = self.nblocks(level - 1)
        ranges: list[Any] = [[b] for b in block]
        for i, r in zip(self.spatial_pos, self.ratio(level)):
            ranges[i] = range(block[i] * r, min(block[i] * r + r, below[i]))
        return [tuple(c) for c in itertools.product(*ranges)]

    def region(self, level: int, block: Sequence[int]) -> tuple[slice, ...]:
        """The pixels of block ``block`` of ``level``."""
        return tuple(slice(b * c, min((b + 1) * c, n)) for b, c, n in zip(block, self.chunks, self.shapes[level]))

    def source_region(self, level: int, block: Sequence[int]) -> tuple[slice, ...]:
        """The pixels of level ``level - 1`` that block ``block`` of ``level`` is the mean of."""
        out = list(self.region(level, block))
        below = self.shapes[level - 1]
        for i, r in zip(self.spatial_pos, self.ratio(level)):
            s = out[i]
            out[i] = slice(s.start * r, min(s.stop * r, below[i]))
        return tuple(out)

    def compute_block(self, arrays: Sequence[Any], level: int, block: Sequence[int]) -> np.ndarray:
        """Block ``block`` of ``level`` computed from ``arrays[level - 1]`` (any array: zarr, numpy)."""
        src = np.asarray(arrays[level - 1][self.source_region(level, block)], np.float32)
        # The downsampled axes are the last ones in NGFF order (Z, Y, X after T, C and samples); ratio 1 elsewhere.
        ratio = [1] * len(self.out_axes)
        for i, r in zip(self.spatial_pos, self.ratio(level)):
            ratio[i] = r
        return downsample_mean(src, ratio)


class PyramidTracker:
    """Which pyramid blocks are recorded, and which become computable as chunks below them are recorded.

    ``done``: per level, the keys (:meth:`n2x.io.ome_zarr.ChunkLog.key`) recorded so far.
    """

    def __init__(self, grid: PyramidGrid, done: Sequence[set[str]]):
        self.grid = grid
        self.done = [set(d) for d in done] + [set() for _ in range(grid.n_levels - len(done))]
        self.issued: set[tuple[int, tuple[int, ...]]] = set()

    @staticmethod
    def key(block: Sequence[int]) -> str:
        return ".".join(str(int(i)) for i in block)

    def _ready(self, level: int, block: tuple[int, ...]) -> bool:
        return (self.key(block) not in self.done[level] and (level, block) not in self.issued
                and all(self.key(c) in self.done[level - 1] for c in self.grid.children(level, block)))

    def recorded(self, level: int, block: Sequence[int]) -> list[tuple[int, tuple[int, ...]]]:
        """Note block ``block`` of ``level`` as recorded; returns the ``(level, block)`` now computable (at most one),
        each returned once."""
        block = tuple(int(b) for b in block)
        self.done[level].add(self.key(block))
        self.issued.discard((level, block))
        if level + 1 >= self.grid.n_levels:
            return []
        up = self.grid.parent(level, block)
        if self._ready(level + 1, up):
            self.issued.add((level + 1, up))
            return [(level + 1, up)]
        return []

    def pending(self) -> list[tuple[int, tuple[int, ...]]]:
        """Blocks computable now that no earlier call returned (after a resume: those a killed run left)."""
        out = []
        for level in range(1, self.grid.n_levels):
            for block in self.grid.blocks(level):
                if self._ready(level, block):
                    self.issued.add((level, block))
                    out.append((level, block))
        return out

    def complete(self) -> bool:
        return all(len(self.done[k]) >= int(np.prod(self.grid.nblocks(k))) for k in range(1, self.grid.n_levels))
