"""Denoising volumes larger than memory: lazy input, chunked halo tiling, OME-Zarr output that resumes after a crash.

The output is cut into chunks on a grid that starts at 0 and whose spatial chunk sizes are multiples of the
network's downsampling factor. Every output chunk is computed from its input window ``[start - halo, end + halo)``,
clipped at the image borders (and zero-padded past the image end up to the network's multiple), with the tiling of
:func:`n2x.inference.tiling.predict_region` — the same as :meth:`n2x.Model.predict`, so the result equals the
in-memory prediction (float32 rounding aside) whatever the chunk and tile sizes.

Only the chunks in flight are in memory: the one being computed, the next one being read (in a thread) and those
being written (in another thread, at most a few). Peak memory depends on the chunk and tile sizes, not on the volume.

Resume: a chunk is recorded (a marker file, see :mod:`n2x.io.ome_zarr`) only after zarr has written it; a run started
again on the same output skips the recorded chunks. The output is marked ``complete`` only after the last chunk.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from math import ceil, prod
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, Sequence

import numpy as np

from .._progress import drain
from .._version import __version__
from ..data.axes import Layout, check_dtype, check_finite
from ..errors import InputError, N2xError, OutputExistsError
from ..io import ome_zarr
from .tiling import (Stopped, default_tile, pad_to_window, predict_region, region_window, round_up,
                     tiles_per_batch)

log = logging.getLogger("n2x")

ZARR_SUFFIX = ".zarr"
TIFF_SUFFIXES = (".tif", ".tiff")
#: chunks waiting to be written before the compute waits for the writer (bounds memory)
MAX_PENDING_WRITES = 4
#: input bytes read at once for a run of samples of a 2D model (several planes share one input chunk)
SLAB_BYTES = 256 * 2**20


@dataclass(frozen=True)
class VolumeProgress:
    """Where a volume run stands.

    ``done``: chunks finished, including ``skipped`` (found finished by an earlier run); ``total``: chunks of the
    whole output; ``elapsed``: seconds since this run started; ``path``: the output; ``tile``: the core tile
    (spatial pixels) now in use (it shrinks after a device out-of-memory error).
    """

    done: int
    total: int
    skipped: int
    elapsed: float
    path: Path
    tile: tuple[int, ...] = ()

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    @property
    def complete(self) -> bool:
        return self.done >= self.total


# -- geometry ------------------------------------------------------------------------------------------------------
def _core_for_chunk(chunk: Sequence[int], tile: Sequence[int], multiple: int) -> tuple[int, ...]:
    """The largest core tile not above ``tile`` that splits ``chunk`` into equal parts (rounded to ``multiple``)."""
    out = []
    for c, t in zip(chunk, tile):
        k = max(1, ceil(c / max(int(t), 1)))
        out.append(max(multiple, round_up(ceil(c / k), multiple)))
    return tuple(out)


def _as_tuple(value: Sequence[int] | int | None, ndim: int, what: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    t = (int(value),) * ndim if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
    if len(t) != ndim or any(v <= 0 for v in t):
        raise N2xError(f"{what} {value!r} needs one positive size per spatial axis ({ndim})")
    return t


def memory_budget(device: Any) -> float:
    """Bytes of activations the network may use per batch: half the free device memory on CUDA, else a quarter
    of the available RAM capped at 512 MiB (the CPU gains nothing from bigger batches)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return 0.5 * free
    try:
        import psutil

        avail = psutil.virtual_memory().available
    except Exception:
        avail = 4 * 2**30
    return float(min(0.25 * avail, 512 * 2**20))


def auto_tile(model: Any, spatial_shape: Sequence[int], budget: float) -> tuple[int, ...]:
    """Core tile (spatial pixels) for ``model``: the default tile, grown while one tile fits half ``budget``
    (large tiles on a GPU waste less on halos)."""
    m, halo = model.multiple, model.halo
    feats = int(model.config["network"].get("features", 32))
    ch = model.n_channels if model.config["channels"] == "joint" else 1
    core = default_tile(spatial_shape, m, halo)
    limit = tuple(round_up(n, m) for n in spatial_shape)
    while True:
        bigger = tuple(min(lim, c * 2) for c, lim in zip(core, limit))
        # Same rough activation size as tiles_per_batch: features x 6 float32 per pixel and channel.
        if bigger == core or prod(c + 2 * halo for c in bigger) * ch * feats * 6 * 4 > budget / 2:
            return core
        core = bigger


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


