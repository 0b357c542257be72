"""Batch denoising of lab data folders: many files, one model, on this machine or a dask cluster, resumable.

One call, :func:`run_batch`, does the whole job behind ``n2x denoise MODEL INPUT... -o OUTDIR``:

1. **Expand** the inputs (:func:`expand_inputs`): any mix of files, glob patterns and folders (``recursive`` to go
   into sub-folders); TIFF / OME-TIFF files and zarr / OME-Zarr folders. A ``.zarr`` folder (or any folder holding
   zarr metadata) is one input and is never descended into.
2. **Plan** (:func:`plan_batch`): each input is opened lazily and checked against the model (axes, channels); its
   output keeps the input's path relative to the folder (or the glob's fixed part) it was found under, as
   ``<stem>.tif`` or ``<stem>.ome.zarr`` under OUTDIR. The format is chosen per input: OME-Zarr when the float32
   result is larger than ``zarr_threshold`` bytes (default 256 MiB), TIFF otherwise, unless ``fmt`` says.
   An input that cannot be used fails here, with its reason, and the others go on.
3. **Check up front** (raised as :class:`~n2x.errors.N2xError` before anything is written): a missing model, an
   empty input set, OUTDIR inside an input folder, two inputs mapping to one output, no write permission, not enough
   free disk space for the outputs (estimated as float32 of the input's shape).
4. **Run** each file as one unit of work through :func:`n2x.iter_denoise_volume`, in this process (one worker) or as
   one ``dask.distributed`` task per file on a local cluster sized to the machine or on any existing scheduler.
5. **Summarise**: a :class:`BatchSummary` (file, status ``ok``/``skipped``/``failed``, seconds, output, reason),
   also written atomically as ``OUTDIR/n2x-summary.json`` after every finished file.

Resuming. A rerun of the same command skips finished outputs and resumes unfinished ones:

- OME-Zarr outputs carry the volume engine's job fingerprint and completeness marker: a complete output of the same
  job is skipped, an unfinished one is resumed chunk by chunk, one of another job is refused (``overwrite`` redoes).
- TIFF outputs are written atomically (a temporary file renamed into place), so one that exists is complete. Whose
  it is comes from the summary file's ``outputs`` ledger, which holds the same fingerprint (model weights,
  input path, shape, dtype, axes and a content sample) and the output's size and modification time: a TIFF that
  matches is skipped, any other existing file is refused unless ``overwrite``.

Model shipping on a cluster: the model file's bytes (a few MB) are scattered once to every worker. A worker that
sees the same file at the same path with the same SHA-256 (a shared file system) loads it from there; otherwise it
writes the bytes into ``<tempdir>/n2x-model-cache/<sha256>.n2x`` and loads that. Cluster nodes therefore need no
access to the client's files for the model, but they do need to read the inputs and write OUTDIR at the same paths
(a shared file system, as on any HPC cluster).
"""
from __future__ import annotations

import glob as _glob
import json
import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from math import prod
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ._version import __version__
from .errors import InputError, N2xError

log = logging.getLogger("n2x")

SUMMARY_NAME = "n2x-summary.json"
FORMATS = ("auto", "tiff", "zarr")
#: float32 result size (bytes) above which ``fmt="auto"`` writes OME-Zarr instead of TIFF. A TIFF result is built in
#: memory before it is written; above this size chunked OME-Zarr keeps each worker's memory flat.
ZARR_THRESHOLD = 256 * 2**20
#: extra free space required beyond the estimate (bytes): metadata, chunk markers, temporary TIFF files
DISK_MARGIN = 64 * 2**20
#: each local worker gets this much RAM at least when the worker count is chosen automatically (bytes)
WORKER_MEMORY = 2 * 2**30
#: seconds between two progress messages of one file sent from a cluster worker (keeps the scheduler quiet)
PROGRESS_INTERVAL = 0.25

_TIFF_SUFFIXES = (".tif", ".tiff")
_STEM_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr")


# -- inputs ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchInput:
    """One input image: ``path`` (a TIFF file or a zarr folder) and ``base``, the folder its output path is made
    relative to (the folder it was found in, the fixed part of a glob, or the file's own folder)."""

    path: Path
    base: Path
    from_folder: bool = False

    @property
    def relative(self) -> Path:
        try:
            return self.path.relative_to(self.base)
        except ValueError:
            return Path(self.path.name)


def _is_zarr_dir(p: Path) -> bool:
    from .io.images import is_zarr_path

    return p.is_dir() and is_zarr_path(p)


