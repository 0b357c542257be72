"""Computing a volume chunk by chunk: read the input window of a chunk, denoise it with halo tiling, write it.

Only the chunks in flight are in memory: the one being computed, the next one being read (in a thread) and those
being written (in another thread, at most :data:`MAX_PENDING_WRITES`). A chunk of an OME-Zarr output is recorded
(:class:`n2x.io.ome_zarr.ChunkLog`) only after it is written, so a killed run never records a chunk it lacks.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from math import ceil, prod
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, Sequence

import numpy as np

from ..data.axes import Layout, check_finite
from ..device import is_out_of_memory
from ..errors import N2xError
from ..io import ome_zarr
from ..io.pyramid import PyramidTracker
from .chunk_writes import fill_pyramid, write_and_fill, write_chunk, write_run, write_run_and_fill
from .tiling import Stopped, pad_to_window, predict_region, region_window, round_up

log = logging.getLogger("n2x")

#: chunks waiting to be written before the compute waits for the writer (bounds memory)
MAX_PENDING_WRITES = 4


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


class _Stopped(Exception):
    """A stop request seen in the middle of a group of chunks: its partial work is dropped."""


@dataclass
class ChunkJob:
    """Everything the chunk loop needs, fixed before the first chunk (but ``core`` and ``batch``, which shrink after
    a device out-of-memory error).

    ``data``: the source array in the user's axes (numpy, dask, zarr), ``layout`` its axes; ``target``: the zarr
    or numpy array written into, with axes ``out_axes``; ``chunk``: spatial chunk shape of the output; ``core``:
    core tile; ``halo``: context pixels per side; ``batch``: tiles per network call; ``run``: samples read together
    along the last sample axis. ``chunk_log``: the record of finished chunks (None for a TIFF, written at the end).
    ``pyramid``: the pyramid levels' grid and records (None: one level, or a TIFF); ``levels``: the arrays of all
    levels (level 0 is ``target``). ``source``: ``path`` (None for an array) and ``level`` of the input file,
    from which a cluster worker opens the input itself.
    """

    model: Any
    data: Any
    layout: Layout
    dest: Path
    target: Any
    out_axes: str
    chunk: tuple[int, ...]
    core: tuple[int, ...]
    halo: int
    batch: int
    run: int = 1
    chunk_log: ome_zarr.ChunkLog | None = None
    should_stop: Callable[[], bool] | None = None
    pyramid: PyramidTracker | None = None
    levels: list[Any] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def writes_runs(self) -> bool:
        """Whether work units write their samples at once: the target is sharded (a shard holds a run)."""
        return getattr(self.target, "shards", None) is not None

    @property
    def nblocks(self) -> tuple[int, ...]:
        return tuple(ceil(n / c) for n, c in zip(self.layout.spatial_shape, self.chunk))

    @property
    def total(self) -> int:
        return self.layout.n_samples * prod(self.nblocks)

    def chunk_index(self, pos: dict[str, int], block: Sequence[int]) -> tuple[int, ...]:
        """Index over ``out_axes`` of the output chunk of sample ``pos`` (axis letter -> index) and spatial
        ``block``."""
        idx = []
        for a in self.out_axes:
            if a in pos:
                idx.append(pos[a])
            elif a == "C":
                idx.append(0)
            else:
                idx.append(block[self.layout.spatial.index(a)])
        return tuple(int(i) for i in idx)

    def chunk_key(self, pos: dict[str, int], block: Sequence[int]) -> str:
        """The :class:`~n2x.io.ome_zarr.ChunkLog` key of the output chunk of sample ``pos`` and spatial ``block``."""
        return ome_zarr.ChunkLog.key(self.chunk_index(pos, block))

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

    def window(self, block: Sequence[int]) -> tuple[list[int], list[int], list[int], list[int]]:
        """``(starts, stops, lo, hi)``: the output extent of ``block`` and the input window it is computed from."""
        spatial = self.layout.spatial_shape
        starts = [b * c for b, c in zip(block, self.chunk)]
        stops = [min(s + c, n) for s, c, n in zip(starts, self.chunk, spatial)]
        lo, hi = region_window(starts, stops, self.halo, self.model.multiple, spatial)
        return starts, stops, lo, hi


def read_slab(job: ChunkJob, samples: list[int], block: tuple[int, ...]) -> np.ndarray:
    """Raw input window of ``block`` for ``samples`` (consecutive on the last sample axis).

    Returns float32 ``(len(samples), C, *window)`` for the part of the window :func:`region_window` asks for that
    lies inside the image; the rest (past the image end) is zero-padded after normalisation.
    """
    lay = job.layout
    spatial = lay.spatial_shape
    _, _, lo, hi = job.window(block)
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


def predict_slab(job: ChunkJob, slab: np.ndarray, block: tuple[int, ...]) -> np.ndarray:
    """Denoise a normalised slab ``(G, C, *window)``; returns ``(G, C, *block_extent)`` float32 (halo cropped).

    A device out-of-memory error halves the core tile (then the batch) and starts the slab again.
    """
    model = job.model
    while True:
        try:
            starts, stops, lo, hi = job.window(block)
            buf = pad_to_window(slab, [b - a for a, b in zip(lo, hi)])
            return predict_region(model.predict_tiles, buf, lo, job.layout.spatial_shape, starts, stops, job.core,
                                  job.halo, model.multiple, job.batch, job.should_stop)
        except Stopped:
            # A group can take minutes on a CPU: a stop request is honoured between batches, not only between groups.
            raise _Stopped from None
        except Exception as exc:
            if not is_out_of_memory(exc):
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
                               "per batch", hint="set {device} to cpu, or use a smaller model") from exc


def _free_device_memory(model: Any) -> None:
    import gc

    import torch

    gc.collect()
    if model.device.type == "cuda":
        torch.cuda.empty_cache()


def count_skipped(job: ChunkJob, skipped: set[str]) -> int:
    """How many of ``job``'s chunks are among the ``skipped`` keys (finished by an earlier run)."""
    if not skipped:
        return 0
    lay = job.layout
    return sum(job.chunk_key(lay.sample_index(s), b) in skipped for ss, b in job.groups() for s in ss)