# -- the job -------------------------------------------------------------------------------------------------------
class _Stopped(Exception):
    """A stop request seen in the middle of a group of chunks: its partial work is dropped."""


@dataclass
class _Job:
    """Everything a run needs, fixed before the first chunk (picklable but for the model)."""

    model: Any
    data: Any                    # the source array (numpy, dask, zarr), user axes
    layout: Layout               # source layout
    dest: Path
    kind: str                    # "zarr" or "tiff"
    out_axes: str                # axes of the output array
    chunk: tuple[int, ...]       # spatial chunk shape of the output
    core: tuple[int, ...]        # core tile
    halo: int
    batch: int
    run: int                     # samples read together along the last sample axis
    scale: dict
    units: dict
    target: Any = None           # zarr array or numpy array written into
    should_stop: Callable[[], bool] | None = None

    @property
    def nblocks(self) -> tuple[int, ...]:
        return tuple(ceil(n / c) for n, c in zip(self.layout.spatial_shape, self.chunk))

    @property
    def total(self) -> int:
        return self.layout.n_samples * prod(self.nblocks)

    def chunk_key(self, pos: dict[str, int], block: Sequence[int]) -> str:
        idx = []
        for a in self.out_axes:
            if a in pos:
                idx.append(pos[a])
            elif a == "C":
                idx.append(0)
            else:
                idx.append(block[self.layout.spatial.index(a)])
        return ome_zarr.ChunkLog.key(idx)

    def groups(self) -> Iterator[tuple[list[int], tuple[int, ...]]]:
        """``(samples, block)`` work units: a run of samples consecutive on the last sample axis, one spatial block.

        Runs are the outer loop, so the output fills run by run (plane by plane for a 2D model on a stack).
        """
        lay = self.layout
        last = lay.sample_shape[-1] if lay.sample_axes else 1
        for outer in range(lay.n_samples // last):
            for r0 in range(0, last, self.run):
                samples = [outer * last + r for r in range(r0, min(r0 + self.run, last))]
                for block in np.ndindex(*self.nblocks):
                    yield samples, tuple(int(b) for b in block)


def _read_slab(job: _Job, samples: list[int], block: tuple[int, ...]) -> np.ndarray:
    """Raw input window of ``block`` for ``samples`` (consecutive on the last sample axis).

    Returns float32 ``(len(samples), C, *window)`` for the part of the window :func:`region_window` asks for that
    lies inside the image; the rest (past the image end) is zero-padded after normalisation.
    """
    lay = job.layout
    spatial = lay.spatial_shape
    starts = [b * c for b, c in zip(block, job.chunk)]
    stops = [min(s + c, n) for s, c, n in zip(starts, job.chunk, spatial)]
    lo, hi = region_window(starts, stops, job.halo, job.model.multiple, spatial)
    boxes = [slice(a, min(b, n)) for a, b, n in zip(lo, hi, spatial)]
    first = lay.sample_index(samples[0])
    index: list[Any] = []
    for a in lay.axes:
        if a in lay.spatial:
            index.append(boxes[lay.spatial.index(a)])
        elif a == "C":
            index.append(slice(None))
        elif a == lay.sample_axes[-1]:
            index.append(slice(first[a], first[a] + len(samples)))
        else:
            index.append(first[a])
    part = job.data[tuple(index)]
    if hasattr(part, "compute"):
        # Threads: decompressing the input chunks of a window in parallel; nothing touches the dask client.
        part = part.compute(scheduler="threads")
    part = np.asarray(part)
    kept = [a for a, i in zip(lay.axes, index) if isinstance(i, slice)]
    order = [kept.index(lay.sample_axes[-1])] if lay.sample_axes else []
    order += [kept.index("C")] if lay.channel_axis else []
    order += [kept.index(a) for a in lay.spatial]
    part = np.transpose(part, order)
    if not lay.sample_axes:
        part = part[None]
    if not lay.channel_axis:
        part = part[:, None]
    return np.ascontiguousarray(part, dtype=np.float32)


def _predict_slab(job: _Job, slab: np.ndarray, block: tuple[int, ...]) -> np.ndarray:
    """Denoise a normalised slab ``(G, C, *window)``; returns ``(G, C, *block_extent)`` float32 (halo cropped).

    A device out-of-memory error halves the core tile (then the batch) and starts the slab again.
    """
    model = job.model
    while True:
        try:
            return _predict_slab_once(job, slab, block)
        except Exception as exc:
            if not _is_oom(exc):
                raise
            _free_device_memory(model)
            m = model.multiple
            smaller = tuple(max(m, round_up(c // 2, m)) for c in job.core)
            if smaller != job.core:
                log.warning("out of memory on %s with tile %s: retrying with tile %s", model.device, job.core, smaller)
                job.core = smaller
            elif job.batch > 1:
                job.batch = max(1, job.batch // 2)
                log.warning("out of memory on %s: retrying with %d tile(s) per batch", model.device, job.batch)
            else:
                raise N2xError(f"out of memory on {model.device} even with a tile of {job.core} pixels and one tile "
                               "per batch; use --device cpu or a smaller model") from exc


def _free_device_memory(model: Any) -> None:
    import gc

    import torch

    gc.collect()
    if model.device.type == "cuda":
        torch.cuda.empty_cache()


def _predict_slab_once(job: _Job, slab: np.ndarray, block: tuple[int, ...]) -> np.ndarray:
    spatial = job.layout.spatial_shape
    starts = [b * c for b, c in zip(block, job.chunk)]
    stops = [min(s + c, n) for s, c, n in zip(starts, job.chunk, spatial)]
    lo, hi = region_window(starts, stops, job.halo, job.model.multiple, spatial)
    buf = pad_to_window(slab, [b - a for a, b in zip(lo, hi)])
    try:
        return predict_region(job.model.predict_tiles, buf, lo, spatial, starts, stops, job.core, job.halo,
                              job.model.multiple, job.batch, job.should_stop)
    except Stopped:
        # A group can take minutes on a CPU: a stop request is honoured between batches, not only between groups.
        raise _Stopped from None


def _put(target: Any, axes: str, spatial: str, pos: dict[str, int], region: Sequence[slice],
         block: np.ndarray) -> None:
    """Write ``block`` ``(C, *spatial)`` of the sample at ``pos`` (axis letter -> index) into ``target`` (``axes``)."""
    index: list[Any] = []
    for a in axes:
        if a in pos:
            index.append(pos[a])
        elif a == "C":
            index.append(slice(None))
        else:
            index.append(region[spatial.index(a)])
    kept = [a for a in axes if a not in pos]
    src = (["C"] if "C" in axes else []) + list(spatial)
    data = block if "C" in axes else block[0]
    target[tuple(index)] = np.transpose(data, [src.index(a) for a in kept])


def _write_and_record(job: _Job, chunk_log: ome_zarr.ChunkLog | None, pos: dict[str, int],
                      region: tuple[slice, ...], block: np.ndarray, key: str) -> None:
    """Write one output chunk, then record it: the record never exists without the data."""
    _put(job.target, job.out_axes, job.layout.spatial, pos, region, block)
    if chunk_log is not None:
        chunk_log.record(key)


# -- fingerprint and provenance --------------------------------------------------------------------------------------
def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _content_sample(data: Any, layout: Layout) -> str:
    """Hash of a small corner of the first and last samples: catches an input replaced by other data."""
    h = hashlib.sha256()
    region = tuple(slice(0, min(n, 64)) for n in layout.spatial_shape)
    for s in sorted({0, layout.n_samples - 1}):
        h.update(np.ascontiguousarray(layout.read(data, s, region)).tobytes())
    return h.hexdigest()


def _fingerprint(model: Any, data: Any, layout: Layout, source_path: Path | None, level: int, halo: int,
                 ngff_version: str) -> dict[str, Any]:
    """What decides whether an existing output is this job's: model, input and the parameters that change values."""
    cfg = model.config
    fp = {
        "model": {"weights_sha256": model.weights_hash(),
                  "config_sha256": _sha({k: cfg.get(k) for k in ("method", "network", "normalization", "channels",
                                                                 "spatial", "n_channels")})},
        "input": {"path": str(source_path.resolve()) if source_path is not None else None,
                  "shape": list(layout.shape), "dtype": str(np.dtype(data.dtype)), "axes": layout.axes,
                  "level": int(level), "sample_sha256": _content_sample(data, layout)},
        "parameters": {"halo": int(halo), "ngff_version": ngff_version},
    }
    return json.loads(json.dumps(fp))


def _describe_difference(old: dict, new: dict) -> str:
    parts = []
    names = {"model": "another model", "input": "another input", "parameters": "other parameters"}
    for key, name in names.items():
        if (old or {}).get(key) != new.get(key):
            diff = [k for k in set((old or {}).get(key, {})) | set(new[key])
                    if (old or {}).get(key, {}).get(k) != new[key].get(k)]
            parts.append(f"{name} ({', '.join(sorted(diff))} differ)")
    return ", ".join(parts) or "another job"


# -- public API ------------------------------------------------------------------------------------------------------
def iter_denoise_volume(model: Any, source: Any, destination: str | os.PathLike, axes: str | None = None, *,
                        tile: Sequence[int] | int | None = None, batch_size: int | None = None, level: int = 0,
                        overwrite: bool = False, device: Any = None,
                        should_stop: Callable[[], bool] | None = None,
                        chunks: Sequence[int] | int | None = None, halo: int | None = None,
                        ngff_version: str = "0.4", scale: dict[str, float] | None = None,
                        translation: dict[str, float] | None = None, units: dict[str, str] | None = None,
                        ) -> Generator[VolumeProgress, None, Path]:
    """Denoise ``source`` into ``destination`` chunk by chunk; a generator of :class:`VolumeProgress`.

    Everything is checked, and an OME-Zarr output is created with its full shape and metadata (or found and
    checked for resuming), when this function returns; chunks are computed while the generator is iterated. Its
    return value (``StopIteration.value``) is the output path.

    ``model``: a :class:`n2x.Model` or a model file. ``source``: a TIFF/OME-TIFF/zarr/OME-Zarr path (``level``
    picks a resolution level), an :class:`n2x.io.images.ImageInfo`, or any array (numpy, dask, zarr; read lazily).
    ``axes``: the source's axes (default: from the file, else the model's training axes). ``destination``: a path
    ending in ``.zarr`` (OME-Zarr, any size, resumable) or ``.tif``/``.tiff`` (written at the end; the result must
    fit in memory).

    OME-Zarr output: the float32 result in the input's intensity units, at ``<destination>/0``, axes in NGFF order
    (T, then C or S, then Z, Y, X), NGFF ``ngff_version`` ``"0.4"`` (zarr format 2, the most widely read) or
    ``"0.5"`` (zarr format 3); scale, translation and units from the source (override with ``scale``,
    ``translation``, ``units``: dicts keyed by axis letter, physical units per pixel). An existing output of the same
    model, input and parameters is resumed (finished chunks are skipped); one of another job raises
    :class:`n2x.OutputExistsError` unless ``overwrite``.

    ``chunks``: spatial chunk size of the output in pixels (default: two core tiles per axis); ``tile``: the core
    tile in pixels (default from the model and the free memory: device memory on CUDA); ``halo``: pixels of
    context per side (default the model's receptive radius; a smaller one makes the result depend on the tiling);
    ``batch_size``: tiles per network call. A device out-of-memory error halves the tile and retries.
    ``should_stop()`` is polled between chunks and between batches of tiles: the run then ends cleanly, keeping
    every chunk written (the chunks being computed are dropped). A stopped TIFF run writes nothing.
    """
    from ..model import Model

    if not isinstance(model, Model):
        model = Model.load(model, device=device or "auto")
    elif device is not None:
        model.to(device)
    dest = Path(destination)
    name = dest.name.lower()
    if name.endswith(ZARR_SUFFIX):
        kind = "zarr"
    elif name.endswith(TIFF_SUFFIXES):
        kind = "tiff"
    else:
        raise N2xError(f"cannot write {dest}: the output must end in .zarr / .ome.zarr (OME-Zarr, any size) "
                       "or .tif / .tiff (results that fit in memory)")
    if ngff_version not in ome_zarr.NGFF_VERSIONS:
        raise N2xError(f"ngff_version must be one of {', '.join(ome_zarr.NGFF_VERSIONS)}, not {ngff_version!r}")

    # -- the source
    source_path: Path | None = None
    meta_scale: dict[str, float] = {}
    meta_translation: dict[str, float] = {}
    meta_units: dict[str, str] = {}
    from ..io.images import ImageInfo, open_image

    if isinstance(source, (str, os.PathLike)):
        source = open_image(source, level=level)
    if isinstance(source, ImageInfo):
        data = source.data
        source_path = source.path
        axes = axes or source.axes
        meta_scale, meta_translation, meta_units = dict(source.scale), dict(source.translation), dict(source.units)
    else:
        data = source
        if not hasattr(data, "shape") or not hasattr(data, "dtype"):
            data = np.asarray(data)
    meta_scale.update(scale or {})
    meta_translation.update(translation or {})
    meta_units.update(units or {})
    check_dtype(data.dtype)
    layout = model.layout_for(tuple(data.shape), axes.upper() if axes else None)
    if source_path is not None and ome_zarr._same_or_inside(source_path, dest):
        raise OutputExistsError(f"the output {dest} would overwrite the input {source_path}; choose another output")

    # -- tiling
    m = model.multiple
    halo_px = model.halo if halo is None else max(0, round_up(int(halo), m))
    nd = layout.ndim_spatial
    spatial = layout.spatial_shape
    limit = tuple(round_up(n, m) for n in spatial)
    budget = memory_budget(model.device)
    user_tile = _as_tuple(tile, nd, "tile")
    want_tile = user_tile or auto_tile(model, spatial, budget)
    want_tile = tuple(min(max(m, round_up(t, m)), lim) for t, lim in zip(want_tile, limit))
    user_chunks = _as_tuple(chunks, nd, "chunks")
    if user_chunks is not None:
        chunk = tuple(min(max(m, round_up(c, m)), lim) for c, lim in zip(user_chunks, limit))
    else:
        # Two tiles per axis: chunks big enough to batch a few tiles, small enough for a viewer to load quickly.
        chunk = tuple(min(2 * t, lim) for t, lim in zip(want_tile, limit))
        if nd == 3:
            chunk = (min(want_tile[0], limit[0]),) + chunk[1:]

    out_axes = layout.axes
    fingerprint = None
    chunk_log = None
    if kind == "zarr":
        problem = ome_zarr.check_ngff_axes(layout.axes)
        if problem:
            raise InputError(problem)
        out_axes = ome_zarr.ngff_order(layout.axes)
        fingerprint = _fingerprint(model, data, layout, source_path, level, halo_px, ngff_version)
    job = _Job(model=model, data=data, layout=layout, dest=dest, kind=kind, out_axes=out_axes, chunk=chunk,
               core=(1,) * nd, halo=halo_px, batch=1, run=1, scale=meta_scale, units=meta_units)

    skipped: set[str] = set()
    if kind == "tiff":
        if dest.exists() and not overwrite:
            raise OutputExistsError(f"{dest} exists; choose another output or pass overwrite=True "
                                    "(--overwrite on the command line) to replace it")
        nbytes = prod(layout.shape) * 4
        try:
            import psutil

            avail = psutil.virtual_memory().available
        except Exception:
            avail = None
        if avail is not None and nbytes > 0.5 * avail:
            raise InputError(f"the result ({nbytes / 2**30:.1f} GiB) does not fit in memory as a TIFF; "
                             "write an OME-Zarr instead (an output path ending in .ome.zarr)")
        job.target = np.zeros(layout.shape, np.float32)
    else:
        out_shape = tuple(layout.shape[layout.axes.index(a)] for a in out_axes)
        attrs = ome_zarr.n2x_attrs(ome_zarr.read_group_attrs(dest)) if dest.exists() else None
        resumable = (attrs is not None and attrs.get("fingerprint") == fingerprint and not overwrite)
        if dest.exists() and not resumable:
            if not overwrite:
                if attrs is not None:
                    raise OutputExistsError(
                        f"{dest} holds the result of {_describe_difference(attrs.get('fingerprint'), fingerprint)}; "
                        "choose another output path, or pass overwrite=True (--overwrite on the command line) to "
                        "replace it")
                raise OutputExistsError(f"{dest} exists and is not an n2x result; choose another output path, or "
                                        "pass overwrite=True (--overwrite on the command line) to replace it")
            ome_zarr.remove_output(dest, source_path)
        chunk_log = ome_zarr.ChunkLog(dest)
        target = None
        if resumable:
            try:
                target = ome_zarr.open_array(dest)
            except Exception:
                target = None  # killed between creating the group and its array: create the array below
            if target is not None and (tuple(target.shape) != out_shape or np.dtype(target.dtype) != np.float32):
                target = None
        if target is not None:
            # The chunk grid of the existing output decides; only the tile follows this run's settings.
            job.chunk = tuple(int(target.chunks[out_axes.index(a)]) for a in layout.spatial)
            if attrs.get("status") == "complete":
                skipped = {"*"}
            else:
                skipped = chunk_log.done()
        else:
            chunk_log.clear()
            out_chunks = tuple(1 if a in layout.sample_axes else (layout.n_channels if a == "C"
                               else job.chunk[layout.spatial.index(a)]) for a in out_axes)
            provenance = {
                "software": "napari-n2x", "version": __version__, "method": model.method_name,
                "method_config": model.config["method"], "network": model.config["network"],
                "channels": model.config["channels"], "normalization": model.config["normalization"],
                "model_file": str(model.path) if model.path is not None else None,
                "model_file_sha256": model.file_hash(), "weights_sha256": fingerprint["model"]["weights_sha256"],
                "source": str(source_path) if source_path is not None else type(data).__name__,
                "source_axes": layout.axes, "source_level": int(level),
                "parameters": {"halo": halo_px, "chunks": list(job.chunk), "tile": list(want_tile),
                               "batch_size": batch_size, "device": str(model.device)},
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            ms = ome_zarr.multiscales_metadata(out_axes, scale=meta_scale, translation=meta_translation,
                                               units=meta_units, name=dest.name.split(".")[0],
                                               version=ngff_version)
            dest.parent.mkdir(parents=True, exist_ok=True)
            target = ome_zarr.create_image(
                dest, out_shape, out_axes, out_chunks, version=ngff_version, multiscales=ms,
                attrs={"n2x": {"status": "running", "fingerprint": fingerprint, "provenance": provenance}})
        chunk_log.ensure()
        job.target = target

    # Tiles split each chunk evenly; batch from the memory budget of one tile.
    job.core = _core_for_chunk(job.chunk, want_tile, m)
    feats = int(model.config["network"].get("features", 32))
    ch = layout.n_channels if model.config["channels"] == "joint" else 1
    job.batch = int(batch_size) if batch_size else tiles_per_batch(job.core, halo_px, ch, feats, budget)
    if layout.sample_axes:
        # Read several samples at once when they share input chunks (e.g. a Z-chunked stack through a 2D model).
        in_chunk = 1
        chunksize = getattr(data, "chunksize", None) or getattr(data, "chunks", None)
        if chunksize is not None and len(chunksize) == len(layout.shape) and isinstance(chunksize[0], (int, np.integer)):
            in_chunk = int(chunksize[layout.axes.index(layout.sample_axes[-1])])
        window = prod(c + 2 * halo_px for c in job.chunk)
        fit = max(1, int(SLAB_BYTES // max(1, window * layout.n_channels * 4 * 2)))
        job.run = max(1, min(in_chunk, fit, layout.sample_shape[-1]))
    job.should_stop = should_stop
    return _run(job, chunk_log, skipped, should_stop)


def _run(job: _Job, chunk_log: ome_zarr.ChunkLog | None, skipped: set[str],
         should_stop: Callable[[], bool] | None) -> Generator[VolumeProgress, None, Path]:
    t0 = time.perf_counter()
    total = job.total
    lay = job.layout
    if skipped == {"*"}:
        yield VolumeProgress(total, total, total, 0.0, job.dest, job.core)
        return job.dest
    n_skipped = 0
    if skipped:
        n_skipped = sum(job.chunk_key(lay.sample_index(s), b) in skipped for s_list, b in job.groups() for s in s_list)
    done = n_skipped
    yield VolumeProgress(done, total, n_skipped, 0.0, job.dest, job.core)

    def pending_groups() -> Iterator[tuple[list[int], tuple[int, ...], list[int]]]:
        for samples, block in job.groups():
            todo = [s for s in samples if job.chunk_key(lay.sample_index(s), block) not in skipped]
            if todo:
                # Read only the span of samples still to do.
                span = samples[samples.index(todo[0]):samples.index(todo[-1]) + 1]
                yield span, block, todo

    reader = ThreadPoolExecutor(1, thread_name_prefix="n2x-read")
    writer = ThreadPoolExecutor(1, thread_name_prefix="n2x-write")
    writes: deque[Future] = deque()
    stopped = False
    try:
        groups = pending_groups()
        nxt = next(groups, None)
        fut = reader.submit(_read_slab, job, nxt[0], nxt[1]) if nxt else None
        while nxt is not None:
            if should_stop is not None and should_stop():
                stopped = True
                break
            span, block, todo = nxt
            slab = fut.result()
            nxt = next(groups, None)
            # Read the next window while this one is computed (overlaps zarr/TIFF decoding with the network).
            fut = reader.submit(_read_slab, job, nxt[0], nxt[1]) if nxt else None
            check_finite(slab, "the input")
            normed = job.model.normalization.apply(slab, channel_axis=1)
            del slab
            try:
                pred = job.model.normalization.invert(_predict_slab(job, normed, block), channel_axis=1)
            except _Stopped:
                stopped = True
                break
            del normed
            starts = [b * c for b, c in zip(block, job.chunk)]
            region = tuple(slice(s, s + n) for s, n in zip(starts, pred.shape[2:]))
            for i, s in enumerate(span):
                if s not in todo:
                    continue
                pos = lay.sample_index(s)
                key = job.chunk_key(pos, block)
                writes.append(writer.submit(_write_and_record, job, chunk_log, pos, region,
                                            np.ascontiguousarray(pred[i]), key))
            del pred
            finished = 0
            while writes and (writes[0].done() or len(writes) > MAX_PENDING_WRITES):
                writes.popleft().result()
                finished += 1
            if finished:
                done += finished
                yield VolumeProgress(done, total, n_skipped, time.perf_counter() - t0, job.dest, job.core)
    finally:
        # Whatever ends the run (stop, error, generator closed), chunks already computed are written and recorded.
        reader.shutdown(wait=True, cancel_futures=True)
        error = None
        while writes:
            try:
                writes.popleft().result()
                done += 1
            except BaseException as exc:  # keep draining; the first error is raised below
                error = error or exc
        writer.shutdown(wait=True)
        if error is not None:
            raise error
    if not stopped and done >= total:
        if job.kind == "tiff":
            from ..io.images import write_tiff

            write_tiff(job.dest, job.target, lay.axes, scale=job.scale, units=job.units, overwrite=True)
        else:
            elapsed = time.perf_counter() - t0
            ome_zarr.set_status(job.dest, "complete",
                                finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            if chunk_log is not None:
                chunk_log.clear()
            log.info("denoised %s in %.1f s", job.dest, elapsed)
    yield VolumeProgress(done, total, n_skipped, time.perf_counter() - t0, job.dest, job.core)
    return job.dest


def denoise_volume(model: Any, source: Any, destination: str | os.PathLike, axes: str | None = None, *,
                   progress: Callable[[int, int], None] | None = None, **kwargs: Any) -> Path:
    """Denoise ``source`` into ``destination`` (OME-Zarr or TIFF) chunk by chunk and return the output path.

    Takes the arguments of :func:`iter_denoise_volume`; ``progress(done, total)`` is called as chunks finish
    (``done`` counts chunks finished by earlier, interrupted runs too). Running it again after a crash resumes.
    """
    report = (lambda pr: progress(pr.done, pr.total)) if progress is not None else None
    return drain(iter_denoise_volume(model, source, destination, axes, **kwargs), report)