def _is_image_file(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(_TIFF_SUFFIXES)


def _walk_folder(folder: Path, recursive: bool) -> list[Path]:
    """Images in ``folder``: TIFF files and zarr folders (a zarr is one image, never descended into).

    Hidden entries (``.name``) are skipped: they are tools' private files (e.g. ``.DS_Store``, ``.ipynb_checkpoints``).
    """
    found: list[Path] = []
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise InputError(f"the folder {folder} cannot be listed ({exc.strerror or exc}); check its permissions") from None
    for p in entries:
        if p.name.startswith("."):
            continue
        if p.is_dir():
            if _is_zarr_dir(p):
                found.append(p)
            elif recursive:
                found.extend(_walk_folder(p, recursive))
        elif _is_image_file(p):
            found.append(p)
    return found


def _glob_base(pattern: str) -> Path:
    """The fixed (non-wildcard) leading folder of a glob pattern: outputs keep the paths relative to it."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts:
        if _glob.has_magic(part):
            break
        fixed.append(part)
    else:
        fixed = fixed[:-1]
    return Path(*fixed) if fixed else Path(".")


def expand_inputs(items: Iterable[str | os.PathLike], recursive: bool = False) -> list[BatchInput]:
    """Turn files, glob patterns and folders into the list of input images, in a stable order, without duplicates.

    A folder contributes its TIFF files and zarr folders (sub-folders too with ``recursive``); a glob pattern (``*``,
    ``?``, ``[...]``, ``**`` for any depth) contributes its matches, folders among them expanded like folders; a
    file is taken as it is (a file that is not an image fails later, with its reason). A path that does not exist
    and matches nothing as a pattern raises :class:`InputError`.
    """
    out: list[BatchInput] = []
    seen: set[Path] = set()

    def add(p: Path, base: Path, from_folder: bool) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(BatchInput(p, base, from_folder))

    for item in items:
        text = os.fspath(item)
        p = Path(text)
        if p.exists():
            if p.is_dir() and not _is_zarr_dir(p):
                for f in _walk_folder(p, recursive):
                    add(f, p, True)
            else:
                add(p, p.parent, False)
            continue
        if not _glob.has_magic(text):
            raise InputError(f"{text} does not exist; check the path (quote glob patterns so that n2x expands them)")
        matches = sorted(_glob.glob(text, recursive=True))
        if not matches:
            raise InputError(f"no file matches the pattern {text!r}; check the pattern and the folder")
        base = _glob_base(text)
        for m in map(Path, matches):
            if m.is_dir() and not _is_zarr_dir(m):
                for f in _walk_folder(m, recursive):
                    add(f, base, True)
            elif m.is_dir() or _is_image_file(m):
                add(m, base, True)
    return out


def input_paths(items: Iterable[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Paths of the images that ``items`` (files, globs, folders) name; :class:`InputError` when there are none."""
    found = [i.path for i in expand_inputs(items, recursive)]
    if not found:
        raise InputError("no TIFF or zarr images were found in the given inputs"
                         + ("" if recursive else "; pass --recursive to look into sub-folders"))
    return found


def output_format(nbytes: int, fmt: str = "auto", threshold: int = ZARR_THRESHOLD) -> str:
    """The one rule for where a result goes: ``"zarr"`` (OME-Zarr, written chunk by chunk) when ``fmt`` is
    ``"auto"`` and the float32 result has more than ``threshold`` bytes, else ``"tiff"`` (in memory, then a TIFF
    or a layer); ``fmt`` ``"tiff"``/``"zarr"`` forces it."""
    if fmt not in FORMATS:
        raise N2xError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    return "zarr" if nbytes > threshold else "tiff"


def output_stem(path: Path) -> str:
    """``path``'s name without its image suffix (``.ome.tif``, ``.tif``, ``.ome.zarr``, ``.zarr``...)."""
    name = path.name
    low = name.lower()
    for suffix in _STEM_SUFFIXES:
        if low.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return path.stem


def is_batch_job(inputs: Sequence[str], output: str) -> bool:
    """Whether ``n2x denoise`` arguments ask for batch mode.

    Single-file mode is one existing input image (a file or a zarr folder) with ``-o`` naming a file (``.tif``,
    ``.tiff``, ``.zarr``); several inputs, a folder, a glob, or ``-o`` a folder mean batch mode.
    """
    if len(inputs) != 1:
        return True
    src = Path(inputs[0])
    if not src.exists():
        # A pattern is a batch; a missing plain path goes to single-file mode, which reports it.
        return _glob.has_magic(inputs[0])
    if src.is_dir() and not _is_zarr_dir(src):
        return True
    out = Path(output)
    if not out.name.lower().endswith(_TIFF_SUFFIXES + (".zarr",)):
        return True
    return out.is_dir() and not _is_zarr_dir(out) and any(out.iterdir())


# -- results ---------------------------------------------------------------------------------------------------------
@dataclass
class FileResult:
    """What happened to one input. ``status``: ``ok``, ``skipped`` (finished by an earlier run) or ``failed``;
    ``seconds``: wall-clock time of this file in this run; ``chunks``/``resumed_chunks``: output chunks in all and
    found finished from an earlier run. In a dry run ``status`` is the planned action (``denoise``, ``resume``,
    ``overwrite``, ``skip``, ``fail``)."""

    file: str
    status: str
    seconds: float = 0.0
    output: str | None = None
    format: str | None = None
    reason: str | None = None
    chunks: int | None = None
    resumed_chunks: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BatchSummary:
    """The outcome of :func:`run_batch`: one :class:`FileResult` per input, in input order."""

    results: list[FileResult]
    outdir: Path
    model: str
    model_sha256: str | None = None
    started: str = ""
    finished: str = ""
    seconds: float = 0.0
    workers: int = 1
    scheduler: str | None = None
    dry_run: bool = False
    interrupted: bool = False
    summary_path: Path | None = None

    @property
    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for r in self.results:
            c[r.status] = c.get(r.status, 0) + 1
        return c

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status in ("failed", "fail")]

    @property
    def exit_code(self) -> int:
        """0 when every file succeeded or was already done, 1 when some failed (or would fail in a dry run)."""
        return 1 if self.failed or self.interrupted else 0

    def to_dict(self) -> dict[str, Any]:
        return {"n2x_version": __version__, "model": self.model, "model_sha256": self.model_sha256,
                "outdir": str(self.outdir), "started": self.started, "finished": self.finished,
                "seconds": round(self.seconds, 3), "workers": self.workers, "scheduler": self.scheduler,
                "dry_run": self.dry_run, "interrupted": self.interrupted, "counts": self.counts,
                "files": [r.to_dict() for r in self.results]}

    def table(self) -> str:
        """The summary as a plain-text table (one line per file, then the counts)."""
        head = ("file", "status", "seconds", "output", "reason")
        rows = [(r.file, r.status, f"{r.seconds:.1f}", r.output or "-", r.reason or "") for r in self.results]
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
        widths[-1] = 0  # the reason is last and not padded: it may be long
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        out = [line(head), line(tuple("-" * max(w, 6) for w in widths))] + [line(r) for r in rows]
        counts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        verb = "would be" if self.dry_run else "in"
        out.append(f"{len(self.results)} file(s) {verb} {self.seconds:.1f} s: {counts}"
                   + (" (interrupted)" if self.interrupted else ""))
        return "\n".join(out)


