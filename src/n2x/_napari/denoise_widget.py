"""The "Denoise" dock widget: apply a model to an image layer or to files, tile by tile, in a worker thread.

Small inputs are denoised in memory into a new layer. Large or lazy inputs (and any run that is saved) go through
the engine's volume path, which writes an OME-Zarr chunk by chunk; the new layer shows that array while it fills.
:class:`DenoiseJob` holds that logic so the Train widget can reuse it for the layer it shows when training ends.
"""
from __future__ import annotations

import re
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
from napari.layers import Image, Layer
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (QButtonGroup, QCheckBox, QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout,
                            QLabel, QLineEdit, QProgressBar, QPushButton, QRadioButton, QSizePolicy, QSpinBox, QVBoxLayout,
                            QWidget)

import n2x

from ..device import DEVICE_CHOICES
from ..errors import N2xError
from ._common import (_let_fields_shrink, DENOISED_SUFFIX, ROLE_KEY, LayerCombo, describe_data, hint_label, insert_after, layer_axes,
                      layer_data, result_layer_kwargs, set_status)
from .state import MODELS, ModelEntry
from .workers import N2xWorkerError, ProgressRelay, start_worker

#: Inputs whose float32 result exceeds this go to an OME-Zarr on disk (in "auto" output mode).
LARGE_BYTES = 512 * 2**20
IMAGE_SUFFIXES = (".tif", ".tiff", ".zarr")
OUTPUT_MODES = {"auto": "automatic", "memory": "layer in memory", "zarr": "OME-Zarr on disk"}


def parse_tile(text: str) -> int | tuple[int, ...] | None:
    """``""``/``auto`` -> None, ``"256"`` -> 256, ``"32, 256, 256"`` -> (32, 256, 256); N2xError otherwise."""
    text = text.strip().lower()
    if text in ("", "auto"):
        return None
    parts = [p for p in re.split(r"[,x× ]+", text) if p]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise N2xError(f"cannot read the tile size {text!r}; write auto, one size (256) or one per axis "
                       "(32, 256, 256)") from None
    if any(v <= 0 for v in values):
        raise N2xError(f"tile sizes must be positive, not {text!r}")
    return values[0] if len(values) == 1 else values


def volume_api() -> Callable[..., Any] | None:
    """The engine's chunked volume generator when this installation has it."""
    fn = getattr(n2x, "iter_denoise_volume", None)
    if fn is None:
        try:
            from ..inference import volume

            fn = getattr(volume, "iter_denoise_volume", None)
        except ImportError:
            fn = None
    return fn


def _result_bytes(data: Any) -> int:
    return int(np.prod(data.shape)) * 4


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "image"


