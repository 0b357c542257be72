"""Denoising one planned file, wherever it runs (this process or a dask worker): never raises for the file's own
problems, which become a ``failed`` result with the reason, so that one bad file never ends a batch."""
from __future__ import annotations

import time
from typing import Any, Callable

from ..device import is_out_of_memory
from ..errors import N2xError
from ..inference.volume import iter_denoise_volume
from .plan import PlanItem
from .results import FileResult


def task_spec(item: PlanItem, options: dict[str, Any]) -> dict[str, Any]:
    """What a worker needs to denoise one planned file, as plain picklable values: the plan's index, input,
    output and format, and ``options`` (``axes``, ``level``, ``tile``, ``batch_size``, ``chunks``,
    ``ngff_version``, ``device``, ``pyramid_levels``, ``max_memory``)."""
    spec = {"index": item.index, "file": item.file, "output": str(item.output), "format": item.format,
            "overwrite": item.action == "overwrite", **options}
    if item.axes:  # as planned: the user's, the file's, or the model's for a file that names none
        spec["axes"] = item.axes
    return spec


def denoise_file(spec: dict[str, Any], model: Any,
                 report: Callable[[int, int, int], None] | None = None) -> FileResult:
    """Denoise one file as described by ``spec`` (see :func:`task_spec`) with the loaded ``model``.

    ``report(done, total, skipped)`` receives chunk progress. Any error becomes a ``failed`` result with its reason.
    An OME-Zarr output keeps the chunks written before an error, so a rerun resumes it; a TIFF output is written
    atomically at the end or not at all.
    """
    t0 = time.perf_counter()
    res = FileResult(spec["file"], "failed", 0.0, spec["output"], spec["format"])
    gen = None
    try:
        gen = iter_denoise_volume(model, spec["file"], spec["output"], spec.get("axes"), tile=spec.get("tile"),
                                  batch_size=spec.get("batch_size"), level=spec.get("level", 0),
                                  overwrite=spec["overwrite"], chunks=spec.get("chunks"),
                                  ngff_version=spec.get("ngff_version", "0.4"),
                                  pyramid_levels=spec.get("pyramid_levels"), max_memory=spec.get("max_memory"))
        last = None
        for pr in gen:
            last = pr
            if report is not None:
                report(pr.done, pr.total, pr.skipped)
        if last is None or last.done < last.total:
            raise N2xError("the run ended before all chunks were written")
        res.chunks, res.resumed_chunks = last.total, last.skipped
        if last.skipped >= last.total:
            res.status, res.reason = "skipped", "finished by an earlier run"
        else:
            res.status = "ok"
            if last.skipped:
                res.reason = f"resumed: {last.skipped} of {last.total} chunks were written by an earlier run"
    except N2xError as exc:
        res.reason, res.hint = exc.message, exc.hint
    except Exception as exc:  # damaged data found while reading, a full disk...: this file fails, the rest go on
        if is_out_of_memory(exc):
            res.reason, res.hint = "out of memory", "set {format} to zarr, use a smaller {tile}, or fewer {workers}"
        else:
            res.reason = f"{type(exc).__name__}: {exc}"
    finally:
        if gen is not None:
            gen.close()  # an interrupted run still writes and records the chunks already computed
    res.seconds = time.perf_counter() - t0
    return res