# -- events (progress for front doors) -------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchEvent:
    """Progress of a batch, for a front door to show.

    ``kind``: ``"start"`` (the job's ``total`` files are known; ``workers`` set), ``"file"`` (file ``index`` started),
    ``"chunks"`` (file ``index`` has ``done`` of ``total`` chunks finished, ``skipped`` of them from an earlier run),
    ``"done"`` (file ``index`` finished; ``result`` says how).
    """

    kind: str
    index: int = -1
    file: str = ""
    done: int = 0
    total: int = 0
    skipped: int = 0
    workers: int = 1
    result: FileResult | None = None


# -- plan ------------------------------------------------------------------------------------------------------------
@dataclass
class PlanItem:
    """One input and what will be done with it. ``action``: ``denoise``, ``resume``, ``overwrite``, ``skip`` or
    ``fail`` (then ``reason`` says why); ``nbytes``: estimated size of the float32 result in bytes."""

    index: int
    input: BatchInput
    output: Path
    format: str
    action: str
    reason: str | None = None
    nbytes: int = 0
    fingerprint: dict | None = None
    done_chunks: int = 0

    @property
    def file(self) -> str:
        return str(self.input.path)

    def result(self, status: str, seconds: float = 0.0, reason: str | None = None, **kw: Any) -> FileResult:
        return FileResult(self.file, status, seconds, str(self.output), self.format, reason, **kw)


def _rel_key(outdir: Path, output: Path) -> str:
    return output.relative_to(outdir).as_posix()


