"""The workers of a batch on ``dask.distributed``: a local cluster sized to this machine or any existing scheduler,
the model shipped to the workers and loaded once on each, and the task that denoises one whole file there (progress
sent back as worker events). Which files go whole and which chunk by chunk, and the queue of tasks:
:mod:`.cluster_batch`.

Model shipping: the model file's bytes (a few MB) are scattered once to every worker. A worker that sees the same
file at the same path with the same SHA-256 (a shared file system) loads it from there; otherwise it writes the
bytes into ``<tempdir>/n2x-model-cache/<sha256>.n2x`` and loads that. Cluster nodes therefore need no access to the
client's files for the model, but they do need to read the inputs and write the output folder at the same paths (a
shared file system, as on any HPC cluster).
"""
from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from .._files import write_bytes_atomic
from ..device import usable_cpu_count
from ..errors import N2xError, OptionError
from ..io.model_file import file_sha256
from ..model import Model
from .one_file import denoise_file
from .results import FileResult

#: each local worker gets this much RAM at least when the worker count is chosen automatically (bytes)
WORKER_MEMORY = 2 * 2**30
#: seconds between two progress messages of one file sent from a cluster worker (keeps the scheduler quiet)
PROGRESS_INTERVAL = 0.25

#: models loaded on this worker process, by (SHA-256 of the file, device)
_MODEL_CACHE: dict[tuple[str, str], Model] = {}
_MODEL_LOCK = threading.Lock()


def default_workers(n_files: int) -> tuple[int, int]:
    """``(workers, torch threads per worker)`` for a local cluster on this machine.

    With CUDA: one worker per GPU. Otherwise workers of two torch threads each (convolutions scale poorly beyond a
    few threads per process, and separate processes also overlap reading and writing), no more than the cores, the
    files, or the memory allows (:data:`WORKER_MEMORY` each).
    """
    cores = usable_cpu_count()
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


def check_workers(scheduler: str | None, workers: int | None) -> None:
    """:class:`OptionError` for a worker count below 1, or one given together with an existing scheduler."""
    if workers is not None and workers < 1:
        raise OptionError(f"{workers} workers were asked for", hint="set {workers} to 1 or more")
    if scheduler and workers is not None:
        raise OptionError("the number of workers applies to a local cluster only; an existing cluster has its own",
                          hint="leave {workers} unset when you give {scheduler}")


def connect(scheduler: str | None, n_workers: int) -> tuple[Any, Any]:
    """``(client, cluster)``: a dask client of the cluster at ``scheduler`` (cluster None), or of a new local
    cluster of ``n_workers`` processes (closed by the caller). The client is not made dask's default: this
    process's own lazy reads (a viewer's, the planner's) stay on local threads."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s", set_as_default=False), None
        except (OSError, TimeoutError) as exc:
            raise N2xError(f"cannot connect to the dask scheduler at {scheduler} ({exc})",
                           hint="check {scheduler} and that the scheduler is running") from None
    try:
        # One task thread per worker: torch's own threads use the cores; the dashboard is off (no port clash).
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
        return Client(cluster, set_as_default=False), cluster
    except Exception as exc:
        raise N2xError(f"cannot start a local dask cluster ({type(exc).__name__}: {exc})",
                       hint="set {workers} to 1 to run in this process") from None


def model_blob(path: Path) -> dict[str, Any]:
    """The model as it is shipped to workers: its bytes, SHA-256 and the client's path to it."""
    return {"path": str(path.resolve()), "sha256": file_sha256(path), "data": path.read_bytes()}


def ship_model(client: Any, path: Path) -> Any:
    """The model file at ``path`` sent once to every worker of ``client``: a future of its :func:`model_blob`.

    The blob goes as one item with a fresh key: a dict scattered as such would become one future per entry, keyed
    by the entry's name ("data", ...), and a later job's scatter would silently get the first job's model."""
    return client.scatter([model_blob(path)], broadcast=True, hash=False)[0]


def worker_model(blob: dict[str, Any], device: str) -> Model:
    """The shipped model on this worker, loaded once per worker and device.

    The client's path is used when it holds the same bytes here (shared file system, right provenance path);
    otherwise the bytes go to a per-user cache file named by their hash (written atomically, so concurrent workers
    on one node never read a half-written model).
    """
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
                write_bytes_atomic(path, blob["data"])
        model = Model.load(path, device=device)
        _MODEL_CACHE[key] = model
        return model


def worker_device(device: str, worker_name: Any) -> str:
    """``auto`` on a worker with several GPUs: the GPU of the worker's number (local cluster workers are named
    0, 1, ...), so that each worker has its own GPU."""
    if device == "auto" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        try:
            return f"cuda:{int(worker_name) % torch.cuda.device_count()}"
        except (TypeError, ValueError):
            return "cuda"
    return device


def prepare_worker(torch_threads: int | None) -> Any:
    """Set up this dask worker process for n2x tasks (idempotent); returns the worker.

    ``torch_threads``: torch threads per task (None: the cores this process may use, shared by the worker's task
    threads, for a cluster we did not start).
    """
    import dask
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
        torch_threads = max(1, usable_cpu_count() // max(1, int(getattr(worker.state, "nthreads", 1) or 1)))
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    return worker


def denoise_task(spec: dict[str, Any], blob: dict[str, Any], topic: str | None,
                 torch_threads: int | None) -> dict[str, Any]:
    """One file on a dask worker: set torch's threads, get the model, denoise, send progress as worker events."""
    worker = prepare_worker(torch_threads)
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
        model = worker_model(blob, worker_device(spec.get("device", "auto"), worker.name))
    except N2xError as exc:
        return FileResult(spec["file"], "failed", 0.0, spec["output"], spec["format"], str(exc)).to_dict()
    return denoise_file(spec, model, report).to_dict()
