"""The "Train" dock widget: train a self-supervised denoiser on an image layer, watching loss and a live preview.

The widget's controls are bound to :class:`~.settings.TrainSettings` (persisted between sessions), which computes
the arguments of :func:`n2x.api.train_iter`; training runs in a napari generator worker, so the viewer stays
responsive. Stop asks the engine to finish early, which keeps the best model so far.
"""
from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error
from qtpy.QtWidgets import (QComboBox, QDoubleSpinBox, QHBoxLayout, QPushButton, QSizePolicy, QVBoxLayout,
                            QWidget)
from superqt import QCollapsible

from n2x import api
from n2x.errors import N2xError

from ._common import (PREVIEW_SUFFIX, ROLE_KEY, DockJoiner, LayerCombo, add_axes_rows, check_trainable, describe_data, describe_layout,
                      device_control, group_form, insert_after, layer_axes, layer_data, let_fields_shrink,
                      progress_bar, result_layer_kwargs, safe_file_name, scrolling_body, set_status, status_label,
                      value_problem)
from . import export_button
from .denoise_job import DenoiseJob
from .reader import prefer_our_ome_zarr_reader
from .loss_plot import LossPlot
from .method_section import MethodSection
from .noise_check import NoiseCheck
from .option_panel import OptionPanel
from .preview import PreviewRegion, camera
from .settings import COMMON_OPTIONS, LENGTH_UNITS, TrainSettings, load_settings, method_info, method_names
from .state import MODELS
from .train_run import TrainRun
from .words import error_text

COMMON_WORDS = {"dims": {None: "auto (3D if Z)", 2: "2D", 3: "3D"},
                "normalization": {"meanstd": "mean / std", "percentile": "percentiles (1, 99.8)"}}


