"""The chunks of one volume as tasks on ``dask.distributed``: a local cluster (``workers=N``) or any scheduler.

:func:`cluster_executor` plugs into :func:`n2x.inference.volume.iter_denoise_volume` (``executor=``): everything is
planned, checked and created on the client exactly as for a run in this process (output, metadata, resume records),
then each work unit (a run of samples times one spatial block, see :meth:`ChunkJob.groups`) becomes one task that
runs :func:`n2x.inference.chunks.process_group` on a worker: the worker opens the input file itself and reads the
window with its halo, denoises it, writes the cropped chunks into the output zarr and records them (an ``O_EXCL``
marker file after zarr's atomic chunk write, safe with many writers). What crosses the scheduler is small: the task
description (paths, geometry: a few hundred bytes), the model once per worker (scattered with ``broadcast``; each
worker loads it once, :func:`n2x.batch.distributed.worker_model`), and the recorded chunk indices coming back.

Pyramid levels (:mod:`n2x.io.pyramid`): the client tracks the recorded chunks and submits one downsampling task
per pyramid block as soon as the blocks below it are recorded, so a partial output can already be browsed.

Faults. A worker that dies has its tasks rescheduled by dask (``retries`` more for a task that raised); a chunk
written twice is written with the same values. A killed client leaves the records: the same call again resumes. At
most :data:`IN_FLIGHT_PER_THREAD` tasks per worker thread are queued at a time, so a volume of millions of chunks
does not flood the scheduler, and a stop request (``should_stop``) takes effect quickly.
"""
from __future__ import annotations

import copy
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Generator

from ..errors import OptionError
from ..inference.chunk_writes import write_pyramid_block
from ..inference.chunks import (ChunkExecutor, ChunkJob, VolumeProgress, count_skipped, pending_groups,
                                process_group)
from ..io import ome_zarr
from ..io.images import open_image
from ..io.pyramid import PyramidGrid
from ..device import usable_cpu_count
from .distributed import check_workers, connect, prepare_worker, ship_model, worker_device, worker_model

#: tasks queued per worker thread (enough to keep every worker busy between two client round trips)
IN_FLIGHT_PER_THREAD = 2
#: retries of a task that raised (a worker that died does not count: dask reschedules its tasks itself)
TASK_RETRIES = 2

#: jobs opened on this worker process (input, output arrays, model), by job id
_WORKER_JOBS: dict[str, ChunkJob] = {}
_JOBS_LOCK = threading.Lock()


def check_cluster_source(source: Any) -> None:
    """:class:`OptionError` unless ``source`` is a file the workers can open themselves (a path or an opened file)."""
    if not (isinstance(source, (str, os.PathLike)) or isinstance(getattr(source, "path", None), Path)):
        raise OptionError("denoising on a dask cluster reads the input on the workers: give it as a file path "
                          "(TIFF, zarr, OME-Zarr), not as an array in memory",
                          hint="save the image to a file, or leave {scheduler} and {workers} unset")


def volume_spec(job: ChunkJob, device: str, torch_threads: int | None, weights_sha256: str) -> dict[str, Any]:
    """What a worker needs to rebuild ``job``, as plain values (no data): input path and level, axes, output path,
    chunk grid, tile, halo, batch, pyramid, device and torch threads."""
    check_cluster_source(job.source.get("path"))
    grid = job.pyramid.grid if job.pyramid is not None else None
    return {"id": uuid.uuid4().hex, "source": dict(job.source), "axes": job.layout.axes, "dest": str(job.dest),
            "out_axes": job.out_axes, "chunk": list(job.chunk), "core": list(job.core), "halo": job.halo,
            "batch": job.batch, "run": job.run, "device": device, "torch_threads": torch_threads,
            "weights_sha256": weights_sha256,
            "pyramid": None if grid is None else {"spatial": grid.spatial, "shape": list(grid.shapes[0]),
                                                  "chunks": list(grid.chunks),
                                                  "factors": [list(f) for f in grid.factors]}}


def _pyramid_grid(spec: dict[str, Any]) -> PyramidGrid | None:
    p = spec["pyramid"]
    return None if p is None else PyramidGrid(spec["out_axes"], p["spatial"], p["shape"], p["chunks"], p["factors"])


def worker_job(spec: dict[str, Any], blob: Any) -> ChunkJob:
    """The job of ``spec`` on this worker, opened once per worker process: the shipped model, the input opened
    lazily from its path, the output arrays of every level."""
    with _JOBS_LOCK:
        job = _WORKER_JOBS.get(spec["id"])
        if job is not None:
            return job
        worker = prepare_worker(spec["torch_threads"])
        model = worker_model(blob, worker_device(spec["device"], worker.name))
        if model.weights_hash() != spec["weights_sha256"]:
            raise RuntimeError("the model loaded on the worker is not the client's (weights differ)")
        info = open_image(spec["source"]["path"], level=spec["source"]["level"])
        layout = model.layout_for(tuple(info.data.shape), spec["axes"])
        dest = Path(spec["dest"])
        grid = _pyramid_grid(spec)
        levels = [ome_zarr.open_array(dest, k) for k in range(grid.n_levels if grid is not None else 1)]
        job = ChunkJob(model=model, data=info.data, layout=layout, dest=dest, target=levels[0],
                       out_axes=spec["out_axes"], chunk=tuple(spec["chunk"]), core=tuple(spec["core"]),
                       halo=spec["halo"], batch=spec["batch"], run=spec["run"], chunk_log=ome_zarr.ChunkLog(dest),
                       levels=levels, source=spec["source"])
        _WORKER_JOBS.clear()  # one job at a time per worker: an earlier job's arrays are let go
        _WORKER_JOBS[spec["id"]] = job
        return job


