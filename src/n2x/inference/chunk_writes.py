"""Writing a volume's results: its chunks (or a shard's run of samples at once), their records, and the pyramid
blocks they complete.

A chunk is recorded (:class:`n2x.io.ome_zarr.ChunkLog`) only after zarr has written it, so a killed run never
records a chunk it lacks. A sharded output (zarr format 3) is written by whole shards where a work unit holds one:
writing part of a shard reads, merges and rewrites the whole file.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..io import ome_zarr
from ..io.pyramid import PyramidGrid, PyramidTracker

if TYPE_CHECKING:
    from .chunks import ChunkJob


def write_chunk(job: ChunkJob, pos: dict[str, int], region: Sequence[slice], block: np.ndarray, key: str) -> None:
    """Write ``block`` ``(C, *spatial)`` of the sample at ``pos`` (axis letter -> index) into the target, then
    record it: the record never exists without the data."""
    axes, spatial = job.out_axes, job.layout.spatial
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
    job.target[tuple(index)] = np.transpose(data, [src.index(a) for a in kept])
    if job.chunk_log is not None:
        job.chunk_log.record(key)


def write_and_fill(job: ChunkJob, pos: dict[str, int], region: Sequence[slice], block: np.ndarray,
                   spatial_block: tuple[int, ...]) -> int:
    """The local writer's unit: write and record a level-0 chunk, then the pyramid blocks it completes; returns 1,
    the chunks written."""
    write_chunk(job, pos, region, block, job.chunk_key(pos, spatial_block))
    if job.pyramid is not None:
        fill_pyramid(job.dest, job.pyramid, job.levels, job.pyramid.recorded(0, job.chunk_index(pos, spatial_block)))
    return 1


def write_run(job: ChunkJob, span: list[int], todo: list[int], spatial_block: tuple[int, ...],
              pred: np.ndarray) -> list[tuple[int, ...]]:
    """Write the prediction ``pred`` ``(len(span), C, *spatial)`` of the samples ``span`` (consecutive on the last
    sample axis) in one assignment, then record the chunks of ``todo``; returns their indices (over
    ``job.out_axes``). The writer of a sharded output: a shard's samples go into its file at once."""
    lay, axes = job.layout, job.out_axes
    first, last_pos = lay.sample_index(span[0]), lay.sample_index(span[-1])
    run_axis = lay.sample_axes[-1] if lay.sample_axes else None
    starts, _, _, _ = job.window(spatial_block)
    index: list[Any] = []
    for a in axes:
        if a == run_axis:
            index.append(slice(first[a], last_pos[a] + 1))
        elif a in first:
            index.append(first[a])
        elif a == "C":
            index.append(slice(None))
        else:
            i = lay.spatial.index(a)
            index.append(slice(starts[i], starts[i] + pred.shape[2 + i]))
    kept = [a for a in axes if a == run_axis or a not in first]
    data = pred if run_axis else pred[0]
    if "C" not in axes:
        data = data[:, 0] if run_axis else data[0]
    src = ([run_axis] if run_axis else []) + (["C"] if "C" in axes else []) + list(lay.spatial)
    job.target[tuple(index)] = np.transpose(data, [src.index(a) for a in kept])
    written = []
    for s in todo:
        pos = lay.sample_index(s)
        if job.chunk_log is not None:
            job.chunk_log.record(job.chunk_key(pos, spatial_block))
        written.append(job.chunk_index(pos, spatial_block))
    return written


def write_run_and_fill(job: ChunkJob, span: list[int], todo: list[int], spatial_block: tuple[int, ...],
                       pred: np.ndarray) -> int:
    """The local writer's unit for a sharded output: :func:`write_run`, then the pyramid blocks its chunks
    complete; returns the chunks written."""
    written = write_run(job, span, todo, spatial_block, pred)
    if job.pyramid is not None:
        for index in written:
            fill_pyramid(job.dest, job.pyramid, job.levels, job.pyramid.recorded(0, index))
    return len(written)


def write_pyramid_block(dest: Path, grid: PyramidGrid, levels: Sequence[Any], level: int,
                        block: tuple[int, ...]) -> None:
    """Compute block ``block`` of pyramid ``level`` from the level below (already recorded), write it into
    ``levels[level]`` and record it."""
    levels[level][grid.region(level, block)] = grid.compute_block(levels, level, block)
    ome_zarr.ChunkLog(dest, level).record(PyramidTracker.key(block))


def fill_pyramid(dest: Path, tracker: PyramidTracker, levels: Sequence[Any],
                 ready: list[tuple[int, tuple[int, ...]]]) -> None:
    """Compute the ``ready`` pyramid blocks and, in turn, every block above them they complete."""
    todo = list(ready)
    while todo:
        level, block = todo.pop()
        write_pyramid_block(dest, tracker.grid, levels, level, block)
        todo += tracker.recorded(level, block)
