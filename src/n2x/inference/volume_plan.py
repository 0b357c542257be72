"""Planning a chunked volume run: memory budget, core tile, output chunk grid, tiles per batch, samples per read.

All sizes are in pixels along the spatial axes of the model's layout (``Z, Y, X`` or ``Y, X``) unless a name says
bytes. Spatial sizes are multiples of the network's downsampling factor (``model.multiple``) so that every tile and
chunk starts on the network's pooling grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil, prod
from typing import Any, Sequence

import numpy as np

from ..data.axes import Layout
from ..errors import OptionError
from .memory_budget import memory_budget_for
from .tiling import default_tile, round_up, tiles_per_batch

#: input bytes read at once for a run of samples of a 2D model (several planes share one input chunk)
SLAB_BYTES = 256 * 2**20
#: float32 output bytes a shard holds at most: a 500 GB result is then about 8000 shard files, where 1 MiB
#: chunks would make half a million
SHARD_BYTES = 64 * 2**20


@dataclass(frozen=True)
class VolumePlan:
    """The geometry of one run. ``tile``: core tile wanted (spatial pixels); ``chunk``: spatial chunk shape of the
    output; ``halo``: pixels of context per side; ``budget``: bytes of activations one network call may use;
    ``chunk_bytes``: float32 bytes one chunk's input window may take (see :mod:`.memory_budget`)."""

    tile: tuple[int, ...]
    chunk: tuple[int, ...]
    halo: int
    budget: float
    chunk_bytes: float = float(SLAB_BYTES)


def memory_budget(device: Any, max_memory: float | None = None) -> float:
    """Bytes of activations the network may use per batch (see :func:`.memory_budget.memory_budget_for`)."""
    return memory_budget_for(device, max_memory).activations


def _tile_bytes(tile: Sequence[int], halo: int, channels: int, features: int) -> float:
    # Same rough activation size as tiles_per_batch: features x 6 float32 per pixel and channel.
    return float(prod(c + 2 * halo for c in tile) * channels * features * 6 * 4)


def _network_width(model: Any, channels: int) -> tuple[int, int]:
    """``(features, channels seen by one network call)``: what the activation size of a tile scales with."""
    feats = int(model.config["network"].get("features", 32))
    return feats, (channels if model.config["channels"] == "joint" else 1)


