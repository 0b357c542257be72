"""Denoising volumes larger than memory: lazy input, chunked halo tiling, OME-Zarr output that resumes after a crash.

The output is cut into chunks on a grid that starts at 0 and whose spatial chunk sizes are multiples of the
network's downsampling factor. Every output chunk is computed from its input window ``[start - halo, end + halo)``,
clipped at the image borders (and zero-padded past the image end up to the network's multiple), with the tiling of
:func:`n2x.inference.tiling.predict_region` — the same as :meth:`n2x.Model.predict`, so the result equals the
in-memory prediction (float32 rounding aside) whatever the chunk and tile sizes.

The parts, each in its own module: the memory budget (:mod:`.memory_budget`) and the geometry of a run
(:mod:`.volume_plan`), the job fingerprint (:mod:`.fingerprint`), what an existing output holds and opening the
target with its pyramid levels (:mod:`.outputs`, :mod:`n2x.io.pyramid`), and the work unit with the local chunk loop
and its reader and writer threads (:mod:`.chunks`); an ``executor`` may run the work units elsewhere (a dask
cluster: :mod:`n2x.batch.volume_cluster`). Peak memory depends on the chunk and tile sizes, not on the volume.

Resume: a chunk is recorded (a marker file, see :mod:`n2x.io.ome_zarr`) only after zarr has written it; a run started
again on the same output skips the recorded chunks. The output is marked ``complete`` only after the last chunk.
"""
from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator, Sequence

import numpy as np

from .._files import OutputLock
from ..data.axes import check_dtype
from ..errors import InputError, OptionError, OutputExistsError
from ..io import ome_zarr
from ..io.images import ImageInfo, open_image
from ..io.paths import is_within
from ..io.pyramid import PyramidGrid, PyramidTracker, pyramid_factors
from .chunks import MAX_PENDING_WRITES, ChunkExecutor, ChunkJob, VolumeProgress, run_chunks
from .fingerprint import job_fingerprint
from .outputs import (existing_output, finish_tiff, finish_zarr, open_zarr_target, output_kind, provenance,
                      tiff_target)
from .memory_budget import run_window_bytes
from .volume_plan import (SLAB_BYTES, auto_tile, batch_for_core, core_for_chunk, memory_budget, plan_shard,
                          plan_volume, samples_per_read)

if TYPE_CHECKING:  # the model sits above the inference layer: the volume engine only calls it
    from ..model import Model

__all__ = ["iter_denoise_volume", "VolumeProgress", "memory_budget", "auto_tile"]

log = logging.getLogger("n2x")


@dataclass
class _Source:
    """The input of a run: lazy ``data``, its ``path`` (None for an array) and physical metadata per axis letter."""

    data: Any
    path: Path | None
    axes: str | None
    scale: dict[str, float] = field(default_factory=dict)
    translation: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)


def _open_source(source: Any, axes: str | None, level: int) -> _Source:
    """``source`` (a path, an :class:`ImageInfo` or any array) as a :class:`_Source`; ``axes`` override the file's."""
    if isinstance(source, (str, os.PathLike)):
        source = open_image(source, level=level)
    if isinstance(source, ImageInfo):
        return _Source(source.data, source.path, axes or source.axes, dict(source.scale), dict(source.translation),
                       dict(source.units))
    data = source if hasattr(source, "shape") and hasattr(source, "dtype") else np.asarray(source)
    return _Source(data, None, axes)


