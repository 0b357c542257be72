"""The Train widget's run: the worker that trains, and what the widget shows while and after it runs.

A mixin of :class:`~.train_widget.TrainWidget` (which builds the controls these methods update), kept apart so each
module stays readable: this one is about the worker's reports, the other about the controls.
"""
from __future__ import annotations

from typing import Any, Generator

import numpy as np

from napari.layers import Image
from napari.utils.notifications import show_error, show_info

from n2x import api
from n2x.errors import N2xError

from .denoise_job import DenoiseJob
from .preview import PreviewRegion
from .state import MODELS
from .words import error_text
from .workers import N2xWorkerError, start_worker


def train_steps(data: Any, axes: str, method: str, kw: dict[str, Any], region: PreviewRegion | None,
                should_stop: Any) -> Generator[tuple[Any, tuple | None], None, Any]:
    """Worker body: resolve the method (``auto``: the noise probe chooses) and yield ``(MethodChoice, None)``, then
    train, yielding ``(TrainProgress, preview region index)``; returns the model."""
    choice = api.choose_method(data, axes, method, target=kw.get("target"), pairs=kw.get("pairs"),
                               vst=kw.get("vst", "auto"), dims=kw.get("dims"))
    yield choice, None
    gen = api.train_iter(data, axes, choice, should_stop=should_stop,
                         preview=region.read if region is not None else None, **kw)
    while True:
        try:
            p = next(gen)
        except StopIteration as done:
            return done.value
        yield p, (region.used if region is not None and p.preview is not None else None)


class TrainRun:
    """Starting the training worker and following its reports (progress bar, loss plot, preview, denoising)."""

    def start_training(self, data: Any, axes: str, method: str, kw: dict[str, Any]) -> Any:
        """Start the training worker with every signal connected; returns it."""
        api.prepare_training()  # in the GUI thread: the optimiser's lazy import races in a worker thread
        return start_worker(train_steps, data, axes, method, kw, self._region, self._stop.is_set, doing="training",
                            on_yield=self._on_progress, on_return=self._on_trained, on_error=self._on_error,
                            on_finish=self._on_finished)

    def _on_progress(self, item: tuple) -> None:
        p, index = item
        if isinstance(p, api.MethodChoice):
            self._on_method_chosen(p)
            return
        self.plot.add(p.step, p.loss, p.val_loss, p.total_steps)
        self.progress.setValue(int(1000 * min(1.0, p.fraction)))
        remaining = ""
        if 0 < p.fraction < 1:
            eta = p.elapsed * (1 - p.fraction) / p.fraction
            remaining = f" · ~{fmt_seconds(eta)} left"
        self.progress.setFormat(f"{100 * p.fraction:.0f} %{remaining}")
        best = f" (best {p.best_val_loss:.4g})" if p.best_val_loss is not None else ""
        network = f"network {p.network} · " if p.network > 1 else ""  # a memorising run's budget trains more
        self.status.setText(f"{network}step {p.step} · epoch {p.epoch:.1f} · {fmt_seconds(p.elapsed)} · "
                            f"loss {p.loss:.4g}{best} · {p.patches_per_second:.0f} patches/s")
        if p.preview is not None and index is not None and self._region is not None:
            raw = self._region.read_at(index)
            # Not validated yet, or an output still nearly flat (a few steps in, on a slow CPU): the input itself,
            # marked as such (see _show_preview), rather than a dark square that looks like an erased image.
            if p.best_val_loss is None or float(np.std(p.preview)) < 0.2 * float(np.std(raw)):
                self._show_preview(raw, index, waiting=True)
            else:
                self._show_preview(p.preview, index)

    def _on_method_chosen(self, choice: Any) -> None:
        """``auto`` has chosen: say which method and why (a notification and the status line)."""
        if not choice.automatic:
            return
        show_info(f"n2x: {choice.reason}")
        self.status.setText(f"{choice.reason[:1].upper()}{choice.reason[1:]}; preparing patches…")

    def _denoise_trained(self, layer: Image) -> None:
        self.progress.setRange(0, 0)
        self.progress.setFormat("denoising the layer…")
        try:
            entry = MODELS.get(self.model_name) if self.model_name else None
            self.denoise_job = DenoiseJob(self.viewer, self.model, layer=layer, axes=self._train_axes,
                                          model_entry=entry, on_progress=self._on_denoise_progress,
                                          on_finished=self._on_denoised)
            self.denoise_job.start()
        except N2xError as exc:
            show_error(f"n2x: {error_text(exc)}")
            self.denoise_job = None
            self._reset_progress("trained")

    def _on_denoise_progress(self, done: int, total: int, unit: str) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.progress.setFormat(f"denoising: {done} / {total} {unit}")

    def remove_preview(self) -> None:
        """Remove the live preview layer (superseded by the denoised layer, or of no use once training ended)."""
        if self.preview_layer is not None and self.preview_layer in self.viewer.layers:
            self.viewer.layers.remove(self.preview_layer)
        self.preview_layer = None

    def _on_denoised(self, layers: list) -> None:
        if layers:
            self.remove_preview()  # the full result supersedes the preview
        self._reset_progress("done" if layers else "trained")
        self.train_btn.setEnabled(True)

    def _on_error(self, exc: BaseException) -> None:
        self._errored = True
        message = exc.message if isinstance(exc, N2xWorkerError) else error_text(exc)
        if isinstance(exc, N2xWorkerError) and exc.details and not isinstance(exc.original, N2xError):
            print(exc.details)  # for a bug report; the user reads the notification
        show_error(f"n2x: {message}")
        self.status.setText(f"Training failed: {message}")

    def _reset_progress(self, text: str) -> None:
        self.progress.setRange(0, 1000)
        self.progress.setValue(1000 if text == "done" else self.progress.value() if text == "trained" else 0)
        self.progress.setFormat(text)
        self.train_btn.setEnabled(True)


def fmt_seconds(s: float) -> str:
    """A duration for people: ``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"
