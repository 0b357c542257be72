"""A batch on ``dask.distributed`` as one queue of tasks: whole small files, and the chunk groups of large ones.

Which files are split. A file whose output is OME-Zarr is run chunk by chunk: its chunk groups (the work units of
:meth:`n2x.inference.chunks.ChunkJob.groups`) are tasks of their own, so one large file keeps every worker busy, and
the last files of a batch do not leave workers idle while one worker finishes a long file. The output format is the
rule because it already follows the memory budget (:func:`n2x.batch.plan.output_format`: OME-Zarr above 256 MiB of
float32 result, or when asked for) and because only a zarr can be written by many workers at once; a TIFF result is
assembled in the memory of one process, so a file with a TIFF output stays one task (:func:`denoise_task`).

How a split file runs. This client opens it exactly as a single volume run does,
:func:`n2x.inference.volume.iter_denoise_volume` with an ``executor``: the output is checked, created or found for
resuming, and its lock (:class:`n2x._files.OutputLock`) is taken here, in the client, for the whole run. The work
units go to the workers as :func:`n2x.batch.volume_cluster.chunk_group_task` (which runs
:func:`n2x.inference.chunks.process_group`), and the pyramid blocks as
:func:`~n2x.batch.volume_cluster.pyramid_block_task` once the chunks below them are recorded: the same tasks as
:func:`n2x.api.denoise_volume` on a cluster, with the same resume records. When its last task is back the client
finishes the output (marked complete) and releases the lock.

One queue. At most :data:`~n2x.batch.volume_cluster.IN_FLIGHT_PER_THREAD` tasks per worker thread are in flight for
the whole batch (whole-file and chunk tasks alike; pyramid blocks, small and urgent, come on top, as in a volume
run). The queue is filled in input order: the next work unit of the earliest file that has one, else the next file.
A file is opened only when the queue reaches it, so a batch of a thousand large files holds a few open at a time.
The model is scattered once for the batch and loaded once per worker (:func:`.distributed.worker_model`).

Faults. A chunk task that raised :data:`~n2x.batch.volume_cluster.TASK_RETRIES` more times fails its file (its
other tasks are cancelled, the chunks already recorded stay for a rerun) and the batch goes on; a worker that dies
has its tasks rescheduled by dask. Ctrl-C (``KeyboardInterrupt``) cancels every task in flight and releases the
outputs' locks; a rerun resumes.
"""
from __future__ import annotations

import queue
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Callable, Generator, Sequence

from ..inference.chunks import ChunkJob, VolumeProgress, count_skipped, pending_groups
from ..model import Model
from .distributed import denoise_task, ship_model
from .journal import Journal
from .one_file import fail_result, finish_result, new_result, open_file_run, task_spec
from .plan import PlanItem
from .results import BatchEvent, FileResult
from .volume_cluster import IN_FLIGHT_PER_THREAD, TASK_RETRIES, chunk_group_task, pyramid_block_task, volume_spec

#: seconds the client sleeps when no task has finished (progress events are drained meanwhile)
POLL_SECONDS = 0.05


def splits_into_chunks(item: PlanItem) -> bool:
    """Whether the planned file ``item`` runs chunk by chunk on a cluster: its output is OME-Zarr (see the module
    doc for why the format is the rule)."""
    return item.format == "zarr"