def pending_groups(job: ChunkJob, skipped: set[str]) -> Iterator[tuple[list[int], tuple[int, ...], list[int]]]:
    """``(span, block, todo)`` of every work unit with chunks not in ``skipped``: the samples to read (``span``,
    only the run still to do), the spatial block, and the samples to write (``todo``)."""
    lay = job.layout
    for samples, block in job.groups():
        todo = [s for s in samples if job.chunk_key(lay.sample_index(s), block) not in skipped]
        if todo:
            yield samples[samples.index(todo[0]):samples.index(todo[-1]) + 1], block, todo


def denoise_slab(job: ChunkJob, slab: np.ndarray, block: tuple[int, ...]) -> np.ndarray:
    """The denoised chunks ``(G, C, *block_extent)`` (input intensity units) of a raw slab from :func:`read_slab`."""
    check_finite(slab, "the input")
    normed = job.model.normalization.apply(slab, channel_axis=1)
    del slab
    return job.model.normalization.invert(predict_slab(job, normed, block), channel_axis=1)


def slab_chunks(job: ChunkJob, span: list[int], todo: list[int], block: tuple[int, ...],
                pred: np.ndarray) -> Iterator[tuple[dict[str, int], tuple[slice, ...], np.ndarray]]:
    """``(sample position, spatial region, chunk (C, *spatial))`` of the chunks of ``pred`` to write."""
    starts, _, _, _ = job.window(block)
    region = tuple(slice(s, s + n) for s, n in zip(starts, pred.shape[2:]))
    for i, s in enumerate(span):
        if s in todo:
            yield job.layout.sample_index(s), region, np.ascontiguousarray(pred[i])