def auto_tile(model: Any, spatial_shape: Sequence[int], budget: float) -> tuple[int, ...]:
    """Core tile (spatial pixels) for ``model``: the default tile, grown while one tile fits half ``budget``
    bytes (large tiles on a GPU waste less on halos), or shrunk (largest axis first) until one tile fits ``budget``
    (a 3D network on a CPU worker)."""
    m, halo = model.multiple, model.halo
    feats, ch = _network_width(model, model.n_channels)
    core = default_tile(spatial_shape, m, halo)
    limit = tuple(round_up(n, m) for n in spatial_shape)
    while _tile_bytes(core, halo, ch, feats) > budget and max(core) > m:
        i = core.index(max(core))
        core = core[:i] + (max(m, round_up(core[i] // 2, m)),) + core[i + 1:]
    while True:
        bigger = tuple(min(lim, c * 2) for c, lim in zip(core, limit))
        if bigger == core or _tile_bytes(bigger, halo, ch, feats) > budget / 2:
            return core
        core = bigger


def core_for_chunk(chunk: Sequence[int], tile: Sequence[int], multiple: int) -> tuple[int, ...]:
    """The largest core tile not above ``tile`` that splits ``chunk`` into equal parts (rounded to ``multiple``)."""
    out = []
    for c, t in zip(chunk, tile):
        k = max(1, ceil(c / max(int(t), 1)))
        out.append(max(multiple, round_up(ceil(c / k), multiple)))
    return tuple(out)


def spatial_sizes(value: Sequence[int] | int | None, ndim: int, option: str) -> tuple[int, ...] | None:
    """``value`` (one size, or one per spatial axis) as ``ndim`` positive sizes; None stays None.
    ``option`` is the engine option's name (``tile``, ``chunks``), used in the error's hint."""
    if value is None:
        return None
    t = (int(value),) * ndim if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
    if len(t) != ndim or any(v <= 0 for v in t):
        raise OptionError(f"{option} {value!r} needs one positive size per spatial axis ({ndim})",
                          hint="give {" + option + "} one size, or one per spatial axis")
    return t


def _fit_chunk(chunk: tuple[int, ...], halo: int, channels: int, limit_bytes: float,
               floor: Sequence[int]) -> tuple[int, ...]:
    """``chunk`` halved (largest axis first, not below ``floor``) until its float32 input window fits."""
    while prod(c + 2 * halo for c in chunk) * channels * 4 > limit_bytes:
        i = max(range(len(chunk)), key=lambda k: chunk[k] / floor[k])
        if chunk[i] <= floor[i]:
            return chunk
        chunk = chunk[:i] + (max(floor[i], chunk[i] // 2),) + chunk[i + 1:]
    return chunk


def plan_volume(model: Any, layout: Layout, *, tile: Sequence[int] | int | None = None,
                chunks: Sequence[int] | int | None = None, halo: int | None = None,
                max_memory: float | None = None) -> VolumePlan:
    """Tile, chunk grid and halo of a run of ``model`` on data of ``layout``.

    ``tile``: core tile wanted (default from the model and the memory budget of its device); ``chunks``: spatial
    chunk shape of the output (default two tiles per axis, one tile deep in 3D); ``halo``: context per side
    (default the model's receptive radius). All are rounded up to the network's multiple and capped at the image.
    ``max_memory``: bytes of the process or worker (default and split: :mod:`.memory_budget`); the default tile
    and chunk shrink to fit it (sizes the user gives are kept).
    """
    m = model.multiple
    halo_px = model.halo if halo is None else max(0, round_up(int(halo), m))
    nd = layout.ndim_spatial
    limit = tuple(round_up(n, m) for n in layout.spatial_shape)
    split = memory_budget_for(model.device, max_memory)
    budget = split.activations
    want = spatial_sizes(tile, nd, "tile") or auto_tile(model, layout.spatial_shape, budget)
    want = tuple(min(max(m, round_up(t, m)), lim) for t, lim in zip(want, limit))
    user_chunks = spatial_sizes(chunks, nd, "chunks")
    if user_chunks is not None:
        chunk = tuple(min(max(m, round_up(c, m)), lim) for c, lim in zip(user_chunks, limit))
    else:
        # Two tiles per axis: chunks big enough to batch a few tiles, small enough for a viewer to load quickly.
        chunk = tuple(min(2 * t, lim) for t, lim in zip(want, limit))
        if nd == 3:
            chunk = (min(want[0], limit[0]),) + chunk[1:]
        chunk = _fit_chunk(chunk, halo_px, layout.n_channels, split.chunk_bytes, [min(c, 4 * m) for c in chunk])
    return VolumePlan(tile=want, chunk=chunk, halo=halo_px, budget=budget, chunk_bytes=split.chunk_bytes)


@dataclass(frozen=True)
class ShardPlan:
    """The shards of a sharded output (zarr format 3): ``spatial``, the shard's extent along the layout's spatial
    axes (pixels, a multiple of the chunk); ``samples``, the samples of the last sample axis it holds (1 where
    there are none). One work unit computes and writes one shard whole."""

    spatial: tuple[int, ...]
    samples: int


def plan_shard(layout: Layout, chunk: Sequence[int], halo: int, window_bytes: float,
               shard_bytes: float | None = None) -> ShardPlan:
    """The largest shard that one work unit can hold: starting from one ``chunk``, the samples (last sample axis)
    and each spatial axis are doubled in turn, up to the data's extent, while the shard stays within
    ``shard_bytes`` of float32 output (default :data:`SHARD_BYTES`) and its input window (with ``halo`` pixels per side, raw and normalised
    copies) within ``window_bytes``. A shard bigger than a chunk means fewer files, not bigger reads: readers
    still read chunk by chunk."""
    shard_bytes = SHARD_BYTES if shard_bytes is None else shard_bytes
    spatial, samples = [int(c) for c in chunk], 1
    n_last = layout.sample_shape[-1] if layout.sample_axes else 1
    limits = [ceil(n / c) * c for n, c in zip(layout.spatial_shape, chunk)]
    ch = layout.n_channels

    def fits(sp: Sequence[int], k: int) -> bool:
        out = prod(sp) * k * ch * 4
        window = prod(s + 2 * halo for s in sp) * k * ch * 4 * 2
        return out <= shard_bytes and window <= window_bytes

    grown = True
    while grown:
        grown = False
        if samples < n_last and fits(spatial, min(2 * samples, n_last)):
            samples, grown = min(2 * samples, n_last), True
        for i in reversed(range(len(spatial))):  # X, then Y, then Z: planes before depth
            wider = spatial[:i] + [min(2 * spatial[i], limits[i])] + spatial[i + 1:]
            if wider[i] > spatial[i] and fits(wider, samples):
                spatial, grown = wider, True
    return ShardPlan(tuple(spatial), samples)


def batch_for_core(model: Any, layout: Layout, core: Sequence[int], halo: int, budget: float,
                   batch_size: int | None = None) -> int:
    """Tiles per network call: ``batch_size`` when given, else as many tiles of ``core`` as ``budget`` bytes hold."""
    if batch_size:
        return int(batch_size)
    feats, ch = _network_width(model, layout.n_channels)
    return tiles_per_batch(core, halo, ch, feats, budget)


def samples_per_read(data: Any, layout: Layout, chunk: Sequence[int], halo: int,
                     slab_bytes: float = SLAB_BYTES) -> int:
    """Samples read together along the last sample axis: as many as share one input chunk there (e.g. the planes
    of a Z-chunked stack through a 2D model), within ``slab_bytes`` of float32 input windows."""
    if not layout.sample_axes:
        return 1
    in_chunk = 1
    chunksize = getattr(data, "chunksize", None) or getattr(data, "chunks", None)
    if chunksize is not None and len(chunksize) == len(layout.shape) and isinstance(chunksize[0], (int, np.integer)):
        in_chunk = int(chunksize[layout.axes.index(layout.sample_axes[-1])])
    window = prod(c + 2 * halo for c in chunk)
    # x2: the raw window and its normalised copy are alive together
    fit = max(1, int(slab_bytes // max(1, window * layout.n_channels * 4 * 2)))
    return max(1, min(in_chunk, fit, layout.sample_shape[-1]))