def iter_denoise_volume(model: Model, source: Any, destination: str | os.PathLike, axes: str | None = None, *,
                        tile: Sequence[int] | int | None = None, batch_size: int | None = None, level: int = 0,
                        overwrite: bool = False, should_stop: Callable[[], bool] | None = None,
                        chunks: Sequence[int] | int | None = None, halo: int | None = None,
                        ngff_version: str | None = None, scale: dict[str, float] | None = None,
                        translation: dict[str, float] | None = None, units: dict[str, str] | None = None,
                        pyramid_levels: int | None = None, max_memory: float | None = None,
                        shards: bool = False,
                        executor: ChunkExecutor | None = None) -> Generator[VolumeProgress, None, Path]:
    """Denoise ``source`` into ``destination`` chunk by chunk; a generator of :class:`VolumeProgress`.

    Everything is checked, and an OME-Zarr output is created with its full shape and metadata (or found and
    checked for resuming), when this function returns; chunks are computed while the generator is iterated. Its
    return value (``StopIteration.value``) is the output path.

    ``model``: a loaded :class:`n2x.Model`, on the device to use. ``source``: a TIFF/OME-TIFF/zarr/OME-Zarr path
    (``level`` picks a resolution level), an :class:`n2x.io.images.ImageInfo`, or any array (numpy, dask, zarr;
    read lazily). ``axes``: the source's axes (default: from the file, else the model's training axes).
    ``destination``: a path ending in ``.zarr`` (OME-Zarr, any size, resumable) or ``.tif``/``.tiff`` (written
    atomically at the end, carrying the job fingerprint; the result must fit in memory).

    OME-Zarr output: the float32 result in the input's intensity units, at ``<destination>/0``, axes in NGFF order
    (T, then C or S, then Z, Y, X), NGFF ``ngff_version`` ``"0.4"`` (zarr format 2, the most widely read) or
    ``"0.5"`` (zarr format 3); scale, translation and units from the source (override with ``scale``,
    ``translation``, ``units``: dicts keyed by axis letter, physical units per pixel). An existing output of the same
    model, input and parameters is resumed (finished chunks are skipped); one of another job raises
    :class:`n2x.OutputExistsError` unless ``overwrite``. An existing TIFF is never replaced without ``overwrite``.

    ``chunks``: spatial chunk size of the output in pixels (default: two core tiles per axis); ``tile``: the core
    tile in pixels (default from the model and the free memory: device memory on CUDA); ``halo``: pixels of
    context per side (default the model's receptive radius; a smaller one makes the result depend on the tiling);
    ``batch_size``: tiles per network call. A device out-of-memory error halves the tile and retries.
    ``should_stop()`` is polled between chunks and between batches of tiles: the run then ends cleanly, keeping
    every chunk written (the chunks being computed are dropped). A stopped TIFF run writes nothing.

    ``pyramid_levels``: resolution levels of an OME-Zarr output (default: 2x down per level until Y and X are at
    most 256 px, see :mod:`n2x.io.pyramid`; 1: none), filled as the full-resolution chunks below them are written.
    ``shards``: write a sharded OME-Zarr (NGFF 0.5, zarr format 3): each file holds many chunks, as large as one
    work unit can hold within the memory budget (:func:`.volume_plan.plan_shard`), for file systems that suffer
    from many small files; readers still read chunk by chunk. ``ngff_version`` None means 0.5 with ``shards``,
    else 0.4. ``max_memory``: bytes one process (or cluster worker) may use (default and split:
    :func:`.memory_budget.memory_budget_for`): chunk, tile and batch sizes follow it. ``executor(job, skipped)``: runs the chunks (default: this process,
    :func:`.chunks.run_chunks`; :mod:`n2x.batch.volume_cluster` runs them on a dask cluster).
    """
    dest = Path(destination)
    kind = output_kind(dest)
    ngff_version = ngff_version or ("0.5" if shards else "0.4")
    if shards and (kind != "zarr" or ngff_version != "0.5"):
        raise OptionError("shards exist only in zarr format 3: an OME-Zarr output with NGFF 0.5",
                          hint="write to a .zarr output with {ngff_version} 0.5, or leave {shards} off")
    if ngff_version not in ome_zarr.NGFF_VERSIONS:
        raise OptionError(f"ngff_version must be one of {', '.join(ome_zarr.NGFF_VERSIONS)}, not {ngff_version!r}",
                          hint="set {ngff_version} to one of " + ", ".join(ome_zarr.NGFF_VERSIONS))
    src = _open_source(source, axes, level)
    check_dtype(src.data.dtype)
    layout = model.layout_for(tuple(src.data.shape), src.axes.upper() if src.axes else None)
    if src.path is not None and is_within(src.path, dest):
        raise OutputExistsError(f"the output {dest} would overwrite the input {src.path}",
                                hint="choose another output")
    geometry = plan_volume(model, layout, tile=tile, chunks=chunks, halo=halo, max_memory=max_memory)
    out_axes = layout.axes
    if kind == "zarr":
        problem = ome_zarr.check_ngff_axes(layout.axes)
        if problem:
            raise InputError(problem)
        out_axes = ome_zarr.ngff_order(layout.axes)
    fingerprint = job_fingerprint(model, src.data, layout, src.path, level, geometry.halo,
                                  ngff_version if kind == "zarr" else None)
    lock = _claim(dest)
    try:
        return _start(model, src, dest, kind, layout, geometry, out_axes, fingerprint, lock, overwrite=overwrite,
                      level=level, batch_size=batch_size, should_stop=should_stop, ngff_version=ngff_version,
                      scale=scale, translation=translation, units=units, pyramid_levels=pyramid_levels,
                      shards=shards, executor=executor)
    except BaseException:
        lock.release()
        raise


def _claim(dest: Path) -> OutputLock:
    """The output's lock, taken: a second job writing the same output at the same time would interleave chunks
    and records with this one's, or remove what this one writes."""
    lock = OutputLock(dest)
    holder = lock.acquire()
    if holder is not None:
        where = str(lock.path).replace("{", "{{").replace("}", "}}")
        raise OutputExistsError(f"another n2x job is writing {dest} (process {holder.get('pid')} on "
                                f"{holder.get('host')}, started {holder.get('started')})",
                                hint=f"wait for it to end or stop it; if no job is running, delete {where}")
    return lock


def _holding(lock: OutputLock, run: Generator[VolumeProgress, None, Path]) -> Generator[VolumeProgress, None, Path]:
    try:
        return (yield from run)
    finally:
        lock.release()