def chunk_group_task(spec: dict[str, Any], blob: Any, span: list[int], block: tuple[int, ...],
                     todo: list[int]) -> list[tuple[int, ...]]:
    """A dask task: one work unit of the volume of ``spec`` (see :func:`process_group`); returns the recorded
    chunk indices."""
    return process_group(worker_job(spec, blob), span, block, todo)


def pyramid_block_task(spec: dict[str, Any], blob: Any, level: int, block: tuple[int, ...]) -> tuple[int, tuple]:
    """A dask task: block ``block`` of pyramid ``level``, computed from the recorded level below; returns its id."""
    job = worker_job(spec, blob)
    grid = _pyramid_grid(spec)
    assert grid is not None
    write_pyramid_block(job.dest, grid, job.levels, level, block)
    return level, tuple(block)


def shippable_model(model: Any, tmpdir: Path) -> Path:
    """A model file holding ``model``: its own file, or a copy saved in ``tmpdir`` for a model never saved (the
    workers check the weights' hash, so an edited, unsaved model cannot pass for its file)."""
    if model.path is not None and Path(model.path).is_file():
        return Path(model.path)
    return copy.copy(model).save(tmpdir / "model.n2x")


def cluster_executor(client: Any, model: Any, *, device: str = "auto",
                     torch_threads: int | None = None) -> ChunkExecutor:
    """An ``executor`` for :func:`n2x.inference.volume.iter_denoise_volume` that runs the chunks on ``client``.

    ``device``: on each worker (``auto``: its own GPU where there are several); ``torch_threads``: per worker
    (None: decided on each worker from its cores).
    """
    def run(job: ChunkJob, skipped: set[str]) -> Generator[VolumeProgress, None, VolumeProgress]:
        with tempfile.TemporaryDirectory(prefix="n2x-ship-") as tmp:
            blob = ship_model(client, shippable_model(model, Path(tmp)))
        spec = volume_spec(job, device, torch_threads, model.weights_hash())
        return (yield from _run_on_cluster(client, job, skipped, spec, blob))

    return run


def _run_on_cluster(client: Any, job: ChunkJob, skipped: set[str], spec: dict[str, Any],
                    blob: Any) -> Generator[VolumeProgress, None, VolumeProgress]:
    """Submit the work units not in ``skipped`` (a bounded number at a time) and the pyramid blocks as they become
    computable; yield :class:`VolumeProgress` as chunks are recorded."""
    from distributed import as_completed

    t0 = time.perf_counter()
    n_skipped = count_skipped(job, skipped)
    done = n_skipped
    yield VolumeProgress(done, job.total, n_skipped, 0.0, job.dest, job.core)
    threads = sum(w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values()) or 1
    window = IN_FLIGHT_PER_THREAD * threads
    groups = pending_groups(job, skipped)
    tracker = job.pyramid
    ac = as_completed(loop=client.loop)
    in_flight: dict[Any, str] = {}
    tag = spec["id"][:8]
    counter = iter(range(1 << 62))

    def submit_group() -> bool:
        nxt = next(groups, None)
        if nxt is None:
            return False
        span, block, todo = nxt
        fut = client.submit(chunk_group_task, spec, blob, span, block, todo, pure=False, retries=TASK_RETRIES,
                            key=f"n2x-chunk-{tag}-{next(counter)}")
        in_flight[fut] = "chunk"
        ac.add(fut)
        return True

    def submit_pyramid(ready: list[tuple[int, tuple[int, ...]]]) -> None:
        for level, block in ready:
            fut = client.submit(pyramid_block_task, spec, blob, level, block, pure=False, retries=TASK_RETRIES,
                                priority=1, key=f"n2x-level{level}-{tag}-{next(counter)}")
            in_flight[fut] = "pyramid"
            ac.add(fut)

    try:
        if tracker is not None:
            submit_pyramid(tracker.pending())  # blocks a killed run left undone
        while sum(kind == "chunk" for kind in in_flight.values()) < window and submit_group():
            pass
        for fut in ac:
            kind = in_flight.pop(fut)
            result = fut.result()  # a task that failed TASK_RETRIES times: the run fails with its error
            if kind == "chunk":
                done += len(result)
                if tracker is not None:
                    for index in result:
                        submit_pyramid(tracker.recorded(0, index))
                yield VolumeProgress(done, job.total, n_skipped, time.perf_counter() - t0, job.dest, job.core)
                if job.should_stop is not None and job.should_stop():
                    break
                submit_group()
            elif tracker is not None:
                submit_pyramid(tracker.recorded(*result))
    finally:
        # Stopped, failed or closed: the tasks in flight are dropped, as a local run drops the chunks it computes
        # (a task already running may still finish and record its chunks: harmless, a rerun skips them).
        if in_flight:
            client.cancel(list(in_flight))
    return VolumeProgress(done, job.total, n_skipped, time.perf_counter() - t0, job.dest, job.core)


def connect_for_volume(scheduler: str | None, workers: int | None,
                       client: Any = None) -> tuple[Any, Callable[[], None], int | None]:
    """``(client, close, torch_threads)`` for a volume run: the given ``client``, one of the scheduler at
    ``scheduler``, or a new local cluster of ``workers`` processes of one task thread each. ``close()`` ends what
    this call started."""
    if client is not None:
        return client, lambda: None, None
    check_workers(scheduler, workers)
    n = int(workers or 1)
    cl, cluster = connect(scheduler, n)

    def close() -> None:
        cl.close()
        if cluster is not None:
            cluster.close()

    return cl, close, (None if scheduler else max(1, usable_cpu_count() // n))
