"""Running engine calls off the GUI thread with errors that always reach the user.

Two traps this module exists for:

* superqt's ``GeneratorWorker`` treats a ``RuntimeError`` raised inside the generator as "the worker was deleted":
  it warns and returns without emitting ``errored`` *or* ``finished``, so a widget waiting for either waits forever.
  torch reports CUDA/MPS out-of-memory and many other failures as ``RuntimeError``. Every worker body here is
  wrapped so that any exception leaves as :class:`N2xWorkerError` (not a ``RuntimeError``) carrying a message that
  says what to do.
* ``create_worker`` re-raises errors in the main thread unless ``errored`` is connected; we always connect it.

* A worker catches every warning issued in its thread (an engine :class:`~n2x.errors.N2xWarning`, say, when AP-BSN
  turns its filter off) and emits ``warned``; napari means to relay that to its notifications, but in napari 0.9 its
  relay is not connected (its mixin's ``__init__`` is not reached through ``QRunnable``), so the warning would be
  lost. We connect ``warned`` ourselves when nothing else listens.
"""
from __future__ import annotations

import functools
import inspect
import traceback
from typing import Any, Callable, Generator

from napari.qt.threading import FunctionWorker, GeneratorWorker, create_worker
from napari.utils.notifications import show_warning
from qtpy.QtCore import QObject, Signal

from n2x.errors import N2xError

from .words import error_text


class N2xWorkerError(Exception):
    """An error from a worker thread, with ``message`` written for the user (the original is ``original``)."""

    def __init__(self, message: str, original: BaseException | None = None):
        super().__init__(message)
        self.message = message
        self.original = original
        self.details = "".join(traceback.format_exception(original)) if original is not None else ""


def user_message(exc: BaseException, doing: str = "the task") -> str:
    """What to tell the user about ``exc``: the engine's own message for :class:`N2xError`, advice otherwise."""
    if isinstance(exc, N2xWorkerError):
        return exc.message
    if isinstance(exc, N2xError):
        return error_text(exc)
    from n2x import api  # here: importing the workers stays cheap (no torch)

    if isinstance(exc, OSError) and exc.filename is not None:  # an output that cannot be written, a full disk
        return f"{doing[:1].upper() + doing[1:]} failed: {api.os_error_text(exc)}."
    if api.is_out_of_memory(exc):
        return (f"{doing[:1].upper() + doing[1:]} ran out of memory. Use a smaller batch size or patch size "
                "(or a smaller tile when denoising), or choose the CPU as device, then try again.")
    return (f"{doing[:1].upper() + doing[1:]} failed: {type(exc).__name__}: {exc}. The widget is ready again; "
            "if this happens again, please report it with the traceback printed in the console.")


def guarded(fn: Callable[..., Any], doing: str) -> Callable[..., Any]:
    """Wrap a function or generator function so that every exception leaves as :class:`N2xWorkerError`."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Generator:
            try:
                return (yield from fn(*args, **kwargs))
            except N2xWorkerError:
                raise
            except BaseException as exc:  # noqa: BLE001 - a KeyboardInterrupt in a thread is an error too
                raise N2xWorkerError(user_message(exc, doing), exc) from exc

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except N2xWorkerError:
            raise
        except BaseException as exc:  # noqa: BLE001
            raise N2xWorkerError(user_message(exc, doing), exc) from exc

    return wrapper


def start_worker(fn: Callable[..., Any], *args: Any, doing: str, on_error: Callable[[BaseException], None],
                 on_yield: Callable[[Any], None] | None = None, on_return: Callable[[Any], None] | None = None,
                 on_finish: Callable[[], None] | None = None, **kwargs: Any) -> FunctionWorker | GeneratorWorker:
    """Start ``fn(*args, **kwargs)`` in a napari worker thread with every signal connected; returns the worker.

    ``on_error`` always receives an :class:`N2xWorkerError`; ``on_finish`` runs after success, error and abort.
    """
    connect: dict[str, Any] = {"errored": on_error}
    if on_yield is not None:
        connect["yielded"] = on_yield
    if on_return is not None:
        connect["returned"] = on_return
    if on_finish is not None:
        connect["finished"] = on_finish
    worker = create_worker(guarded(fn, doing), *args, _connect=connect, _start_thread=False, **kwargs)
    if not _has_listeners(worker, "warned"):
        worker.warned.connect(show_worker_warning)
    worker.start()
    return worker


def _has_listeners(worker: Any, name: str) -> bool:
    try:
        signals = worker.signals
        return signals.receivers(getattr(signals, name)) > 0
    except (AttributeError, RuntimeError, TypeError):  # another superqt: connect ours, a duplicate is harmless
        return False


def show_worker_warning(args: tuple) -> None:
    """A warning caught in a worker thread (``warned``'s ``showwarning`` arguments) as a napari notification."""
    message = args[0] if args else ""
    text = message if isinstance(message, str) else str(message.args[0] if message.args else message)
    show_warning(f"n2x: {text}")


class ProgressRelay(QObject):
    """Carries ``progress(done, total)`` callbacks from a worker thread to the GUI thread.

    Created in the GUI thread, so the emission from the worker is queued and the slot runs in the GUI thread.
    """

    progress = Signal(int, int)

    def __call__(self, done: int, total: int) -> None:
        self.progress.emit(int(done), int(total))