class VolumeRun:
    """One file run chunk by chunk from this client: its volume run (output and lock held), the work units not yet
    submitted and the tasks in flight. The queue submits its tasks and tells it of their results; the run's
    generator is advanced one report at a time as they come, so that many files share one thread."""

    def __init__(self, item: PlanItem, spec: dict[str, Any], model: Any, device: str, torch_threads: int | None):
        self.item, self.spec, self.model = item, spec, model
        self.device, self.torch_threads = device, torch_threads
        self.result: FileResult = new_result(spec)
        self.t0 = time.perf_counter()
        self.gen: Generator[VolumeProgress, None, Any] | None = None
        self.job: ChunkJob | None = None
        self.task_spec: dict[str, Any] = {}
        self.groups: Any = iter(())
        self.exhausted = False  # every work unit submitted
        self.in_flight = 0  # its chunk and pyramid tasks not yet back
        self.done = self.n_skipped = 0
        self.error: BaseException | None = None
        self.last: VolumeProgress | None = None
        self.ended = False

    # -- the executor the volume run calls, on this client ------------------------------------------------------
    def _executor(self, job: ChunkJob, skipped: set[str]) -> Generator[VolumeProgress, None, VolumeProgress]:
        """Take ``job`` over: count what an earlier run recorded and hand the work units to the queue; then report
        whenever the queue advances the run, until every task is back (or one failed: raised here, in the run)."""
        self.job = job
        self.n_skipped = count_skipped(job, skipped)
        self.done = self.n_skipped
        self.task_spec = volume_spec(job, self.device, self.torch_threads, self.model.weights_hash())
        self.groups = pending_groups(job, skipped)
        yield self.progress()
        while not self.finished:
            if self.error is not None:
                raise self.error
            yield self.progress()
        if self.error is not None:
            raise self.error
        return self.progress()

    def progress(self) -> VolumeProgress:
        assert self.job is not None
        return VolumeProgress(self.done, self.job.total, self.n_skipped, time.perf_counter() - self.t0,
                              self.job.dest, self.job.core)

    @property
    def finished(self) -> bool:
        """Every work unit submitted and every task back, or a task failed and nothing more will be waited for."""
        return (self.exhausted or self.error is not None) and self.in_flight == 0

    # -- driven by the queue -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the output (lock taken) and let the run reach its executor; a file that cannot start ends failed."""
        try:
            self.gen = open_file_run(self.spec, self.model, executor=self._executor)
        except Exception as exc:
            self._fail(exc)
            return
        while not self.ended and self.job is None:  # an output found complete never calls the executor
            self.step()

    def step(self) -> None:
        """Advance the run by one report; at its end, fill :attr:`result`."""
        assert self.gen is not None
        try:
            self.last = next(self.gen)
        except StopIteration:
            try:
                finish_result(self.result, self.last)
            except Exception as exc:
                fail_result(self.result, exc)
            self._end()
        except Exception as exc:  # a task that failed, or finishing the output
            self._fail(exc)

    def next_group(self) -> tuple[list[int], tuple[int, ...], list[int]] | None:
        nxt = next(self.groups, None) if not self.exhausted and self.error is None else None
        if nxt is None:
            self.exhausted = True
        return nxt

    def pyramid_ready(self, level: int, block: tuple[int, ...]) -> list[tuple[int, tuple[int, ...]]]:
        """The pyramid blocks made computable by block ``block`` of ``level`` being recorded."""
        tracker = self.job.pyramid if self.job is not None else None
        return [] if tracker is None else tracker.recorded(level, block)

    def pyramid_pending(self) -> list[tuple[int, tuple[int, ...]]]:
        """Pyramid blocks an earlier, killed run left undone although their chunks are recorded."""
        tracker = self.job.pyramid if self.job is not None else None
        return [] if tracker is None else tracker.pending()

    def close(self) -> None:
        """Drop the run (interrupted): the output keeps its recorded chunks, its lock is released."""
        if self.gen is not None:
            self.gen.close()
        self.ended = True

    def _fail(self, exc: BaseException) -> None:
        fail_result(self.result, exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
        self.close()
        self._end()

    def _end(self) -> None:
        self.ended = True
        self.result.seconds = time.perf_counter() - self.t0


def _worker_threads(client: Any) -> int:
    return sum(w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values()) or 1


class TaskQueue:
    """The tasks of one batch on ``client``: whole files and the work units of split files, at most ``window`` of
    them in flight (pyramid blocks on top); results recorded in ``journal``, progress sent to ``emit``."""

    def __init__(self, client: Any, todo: Sequence[PlanItem], blob: Any, options: dict[str, Any],
                 torch_threads: int | None, journal: Journal, emit: Callable[[BatchEvent], None], model: Any,
                 chunk_tasks: bool, topic: str):
        from distributed import as_completed

        self.client, self.blob, self.options, self.torch_threads = client, blob, options, torch_threads
        self.journal, self.emit, self.model, self.chunk_tasks, self.topic = journal, emit, model, chunk_tasks, topic
        self.waiting = deque(todo)  # files not yet reached by the queue
        self.runs: list[VolumeRun] = []  # split files opened and not ended, in input order
        self.tasks: dict[Any, tuple[str, Any]] = {}  # future -> (kind, its PlanItem or VolumeRun)
        self.by_index = {i.index: i for i in todo}
        self.window = IN_FLIGHT_PER_THREAD * _worker_threads(client)
        self.events: queue.Queue = queue.Queue()  # progress of whole-file tasks, from the workers
        self._counter = iter(range(1 << 62))
        self._completed = as_completed(loop=client.loop)

    @property
    def busy(self) -> bool:
        return bool(self.tasks or self.waiting or self.runs)

    def poll(self) -> bool:
        """Handle the tasks that finished and queue more work; False when none had finished."""
        self.drain()
        ready = self._completed.next_batch(block=False) if self._completed.has_ready() else []
        for fut in ready:
            if fut in self.tasks:  # a cancelled task of a failed file is already forgotten
                self._finished(fut)
        self.fill()
        return bool(ready)

    def fill(self) -> None:
        """Queue work up to the window: the next unit of the earliest split file with units left, else the next
        file (opened, or submitted whole)."""
        while sum(kind in ("chunk", "file") for kind, _ in self.tasks.values()) < self.window:
            run = next((r for r in self.runs if not r.exhausted and r.error is None), None)
            if run is not None:
                nxt = run.next_group()
                if nxt is None:
                    self._settle(run)
                else:
                    self._submit("chunk", run, chunk_group_task, run.task_spec, self.blob, *nxt,
                                 retries=TASK_RETRIES)
                continue
            if not self.waiting:
                return
            item = self.waiting.popleft()
            if self.chunk_tasks and splits_into_chunks(item):
                self._open(item)
            else:
                self._submit("file", item, denoise_task, task_spec(item, self.options), self.blob, self.topic,
                             self.torch_threads, retries=0)

    def drain(self) -> None:
        """Pass on the progress events of whole-file tasks."""
        while True:
            try:
                msg = self.events.get_nowait()
            except queue.Empty:
                return
            item = self.by_index.get(int(msg.get("index", -1)))
            if item is None or item.index in self.journal.done:
                continue
            if msg.get("start"):
                self.emit(BatchEvent("file", item.index, item.file))
            else:
                self.emit(BatchEvent("chunks", item.index, item.file, int(msg["done"]), int(msg["total"]),
                                     int(msg["skipped"])))

    def close(self) -> None:
        """Cancel every task still in flight and let go of every open output (interrupted, or an error here)."""
        if self.tasks:
            self.client.cancel(list(self.tasks), force=True)
            self.tasks.clear()
        for run in self.runs:
            run.close()

    # -- internals ---------------------------------------------------------------------------------------------
    def _submit(self, kind: str, owner: Any, fn: Callable, *args: Any, **kw: Any) -> None:
        index = owner.item.index if isinstance(owner, VolumeRun) else owner.index
        fut = self.client.submit(fn, *args, pure=False, key=f"n2x-{kind}-{index}-{self.topic[-8:]}"
                                 f"-{next(self._counter)}", **kw)
        self.tasks[fut] = (kind, owner)
        self._completed.add(fut)
        if isinstance(owner, VolumeRun):
            owner.in_flight += 1

    def _submit_pyramid(self, run: VolumeRun, ready: list[tuple[int, tuple[int, ...]]]) -> None:
        for level, block in ready:
            self._submit("level", run, pyramid_block_task, run.task_spec, self.blob, level, block,
                         retries=TASK_RETRIES, priority=1)

    def _open(self, item: PlanItem) -> None:
        self.emit(BatchEvent("file", item.index, item.file))
        run = VolumeRun(item, task_spec(item, self.options), self.model, str(self.options.get("device") or "auto"),
                        self.torch_threads)
        self.runs.append(run)
        run.start()
        self._report(run)
        if not run.ended:
            self._submit_pyramid(run, run.pyramid_pending())
        self._settle(run)

    def _finished(self, fut: Any) -> None:
        kind, owner = self.tasks.pop(fut)
        if kind == "file":
            try:
                res = FileResult(**fut.result())
            except Exception as exc:  # the worker died (killed for memory...) or could not run the task
                res = owner.result("failed", reason=f"the worker failed ({type(exc).__name__}: {exc})")
            self.drain()
            self._record(owner, res)
            return
        run: VolumeRun = owner
        run.in_flight -= 1
        try:
            result = fut.result()
        except Exception as exc:  # failed TASK_RETRIES more times: this file fails, its other tasks are dropped
            if run.error is None:
                run.error = exc
                self._cancel([f for f, (_, o) in self.tasks.items() if o is run])
        else:
            if kind == "chunk":
                run.done += len(result)
                for index in result:
                    self._submit_pyramid(run, run.pyramid_ready(0, index))
                run.step()
                self._report(run)
            else:
                self._submit_pyramid(run, run.pyramid_ready(*result))
        self._settle(run)

    def _settle(self, run: VolumeRun) -> None:
        """Run ``run`` to its end once nothing more is to come from the cluster; record it then."""
        if run.finished:
            while not run.ended:
                run.step()
                self._report(run)
        if run.ended:
            self.runs.remove(run)
            self._record(run.item, run.result)

    def _cancel(self, futures: list[Any]) -> None:
        for f in futures:
            _, owner = self.tasks.pop(f)
            if isinstance(owner, VolumeRun):
                owner.in_flight -= 1
        if futures:
            self.client.cancel(futures, force=True)

    def _record(self, item: PlanItem, res: FileResult) -> None:
        self.journal.record(item, res)
        self.emit(BatchEvent("done", item.index, item.file, result=res))

    def _report(self, run: VolumeRun) -> None:
        if run.last is not None and not run.ended:
            last = run.last
            self.emit(BatchEvent("chunks", run.item.index, run.item.file, last.done, last.total, last.skipped))


def run_distributed(client: Any, todo: Sequence[PlanItem], model_path: Path, options: dict[str, Any],
                    torch_threads: int | None, journal: Journal, emit: Callable[[BatchEvent], None], *,
                    model: Any = None, chunk_tasks: bool = True) -> None:
    """Denoise the planned files ``todo`` through ``client`` (see the module doc); results are recorded in
    ``journal`` as files end, progress goes to ``emit``.

    ``model``: the loaded model (on the CPU), used on this client to plan the split files (default: loaded from
    ``model_path``); ``torch_threads``: per worker (None on a cluster we did not start: decided on each worker);
    ``chunk_tasks`` False: one task per file, whatever its size (the scheduling before files were split; kept for
    comparison). Progress of whole-file tasks comes back as worker events (``Worker.log_event`` ->
    ``Client.subscribe_topic``).
    """
    if model is None and chunk_tasks and any(splits_into_chunks(i) for i in todo):
        model = Model.load(model_path, device="cpu")  # split files are planned here, on this client
    topic = f"n2x-batch-{uuid.uuid4().hex}"
    work: TaskQueue | None = None
    try:
        work = TaskQueue(client, todo, ship_model(client, model_path), options, torch_threads, journal, emit, model,
                         chunk_tasks, topic)
        events = work.events
        client.subscribe_topic(topic, lambda ev: events.put(ev[1]))  # before the first task
        work.fill()
        while work.busy:
            if not work.poll():
                time.sleep(POLL_SECONDS)
        work.drain()
    finally:
        if work is not None:
            work.close()
        try:
            client.unsubscribe_topic(topic)
        except Exception:
            pass
