"""Random training patches from in-memory or lazy (dask/zarr) arrays, with augmentation and a validation split.

Data come as :class:`Source` objects: aligned stacks (one for Noise2Void, input and target for Noise2Noise) that can
read a spatial region of one sample. When everything fits into ``max_memory`` bytes it is read once; otherwise a
cache of random regions is kept within that budget (with the validation patches) and refreshed in a background
thread, so training memory is bounded by the parameter, not by the data's size. Per-pixel data computed with the
stacks (F2F's flows) are part of each region read and held only there.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from math import prod
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError
from .axes import Layout, check_finite, constant_value
from .normalize import Normalization

Region = tuple[slice, ...]
#: random regions read before training starts when each comes with a costly aux block (F2F's flows); enough for the
#: normalisation's statistics (8 regions of 256 x 256 for F2F's 64 x 64 patches: half a million pixels)
FIRST_AUX_REGIONS = 8
#: pixels of validation patches where pixels are held out (:attr:`Source.holds_out_pixels`): with the usual 10% held
#: out, 26 thousand pixels judge a checkpoint (64 patches of 64 x 64; 8 of 8 x 64 x 64)
HELD_OUT_VAL_PIXELS = 2 ** 18


@dataclass
class Source:
    """Aligned stacks to draw patches from.

    ``read(s, region)`` returns one raw float32 array ``(C, *spatial)`` per stack for sample ``s`` and a spatial
    ``region`` (slices along ``layout.spatial``). ``n_samples`` may be smaller than the layout's (pairs along an axis).

    With ``aux_channels`` > 0, ``read`` returns one more array, ``(aux_channels, *spatial)``: per-pixel data that go
    with the stacks but are not intensities (frame-to-frame alignment: flows and masks). It is not normalised;
    ``aux_vectors`` are its channels where a displacement ``(d_Z, d_Y, d_X)`` or ``(d_Y, d_X)`` in pixels starts, which
    flips and rotations turn with the patch. ``aux_cache`` is whatever computes it (for reports: its cost). With
    ``holds_out_pixels`` the aux block marks pixels held out from the loss for validation
    (:func:`n2x.data.holdout.with_held_out_pixels`): every sample and region then trains, and validates there too.
    """

    layout: Layout
    n_samples: int
    read: Callable[[int, Region], tuple[np.ndarray, ...]]
    n_stacks: int = 1
    name: str = ""
    aux_channels: int = 0
    aux_vectors: tuple[int, ...] = ()
    aux_cache: Any = None
    holds_out_pixels: bool = False

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.layout.spatial_shape

    @property
    def n_pixels(self) -> int:
        return self.n_samples * prod(self.spatial_shape)


def single_source(array: Any, layout: Layout, name: str = "") -> Source:
    """The noisy image itself (Noise2Void, AP-BSN, single-image Noise2Noise)."""
    return Source(layout, layout.n_samples, lambda s, r: (layout.read(array, s, r),), 1, name)


@dataclass
class _Split:
    """Which part of a source trains and which validates."""

    train_samples: list[int]
    val_samples: list[int]
    train_region: Region  # spatial bounds of training patches in train samples
    val_region: Region | None  # spatial stripe held out in the same samples, when samples are too few


class PatchSampler:
    """Draws augmented batches of normalised patches from one or more :class:`Source` objects.

    ``patch_shape`` is spatial (``(Y, X)`` or ``(Z, Y, X)``). Flips on every spatial axis; 90-degree rotations in the
    YX plane when ``rotate`` (default: when the patch is square in YX). ``val_fraction`` of the samples (or a stripe of
    each image when there are few samples) is held out for validation and never trained on; sources that hold out
    pixels instead (:attr:`Source.holds_out_pixels`) train on every sample and region.
    """

    def __init__(self, sources: Sequence[Source], patch_shape: Sequence[int], *, max_memory: float = 2e9,
                 val_fraction: float = 0.1, n_val_patches: int = 64, normalization: str = "meanstd",
                 rotate: bool | None = None, flip: bool = True, seed: int | None = None,
                 norm: Normalization | None = None):
        self.sources = list(sources)
        if not self.sources:
            raise InputError("no training data was given")
        self.patch = tuple(int(p) for p in patch_shape)
        self.ndim = len(self.patch)
        self.n_stacks = self.sources[0].n_stacks
        self.n_channels = self.sources[0].layout.n_channels
        self.aux_channels = self.sources[0].aux_channels
        self.aux_vectors = self.sources[0].aux_vectors
        # per array of a patch: the stacks' channels, then the aux block's
        self.array_channels = (self.n_channels,) * self.n_stacks + ((self.aux_channels,) if self.aux_channels else ())
        for src in self.sources:
            if src.layout.ndim_spatial != self.ndim:
                raise InputError(f"patch {self.patch} has {self.ndim} dims but {src.name or 'an image'} is "
                                 f"{src.layout.ndim_spatial}D ({src.layout.spatial})")
            if (src.n_stacks, src.aux_channels) != (self.n_stacks, self.aux_channels):
                raise InputError("all training sources must be paired the same way")
            if src.layout.n_channels != self.n_channels:
                raise InputError("all training images must have the same number of channels "
                                 f"({src.name or 'one'} has {src.layout.n_channels}, expected {self.n_channels})")
            small = [f"{a}={n}<{p}" for a, n, p in zip(src.layout.spatial, src.spatial_shape, self.patch) if n < p]
            if small:
                raise InputError(f"{src.name or 'the image'} (spatial shape {src.spatial_shape}) is smaller than the "
                                 f"training patch {self.patch} ({', '.join(small)}); use a smaller patch size")
        self.rotate = (self.patch[-1] == self.patch[-2]) if rotate is None else bool(rotate)
        self.flip = flip
        self.rng = np.random.default_rng(seed)
        self.max_memory = float(max_memory)
        self.holds_out_pixels = all(src.holds_out_pixels for src in self.sources)
        self.splits = [self._split(src, val_fraction) for src in self.sources]
        self.val_independent = self.holds_out_pixels or all(s.val_samples or s.val_region is not None
                                                            for s in self.splits)

        bytes_needed = sum(src.n_pixels * 4 * sum(self.array_channels) for src in self.sources)
        self.in_memory = bytes_needed <= self.max_memory
        self._regions: list[tuple[np.ndarray, ...]] = []
        self._weights = np.zeros(0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._incoming: queue.Queue = queue.Queue(maxsize=4)
        # the random regions of a stack read lazily share the budget with the validation patches (a stack held in
        # memory does not: its bytes_needed count every sample)
        val_bytes = n_val_patches * prod(self.patch) * 4 * sum(self.array_channels)
        self.region_memory = max(0.0, self.max_memory - val_bytes)
        self.n_regions = 0  # random regions kept when read lazily
        if self.in_memory:
            raw = [src.read(s, split.train_region) for src, split in zip(self.sources, self.splits)
                   for s in split.train_samples]
        else:
            self.n_regions = self._n_cache_regions()
            # An aux block costs (F2F's flows: 1-1.5 s per region of 256 x 256 on a CPU, and a 2 GiB budget keeps 256
            # regions): training starts from a few regions, and the background reader adds the rest.
            costly = self.aux_channels and not self.holds_out_pixels
            n_first = min(self.n_regions, FIRST_AUX_REGIONS) if costly else self.n_regions
            raw = [self._read_random_region(self.rng) for _ in range(n_first)]
        for blocks in raw:
            for b in blocks:
                check_finite(b, "the training data")
        self.norm = norm or Normalization.fit([b for blocks in raw for b in blocks[:1]], normalization)
        self._set_regions([self._normalize(blocks) for blocks in raw])
        self.val_patches = self._make_val_patches(n_val_patches)
        self.train_pixels = sum(len(sp.train_samples) * prod(_region_shape(sp.train_region, src.spatial_shape))
                                for src, sp in zip(self.sources, self.splits))

    # -- set-up ----------------------------------------------------------------------------------------------
    def _split(self, src: Source, val_fraction: float) -> _Split:
        full = tuple(slice(0, n) for n in src.spatial_shape)
        samples = list(range(src.n_samples))
        total_samples = sum(s.n_samples for s in self.sources)
        if val_fraction <= 0 or self.holds_out_pixels:
            return _Split(samples, [], full, None)
        if total_samples >= 10 and src.n_samples >= 2:
            n_val = max(1, round(src.n_samples * val_fraction))
            val = [int(v) for v in np.linspace(0, src.n_samples - 1, n_val + 2)[1:-1].round()]
            return _Split([s for s in samples if s not in val], val, full, None)
        # Few samples: hold out a stripe at the end of the longest spatial axis when both parts still fit a patch.
        shape = src.spatial_shape
        ax = int(np.argmax(np.asarray(shape) / np.asarray(self.patch)))
        width = max(self.patch[ax], int(round(shape[ax] * val_fraction)))
        if shape[ax] - width >= self.patch[ax]:
            train = tuple(slice(0, shape[ax] - width) if d == ax else full[d] for d in range(self.ndim))
            val = tuple(slice(shape[ax] - width, shape[ax]) if d == ax else full[d] for d in range(self.ndim))
            return _Split(samples, [], train, val)
        return _Split(samples, [], full, None)

    def _n_cache_regions(self) -> int:
        shape = self._cache_region_shape(self.sources[0])
        per_region = prod(shape) * 4 * sum(self.array_channels)
        return int(max(4, min(256, self.region_memory // max(per_region, 1))))

    def _cache_region_shape(self, src: Source) -> tuple[int, ...]:
        return tuple(min(n, 4 * p) for n, p in zip(_region_shape(self.splits[self.sources.index(src)].train_region,
                                                                 src.spatial_shape), self.patch))

    def _read_random_region(self, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        weights = np.array([len(sp.train_samples) * prod(_region_shape(sp.train_region, src.spatial_shape))
                            for src, sp in zip(self.sources, self.splits)], float)
        k = int(rng.choice(len(self.sources), p=weights / weights.sum()))
        src, split = self.sources[k], self.splits[k]
        s = int(rng.choice(split.train_samples))
        shape = self._cache_region_shape(src)
        region = []
        for d, n in enumerate(shape):
            lo, hi = split.train_region[d].start, split.train_region[d].stop
            start = int(rng.integers(lo, hi - n + 1))
            region.append(slice(start, start + n))
        return src.read(s, tuple(region))

    def _normalize(self, blocks: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        stacks = tuple(self.norm.apply(b, channel_axis=0) for b in blocks[:self.n_stacks])
        return stacks + tuple(blocks[self.n_stacks:])  # the aux block is not intensities

    def _set_regions(self, regions: list[tuple[np.ndarray, ...]]) -> None:
        with self._lock:
            self._regions = regions
            self._weights = np.array([_n_positions(r[0].shape[1:], self.patch) for r in regions], float)
            self._weights /= self._weights.sum()

    def constant_value(self) -> float | None:
        """The one value every pixel of the training regions holds, in the input's units (first channel), or None
        when they vary: a constant image has no noise to learn from."""
        with self._lock:
            first = [r[0] for r in self._regions]
        flat = constant_value(first)
        return None if flat is None else flat * self.norm.scale[0] + self.norm.offset[0]

    def _make_val_patches(self, n_max: int) -> tuple[np.ndarray, ...] | None:
        """A fixed set of validation patches, tiled over the held-out data (or drawn from training data)."""
        rng = np.random.default_rng(12345)
        picks: list[tuple[np.ndarray, ...]] = []
        if self.holds_out_pixels:
            n_max = min(n_max, max(1, HELD_OUT_VAL_PIXELS // prod(self.patch)))
        for src, split in zip(self.sources, self.splits):
            if self.holds_out_pixels:  # every sample trains: validate on samples spread over the stack
                spread = np.unique(np.linspace(0, len(split.train_samples) - 1, max(1, n_max)).round().astype(int))
                parts = [(split.train_samples[i], split.train_region) for i in spread]
            elif split.val_samples:
                parts = [(s, tuple(slice(0, n) for n in src.spatial_shape)) for s in split.val_samples]
            elif split.val_region is not None:
                parts = [(s, split.val_region) for s in split.train_samples]
            else:
                continue
            for s, region in parts[:max(1, n_max)]:
                shape = _region_shape(region, src.spatial_shape)
                starts = [range(r.start, r.start + n - p + 1, p) for r, n, p in zip(region, shape, self.patch)]
                counts = [len(a) for a in starts]
                total, k = prod(counts), max(1, n_max // len(parts))
                # a random pick of the tiling grid, without listing a large volume's grid
                order = rng.permutation(total)[:k] if total <= 1_000_000 else rng.choice(total, k, replace=False)
                grid = np.stack([np.asarray(a)[i] for a, i in zip(starts, np.unravel_index(order, counts))], -1)
                subs = [tuple(slice(int(a), int(a) + p) for a, p in zip(g, self.patch)) for g in grid]
                picks += [self._normalize(blocks) for blocks in self._read_patches(src, s, region, subs)]
        if not picks:  # nothing held out: validate on fixed training patches (not independent)
            return self._draw(min(n_max, 32), np.random.default_rng(777), augment=False)
        picks = picks[:n_max]
        return tuple(np.stack([p[i] for p in picks]) for i in range(len(self.array_channels)))

    def _read_patches(self, src: Source, s: int, region: Region, subs: list[Region]) -> list[tuple[np.ndarray, ...]]:
        """The blocks of sample ``s`` at each patch region of ``subs`` (inside ``region``).

        An aux block (an optical flow) costs by the area computed, margins included: a 64 x 64 patch with F2F's
        32 px margin computes 4x its area. Where the patches cover a quarter of ``region`` or more, one read of the
        region costs less, so it is read once and cut; otherwise (a few patches of a large frame) each patch is read
        on its own, so the cost is bounded by the patches, not by the frame.
        """
        if not src.aux_channels or 4 * len(subs) * prod(self.patch) < prod(_region_shape(region, src.spatial_shape)):
            return [src.read(s, sub) for sub in subs]
        whole = src.read(s, region)
        cuts = [(slice(None),) + tuple(slice(q.start - r.start, q.stop - r.start) for q, r in zip(sub, region))
                for sub in subs]
        return [tuple(b[cut] for b in whole) for cut in cuts]

    def bytes_held(self) -> int:
        """Bytes of patch data held: the training regions and the validation patches, with their aux blocks."""
        with self._lock:
            regions = sum(b.nbytes for blocks in self._regions for b in blocks)
        return regions + sum(v.nbytes for v in self.val_patches or ())

    # -- sampling --------------------------------------------------------------------------------------------
    def _draw(self, n: int, rng: np.random.Generator, augment: bool = True) -> tuple[np.ndarray, ...]:
        with self._lock:
            regions, weights = self._regions, self._weights
        which = rng.choice(len(regions), size=n, p=weights)
        out = [np.empty((n, c) + self.patch, np.float32) for c in self.array_channels]
        for i, k in enumerate(which):
            blocks = regions[k]
            shape = blocks[0].shape[1:]
            start = [int(rng.integers(0, m - p + 1)) for m, p in zip(shape, self.patch)]
            sl = (slice(None),) + tuple(slice(a, a + p) for a, p in zip(start, self.patch))
            flips = [d + 1 for d in range(self.ndim) if augment and self.flip and rng.random() < 0.5]
            k90 = int(rng.integers(0, 4)) if augment and self.rotate else 0
            for j, b in enumerate(blocks):
                p = b[sl]
                if flips:
                    p = np.flip(p, axis=flips)
                if k90:
                    p = np.rot90(p, k90, axes=(-2, -1))
                if j >= self.n_stacks and self.aux_vectors and (flips or k90):
                    p = _turn_vectors(p, self.aux_vectors, [f - 1 for f in flips], k90)
                out[j][i] = p
        return tuple(out)

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
        """``n`` patches per stack of the training regions held now, as :meth:`batch` gives them but without
        flips or rotations, drawn from their own ``seed``: the training's random stream is left as it was."""
        return self._draw(n, np.random.default_rng(seed), augment=False)

    def held_regions(self) -> tuple[list[np.ndarray], bool]:
        """The first stack of each training region held now, normalised ``(C, *spatial)``, and whether these are
        whole samples (their edges the image's) rather than regions of a larger image read lazily."""
        with self._lock:
            regions = [blocks[0] for blocks in self._regions]
        return regions, self.in_memory and all(sp.val_region is None for sp in self.splits)

    def batch(self, n: int) -> tuple[np.ndarray, ...]:
        """``n`` augmented patches per stack, each ``(n, C, *patch)`` float32, normalised."""
        if not self.in_memory:
            self._swap_in_regions()
        return self._draw(n, self.rng)

    def _swap_in_regions(self) -> None:
        if self._thread is None or (self._stop.is_set() and not self._thread.is_alive()):  # first, or after close()
            self._stop.clear()
            self._reader_seed = int(self.rng.integers(2**63))
            self._thread = threading.Thread(target=self._reader, daemon=True, name="n2x-patch-reader")
            self._thread.start()
        new = []
        while True:
            try:
                new.append(self._incoming.get_nowait())
            except queue.Empty:
                break
        if new:
            regions = list(self._regions)
            for blocks in new:
                if len(regions) < self.n_regions:
                    regions.append(blocks)
                else:
                    regions[int(self.rng.integers(0, len(regions)))] = blocks
            self._set_regions(regions)

    def _reader(self) -> None:
        rng = np.random.default_rng(self._reader_seed)
        while not self._stop.is_set():
            try:
                blocks = self._normalize(self._read_random_region(rng))
            except Exception:  # a failing read ends the refresh; the cache keeps serving what it has
                return
            while not self._stop.is_set():
                try:
                    self._incoming.put(blocks, timeout=0.2)
                    break
                except queue.Full:
                    continue

    def close(self) -> None:
        """Stop the background reader (if any); a later :meth:`batch` starts it again."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def patches_per_epoch(self) -> int:
        """Patches in one pass over the training pixels."""
        return max(1, -(-self.train_pixels // prod(self.patch)))


def _turn_vectors(block: np.ndarray, starts: Sequence[int], flipped: Sequence[int], k90: int) -> np.ndarray:
    """Displacements in ``block`` ``(channels, *spatial)`` (components from each of ``starts``) after the block was
    flipped along the spatial axes ``flipped`` and then turned ``k90`` times by :func:`numpy.rot90` in the last two."""
    block = np.array(block)
    nd = block.ndim - 1
    for v in starts:
        for d in flipped:
            block[v + d] *= -1
        for _ in range(k90 % 4):  # rot90 moves (y, x) to (W - 1 - x, y): a displacement (dy, dx) to (-dx, dy)
            dy, dx = block[v + nd - 2].copy(), block[v + nd - 1].copy()
            block[v + nd - 2], block[v + nd - 1] = -dx, dy
    return block


def _region_shape(region: Region, full: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(len(range(*r.indices(n))) for r, n in zip(region, full))


def _n_positions(shape: tuple[int, ...], patch: tuple[int, ...]) -> int:
    return prod(max(1, n - p + 1) for n, p in zip(shape, patch))