class DenoiseJob:
    """Denoise one layer, one file or a folder of files with a model, in a worker thread.

    Calls ``on_progress(done, total, unit)`` and finally ``on_finished(layers)`` (the layers added; empty when
    cancelled or failed) in the GUI thread. Errors are shown as napari notifications and also passed to
    ``on_error(message)``.
    """

    def __init__(self, viewer: Any, model: Any, *, layer: Image | None = None, path: str | Path | None = None,
                 axes: str | None = None, tile: int | tuple[int, ...] | None = None, halo: int | None = None,
                 device: str | None = None,
                 output: str = "auto", save_to: str | Path | None = None, overwrite: bool = False,
                 on_progress: Callable[[int, int, str], None] | None = None,
                 on_finished: Callable[[list[Layer]], None] | None = None,
                 on_error: Callable[[str], None] | None = None):
        if (layer is None) == (path is None):
            raise N2xError("choose either an image layer or a file/folder to denoise")
        self.viewer, self.model, self.layer = viewer, model, layer
        self.path = Path(path) if path is not None else None
        self.axes, self.tile, self.halo, self.device, self.output = axes, tile, halo, device, output
        self.save_to = Path(save_to) if save_to else None
        self.overwrite = overwrite
        self.on_progress, self.on_finished, self.on_error = on_progress, on_finished, on_error
        self.stop = threading.Event()
        self.worker: Any = None
        self.layers: list[Layer] = []
        self.errored = False
        self._live: dict[int, tuple[Path, Layer | None, float]] = {}
        self._items: list[dict[str, Any]] = []
        self._running = False

    # -- planning (GUI thread, cheap: files are opened lazily) -------------------------------------------------
    def _plan(self) -> list[dict[str, Any]]:
        if self.layer is not None:
            data = layer_data(self.layer)
            axes = self.axes or layer_axes(self.layer)
            # The OME-Zarr gets the layer's pixel size and origin (keyed by axis; an RGB colour axis has none).
            geo = axes[:-1] if self.layer.rgb else axes
            geometry = {"scale": {a: float(s) for a, s in zip(geo, self.layer.scale) if a != "C"},
                        "translation": {a: float(t) for a, t in zip(geo, self.layer.translate) if a != "C"}}
            return [{"source": data, "data": data, "axes": axes, "name": self.layer.name, "layer": self.layer,
                     "dest": self.save_to, "geometry": geometry}]
        from ..io.images import is_zarr_path, open_image

        p = self.path
        if not p.exists():
            raise N2xError(f"{p} does not exist")
        files = [p] if (p.is_file() or is_zarr_path(p)) else sorted(
            f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
        if not files:
            raise N2xError(f"{p} holds no .tif, .tiff or .zarr images")
        folder_out = None
        if len(files) > 1 or p.is_dir() and not is_zarr_path(p):
            folder_out = self.save_to or Path(tempfile.mkdtemp(prefix="n2x-denoised-"))
            if folder_out.suffix:
                raise N2xError(f"a folder of images needs an output folder, not the file name {folder_out}")
        items = []
        for f in files:
            info = open_image(f)
            from ..data.axes import guess_axes

            axes = self.axes or info.axes or guess_axes(info.data.shape)
            stem = f.name.split(".")[0]
            dest = (folder_out / f"{stem}_n2x.ome.zarr") if folder_out is not None else self.save_to
            items.append({"source": f, "data": info.data, "axes": axes, "name": stem, "layer": None, "dest": dest,
                          "scale": [info.scale.get(a, 1.0) for a in axes],
                          "translate": [info.translation.get(a, 0.0) for a in axes]})
        return items

    def _use_volume(self, item: dict[str, Any]) -> bool:
        if self.output == "memory" and item["dest"] is None and self.halo is None:
            return False
        if self.halo is not None or self.output == "zarr" or item["dest"] is not None or self.path is not None:
            return True
        return _result_bytes(item["data"]) > LARGE_BYTES

    # -- running -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Check everything that can be checked quickly, then start the worker (N2xError when it cannot run)."""
        self._items = self._plan()
        for item in self._items:
            self.model.layout_for(tuple(item["data"].shape), item["axes"])  # ModelMismatchError, before a thread
        use_volume = [self._use_volume(it) for it in self._items]
        import torch._dynamo  # noqa: F401 - see train_widget._warm_up_torch: not first in a worker thread
        vol = volume_api()
        if any(use_volume) and vol is None:
            if any(it["dest"] is not None and it["dest"].suffix != ".tif" for it in self._items) or self.output == "zarr":
                raise N2xError("writing the result to OME-Zarr needs n2x.denoise_volume, which this installation "
                               "does not have yet; denoise into a layer in memory instead")
            use_volume = [False] * len(self._items)
        if any(use_volume):
            for it in self._items:
                if it["dest"] is None:
                    it["dest"] = Path(tempfile.mkdtemp(prefix="n2x-")) / f"{_safe_name(it['name'])}_n2x.ome.zarr"
                if it["dest"].exists() and not self.overwrite and it["dest"].suffix != ".zarr":
                    raise N2xError(f"{it['dest']} exists; choose another output or tick 'replace existing output'")
            self._running = True
            self.worker = start_worker(
                self._volume_gen, vol, doing="denoising", on_yield=self._on_volume_event,
                on_error=self._on_worker_error, on_finish=self._on_finish)
        else:
            self._relay = ProgressRelay()
            self._relay.progress.connect(lambda d, t: self.on_progress and self.on_progress(d, t, "planes"))
            self._running = True
            self.worker = start_worker(
                self._memory_fn, self._relay, doing="denoising", on_return=self._on_memory_result,
                on_error=self._on_worker_error, on_finish=self._on_finish)

    def cancel(self) -> None:
        """Ask the worker to stop after the current tile batch/chunk (chunks written stay on disk)."""
        self.stop.set()

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the worker has finished (also before its thread has started)."""
        return self._running

    def _memory_fn(self, progress: Callable[[int, int], None]) -> list[np.ndarray]:
        from ..io.images import write_tiff

        outs = []
        for item in self._items:
            out = n2x.denoise(self.model, item["data"], item["axes"], tile=self.tile, device=self.device,
                              progress=progress, should_stop=self.stop.is_set)
            if self.stop.is_set():
                return []
            if item["dest"] is not None:  # only .tif reaches here (checked in start)
                write_tiff(item["dest"], out, item["axes"], overwrite=self.overwrite)
            outs.append(out)
        return outs

    def _volume_gen(self, vol: Callable[..., Any]):
        for k, item in enumerate(self._items):
            if self.stop.is_set():
                return
            extra: dict[str, Any] = {}
            if self.halo is not None:
                extra["halo"] = self.halo
            if item.get("geometry"):
                extra.update(item["geometry"])
            gen = vol(self.model, item["source"], item["dest"], axes=item["axes"], tile=self.tile,
                      overwrite=self.overwrite, device=self.device, should_stop=self.stop.is_set, **extra)
            while True:
                try:
                    prog = next(gen)
                except StopIteration as stop:
                    result = stop.value
                    break
                yield ("progress", k, int(getattr(prog, "done", 0)), int(getattr(prog, "total", 0)))
            yield ("done", k, Path(result) if isinstance(result, (str, Path)) else item["dest"])

    # -- GUI-thread handlers ---------------------------------------------------------------------------------
    def _add_layer(self, item: dict[str, Any], data: Any, role: str = "denoised") -> Layer:
        src = item["layer"]
        if src is not None:
            kwargs = result_layer_kwargs(src, DENOISED_SUFFIX, item["axes"])
        else:
            rgb = False
            kwargs = dict(name=f"{item['name']}{DENOISED_SUFFIX}", scale=item["scale"], translate=item["translate"],
                          rgb=rgb, metadata={"n2x_axes": item["axes"], "n2x_source": str(item["source"])})
            lo, hi = _quick_limits(item["data"])
            kwargs["contrast_limits"] = (lo, hi)
        kwargs["metadata"] = {**kwargs["metadata"], ROLE_KEY: role}
        layer = Image(data, **kwargs)
        insert_after(self.viewer, src, layer)
        self.layers.append(layer)
        return layer

    def _open_result(self, dest: Path, axes: str) -> Any:
        """The result as a lazy array in the input's axis order (the OME-Zarr stores NGFF order: T, C, Z, Y, X)."""
        import dask.array as da

        from ..io.images import open_image

        info = open_image(dest)
        data = info.data
        if dest.suffix == ".zarr" or (dest / "0").exists():
            # A new dask name each time: napari's dask cache would otherwise keep showing chunks read while empty.
            data = da.from_zarr(str(dest / "0"), name=f"n2x-{uuid.uuid4().hex}")
        stored = info.axes
        if stored and stored != axes and sorted(stored) == sorted(axes):
            data = data.transpose([stored.index(a) for a in axes])
        return data

    def _on_volume_event(self, event: tuple) -> None:
        kind, k = event[0], event[1]
        item = self._items[k]
        dest: Path = item["dest"]
        if kind == "progress":
            done, total = event[2], event[3]
            if self.on_progress:
                self.on_progress(done, total, "chunks")
            entry = self._live.get(k)
            now = time.monotonic()
            if dest.suffix == ".zarr" and (dest / "0").exists():
                if entry is None:
                    layer = self._add_layer(item, self._open_result(dest, item["axes"]))
                    self._live[k] = (dest, layer, now)
                elif now - entry[2] > 0.5 and entry[1] in self.viewer.layers:
                    entry[1].data = self._open_result(dest, item["axes"])
                    self._live[k] = (dest, entry[1], now)
        else:
            path = event[2]
            entry = self._live.get(k)
            if entry is not None and entry[1] in self.viewer.layers:
                entry[1].data = self._open_result(path, item["axes"])
            elif not self.stop.is_set():
                self._add_layer(item, self._open_result(path, item["axes"]))
            if self.stop.is_set():
                show_warning(f"Denoising cancelled; the chunks already computed are in {path} and a run with the "
                             "same output resumes from there.")

    def _on_memory_result(self, outs: list[np.ndarray]) -> None:
        if self.stop.is_set() or not outs:
            show_info("Denoising cancelled; no layer was added.")
            return
        for item, out in zip(self._items, outs):
            self._add_layer(item, out)

    def _on_worker_error(self, exc: BaseException) -> None:
        self.errored = True
        message = exc.message if isinstance(exc, N2xWorkerError) else str(exc)
        if isinstance(exc, N2xWorkerError) and exc.details and not isinstance(exc.original, N2xError):
            print(exc.details)  # the traceback goes to the console for a bug report; the user sees the message
        show_error(f"n2x: {message}")
        if self.on_error:
            self.on_error(message)

    def _on_finish(self) -> None:
        self._running = False
        if self.on_finished:
            self.on_finished(list(self.layers))


def _quick_limits(data: Any) -> tuple[float, float]:
    """Contrast limits from a small strided sample, so a lazy volume is not read in full."""
    step = tuple(max(1, n // 64) for n in data.shape)
    sample = np.asarray(data[tuple(slice(None, None, s) for s in step)], np.float32)
    lo, hi = np.percentile(sample, [0.5, 99.8]) if sample.size else (0.0, 1.0)
    return float(lo), float(hi if hi > lo else lo + 1)


def load_model_into_registry(path: str | Path) -> ModelEntry:
    """Load a ``.n2x`` file onto the CPU and list it for the widgets; N2xError (ModelFileError) when it is not one."""
    model = n2x.load_model(path, device="cpu")
    return MODELS.add(model, name=Path(path).name, source=str(path))


class DenoiseWidget(QWidget):
    """Plugins > n2x > Denoise."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.job: DenoiseJob | None = None
        root = QVBoxLayout(self)
        root.setContentsMargins(6, 6, 6, 6)

        # Input ---------------------------------------------------------------------------------------------------
        box = QGroupBox("Input")
        form = QFormLayout(box)
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
        self.layer_combo = LayerCombo(napari_viewer)
        form.addRow("Layer", self.layer_combo)
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("image.tif, volume.ome.zarr or a folder")
        self.path_edit.setToolTip("A TIFF/OME-TIFF or (OME-)Zarr image, or a folder of them; read lazily.")
        file_btn = QPushButton("File…")
        dir_btn = QPushButton("Folder…")
        file_btn.clicked.connect(self._browse_file)
        dir_btn.clicked.connect(self._browse_folder)
        prow = QHBoxLayout()
        prow.addWidget(self.path_edit, 1)
        prow.addWidget(file_btn)
        prow.addWidget(dir_btn)
        self.path_row = QWidget()
        self.path_row.setLayout(prow)
        prow.setContentsMargins(0, 0, 0, 0)
        form.addRow("Path", self.path_row)
        self.axes_edit = QLineEdit()
        self.axes_edit.setToolTip("Axes of the input: S (sample), T (time), C (channel), Z, Y, X. Guessed; edit "
                                  "if wrong.")
        form.addRow("Axes", self.axes_edit)
        self.input_info = hint_label()
        form.addRow(self.input_info)
        root.addWidget(box)

        # Model ---------------------------------------------------------------------------------------------------
        box = QGroupBox("Model")
        form = QFormLayout(box)
        self.model_combo = QComboBox()
        self.model_combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.model_combo.setToolTip("Models trained in the Train widget, loaded here or opened as .n2x files.")
        load_btn = QPushButton("Load…")
        load_btn.setToolTip("Load a .n2x model file (you can also drop it onto the viewer)")
        load_btn.clicked.connect(self._browse_model)
        form.addRow("Model", _field_with_button(self.model_combo, load_btn))
        self.model_info = hint_label("Train a model in Plugins > n2x > Train, or load a .n2x file.")
        form.addRow(self.model_info)
        root.addWidget(box)

        # Options ---------------------------------------------------------------------------------------------------
        box = QGroupBox("Options")
        form = QFormLayout(box)
        self.tile_edit = QLineEdit()
        self.tile_edit.setPlaceholderText("auto")
        self.tile_edit.setToolTip("Core tile size in pixels: auto, one size (256) or one per spatial axis "
                                  "(32, 256, 256). Smaller tiles use less memory.")
        form.addRow("Tile", self.tile_edit)
        self.halo_spin = QSpinBox()
        self.halo_spin.setRange(-1, 4096)
        self.halo_spin.setValue(-1)
        self.halo_spin.setSpecialValueText("auto")
        self.halo_spin.setSuffix(" px")
        self.halo_spin.setToolTip("Context read around each tile. auto = the network's receptive radius, so tiles "
                                  "join without seams; smaller is faster but the result then depends on the tiling")
        form.addRow("Halo", self.halo_spin)
        self.halo_label = hint_label("halo: automatic")
        form.addRow("", self.halo_label)
        self.device_combo = QComboBox()
        _fill_devices(self.device_combo)
        form.addRow("Device", self.device_combo)
        self.output_combo = QComboBox()
        for key, label in OUTPUT_MODES.items():
            self.output_combo.addItem(label, key)
        self.output_combo.setToolTip("automatic: small results stay in memory; large inputs are written chunk by "
                                     "chunk to an OME-Zarr (a temporary folder unless Save to is set), shown "
                                     "while it fills")
        form.addRow("Output", self.output_combo)
        self.save_edit = QLineEdit()
        self.save_edit.setPlaceholderText("optional: result.ome.zarr or result.tif")
        self.save_edit.setToolTip("Also save the result here (.zarr: OME-Zarr written chunk by chunk, resumable; "
                                  ".tif: TIFF). For a folder input, an output folder.")
        save_btn = QPushButton("…")
        save_btn.setFixedWidth(28)
        save_btn.clicked.connect(self._browse_save)
        form.addRow("Save to", _field_with_button(self.save_edit, save_btn))
        self.overwrite_check = QCheckBox("replace an existing output")
        form.addRow("", self.overwrite_check)
        root.addWidget(box)

        # Run ---------------------------------------------------------------------------------------------------
        self.run_btn = QPushButton("Denoise")
        self.run_btn.setMinimumHeight(30)
        self.run_btn.clicked.connect(self._run_or_cancel)
        root.addWidget(self.run_btn)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        self.progress.setTextVisible(True)
        root.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        root.addWidget(self.status)
        root.addStretch()
        _let_fields_shrink(self)

        self.from_layer.toggled.connect(self._source_changed)
        self.layer_combo.layer_changed.connect(lambda _l: self._source_changed())
        self.path_edit.editingFinished.connect(self._source_changed)
        self.axes_edit.textChanged.connect(lambda _t: self._check())
        self.model_combo.currentIndexChanged.connect(lambda _i: self._model_changed())
        MODELS.changed.connect(self._refresh_models)
        self._refresh_models()
        self._source_changed()

    # -- state -------------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def model_entry(self) -> ModelEntry | None:
        name = self.model_combo.currentData()
        return MODELS.get(name) if name else None

    def select_model(self, name: str) -> None:
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

    def _source_changed(self) -> None:
        by_layer = self.from_layer.isChecked()
        self.layer_combo.setEnabled(by_layer)
        self.path_row.setEnabled(not by_layer)
        axes = ""
        if by_layer:
            layer = self.layer_combo.layer()
            if layer is not None:
                axes = layer_axes(layer)
        else:
            text = self.path_edit.text().strip()
            p = Path(text) if text else None
            if p is not None and p.exists():
                try:
                    from ..data.axes import guess_axes
                    from ..io.images import is_zarr_path, open_image

                    if p.is_file() or is_zarr_path(p):
                        info = open_image(p)
                        axes = info.axes or guess_axes(info.data.shape)
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
        text = self.path_edit.text().strip()
        if not text:
            return None, "choose a file or folder"
        p = Path(text)
        if not p.exists():
            return None, f"{p} does not exist"
        from ..io.images import is_zarr_path, open_image

        if p.is_dir() and not is_zarr_path(p):
            n = sum(1 for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            return None, f"folder with {n} image(s)"
        try:
            data = open_image(p).data
        except N2xError as exc:
            return None, str(exc)
        return tuple(data.shape), describe_data(data)

    def _check(self) -> bool:
        """Show whether the current input, axes and model fit together; True when they do (or cannot be told)."""
        shape, text = self._source_shape()
        entry = self.model_entry()
        if shape is None:
            set_status(self.input_info, text, None)
            return True
        try:
            from ._common import describe_layout

            msg = f"{text}\n{describe_layout(shape, self.axes_edit.text().strip() or None)}"
            if entry is not None:
                entry.model.layout_for(shape, self.axes_edit.text().strip() or None)
            set_status(self.input_info, msg, True)
            return True
        except N2xError as exc:
            set_status(self.input_info, f"{text}\n{exc}", False)
            return False

    # -- browsing ----------------------------------------------------------------------------------------------
    def _browse_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Image to denoise", "", "Images (*.tif *.tiff *.zarr);;All (*)")
        if path:
            self.path_edit.setText(path)
            self.from_path.setChecked(True)
            self._source_changed()

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder (of images, or an OME-Zarr)")
        if path:
            self.path_edit.setText(path)
            self.from_path.setChecked(True)
            self._source_changed()

    def _browse_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the result", "", "OME-Zarr (*.ome.zarr);;TIFF (*.tif)")
        if path:
            self.save_edit.setText(path)

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load an n2x model", "", "n2x models (*.n2x);;All files (*)")
        if path:
            self.load_model(path)

    def load_model(self, path: str | Path) -> ModelEntry | None:
        """Load a model file into the shared list and select it; a notification when it is not a model."""
        try:
            entry = load_model_into_registry(path)
        except N2xError as exc:
            show_error(f"n2x: {exc}")
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
            tile = parse_tile(self.tile_edit.text())
            axes = self.axes_edit.text().strip().upper() or None
            kwargs: dict[str, Any] = {}
            if self.from_layer.isChecked():
                layer = self.layer_combo.layer()
                if layer is None:
                    raise N2xError("choose an image layer to denoise (or a file or folder)")
                from ..data.axes import check_dtype

                check_dtype(layer_data(layer).dtype)
                kwargs["layer"] = layer
            else:
                text = self.path_edit.text().strip()
                if not text:
                    raise N2xError("choose a file or folder to denoise")
                kwargs["path"] = text
            self.job = DenoiseJob(
                self.viewer, entry.model, axes=axes, tile=tile, device=self.device_combo.currentData(),
                halo=self.halo_spin.value() if self.halo_spin.value() >= 0 else None,
                output=self.output_combo.currentData(), save_to=self.save_edit.text().strip() or None,
                overwrite=self.overwrite_check.isChecked(), on_progress=self._on_progress,
                on_finished=self._on_finished, **kwargs)
            self.job.start()
        except N2xError as exc:
            show_error(f"n2x: {exc}")
            self.job = None
            return None
        self.run_btn.setText("Cancel")
        self.progress.setRange(0, 0)  # busy until the first report says how many
        self.progress.setFormat("starting…")
        self.status.setText(f"Denoising with {entry.name}…")
        return self.job

    def cancel(self) -> None:
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


def _field_with_button(field: Any, button: QPushButton) -> QHBoxLayout:
    """A form row: the field takes the width, its button sits at the right."""
    row = QHBoxLayout()
    row.addWidget(field, 1)
    row.addWidget(button)
    return row


def _fill_devices(combo: QComboBox) -> None:
    """auto, cuda, mps, cpu — the ones this machine lacks are shown but disabled, so users see why."""
    import torch

    available = {"auto": True, "cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    labels = {"auto": "auto (GPU if available)", "cuda": "CUDA GPU", "mps": "Apple GPU (MPS)", "cpu": "CPU"}
    for name in DEVICE_CHOICES:
        combo.addItem(labels[name], name)
        if not available[name]:
            item = combo.model().item(combo.count() - 1)
            item.setEnabled(False)
            item.setToolTip("not available on this machine")