def _read_summary(outdir: Path) -> dict:
    """The summary file of an earlier run in ``outdir`` ({} when there is none or it is unreadable)."""
    try:
        with open(outdir / SUMMARY_NAME, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _stat(path: Path) -> dict[str, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def plan_batch(model: Any, inputs: Sequence[BatchInput], outdir: str | os.PathLike, *, fmt: str = "auto",
               overwrite: bool = False, axes: str | None = None, level: int = 0, ngff_version: str = "0.4",
               zarr_threshold: int = ZARR_THRESHOLD) -> list[PlanItem]:
    """Decide, for each input, its output path and format and whether to denoise, resume, skip it or why it fails.

    Opens every input lazily (metadata and a small content sample only) and checks it against ``model``. Writes
    nothing.
    """
    from .inference.volume import _describe_difference, _fingerprint
    from .io import ome_zarr
    from .io.images import open_image

    if fmt not in FORMATS:
        raise N2xError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    outdir = Path(outdir)
    ledger = _read_summary(outdir).get("outputs", {})
    plan: list[PlanItem] = []
    for index, inp in enumerate(inputs):
        rel_parent = inp.relative.parent
        stem = output_stem(inp.path)
        item = PlanItem(index, inp, outdir / rel_parent / (stem + ".tif"), "tiff", "denoise")
        plan.append(item)
        try:
            with _quiet_logger("tifffile"):  # its warnings about a damaged file repeat the reason given below
                info = open_image(inp.path, level=level)
            info.axes = axes.upper() if axes else info.axes
            layout = model.layout_for(tuple(info.data.shape), info.axes)
        except N2xError as exc:
            item.action, item.reason = "fail", str(exc)
            continue
        except Exception as exc:  # a reader's own error on a damaged file: the file fails, the batch goes on
            item.action, item.reason = "fail", f"cannot be read ({type(exc).__name__}: {exc})"
            continue
        item.nbytes = prod(layout.shape) * 4
        kind = fmt if fmt != "auto" else ("zarr" if item.nbytes > zarr_threshold else "tiff")
        if kind == "zarr":
            item.format, item.output = "zarr", outdir / rel_parent / (stem + ".ome.zarr")
            problem = ome_zarr.check_ngff_axes(layout.axes)
            if problem:
                item.action, item.reason = "fail", problem + " (or use --format tiff)"
                continue
        try:
            item.fingerprint = _fingerprint(model, info.data, layout, info.path, level, model.halo, ngff_version)
        except Exception as exc:
            item.action, item.reason = "fail", f"cannot be read ({type(exc).__name__}: {exc})"
            continue
        out = item.output
        if not (out.exists() or out.is_symlink()):
            continue
        if overwrite:
            item.action = "overwrite"
        elif kind == "tiff":
            entry = ledger.get(_rel_key(outdir, out)) or {}
            now = _stat(out)
            # Finished and recorded; or started by this job (recorded before it started) and, since a TIFF appears
            # only when complete, finished by it after the last record was written (the run was killed between).
            ours = entry.get("output_stat") == now or (entry.get("pending") and entry.get("previous_stat") != now)
            if entry.get("fingerprint") == item.fingerprint and ours:
                item.action = "skip"
            else:
                item.action = "fail"
                why = ("the result of another model or input (" +
                       _describe_difference(entry.get("fingerprint"), item.fingerprint) + ")"
                       if entry.get("fingerprint") else "not recorded as a result of this job")
                item.reason = (f"{out} exists and is {why}; pass --overwrite to replace it, or choose another -o")
        else:
            attrs = ome_zarr.n2x_attrs(ome_zarr.read_group_attrs(out))
            if attrs is not None and attrs.get("fingerprint") == item.fingerprint:
                if attrs.get("status") == "complete":
                    item.action = "skip"
                else:
                    item.action = "resume"
                    item.done_chunks = len(ome_zarr.ChunkLog(out).done())
            else:
                item.action = "fail"
                item.reason = (f"{out} holds the result of "
                               f"{_describe_difference(attrs.get('fingerprint'), item.fingerprint)}"
                               if attrs is not None else f"{out} exists and is not an n2x result")
                item.reason += "; pass --overwrite to replace it, or choose another -o"
    return plan


# -- up-front checks -------------------------------------------------------------------------------------------------
def _existing_ancestor(path: Path) -> Path:
    p = path.resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _inside(child: Path, parent: Path) -> bool:
    c, p = child.resolve(), parent.resolve()
    return c == p or p in c.parents


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

    Checks: OUTDIR is not inside an input folder (a rerun would take the outputs for inputs) nor inside a zarr
    input; no two inputs map to one output; no output is an input; OUTDIR (or the folder it will be made in) is a
    writable folder; the free space there covers the float32 outputs still to write.
    """
    for text in raw_inputs:
        p = Path(text)
        folder = p if p.is_dir() else (_glob_base(text) if not p.exists() and "**" in text else None)
        if folder is not None and _inside(outdir, folder):
            raise N2xError(f"the output folder {outdir} is inside the input folder {folder}; a later run would take "
                           "the outputs for inputs. Choose an output folder outside the inputs")
    by_output: dict[Path, PlanItem] = {}
    inputs = {i.input.path.resolve() for i in plan}
    for item in plan:
        key = item.output.resolve()
        if key in by_output:
            raise N2xError(f"{by_output[key].file} and {item.file} would both be written to {item.output}; "
                           "rename one of them or denoise them in separate runs with different -o folders")
        by_output[key] = item
        if key in inputs or any(_inside(item.output, i) for i in inputs if i.is_dir()):
            raise N2xError(f"the output {item.output} would overwrite an input; choose another output folder")
    if outdir.exists() and not outdir.is_dir():
        raise N2xError(f"{outdir} exists and is not a folder; give a folder for -o (or one input with -o FILE)")
    anchor = _existing_ancestor(outdir)
    if not anchor.is_dir() or not os.access(anchor, os.W_OK | os.X_OK):
        raise N2xError(f"no permission to write in {anchor}; choose an output folder you can write to")
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
                           f"(float32), {free / 2**30:.2f} GiB are free. Free some space, choose another output "
                           "folder, or denoise fewer files per run")


# -- one file --------------------------------------------------------------------------------------------------------
def _task_spec(item: PlanItem, options: dict[str, Any]) -> dict[str, Any]:
    """What a worker needs to denoise one planned file (plain, picklable values)."""
    return {"index": item.index, "file": item.file, "output": str(item.output), "format": item.format,
            "overwrite": item.action == "overwrite", **options}


def denoise_file(spec: dict[str, Any], model: Any,
                 report: Callable[[int, int, int], None] | None = None) -> FileResult:
    """Denoise one file as described by ``spec`` (see :func:`_task_spec`); never raises for a problem of the file.

    ``report(done, total, skipped)`` receives chunk progress. Any error becomes a ``failed`` result with its reason:
    one bad file must not end the batch. An OME-Zarr output keeps the chunks written before an error, so a rerun
    resumes it; a TIFF output is written atomically at the end or not at all.
    """
    from .inference.volume import iter_denoise_volume

    t0 = time.perf_counter()
    res = FileResult(spec["file"], "failed", 0.0, spec["output"], spec["format"])
    gen = None
    try:
        gen = iter_denoise_volume(model, spec["file"], spec["output"], spec.get("axes"), tile=spec.get("tile"),
                                  batch_size=spec.get("batch_size"), level=spec.get("level", 0),
                                  overwrite=spec["overwrite"], chunks=spec.get("chunks"),
                                  ngff_version=spec.get("ngff_version", "0.4"))
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
        res.reason = str(exc)
    except MemoryError:
        res.reason = "out of memory; denoise it with --format zarr, a smaller --tile, or fewer workers"
    except Exception as exc:  # damaged data found while reading, a full disk...: this file fails, the rest go on
        res.reason = f"{type(exc).__name__}: {exc}"
    finally:
        if gen is not None:
            gen.close()  # an interrupted run still writes and records the chunks already computed
    res.seconds = time.perf_counter() - t0
    return res


# -- workers (dask.distributed) --------------------------------------------------------------------------------------
_MODEL_CACHE: dict[tuple[str, str], Any] = {}
_MODEL_LOCK = threading.Lock()


def _model_blob(path: Path) -> dict[str, Any]:
    """The model as it is shipped to workers: its bytes, SHA-256 and the client's path to it."""
    from .io.model_file import file_sha256

    return {"path": str(path.resolve()), "sha256": file_sha256(path), "data": path.read_bytes()}


def _worker_model(blob: dict[str, Any], device: str) -> Any:
    """The shipped model on this worker, loaded once per worker and device.

    The client's path is used when it holds the same bytes here (shared file system, right provenance path);
    otherwise the bytes go to a per-user cache file named by their hash (written atomically, so concurrent workers
    on one node never read a half-written model).
    """
    from .io.model_file import file_sha256
    from .model import Model

    key = (blob["sha256"], device)
    with _MODEL_LOCK:
        if key in _MODEL_CACHE:
            return _MODEL_CACHE[key]
        path = Path(blob["path"])
        try:
            same = path.is_file() and file_sha256(path) == blob["sha256"]
        except OSError:
            same = False
        if not same:
            cache = Path(tempfile.gettempdir()) / "n2x-model-cache"
            cache.mkdir(parents=True, exist_ok=True)
            path = cache / f"{blob['sha256']}.n2x"
            if not path.exists():
                fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=cache)
                with os.fdopen(fd, "wb") as f:
                    f.write(blob["data"])
                os.replace(tmp, path)
        model = Model.load(path, device=device)
        _MODEL_CACHE[key] = model
        return model


def _worker_device(device: str, worker_name: Any) -> str:
    """``auto`` on a worker with several GPUs: the GPU of the worker's number (local cluster workers are named
    0, 1, ...), so that each worker has its own GPU."""
    import torch

    if device == "auto" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        try:
            return f"cuda:{int(worker_name) % torch.cuda.device_count()}"
        except (TypeError, ValueError):
            return "cuda"
    return device


def _denoise_task(spec: dict[str, Any], blob: dict[str, Any], topic: str | None,
                  torch_threads: int | None) -> dict[str, Any]:
    """One file on a dask worker: set torch's threads, get the model, denoise, send progress as worker events."""
    import dask
    import torch
    from distributed import get_worker

    worker = get_worker()
    # Inside a task, a dask compute without an explicit scheduler goes to the worker's client, i.e. ships the
    # graph of the lazily opened input to the scheduler (a TIFF's store cannot even be serialised). Reading an input
    # belongs on this worker: its local threads. Set for the worker process (not a context manager, which concurrent
    # tasks of a multi-threaded worker would undo under each other); it only changes where computes inside tasks run.
    if dask.config.get("scheduler", None) != "threads":
        dask.config.set(scheduler="threads")
    if not torch_threads:
        # On a cluster we did not start: the cores this process may use, shared by the worker's task threads.
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        torch_threads = max(1, cores // max(1, int(getattr(worker.state, "nthreads", 1) or 1)))
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    index = spec["index"]
    last = [0.0]

    def report(done: int, total: int, skipped: int) -> None:
        now = time.monotonic()
        if topic and (done >= total or now - last[0] >= PROGRESS_INTERVAL):
            last[0] = now
            worker.log_event(topic, {"index": index, "done": done, "total": total, "skipped": skipped})

    if topic:
        worker.log_event(topic, {"index": index, "start": True})
    try:
        model = _worker_model(blob, _worker_device(spec.get("device", "auto"), worker.name))
    except N2xError as exc:
        return FileResult(spec["file"], "failed", 0.0, spec["output"], spec["format"], str(exc)).to_dict()
    return denoise_file(spec, model, report).to_dict()


def default_workers(n_files: int) -> tuple[int, int]:
    """``(workers, torch threads per worker)`` for a local cluster on this machine.

    With CUDA: one worker per GPU. Otherwise workers of two torch threads each (convolutions scale poorly beyond a
    few threads per process, and separate processes also overlap reading and writing), no more than the cores, the
    files, or the memory allows (:data:`WORKER_MEMORY` each).
    """
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    if torch.cuda.is_available():
        n = max(1, min(torch.cuda.device_count(), n_files))
        return n, max(1, cores // n)
    try:
        import psutil

        by_memory = int(psutil.virtual_memory().available // WORKER_MEMORY)
    except Exception:
        by_memory = cores
    n = max(1, min(cores // 2, n_files, by_memory))
    return n, max(1, cores // n)


# -- the job ---------------------------------------------------------------------------------------------------------
class _Journal:
    """The summary file, rewritten atomically after each finished file (a killed run keeps what it finished)."""

    def __init__(self, summary: BatchSummary, ledger: dict[str, dict], plan: Sequence[PlanItem]):
        self.summary = summary
        self.ledger = ledger
        self.plan = plan
        self.done: dict[int, FileResult] = {}

    def mark_pending(self, items: Iterable[PlanItem]) -> None:
        """Record the TIFF outputs about to be written, with what is at their path now, before any starts.

        A run killed after a worker renamed a finished TIFF into place but before the client recorded it leaves this
        entry; the next run recognises the new file as this job's (see :func:`plan_batch`).
        """
        for item in items:
            if item.format == "tiff" and item.fingerprint is not None:
                self.ledger[_rel_key(self.summary.outdir, item.output)] = {
                    "input": item.file, "fingerprint": item.fingerprint, "format": item.format, "pending": True,
                    "previous_stat": _stat(item.output)}
        self.write()

    def record(self, item: PlanItem, result: FileResult) -> None:
        self.done[item.index] = result
        key = _rel_key(self.summary.outdir, item.output)
        if result.status in ("ok", "skipped") and item.fingerprint is not None:
            self.ledger[key] = {"input": item.file, "fingerprint": item.fingerprint, "format": item.format,
                                "output_stat": _stat(item.output),
                                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.write()

    def write(self) -> None:
        if self.summary.dry_run:
            return
        data = self.summary.to_dict()
        data["files"] = [self.done[i.index].to_dict() for i in self.plan if i.index in self.done]
        data["counts"] = {}
        for r in data["files"]:
            data["counts"][r["status"]] = data["counts"].get(r["status"], 0) + 1
        # Outputs that are gone (deleted by hand) are dropped from the ledger.
        data["outputs"] = {k: v for k, v in sorted(self.ledger.items())
                                    if v.get("pending") or (self.summary.outdir / k).exists()}
        path = self.summary.outdir / SUMMARY_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=SUMMARY_NAME + ".", suffix=".part", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.summary.summary_path = path


def run_batch(model: str | os.PathLike, inputs: Sequence[str | os.PathLike], outdir: str | os.PathLike, *,
              recursive: bool = False, fmt: str = "auto", overwrite: bool = False, dry_run: bool = False,
              scheduler: str | None = None, workers: int | None = None, axes: str | None = None,
              level: int = 0, tile: Sequence[int] | int | None = None, batch_size: int | None = None,
              chunks: Sequence[int] | int | None = None, ngff_version: str = "0.4", device: str = "auto",
              zarr_threshold: int = ZARR_THRESHOLD,
              on_event: Callable[[BatchEvent], None] | None = None) -> BatchSummary:
    """Denoise every image that ``inputs`` name into ``outdir`` with the model file ``model``; see the module doc.

    ``fmt``: ``auto`` (OME-Zarr for results above ``zarr_threshold`` bytes, TIFF otherwise), ``tiff`` or ``zarr``.
    ``scheduler``: address of an existing dask scheduler (e.g. ``tcp://head:8786``); without it a local cluster of
    ``workers`` processes (default sized to the machine: :func:`default_workers`), and one worker runs in this
    process without a cluster. ``tile``, ``batch_size``, ``chunks``, ``level``, ``ngff_version``, ``axes`` and
    ``device`` are passed to :func:`n2x.iter_denoise_volume` for every file. ``on_event`` receives
    :class:`BatchEvent` progress. Returns the :class:`BatchSummary`; problems of single files are in it, problems of
    the whole job raise :class:`~n2x.errors.N2xError` before anything is written. ``KeyboardInterrupt`` ends the run
    after recording what finished (OME-Zarr outputs in progress keep their written chunks for a rerun).
    """
    from .model import Model

    t0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    emit = on_event or (lambda ev: None)
    model_path = Path(model)
    if fmt not in FORMATS:
        raise N2xError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if workers is not None and workers < 1:
        raise N2xError("--workers must be at least 1")
    if scheduler and workers is not None:
        raise N2xError("--workers applies to the local cluster only; an existing cluster (--scheduler) has its own")
    outdir = Path(outdir)
    if outdir.suffix.lower() in _TIFF_SUFFIXES and not outdir.is_dir():
        raise N2xError(f"-o {outdir} names a file but several images are to be denoised; give an output folder")
    # The model is loaded here for planning (it decides which inputs fit); workers load the shipped bytes.
    net = Model.load(model_path, device="cpu")
    raw = [os.fspath(i) for i in inputs]
    found = expand_inputs(raw, recursive)
    if not found:
        raise InputError("no TIFF or zarr images were found in the given inputs"
                         + ("" if recursive else "; pass --recursive to look into sub-folders"))
    plan = plan_batch(net, found, outdir, fmt=fmt, overwrite=overwrite, axes=axes, level=level,
                      ngff_version=ngff_version, zarr_threshold=zarr_threshold)
    check_job(plan, outdir, raw)
    todo = [i for i in plan if i.action in ("denoise", "resume", "overwrite")]

    torch_threads: int | None = None
    if scheduler:
        n_workers = 0
    elif workers is not None:
        n_workers = min(workers, max(1, len(todo)))
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        torch_threads = max(1, cores // n_workers)
    else:
        n_workers, torch_threads = default_workers(max(1, len(todo)))
    summary = BatchSummary([], outdir, str(model_path), net.file_hash(), started, workers=max(1, n_workers),
                           scheduler=scheduler, dry_run=dry_run)
    if dry_run:
        for item in plan:
            reason = item.reason
            if item.action == "resume":
                reason = f"{item.done_chunks} chunk(s) written by an earlier run"
            elif item.action == "skip":
                reason = "finished by an earlier run"
            summary.results.append(item.result(item.action, reason=reason))
        summary.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        summary.seconds = time.perf_counter() - t0
        return summary

    journal = _Journal(summary, dict(_read_summary(outdir).get("outputs", {})), plan)
    options = {"axes": axes, "level": level, "tile": tile, "batch_size": batch_size, "chunks": chunks,
               "ngff_version": ngff_version, "device": device}
    client = cluster = None
    if todo and (scheduler or n_workers > 1):
        # Connect (or start the local cluster) before anything is written: a wrong address is a job error.
        client, cluster = _connect(scheduler, n_workers)
        summary.workers = len(client.scheduler_info().get("workers", {})) or max(1, n_workers)
    try:
        emit(BatchEvent("start", total=len(plan), workers=summary.workers))
        for item in plan:
            if item.action in ("skip", "fail"):
                res = item.result("skipped" if item.action == "skip" else "failed",
                                  reason="finished by an earlier run" if item.action == "skip" else item.reason)
                journal.record(item, res)
                emit(BatchEvent("done", item.index, item.file, result=res))
        if todo:
            outdir.mkdir(parents=True, exist_ok=True)
            journal.mark_pending(todo)
            if client is not None:
                _run_distributed(client, todo, model_path, options, torch_threads, journal, emit)
            else:
                net.to(device)
                _run_here(todo, net, options, journal, emit)
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        for item in plan:
            if item.index not in journal.done:
                journal.done[item.index] = item.result(
                    "failed", reason="interrupted before it finished; run the same command again to resume")
        summary.results = [journal.done[i.index] for i in plan]
        summary.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        summary.seconds = time.perf_counter() - t0
        journal.write()
    return summary


def _run_here(todo: Sequence[PlanItem], model: Any, options: dict[str, Any], journal: _Journal,
              emit: Callable[[BatchEvent], None]) -> None:
    """One worker: the files one after the other in this process."""
    for item in todo:
        emit(BatchEvent("file", item.index, item.file))
        res = denoise_file(_task_spec(item, options), model,
                           lambda d, t, s, i=item: emit(BatchEvent("chunks", i.index, i.file, d, t, s)))
        journal.record(item, res)
        emit(BatchEvent("done", item.index, item.file, result=res))


def _connect(scheduler: str | None, n_workers: int) -> tuple[Any, Any]:
    """A dask client of the cluster at ``scheduler``, or of a new local cluster of ``n_workers`` processes."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise N2xError(f"cannot connect to the dask scheduler at {scheduler} ({exc}); check the address and "
                           "that the scheduler is running") from None
    try:
        # One task thread per worker: torch's own threads use the cores; the dashboard is off (no port clash).
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
        return Client(cluster), cluster
    except Exception as exc:
        raise N2xError(f"cannot start a local dask cluster ({type(exc).__name__}: {exc}); "
                       "use --workers 1 to run in this process") from None


def _run_distributed(client: Any, todo: Sequence[PlanItem], model_path: Path, options: dict[str, Any],
                     torch_threads: int | None, journal: _Journal, emit: Callable[[BatchEvent], None]) -> None:
    """One dask task per file through ``client``.

    Progress comes back as worker events (``Worker.log_event`` -> ``Client.subscribe_topic``): batched with the
    worker's other messages, no extra scheduler state; the main thread drains them while waiting for results.
    """
    from distributed import as_completed

    events: queue.Queue = queue.Queue()
    topic = f"n2x-batch-{uuid.uuid4().hex}"
    futures: dict[Any, PlanItem] = {}
    try:
        client.subscribe_topic(topic, lambda ev: events.put(ev[1]))
        blob = client.scatter(_model_blob(model_path), broadcast=True)
        for item in todo:
            fut = client.submit(_denoise_task, _task_spec(item, options), blob, topic, torch_threads,
                                key=f"n2x-denoise-{item.index}-{topic}", pure=False, retries=0)
            futures[fut] = item
        by_index = {i.index: i for i in todo}
        ac = as_completed(list(futures))

        def drain() -> None:
            while True:
                try:
                    msg = events.get_nowait()
                except queue.Empty:
                    return
                item = by_index.get(int(msg.get("index", -1)))
                if item is None or item.index in journal.done:
                    continue
                if msg.get("start"):
                    emit(BatchEvent("file", item.index, item.file))
                else:
                    emit(BatchEvent("chunks", item.index, item.file, int(msg["done"]), int(msg["total"]),
                                    int(msg["skipped"])))

        while not ac.is_empty():
            drain()
            for fut in ac.next_batch(block=False) if ac.has_ready() else []:
                item = futures[fut]
                try:
                    res = FileResult(**fut.result())
                except Exception as exc:  # the worker died (killed for memory...) or could not run the task
                    res = item.result("failed", reason=f"the worker failed ({type(exc).__name__}: {exc})")
                drain()
                journal.record(item, res)
                emit(BatchEvent("done", item.index, item.file, result=res))
            time.sleep(0.05)
        drain()
    except KeyboardInterrupt:
        client.cancel(list(futures), force=True)
        raise
    finally:
        try:
            client.unsubscribe_topic(topic)
        except Exception:
            pass


# -- progress bars for the command line -----------------------------------------------------------------------------
class TqdmReporter:
    """tqdm bars for :class:`BatchEvent`: an overall bar (files) and one bar per file in progress (chunks)."""

    def __init__(self, disable: bool = False):
        self.disable = disable
        self.overall: Any = None
        self.bars: dict[int, Any] = {}
        self.slots: dict[int, int] = {}
        self.free: list[int] = []

    def __call__(self, ev: BatchEvent) -> None:
        from tqdm.auto import tqdm

        if self.disable:
            return
        if ev.kind == "start":
            self.overall = tqdm(total=ev.total, desc="files", unit=" file", position=0, dynamic_ncols=True)
            self.free = list(range(ev.workers, 0, -1))
        elif ev.kind == "file" and ev.index not in self.bars:
            pos = self.free.pop() if self.free else len(self.bars) + 1
            self.slots[ev.index] = pos
            name = Path(ev.file).name
            self.bars[ev.index] = tqdm(total=0, desc=name[:30], unit=" chunk", position=pos, leave=False,
                                       dynamic_ncols=True)
        elif ev.kind == "chunks" and ev.index in self.bars:
            bar = self.bars[ev.index]
            bar.total, bar.n = ev.total, ev.done
            if ev.skipped:
                bar.set_postfix({"resumed": ev.skipped}, refresh=False)
            bar.refresh()
        elif ev.kind == "done":
            bar = self.bars.pop(ev.index, None)
            if bar is not None:
                self.free.append(self.slots.pop(ev.index))
                bar.close()
            if self.overall is not None:
                self.overall.update(1)
                if ev.result is not None and ev.result.status == "failed":
                    self.overall.write(f"n2x: {ev.file}: failed: {ev.result.reason}", file=sys.stderr)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
        if self.overall is not None:
            self.overall.close()
