"""The "Denoise" dock widget: apply a model to an image layer or to files, tile by tile, in a worker thread.

The widget collects the input, the model and the options (bound to :class:`~.settings.DenoiseSettings`, which
persist between sessions); :class:`~.denoise_job.DenoiseJob` does the work with the CLI's rules for outputs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from napari.layers import Layer
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QButtonGroup, QCheckBox, QComboBox, QHBoxLayout, QLineEdit, QPushButton, QRadioButton,
                            QSizePolicy, QWidget)

from n2x import api
from n2x.errors import N2xError

from ._common import (DockJoiner, LayerCombo, add_axes_rows, describe_data, describe_layout, device_control, field_with_button,
                      group_form, hint_label, layer_axes, layer_data, let_fields_shrink, progress_bar, scrolling_body,
                      set_status, status_label)
from .denoise_job import DenoiseJob
from .reader import prefer_our_ome_zarr_reader
from .option_panel import OptionPanel
from .settings import DENOISE_OPTIONS, DenoiseSettings, load_settings
from .state import MODELS, ModelEntry, load_model_into_registry
from .words import error_text

OUTPUT_WORDS = {"auto": "automatic", "tiff": "in memory (TIFF)", "zarr": "OME-Zarr on disk"}


class DenoiseWidget(DockJoiner, QWidget):
    """Plugins > n2x > Denoise."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.mark_dock()
        prefer_our_ome_zarr_reader()  # results dropped back on the viewer keep their scale
        self.viewer = napari_viewer
        self.job: DenoiseJob | None = None
        self.settings: DenoiseSettings = load_settings(DenoiseSettings)
        root = scrolling_body(self)  # a short screen scrolls instead of squeezing the controls
        root.addWidget(self._input_box())
        root.addWidget(self._model_box())
        root.addWidget(self._options_box())

        self.run_btn = QPushButton("Denoise")
        self.run_btn.setMinimumHeight(30)
        self.run_btn.clicked.connect(self._run_or_cancel)
        root.addWidget(self.run_btn)
        self.progress = progress_bar(1, "idle")
        root.addWidget(self.progress)
        self.status = status_label()
        root.addWidget(self.status)
        root.addStretch()
        let_fields_shrink(self)

        self.from_layer.toggled.connect(self._source_changed)
        self.layer_combo.layer_changed.connect(lambda _l: self._source_changed())
        self.path_edit.editingFinished.connect(self._source_changed)
        self.axes_edit.textChanged.connect(lambda _t: self._check())
        self.model_combo.currentIndexChanged.connect(lambda _i: self._model_changed())
        MODELS.changed.connect(self._refresh_models)
        self._refresh_models()
        self._source_changed()

    # -- building ----------------------------------------------------------------------------------------------
    def _input_box(self) -> QWidget:
        box, form = group_form("Input")
        self.from_layer = QRadioButton("Image layer")
        self.from_path = QRadioButton("File or folder")
        self.from_layer.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.from_layer)
        group.addButton(self.from_path)
        row = QHBoxLayout()
        row.addWidget(self.from_layer)
        row.addWidget(self.from_path)
        row.addStretch()
        form.addRow(row)
        self.layer_combo = LayerCombo(self.viewer)
        form.addRow("Layer", self.layer_combo)
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("image.tif, volume.ome.zarr or a folder")
        self.path_edit.setToolTip("A TIFF/OME-TIFF or (OME-)Zarr image, or a folder of them; read lazily.")
        file_btn, dir_btn = QPushButton("File…"), QPushButton("Folder…")
        file_btn.clicked.connect(self._browse_file)
        dir_btn.clicked.connect(self._browse_folder)
        self.path_row = QWidget()
        prow = field_with_button(self.path_edit, file_btn, dir_btn)
        prow.setContentsMargins(0, 0, 0, 0)
        self.path_row.setLayout(prow)
        form.addRow("Path", self.path_row)
        self.axes_edit, self.input_info = add_axes_rows(form)
        return box

    def _model_box(self) -> QWidget:
        box, form = group_form("Model")
        self.model_combo = QComboBox()
        self.model_combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.model_combo.setToolTip("Models trained in the Train widget, loaded here or opened as .n2x files.")
        load_btn = QPushButton("Load…")
        load_btn.setToolTip("Load a .n2x model file (you can also drop it onto the viewer)")
        load_btn.clicked.connect(self._browse_model)
        form.addRow("Model", field_with_button(self.model_combo, load_btn))
        self.model_info = hint_label("Train a model in Plugins > n2x > Train, or load a .n2x file.")
        form.addRow(self.model_info)
        return box

    def _options_box(self) -> QWidget:
        box, form = group_form("Options")
        self.options = OptionPanel(DENOISE_OPTIONS, self.settings.set_option, overrides={"device": device_control},
                                   words={"output": OUTPUT_WORDS})
        self.options.show_values(self.settings.options)
        self.settings.events.options.connect(self.options.show_values)
        form.addRow(self.options.basic)
        self.halo_label = hint_label("halo: automatic")
        form.addRow("", self.halo_label)
        self.save_edit = QLineEdit()
        self.save_edit.setPlaceholderText("optional: result.ome.zarr, result.tif or a folder")
        self.save_edit.setToolTip("Also save the result here (.zarr: OME-Zarr written chunk by chunk, resumable; "
                                  ".tif: TIFF). For a folder input (or a folder here): an output folder that gets "
                                  "<name>.tif or <name>.ome.zarr per image, as the command line does.")
        save_btn = QPushButton("…")
        save_btn.setFixedWidth(28)
        save_btn.clicked.connect(self._browse_save)
        form.addRow("Save to", field_with_button(self.save_edit, save_btn))
        self.overwrite_check = QCheckBox("Replace existing output")
        self.overwrite_check.setChecked(self.settings.overwrite)
        self.overwrite_check.toggled.connect(lambda on: setattr(self.settings, "overwrite", bool(on)))
        self.settings.events.overwrite.connect(lambda on: self.overwrite_check.setChecked(bool(on)))
        form.addRow("", self.overwrite_check)
        return box

    # -- state -------------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while a job runs (from Denoise until its worker has finished)."""
        return self.job is not None and self.job.running

    def model_entry(self) -> ModelEntry | None:
        """The chosen model's entry in the shared list, or None."""
        name = self.model_combo.currentData()
        return MODELS.get(name) if name else None

    def select_model(self, name: str) -> None:
        """Choose the listed model called ``name``."""
        i = self.model_combo.findData(name)
        if i >= 0:
            self.model_combo.setCurrentIndex(i)

    def _refresh_models(self) -> None:
        try:
            current = self.model_combo.currentData()
        except RuntimeError:  # the Qt widget is gone (viewer closed); psygnal still knew this bound method
            MODELS.changed.disconnect(self._refresh_models)
            return
        entries = MODELS.entries()
        newest = entries[-1].name if entries else None
        known = {self.model_combo.itemData(i) for i in range(self.model_combo.count())}
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for e in entries:
            self.model_combo.addItem(e.name, e.name)
            self.model_combo.setItemData(self.model_combo.count() - 1, f"{e.name}\n{e.describe()}",
                                         Qt.ItemDataRole.ToolTipRole)
        # A model that just arrived (trained, loaded, dropped) becomes the choice; otherwise keep the user's.
        pick = newest if newest not in known else current
        if pick is not None and self.model_combo.findData(pick) >= 0:
            self.model_combo.setCurrentIndex(self.model_combo.findData(pick))
        self.model_combo.blockSignals(False)
        self._model_changed()

    def _model_changed(self) -> None:
        entry = self.model_entry()
        if entry is None:
            self.model_info.setText("No model yet: train one in Plugins > n2x > Train, or load a .n2x file.")
            self.halo_label.setText("halo: automatic")
        else:
            where = f"\n{entry.source}" if entry.source else ""
            self.model_info.setText(entry.describe() + where)
            self.halo_label.setText(f"halo: {entry.model.halo} px per side, from the network's receptive field "
                                    "(automatic, so tiles join without seams)")
        self._check()

    def _path(self) -> Path | None:
        text = self.path_edit.text().strip()
        return Path(text) if text else None

    def _source_changed(self) -> None:
        by_layer = self.from_layer.isChecked()
        self.layer_combo.setEnabled(by_layer)
        self.path_row.setEnabled(not by_layer)
        axes = ""
        layer, p = self.layer_combo.layer(), self._path()
        if by_layer and layer is not None:
            axes = layer_axes(layer)
        elif not by_layer and p is not None and p.exists() and (p.is_file() or api.is_zarr_path(p)):
            try:
                info = api.open_image(p)
                axes = info.axes or api.guess_axes(info.data.shape)
            except N2xError:
                axes = ""
        self.axes_edit.blockSignals(True)
        self.axes_edit.setText(axes)
        self.axes_edit.blockSignals(False)
        self._check()

    def _source_shape(self) -> tuple[tuple[int, ...] | None, str]:
        if self.from_layer.isChecked():
            layer = self.layer_combo.layer()
            if layer is None:
                return None, "no image layer: open one, or choose a file"
            data = layer_data(layer)
            return tuple(data.shape), describe_data(data)
        p = self._path()
        if p is None:
            return None, "choose a file or folder"
        if not p.exists():
            return None, f"{p} does not exist"
        try:
            if p.is_dir() and not api.is_zarr_path(p):
                return None, f"folder with {len(api.expand_inputs([str(p)]))} image(s)"
            data = api.open_image(p).data
        except N2xError as exc:
            return None, error_text(exc)
        return tuple(data.shape), describe_data(data)

    def _check(self) -> bool:
        """Show whether the current input, axes and model fit together; True when they do (or cannot be told)."""
        shape, text = self._source_shape()
        entry = self.model_entry()
        if shape is None:
            set_status(self.input_info, text, None)
            return True
        axes = self.axes_edit.text().strip() or None
        try:
            msg = f"{text}\n{describe_layout(shape, axes)}"
            if entry is not None:
                entry.model.layout_for(shape, axes)
            set_status(self.input_info, msg, True)
            return True
        except N2xError as exc:
            set_status(self.input_info, f"{text}\n{error_text(exc)}", False)
            return False

    # -- browsing ----------------------------------------------------------------------------------------------
    def _browse_file(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self, "Image to denoise", "", "Images (*.tif *.tiff *.zarr);;All (*)")
        if path:
            self._use_path(path)

    def _browse_folder(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path = QFileDialog.getExistingDirectory(self, "Folder (of images, or an OME-Zarr)")
        if path:
            self._use_path(path)

    def _use_path(self, path: str) -> None:
        self.path_edit.setText(path)
        self.from_path.setChecked(True)
        self._source_changed()

    def _browse_save(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(self, "Save the result", "", "OME-Zarr (*.ome.zarr);;TIFF (*.tif)")
        if path:
            self.save_edit.setText(path)

    def _browse_model(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self, "Load an n2x model", "", "n2x models (*.n2x);;All files (*)")
        if path:
            self.load_model(path)

    def load_model(self, path: str | Path) -> ModelEntry | None:
        """Load a model file into the shared list and select it; a notification when it is not a model."""
        try:
            entry = load_model_into_registry(path)
        except N2xError as exc:
            show_error(f"n2x: {error_text(exc)}")
            return None
        except Exception as exc:  # noqa: BLE001 - a broken file must not leave a traceback in the GUI
            show_error(f"n2x: {path} could not be loaded as a model ({type(exc).__name__}: {exc})")
            return None
        self.select_model(entry.name)
        return entry

    # -- running -------------------------------------------------------------------------------------------------
    def _run_or_cancel(self) -> None:
        if self.running:
            self.cancel()
        else:
            self.run()

    def run(self) -> DenoiseJob | None:
        """Start denoising with the current choices; a notification instead when something does not fit."""
        entry = self.model_entry()
        try:
            if entry is None:
                raise N2xError("choose a model first: train one in Plugins > n2x > Train, or load a .n2x file")
            kwargs: dict[str, Any] = {}
            if self.from_layer.isChecked():
                layer = self.layer_combo.layer()
                if layer is None:
                    raise N2xError("choose an image layer to denoise (or a file or folder)")
                api.check_dtype(layer_data(layer).dtype)
                kwargs["layer"] = layer
            else:
                if self._path() is None:
                    raise N2xError("choose a file or folder to denoise")
                kwargs["path"] = self._path()
            s = self.settings
            self.job = DenoiseJob(
                self.viewer, entry.model, model_entry=entry, axes=self.axes_edit.text().strip().upper() or None,
                tile=s.value("tile"),
                halo=s.value("halo"), device=s.value("device"), output=s.value("output"),
                save_to=self.save_edit.text().strip() or None, overwrite=s.overwrite, scheduler=s.value("scheduler"),
                on_progress=self._on_progress, on_finished=self._on_finished, **kwargs)
            self.job.start()
        except N2xError as exc:
            show_error(f"n2x: {error_text(exc)}")
            self.job = None
            return None
        self.run_btn.setText("Cancel")
        self.progress.setRange(0, 0)  # busy until the first report says how many
        self.progress.setFormat("starting…")
        self.status.setText(f"Denoising with {entry.name}…")
        return self.job

    def cancel(self) -> None:
        """Ask the running job to stop after its current chunk."""
        if self.job is not None:
            self.job.cancel()
            self.run_btn.setText("Cancelling…")
            self.run_btn.setEnabled(False)

    def _on_progress(self, done: int, total: int, unit: str) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.progress.setFormat(f"{done} / {total} {unit}")

    def _on_finished(self, layers: list[Layer]) -> None:
        job = self.job
        self.run_btn.setText("Denoise")
        self.run_btn.setEnabled(True)
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if layers else 0)
        if job is not None and job.errored:
            self.progress.setFormat("failed")
            self.status.setText("Failed; see the notification.")
        elif job is not None and job.stop.is_set():
            self.progress.setFormat("cancelled")
            self.status.setText("Cancelled.")
        else:
            self.progress.setFormat("done")
            self.status.setText("Added: " + ", ".join(layer.name for layer in layers) if layers else "Done.")