def _start(model: Model, src: _Source, dest: Path, kind: str, layout: Any, geometry: Any, out_axes: str,
           fingerprint: dict, lock: OutputLock, *, overwrite: bool, level: int, batch_size: int | None,
           should_stop: Callable[[], bool] | None, ngff_version: str, scale: dict[str, float] | None,
           translation: dict[str, float] | None, units: dict[str, str] | None, pyramid_levels: int | None,
           shards: bool, executor: ChunkExecutor | None) -> Generator[VolumeProgress, None, Path]:
    """Open or create the output (the lock held) and return the generator that computes its chunks; the lock goes
    when that generator ends, or is dropped without being run."""
    existing = existing_output(dest, kind, fingerprint)
    prov = provenance(model, fingerprint, str(src.path) if src.path is not None else type(src.data).__name__,
                      layout, level, {"halo": geometry.halo, "chunks": list(geometry.chunk),
                                      "tile": list(geometry.tile), "batch_size": batch_size,
                                      "device": str(model.device)})
    scale_, translation_, units_ = ({**src.scale, **(scale or {})}, {**src.translation, **(translation or {})},
                                    {**src.units, **(units or {})})
    job = ChunkJob(model=model, data=src.data, layout=layout, dest=dest, target=None, out_axes=out_axes,
                   chunk=geometry.chunk, core=(1,) * layout.ndim_spatial, halo=geometry.halo, batch=1,
                   should_stop=should_stop, source={"path": str(src.path) if src.path else None, "level": level})
    skipped: set[str] = set()
    if kind == "tiff":
        job.target = tiff_target(dest, existing, fingerprint, layout, overwrite)
    else:
        def multiscales(factors: list[tuple[int, ...]]) -> dict:
            return ome_zarr.multiscales_metadata(
                out_axes, scale=scale_, translation=translation_, units=units_, name=dest.name.split(".")[0],
                version=ngff_version, level_factors=[dict(zip(layout.spatial, f)) for f in factors])

        out = open_zarr_target(
            dest, existing, fingerprint=fingerprint, overwrite=overwrite, source_path=src.path, out_axes=out_axes,
            layout=layout, chunk=geometry.chunk, multiscales=multiscales, prov=prov, ngff_version=ngff_version,
            factors=pyramid_factors(layout.spatial, layout.spatial_shape, scale_, pyramid_levels),
            shard=plan_shard(layout, geometry.chunk, geometry.halo, run_window_bytes(geometry.chunk_bytes, 1))
            if shards else None)
        job.target, job.chunk, skipped = out.array, out.chunk, out.skipped
        job.chunk_log = ome_zarr.ChunkLog(dest)
        if len(out.factors) > 1:
            out_shape = tuple(layout.shape[layout.axes.index(a)] for a in out_axes)
            # A pyramid block is one sample's write unit of its level (a level-0 shard may hold several samples).
            unit = tuple(1 if a in layout.sample_axes else n
                         for a, n in zip(out_axes, ome_zarr.write_unit(job.target)))
            grid = PyramidGrid(out_axes, layout.spatial, out_shape, unit, out.factors)
            job.pyramid = PyramidTracker(grid, out.level_done)
            job.levels = [job.target] + [ome_zarr.open_array(dest, k) for k in range(1, grid.n_levels)]
    # Tiles split each chunk evenly (the chunk grid may be an earlier run's); batch from the budget of one tile.
    job.core = core_for_chunk(job.chunk, geometry.tile, model.multiple)
    job.batch = batch_for_core(model, layout, job.core, geometry.halo, geometry.budget, batch_size)
    # A run of samples read together: its copies (read-ahead, raw, normalised, prediction) beside the pending writes.
    job.run = samples_per_read(src.data, layout, job.chunk, geometry.halo,
                               min(SLAB_BYTES, run_window_bytes(geometry.chunk_bytes, MAX_PENDING_WRITES)))
    if kind == "zarr" and out.run is not None:  # a shard's samples are written by one work unit
        job.run = out.run
    run = _holding(lock, _run(job, skipped, kind, fingerprint, prov, scale_, units_, executor or run_chunks))
    weakref.finalize(run, lock.release)
    return run


def _run(job: ChunkJob, skipped: set[str], kind: str, fingerprint: dict, prov: dict, scale: dict[str, float],
         units: dict[str, str], executor: ChunkExecutor) -> Generator[VolumeProgress, None, Path]:
    """The generator behind :func:`iter_denoise_volume`: the chunks, then the finished output (a TIFF written,
    an OME-Zarr marked complete) and the last report."""
    if skipped == {"*"}:
        yield VolumeProgress(job.total, job.total, job.total, 0.0, job.dest, job.core)
        return job.dest
    last = yield from executor(job, skipped)
    if last.complete and (job.pyramid is None or job.pyramid.complete()):
        if kind == "tiff":
            finish_tiff(job.dest, job.target, job.layout, fingerprint, prov, scale, units)
        else:
            finish_zarr(job.dest, job.pyramid.grid.n_levels if job.pyramid is not None else 1)
            log.info("denoised %s in %.1f s", job.dest, last.elapsed)
    yield last
    return job.dest
