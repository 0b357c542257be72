"""Batch denoising of lab data folders: many files, one model, on this machine or a dask cluster, resumable.

One call, :func:`run_batch`, does the whole job (``n2x denoise MODEL INPUT... -o OUTDIR``, :func:`n2x.denoise_files`):

1. **Expand** the inputs (:func:`expand_inputs`, :mod:`.inputs`): any mix of files, glob patterns and folders
   (``recursive`` to go into sub-folders); TIFF / OME-TIFF files and zarr / OME-Zarr folders. A ``.zarr`` folder (or
   any folder holding zarr metadata) is one input and is never descended into.
2. **Plan** (:func:`plan_batch`, :mod:`.plan`): each input is opened lazily and checked against the model (axes,
   channels); its output keeps the input's path relative to the folder (or the glob's fixed part) it was found
   under, as ``<stem>.tif`` or ``<stem>.ome.zarr`` under OUTDIR, in the format of :func:`output_format` (OME-Zarr
   above 256 MiB of float32 result, unless ``fmt`` says). An input that cannot be used fails here, with its reason,
   and the others go on.
3. **Check up front** (:func:`check_job`; raised as :class:`~n2x.errors.N2xError` before anything is written): a
   missing model, an empty input set, OUTDIR inside an input folder, two inputs mapping to one output, no write
   permission, not enough free disk space for the outputs (estimated as float32 of the input's shape).
4. **Run** each file through :func:`n2x.inference.volume.iter_denoise_volume`: in this process one after the other
   (:mod:`.local`, one worker), or on ``dask.distributed`` (:mod:`.cluster_batch`, workers: :mod:`.distributed`), a
   local cluster sized to the machine or any existing scheduler. There, a file with an OME-Zarr output is split into
   its chunk groups, each a task, queued with the other files' tasks so that every worker stays busy; a TIFF output
   (small by the format rule) is one task.
5. **Summarise**: a :class:`BatchSummary` (file, status ``ok``/``skipped``/``failed``, seconds, output, reason),
   also written atomically as ``OUTDIR/n2x-summary.json`` after every finished file (:mod:`.journal`).

Resuming. A rerun of the same command skips finished outputs and resumes unfinished ones, judging each output by
the job fingerprint it carries itself (model weights, input path, shape, dtype, axes, level, a content sample, halo):
an OME-Zarr in its group attributes (with a completeness marker: an unfinished one resumes chunk by chunk), a TIFF
in a private tag (a TIFF is renamed into place only when complete). An output of another job, or a file that is
not an n2x result, is refused unless ``overwrite``. The summary file is a report only; deleting it loses nothing.
"""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from ..device import usable_cpu_count
from ..errors import N2xError, OptionError
from ..inference.memory_budget import parse_memory
from ..io.paths import is_tiff_name
from ..model import Model
from .cluster_batch import run_distributed, splits_into_chunks
from .distributed import check_workers, connect, default_workers
from .inputs import BatchInput, expand_inputs, input_paths, is_batch_job, no_images_error, output_stem
from .journal import SUMMARY_NAME, Journal
from .local import run_here
from .plan import (FORMATS, RUN_ACTIONS, ZARR_THRESHOLD, PlanItem, check_job, output_format, output_path,
                   plan_batch)
from .results import BatchEvent, BatchSummary, FileResult

__all__ = ["run_batch", "BatchEvent", "BatchSummary", "FileResult", "PlanItem", "BatchInput", "expand_inputs",
           "input_paths", "is_batch_job", "output_format", "output_path", "output_stem", "plan_batch", "check_job",
           "default_workers", "FORMATS", "ZARR_THRESHOLD", "SUMMARY_NAME"]

INTERRUPTED = "interrupted before it finished; run the same job again to resume"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _memory_option(max_memory: float | str | None) -> float | None:
    try:
        return parse_memory(max_memory)
    except ValueError:
        raise OptionError(f"max_memory {max_memory!r} is not a size", hint="give {max_memory} as e.g. 1.5G or 800M") \
            from None