class TrainWidget(TrainRun, DockJoiner, QWidget):
    """Plugins > n2x > Train."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.mark_dock()
        prefer_our_ome_zarr_reader()  # results dropped back on the viewer keep their scale
        self.viewer = napari_viewer
        self.settings: TrainSettings = load_settings(TrainSettings)
        self.worker: Any = None
        self.model: Any = None
        self.model_name: str | None = None
        self.preview_layer: Image | None = None
        self.denoise_job: DenoiseJob | None = None
        self._stop = threading.Event()
        self._region: PreviewRegion | None = None
        self._train_layer: Image | None = None
        self._train_axes = ""
        self._errored = False
        self._started = 0.0
        self._training = False

        root = scrolling_body(self)
        self.controls = QWidget()  # everything that is frozen while training
        frozen = QVBoxLayout(self.controls)
        frozen.setContentsMargins(0, 0, 0, 0)
        root.addWidget(self.controls)
        self.methods = MethodSection(napari_viewer, self.settings)
        self.common = OptionPanel(COMMON_OPTIONS, self.settings.set_option, overrides={"device": device_control},
                                  words=COMMON_WORDS)
        self.common.show_values(self.settings.options)
        self.settings.events.options.connect(self.common.show_values)
        self.noise = NoiseCheck(self.settings, self._source)
        for build in (self._data_box, self._method_box, self._training_box, self._advanced_box):
            frozen.addWidget(build())
        root.addLayout(self._run_row())
        self.progress = progress_bar(1000, "ready")
        root.addWidget(self.progress)
        self.status = status_label()
        root.addWidget(self.status)
        self.plot = LossPlot()
        root.addWidget(self.plot)
        root.addStretch()
        let_fields_shrink(self)
        self.setMinimumWidth(280)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)

        self.layer_combo.layer_changed.connect(self._layer_changed)
        self.axes_edit.textChanged.connect(lambda _t: self._axes_changed())
        self.settings.events.options.connect(lambda _o: self._axes_changed())
        self._layer_changed(self.layer_combo.layer())

    # -- building ----------------------------------------------------------------------------------------------
    def _data_box(self) -> QWidget:
        box, form = group_form("Data")
        self.layer_combo = LayerCombo(self.viewer)
        self.layer_combo.setToolTip("The noisy image to learn from (numpy, dask or zarr; 2D, 3D, time, channels, RGB)")
        form.addRow("Image", self.layer_combo)
        self.axes_edit, self.data_info = add_axes_rows(form)
        return box

    def _method_box(self) -> QWidget:
        box, form = group_form("Method")
        form.addRow("Method", self.methods.combo)
        form.addRow(self.methods.help)
        form.addRow(self.noise.row)
        form.addRow(self.noise.label)
        form.addRow(self.noise.details)
        form.addRow(self.methods.basic)
        return box

    def _training_box(self) -> QWidget:
        box, form = group_form("Training")
        self.length_spin = QDoubleSpinBox()
        self.length_spin.setRange(0.1, 1e9)
        self.length_spin.setToolTip("How long to train; Stop ends earlier and keeps the best model")
        self.length_unit = QComboBox()
        self.length_unit.addItems(list(LENGTH_UNITS))
        self.length_unit.setToolTip(next(o.help for o in api.TRAIN_OPTIONS if o.name == "time"))
        self._show_length()
        self.length_spin.valueChanged.connect(lambda v: setattr(self.settings, "length", float(v)))
        self.length_unit.currentTextChanged.connect(self.settings.set_unit)
        self.settings.events.length.connect(lambda _v: self._show_length())
        self.settings.events.length_unit.connect(lambda _v: self._show_length())
        row = QHBoxLayout()
        row.addWidget(self.length_spin, 1)
        row.addWidget(self.length_unit)
        form.addRow("Length", row)
        form.addRow(self.common.basic)
        return box

    def _advanced_box(self) -> QWidget:
        self.advanced = QCollapsible("Advanced")
        self.advanced.addWidget(self.common.advanced)
        self.advanced.addWidget(self.methods.advanced)
        return self.advanced

    def _run_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.train_btn = QPushButton("Train")
        self.train_btn.setMinimumHeight(30)
        self.train_btn.clicked.connect(self._train_or_stop)
        self.save_btn = QPushButton("Save model…")
        self.save_btn.setEnabled(False)
        self.save_btn.setToolTip("Save the trained model as a .n2x file (loads in the Denoise widget and the CLI)")
        self.save_btn.clicked.connect(self._browse_save)
        self.export_btn = QPushButton("Export…")  # a BioImage Model Zoo package (export_button.py)
        self.export_btn.setEnabled(False)
        self.export_btn.setToolTip(export_button.TOOLTIP)
        self.export_btn.clicked.connect(lambda: export_button.browse_export(self))
        row.addWidget(self.train_btn, 2)
        row.addWidget(self.save_btn, 1)
        row.addWidget(self.export_btn, 1)
        return row

    def _show_length(self) -> None:
        for control in (self.length_spin, self.length_unit):
            control.blockSignals(True)
        self.length_unit.setCurrentText(self.settings.length_unit)
        self.length_spin.setDecimals(0 if self.settings.length_unit == "steps" else 1)
        self.length_spin.setValue(self.settings.length)
        for control in (self.length_spin, self.length_unit):
            control.blockSignals(False)

    # -- reacting to choices ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True from Train until the worker has finished (also before its thread has actually started)."""
        return self._training

    @property
    def busy(self) -> bool:
        """Training, or denoising the layer after training."""
        return self.running or (self.denoise_job is not None and self.denoise_job.running)

    def control(self, name: str) -> QWidget | None:
        """The Qt control of option ``name``: the current method's, else a common one (for scripts and tests)."""
        found = self.methods.control(name) or self.common.controls.get(name)
        return found.widget if found is not None else None

    def _source(self) -> tuple[Any, str, int | None]:
        return self.layer_combo.layer(), self.axes_edit.text().strip().upper(), self.settings.options.get("dims")

    def _layer_changed(self, layer: Image | None) -> None:
        self.axes_edit.blockSignals(True)
        self.axes_edit.setText(layer_axes(layer) if layer is not None else "")
        self.axes_edit.blockSignals(False)
        self.noise.clear()
        self._axes_changed()

    def _axes_changed(self) -> None:
        layer, axes, dims = self._source()
        if layer is None:
            set_status(self.data_info, "No image layer: open an image or use File > Open Sample > n2x.", None)
            return
        data = layer_data(layer)
        try:
            text = f"{describe_data(data)}\n{describe_layout(tuple(data.shape), axes, dims)}"
            check_trainable(layer, axes, dims)  # the engine's rule: green only for what Train accepts
            problem = value_problem(data)
        except N2xError as exc:
            set_status(self.data_info, f"{describe_data(data)}\n{error_text(exc)}", False)
            return
        set_status(self.data_info, f"{text}\n{problem}" if problem else text, problem is None)

    def set_method(self, key: str) -> None:
        """Choose method ``key`` (a registered name)."""
        if key in method_names():
            self.settings.method = key

    def set_length(self, value: float, unit: str) -> None:
        """Train for ``value`` ``unit`` (minutes, seconds, steps or epochs)."""
        self.settings.set_length(value, unit)

    def training_kwargs(self) -> dict[str, Any]:
        """The arguments for :func:`n2x.api.train_iter` from the settings and the chosen layers (N2xError when one
        is unusable)."""
        return self.settings.training_kwargs(self.methods.images(exclude=self.layer_combo.layer()))

    # -- training ----------------------------------------------------------------------------------------------
    def _train_or_stop(self) -> None:
        if self.running:
            self.stop()
        elif not self.busy:
            self.train()

    def train(self) -> bool:
        """Start training with the current choices; a notification instead when something does not fit."""
        layer, axes, dims = self._source()
        try:
            check_trainable(layer, axes, dims)
            kw = self.training_kwargs()
            layout = api.make_layout(tuple(layer_data(layer).shape), axes, kw.get("dims"))
        except N2xError as exc:
            show_error(f"n2x: {error_text(exc)}")
            return False
        method = kw.pop("method")
        self._stop.clear()
        self._errored = False
        self._train_layer, self._train_axes = layer, axes
        self.model = None
        self.plot.clear()
        self._region = None
        if self.settings.options.get("preview"):
            self._region = PreviewRegion(layer, layout)
            self._region.update(self.viewer)
            self.viewer.dims.events.current_step.connect(self._view_moved)
            camera(self.viewer).events.center.connect(self._view_moved)
        self.controls.setEnabled(False)
        self.save_btn.setEnabled(False)
        self.export_btn.setEnabled(False)
        self.train_btn.setText("Stop")
        self.train_btn.setToolTip("Stop now and keep the best model so far")
        self.progress.setValue(0)
        self.progress.setFormat("preparing patches…")
        self.status.setText(f"Training {method_info(method).label} on {layer.name!r}…")
        self._started = time.monotonic()
        self._training = True
        self.worker = self.start_training(layer_data(layer), axes, method, kw)
        return True

    def stop(self) -> None:
        """Ask training to end after the current step; the best model so far is kept."""
        self._stop.set()
        self.train_btn.setText("Stopping…")
        self.train_btn.setEnabled(False)

    def _view_moved(self, *_: Any) -> None:
        if self._region is not None:
            self._region.update(self.viewer)

    def _show_preview(self, preview: np.ndarray, index: tuple, waiting: bool = False) -> None:
        """Show ``preview`` over the region it came from; ``waiting``: it is the raw input, shown until the model has
        validated once, dimmed and said so in the layer's metadata and the status line."""
        layer = self._train_layer
        arr, offsets = self._region.place(preview, index)
        translate = [t + o * s for t, o, s in zip(layer.translate, offsets, layer.scale)]
        state = "input: the model has not validated yet" if waiting else "model output"
        if self.preview_layer is None or self.preview_layer not in self.viewer.layers:
            kwargs = result_layer_kwargs(layer, PREVIEW_SUFFIX, self._train_axes)
            kwargs["translate"] = translate
            kwargs["metadata"] = {**kwargs["metadata"], ROLE_KEY: "preview", "n2x_preview": state}
            self.preview_layer = insert_after(self.viewer, layer, Image(arr, **kwargs))
        else:
            self.preview_layer.data = arr
            self.preview_layer.translate = translate
            self.preview_layer.metadata = {**self.preview_layer.metadata, "n2x_preview": state}
        self.preview_layer.opacity = 0.5 if waiting else 1.0  # "not yet": the input shows through, half strength
        if waiting:
            self.status.setText(self.status.text() + " · preview: the input until the first validation")

    def _on_trained(self, model: Any) -> None:
        if model is None:
            return
        self.model = model
        layer = self._train_layer
        hist = model.history or {}
        # The time first: it is what tells two models of one layer apart, and a narrow combo keeps the left end.
        tag = f"{api.method_info(model.method_name).label} {datetime.now():%H:%M:%S}"
        entry = MODELS.add(model, name=f"{tag} · {layer.name}", source=f"trained on layer {layer.name!r}", tag=tag)
        self.model_name = entry.name
        self.save_btn.setEnabled(True)
        self.export_btn.setEnabled(True)
        how = "stopped" if hist.get("stopped") else "finished"
        best = hist.get("best_val_loss")
        self.status.setText(f"Training {how} after {hist.get('steps', '?')} steps"
                            + (f"; best validation loss {best:.4g} at step {hist.get('best_step')}" if best else "")
                            + (f" (the held-out loss rose after step {hist['rewound_to']}: training went back there "
                               "and annealed from it)" if hist.get("rewound_at") else "")
                            + (f"; the time left trained {len(hist['members']) - 1} more network(s), "
                               f"{sum(bool(m.get('kept', True)) for m in hist['members'])} of them kept and averaged"
                               if hist.get("members") else "")
                            + f". Model listed in Denoise as “{entry.name}”.")
        if self.settings.options.get("denoise_after") and layer in self.viewer.layers:
            self._denoise_trained(layer)
        else:
            self.remove_preview()  # nothing will supersede it; a stale "[n2x preview]" would look like a result

    def _on_finished(self) -> None:
        self._training = False
        for emitter in (self.viewer.dims.events.current_step, camera(self.viewer).events.center):
            emitter.disconnect(self._view_moved)
        self.controls.setEnabled(True)
        self.train_btn.setText("Train")
        self.train_btn.setToolTip("")
        self.train_btn.setEnabled(not self.busy)
        if self._errored:
            self.remove_preview()
            self._reset_progress("failed")
        elif self.denoise_job is None or not self.denoise_job.running:
            self._reset_progress("done" if self.model is not None else "ready")

    # -- saving ------------------------------------------------------------------------------------------------
    def _browse_save(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        if self.model is None:
            return
        default = safe_file_name(f"{self._train_layer.name if self._train_layer else 'model'}_"
                                 f"{self.model.method_name}") + ".n2x"
        path, _ = QFileDialog.getSaveFileName(self, "Save the model", default, "n2x models (*.n2x)")
        if path:
            self.save_model(path, overwrite=True)  # the dialog has asked before replacing a file

    def save_model(self, path: str | Path, overwrite: bool = False) -> Path | None:
        """Save the trained model (``.n2x`` added when missing); a notification says where or why not."""
        if self.model is None:
            show_error("n2x: there is no trained model to save yet")
            return None
        return export_button.write_and_notify(lambda: api.save_model(self.model, path, overwrite=overwrite), "model saved to")
