"""Planning a batch: for each input its output path and format, and whether to denoise, resume, skip or refuse it;
then the checks of the job as a whole, before anything is written.

The rules, one copy each, used by every front door:

- **naming**: ``<outdir>/<sub-path relative to the input's base folder>/<stem>.tif`` or ``<stem>.ome.zarr``
  (:func:`output_path`);
- **format**: OME-Zarr when the float32 result is larger than 256 MiB, TIFF otherwise (:func:`output_format`);
- **resume**: each existing output is judged by the fingerprint it carries itself
  (:func:`n2x.inference.outputs.existing_output`): this job's finished output is skipped, its unfinished OME-Zarr
  resumed, anything else refused unless ``overwrite``.
"""
from __future__ import annotations

import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..data.axes import input_axes
from ..errors import InputError, N2xError, OptionError
from ..inference.fingerprint import job_fingerprint
from ..inference.outputs import existing_output
from ..io import ome_zarr
from ..io.images import open_image
from ..io.paths import is_within
from ..model import Model
from .inputs import BatchInput, glob_base, output_stem
from .results import FileResult

FORMATS = ("auto", "tiff", "zarr")
#: float32 result size (bytes) above which ``fmt="auto"`` writes OME-Zarr instead of TIFF. A TIFF result is built in
#: memory before it is written; above this size chunked OME-Zarr keeps each worker's memory flat.
ZARR_THRESHOLD = 256 * 2**20
#: extra free space required beyond the estimate (bytes): metadata, chunk markers, temporary TIFF files
DISK_MARGIN = 64 * 2**20
#: what a plan's action becomes in the summary of a run: the work actions run, the others are reported as is
RUN_ACTIONS = ("denoise", "resume", "overwrite")


def output_format(nbytes: int, fmt: str = "auto", threshold: int = ZARR_THRESHOLD) -> str:
    """The one rule for where a result goes: ``"zarr"`` (OME-Zarr, written chunk by chunk) when ``fmt`` is
    ``"auto"`` and the float32 result has more than ``threshold`` bytes (default 256 MiB), else ``"tiff"`` (in
    memory, then a TIFF or a layer); ``fmt`` ``"tiff"``/``"zarr"`` forces it. ``nbytes``: bytes of the float32
    result (4 per pixel, channel and sample)."""
    if fmt not in FORMATS:
        raise OptionError(f"unknown output format {fmt!r}", hint="set {format} to one of " + ", ".join(FORMATS))
    if fmt != "auto":
        return fmt
    return "zarr" if nbytes > threshold else "tiff"


def output_path(outdir: str | os.PathLike, item: BatchInput, fmt: str) -> Path:
    """The output of ``item`` in ``outdir`` for the format ``fmt`` (``"tiff"`` or ``"zarr"``): its sub-path
    relative to its base folder, its name without image suffix, then ``.tif`` or ``.ome.zarr``."""
    suffix = ".ome.zarr" if fmt == "zarr" else ".tif"
    return Path(outdir) / item.relative.parent / (output_stem(item.path) + suffix)


@dataclass
class PlanItem:
    """One input and what will be done with it. ``action``: ``denoise``, ``resume``, ``overwrite``, ``skip`` or
    ``fail`` (then ``reason`` says why); ``nbytes``: estimated size of the float32 result in bytes;
    ``done_chunks``: chunks an earlier run finished (``resume``); ``axes``: the axes the input is read with."""

    index: int
    input: BatchInput
    output: Path
    format: str
    action: str
    reason: str | None = None
    hint: str | None = None
    nbytes: int = 0
    fingerprint: dict | None = None
    done_chunks: int = 0
    axes: str | None = None

    @property
    def file(self) -> str:
        return str(self.input.path)

    def result(self, status: str, seconds: float = 0.0, reason: str | None = None, **kw: Any) -> FileResult:
        hint = self.hint if reason == self.reason else None
        return FileResult(self.file, status, seconds, str(self.output), self.format, reason, hint=hint, **kw)

    def fail(self, error: N2xError | str) -> None:
        """Mark this input as failing, keeping the error's hint for the front door to word."""
        self.action = "fail"
        if isinstance(error, N2xError):
            self.reason, self.hint = error.message, error.hint
        else:
            self.reason, self.hint = error, None


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _as_input(item: BatchInput | str | os.PathLike) -> BatchInput:
    if isinstance(item, BatchInput):
        return item
    p = Path(item)
    return BatchInput(p, p.parent)