def _worker_layout(scheduler: str | None, workers: int | None, n_units: int) -> tuple[int, int | None]:
    """``(local worker processes, torch threads per worker)``: 0 workers for an existing cluster (its own), the
    count asked for (at most one per unit of work), or sized to the machine."""
    if scheduler:
        return 0, None
    if workers is not None:
        n = min(workers, max(1, n_units))
        return n, max(1, usable_cpu_count() // n)
    return default_workers(max(1, n_units))


def _work_units(todo: Sequence[PlanItem], chunk_tasks: bool) -> int:
    """Units of work a cluster could share: one per whole file, and as many as any worker count for a file that is
    split into chunks (its chunk count is only known once its output is opened)."""
    if chunk_tasks and any(splits_into_chunks(i) for i in todo):
        return 1 << 20
    return len(todo)


def _dry_run_results(plan: Sequence[PlanItem]) -> list[FileResult]:
    """A dry run's report: each file's planned action as its status."""
    out = []
    for item in plan:
        reason = item.reason
        if item.action == "resume":
            reason = f"{item.done_chunks} chunk(s) written by an earlier run"
        elif item.action == "skip":
            reason = "finished by an earlier run"
        out.append(item.result(item.action, reason=reason))
    return out


def run_batch(model: str | os.PathLike, inputs: Sequence[str | os.PathLike], outdir: str | os.PathLike, *,
              recursive: bool = False, fmt: str = "auto", overwrite: bool = False, dry_run: bool = False,
              scheduler: str | None = None, workers: int | None = None, axes: str | None = None,
              level: int = 0, tile: Sequence[int] | int | None = None, batch_size: int | None = None,
              chunks: Sequence[int] | int | None = None, ngff_version: str | None = None, device: str = "auto",
              zarr_threshold: int = ZARR_THRESHOLD, max_memory: float | str | None = None,
              pyramid_levels: int | None = None, shards: bool = False, chunk_tasks: bool = True,
              on_event: Callable[[BatchEvent], None] | None = None) -> BatchSummary:
    """Denoise every image that ``inputs`` name into ``outdir`` with the model file ``model``; see the module doc.

    ``fmt``: ``auto`` (OME-Zarr for results above ``zarr_threshold`` bytes, TIFF otherwise), ``tiff`` or ``zarr``.
    ``scheduler``: address of an existing dask scheduler (e.g. ``tcp://head:8786``); without it a local cluster of
    ``workers`` processes (default sized to the machine: :func:`default_workers`), and one worker runs in this
    process without a cluster. ``chunk_tasks``: on a cluster, split each file with an OME-Zarr output into tasks of
    its chunk groups, queued with the other files' tasks (default; False: one task per file, the scheduling before,
    kept for comparison). ``tile``, ``batch_size``, ``chunks``, ``level``, ``ngff_version``, ``axes`` and
    ``device``, ``max_memory`` (bytes per worker, or ``"1.5G"``) and ``pyramid_levels`` are passed to
    :func:`n2x.inference.volume.iter_denoise_volume` for every file; ``shards`` to every OME-Zarr output (NGFF 0.5,
    the default ``ngff_version`` with it; otherwise 0.4). ``on_event`` receives
    :class:`BatchEvent` progress. Returns the :class:`BatchSummary`; problems of single files are in it, problems of
    the whole job raise :class:`~n2x.errors.N2xError` before anything is written. ``KeyboardInterrupt`` ends the run
    after recording what finished (OME-Zarr outputs in progress keep their written chunks for a rerun).
    """
    t0 = time.perf_counter()
    started = _now()
    emit = on_event or (lambda ev: None)
    model_path = Path(model)
    output_format(0, fmt)  # an unknown format fails before anything is read
    ngff_version = ngff_version or ("0.5" if shards else "0.4")
    if shards and ngff_version != "0.5":
        raise OptionError("shards exist only in zarr format 3: an OME-Zarr output with NGFF 0.5",
                          hint="set {ngff_version} to 0.5, or leave {shards} off")
    check_workers(scheduler, workers)
    outdir = Path(outdir)
    if is_tiff_name(outdir) and not outdir.is_dir():
        raise N2xError(f"{outdir} names a file but several images are to be denoised", hint="give an output folder")
    # The model is loaded here for planning (it decides which inputs fit); workers load the shipped bytes.
    net = Model.load(model_path, device="cpu")
    raw = [os.fspath(i) for i in inputs]
    found = expand_inputs(raw, recursive)
    if not found:
        raise no_images_error(recursive)
    plan = plan_batch(net, found, outdir, fmt=fmt, overwrite=overwrite, axes=axes, level=level,
                      ngff_version=ngff_version, zarr_threshold=zarr_threshold)
    check_job(plan, outdir, raw)
    todo = [i for i in plan if i.action in RUN_ACTIONS]
    n_workers, torch_threads = _worker_layout(scheduler, workers, _work_units(todo, chunk_tasks))
    summary = BatchSummary([], outdir, str(model_path), net.file_hash(), started, workers=max(1, n_workers),
                           scheduler=scheduler, dry_run=dry_run)
    if dry_run:
        summary.results = _dry_run_results(plan)
        summary.finished, summary.seconds = _now(), time.perf_counter() - t0
        return summary

    journal = Journal(summary, plan)
    options = {"axes": axes, "level": level, "tile": tile, "batch_size": batch_size, "chunks": chunks,
               "ngff_version": ngff_version, "device": device, "pyramid_levels": pyramid_levels,
               "max_memory": _memory_option(max_memory), "shards": shards}
    client = cluster = None
    if todo and (scheduler or n_workers > 1):
        # Connect (or start the local cluster) before anything is written: a wrong address is a job error.
        client, cluster = connect(scheduler, n_workers)
        summary.workers = len(client.scheduler_info().get("workers", {})) or max(1, n_workers)
    try:
        emit(BatchEvent("start", total=len(plan), workers=summary.workers))
        for item in plan:
            if item.action not in RUN_ACTIONS:
                res = item.result("skipped" if item.action == "skip" else "failed",
                                  reason="finished by an earlier run" if item.action == "skip" else item.reason)
                journal.record(item, res)
                emit(BatchEvent("done", item.index, item.file, result=res))
        if todo:
            outdir.mkdir(parents=True, exist_ok=True)
            if client is not None:
                run_distributed(client, todo, model_path, options, torch_threads, journal, emit, model=net,
                                chunk_tasks=chunk_tasks)
            else:
                net.to(device)
                run_here(todo, net, options, journal, emit)
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        for item in plan:
            journal.done.setdefault(item.index, item.result("failed", reason=INTERRUPTED))
        summary.results = [journal.done[i.index] for i in plan]
        summary.finished, summary.seconds = _now(), time.perf_counter() - t0
        journal.write()
    return summary