def process_group(job: ChunkJob, span: list[int], block: tuple[int, ...], todo: list[int]) -> list[tuple[int, ...]]:
    """One work unit from start to end: read its input window, denoise, write and record its chunks.

    The task a cluster worker runs (:mod:`n2x.batch.volume_cluster`); the local loop of :func:`run_chunks` runs the
    same steps with its reads and writes overlapped in threads. Returns the recorded chunks' indices (over
    ``job.out_axes``), the only thing a worker sends back.
    """
    pred = denoise_slab(job, read_slab(job, span, block), block)
    if job.writes_runs:
        return write_run(job, span, todo, block, pred)
    written = []
    for pos, region, data in slab_chunks(job, span, todo, block, pred):
        write_chunk(job, pos, region, data, job.chunk_key(pos, block))
        written.append(job.chunk_index(pos, block))
    return written


#: what runs the chunks of a job not in ``skipped``: :func:`run_chunks` here, or a cluster's (same protocol)
ChunkExecutor = Callable[["ChunkJob", set], Generator[VolumeProgress, None, VolumeProgress]]


def run_chunks(job: ChunkJob, skipped: set[str]) -> Generator[VolumeProgress, None, VolumeProgress]:
    """Compute every chunk of ``job`` not in ``skipped`` (chunk keys finished earlier) and write it into the target.

    Yields :class:`VolumeProgress` as chunks finish (the first report before any work) and returns the final one,
    for the caller to finish the output and report: ``complete`` unless ``job.should_stop`` ended the run.
    Whatever ends it (stop, error, the generator closed), the chunks already computed are written and recorded.
    """
    t0 = time.perf_counter()
    total = job.total
    n_skipped = count_skipped(job, skipped)
    done = n_skipped
    yield VolumeProgress(done, total, n_skipped, 0.0, job.dest, job.core)

    reader = ThreadPoolExecutor(1, thread_name_prefix="n2x-read")
    writer = ThreadPoolExecutor(1, thread_name_prefix="n2x-write")
    writes: deque[Future] = deque()
    if job.pyramid is not None:
        # Pyramid blocks a killed run left undone although their chunks are recorded.
        catch_up = writer.submit(fill_pyramid, job.dest, job.pyramid, job.levels, job.pyramid.pending())
    try:
        groups = pending_groups(job, skipped)
        nxt = next(groups, None)
        fut = reader.submit(read_slab, job, nxt[0], nxt[1]) if nxt else None
        while nxt is not None:
            if job.should_stop is not None and job.should_stop():
                break
            span, block, todo = nxt
            slab = fut.result()
            nxt = next(groups, None)
            # Read the next window while this one is computed (overlaps zarr/TIFF decoding with the network).
            fut = reader.submit(read_slab, job, nxt[0], nxt[1]) if nxt else None
            try:
                pred = denoise_slab(job, slab, block)
            except _Stopped:
                break
            del slab
            if job.writes_runs:
                writes.append(writer.submit(write_run_and_fill, job, span, todo, block, pred))
            else:
                for pos, region, data in slab_chunks(job, span, todo, block, pred):
                    writes.append(writer.submit(write_and_fill, job, pos, region, data, block))
            del pred
            finished = 0
            # A run write holds a shard's samples, which the plan sized like several chunks: one waits at most.
            limit = 1 if job.writes_runs else MAX_PENDING_WRITES
            while writes and (writes[0].done() or len(writes) > limit):
                finished += writes.popleft().result()
            if finished:
                done += finished
                yield VolumeProgress(done, total, n_skipped, time.perf_counter() - t0, job.dest, job.core)
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        error = None
        while writes:
            try:
                done += writes.popleft().result()
            except BaseException as exc:  # keep draining; the first error is raised below
                error = error or exc
        writer.shutdown(wait=True)
        if job.pyramid is not None:
            catch_up.result()
        if error is not None:
            raise error
    # A stop leaves work undone, so done < total; an error has been raised above.
    return VolumeProgress(done, total, n_skipped, time.perf_counter() - t0, job.dest, job.core)