def plan_batch(model: Model, inputs: Sequence[BatchInput | str | os.PathLike], outdir: str | os.PathLike, *,
               fmt: str = "auto", overwrite: bool = False, axes: str | None = None, level: int = 0,
               ngff_version: str = "0.4", zarr_threshold: int = ZARR_THRESHOLD) -> list[PlanItem]:
    """Decide, for each input, its output path and format and whether to denoise, resume, skip it or why it fails.

    ``model``: the loaded model (it decides which inputs fit). ``inputs``: from :func:`expand_inputs`, or plain
    image paths (each output then goes straight into ``outdir``). ``axes`` overrides the files' axes; ``level``
    picks a resolution level. Opens every input lazily (metadata and a small content sample only) and reads the
    fingerprint of every existing output. Writes nothing.
    """
    output_format(0, fmt)  # an unknown format is an error of the call, before any file
    outdir = Path(outdir)
    plan: list[PlanItem] = []
    for index, inp in enumerate(map(_as_input, inputs)):
        item = PlanItem(index, inp, output_path(outdir, inp, "tiff"), "tiff", "denoise")
        plan.append(item)
        try:
            with _quiet_logger("tifffile"):  # its warnings about a damaged file repeat the reason given below
                info = open_image(inp.path, level=level)
            # The same rule as a single file: an input that does not name its axes is read with the model's
            info.axes, _ = input_axes(info.axes, info.data.shape, model.config.get("axes"), axes, info.axes_named)
            item.axes = info.axes
            layout = model.layout_for(tuple(info.data.shape), info.axes)
        except N2xError as exc:
            item.fail(exc)
            continue
        except Exception as exc:  # a reader's own error on a damaged file: the file fails, the batch goes on
            item.fail(f"cannot be read ({type(exc).__name__}: {exc})")
            continue
        item.nbytes = prod(layout.shape) * 4
        item.format = output_format(item.nbytes, fmt, zarr_threshold)
        item.output = output_path(outdir, inp, item.format)
        if item.format == "zarr":
            problem = ome_zarr.check_ngff_axes(layout.axes)
            if problem:
                item.fail(InputError(problem, hint="set {format} to tiff"))
                continue
        try:
            item.fingerprint = job_fingerprint(model, info.data, layout, info.path, level, model.halo,
                                               ngff_version if item.format == "zarr" else None)
        except Exception as exc:
            item.fail(f"cannot be read ({type(exc).__name__}: {exc})")
            continue
        found = existing_output(item.output, item.format, item.fingerprint)
        if found.state == "absent":
            continue
        if overwrite:
            item.action = "overwrite"
        elif found.state == "complete":
            item.action = "skip"
        elif found.state == "partial":
            item.action, item.done_chunks = "resume", found.done_chunks
        else:
            item.fail(found.refusal(item.fingerprint))
    return plan


def _existing_ancestor(path: Path) -> Path:
    p = path.resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _disk_usage(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it cannot be read)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def check_job(plan: Sequence[PlanItem], outdir: Path, raw_inputs: Sequence[str]) -> None:
    """Refuse, before anything is written, a job that cannot succeed as a whole; :class:`N2xError` says what to do.

    Checks: ``outdir`` is not inside an input folder (a rerun would take the outputs for inputs) nor inside a zarr
    input; no two inputs map to one output; no output is an input; ``outdir`` (or the folder it will be made in)
    is a writable folder; the free space there covers the float32 outputs still to write.
    """
    for text in raw_inputs:
        p = Path(text)
        folder = p if p.is_dir() else (glob_base(text) if not p.exists() and "**" in text else None)
        if folder is not None and is_within(outdir, folder):
            raise N2xError(f"the output folder {outdir} is inside the input folder {folder}; a later run would take "
                           "the outputs for inputs", hint="choose an output folder outside the inputs")
    by_output: dict[Path, PlanItem] = {}
    inputs = {i.input.path.resolve() for i in plan}
    for item in plan:
        key = item.output.resolve()
        if key in by_output:
            raise N2xError(f"{by_output[key].file} and {item.file} would both be written to {item.output}",
                           hint="rename one of them, or denoise them in separate runs into different output folders")
        by_output[key] = item
        if key in inputs or any(is_within(item.output, i) for i in inputs if i.is_dir()):
            raise N2xError(f"the output {item.output} would overwrite an input", hint="choose another output folder")
    if outdir.exists() and not outdir.is_dir():
        raise N2xError(f"{outdir} exists and is not a folder",
                       hint="give an output folder for several images (one image can go to a file)")
    anchor = _existing_ancestor(outdir)
    if not anchor.is_dir() or not os.access(anchor, os.W_OK | os.X_OK):
        raise N2xError(f"no permission to write in {anchor}", hint="choose an output folder you can write to")
    need = 0
    for item in plan:
        if item.action in ("denoise", "overwrite"):
            need += item.nbytes
        elif item.action == "resume":
            # What the earlier run wrote is on disk already.
            need += max(0, item.nbytes - _disk_usage(item.output))
    if need:
        free = shutil.disk_usage(anchor).free
        if free < need + DISK_MARGIN:
            raise N2xError(f"not enough free disk space in {anchor}: the outputs need about {need / 2**30:.2f} GiB "
                           f"(float32), {free / 2**30:.2f} GiB are free",
                           hint="free some space, choose another output folder, or denoise fewer files per run")
