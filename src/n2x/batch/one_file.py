"""Denoising one planned file, wherever it runs (this process, a dask worker, or this client driving the file's
chunks on a cluster): never raises for the file's own problems, which become a ``failed`` result with the reason, so
that one bad file never ends a batch."""
from __future__ import annotations

import time
from typing import Any, Callable, Generator

from ..device import is_out_of_memory
from ..errors import N2xError
from ..inference.chunks import ChunkExecutor, VolumeProgress
from ..inference.volume import iter_denoise_volume
from .plan import PlanItem
from .results import FileResult


def task_spec(item: PlanItem, options: dict[str, Any]) -> dict[str, Any]:
    """What a worker needs to denoise one planned file, as plain picklable values: the plan's index, input,
    output and format, and ``options`` (``axes``, ``level``, ``tile``, ``batch_size``, ``chunks``,
    ``ngff_version``, ``device``, ``pyramid_levels``, ``max_memory``, ``shards``)."""
    spec = {"index": item.index, "file": item.file, "output": str(item.output), "format": item.format,
            "overwrite": item.action == "overwrite", **options}
    if item.axes:  # as planned: the user's, the file's, or the model's for a file that names none
        spec["axes"] = item.axes
    return spec


def open_file_run(spec: dict[str, Any], model: Any,
                  executor: ChunkExecutor | None = None) -> Generator[VolumeProgress, None, Any]:
    """The volume run of the file of ``spec`` (output checked or created, its lock taken), chunks run by
    ``executor`` (default: in this process); see :func:`n2x.inference.volume.iter_denoise_volume`."""
    return iter_denoise_volume(model, spec["file"], spec["output"], spec.get("axes"), tile=spec.get("tile"),
                               batch_size=spec.get("batch_size"), level=spec.get("level", 0),
                               overwrite=spec["overwrite"], chunks=spec.get("chunks"),
                               ngff_version=spec.get("ngff_version"),
                               pyramid_levels=spec.get("pyramid_levels"), max_memory=spec.get("max_memory"),
                               shards=bool(spec.get("shards")) and spec["format"] == "zarr", executor=executor)


def new_result(spec: dict[str, Any]) -> FileResult:
    """The result of the file of ``spec`` before it has run: ``failed`` until :func:`finish_result` says otherwise."""
    return FileResult(spec["file"], "failed", 0.0, spec["output"], spec["format"])


def finish_result(res: FileResult, last: VolumeProgress | None) -> None:
    """Fill ``res`` from the last report of a run that ended: ``ok`` (noting resumed chunks) or ``skipped`` (all
    chunks were written by an earlier run); :class:`N2xError` when the run ended early."""
    if last is None or last.done < last.total:
        raise N2xError("the run ended before all chunks were written")
    res.chunks, res.resumed_chunks = last.total, last.skipped
    if last.skipped >= last.total:
        res.status, res.reason = "skipped", "finished by an earlier run"
    else:
        res.status = "ok"
        if last.skipped:
            res.reason = f"resumed: {last.skipped} of {last.total} chunks were written by an earlier run"


def fail_result(res: FileResult, exc: Exception) -> None:
    """``res`` failed because of ``exc``: an :class:`N2xError`'s message and hint, out of memory with what to
    change, or the error's type and text (damaged data found while reading, a full disk...)."""
    res.status = "failed"
    if isinstance(exc, N2xError):
        res.reason, res.hint = exc.message, exc.hint
    elif is_out_of_memory(exc):
        res.reason, res.hint = "out of memory", "set {format} to zarr, use a smaller {tile}, or fewer {workers}"
    else:
        res.reason = f"{type(exc).__name__}: {exc}"


def denoise_file(spec: dict[str, Any], model: Any,
                 report: Callable[[int, int, int], None] | None = None) -> FileResult:
    """Denoise one file as described by ``spec`` (see :func:`task_spec`) with the loaded ``model``.

    ``report(done, total, skipped)`` receives chunk progress. Any error becomes a ``failed`` result with its reason.
    An OME-Zarr output keeps the chunks written before an error, so a rerun resumes it; a TIFF output is written
    atomically at the end or not at all.
    """
    t0 = time.perf_counter()
    res = new_result(spec)
    gen = None
    try:
        gen = open_file_run(spec, model)
        last = None
        for pr in gen:
            last = pr
            if report is not None:
                report(pr.done, pr.total, pr.skipped)
        finish_result(res, last)
    except Exception as exc:  # this file fails, the rest go on
        fail_result(res, exc)
    finally:
        if gen is not None:
            gen.close()  # an interrupted run still writes and records the chunks already computed
    res.seconds = time.perf_counter() - t0
    return res
