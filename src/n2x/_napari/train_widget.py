"""The "Train" dock widget: train a self-supervised denoiser on an image layer, watching loss and a live preview.

The widget only collects parameters; :func:`n2x.train_iter` does the work in a napari generator worker, so the
viewer stays responsive. Stop asks the engine to finish early, which keeps the best model so far.
"""
from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout,
                            QLabel, QLineEdit, QProgressBar, QPushButton, QScrollArea, QSizePolicy, QSpinBox,
                            QVBoxLayout, QWidget)
from superqt import QCollapsible

import n2x

from ..data.axes import Layout, make_layout
from ..errors import N2xError
from ..methods import method_names
from ._common import (_let_fields_shrink, PREVIEW_SUFFIX, ROLE_KEY, LayerCombo, check_trainable, describe_data, describe_layout,
                      hint_label, insert_after, layer_axes, layer_data, result_layer_kwargs, set_status)
from .denoise_widget import DenoiseJob, _fill_devices
from .loss_plot import LossPlot
from .state import MODELS
from .workers import N2xWorkerError, start_worker

METHODS = {
    "n2v": ("Noise2Void (N2V)", "Blind-spot training on the image alone. Needs noise that is independent from "
            "pixel to pixel (photon and read noise of most fluorescence cameras)."),
    "n2v2": ("N2V2", "Noise2Void with blur-pool and no top skip connection: no checkerboard artefacts. A good "
             "default for independent noise."),
    "n2n": ("Noise2Noise (N2N)", "Learns from two noisy views of the same scene: another layer, neighbouring "
            "frames/planes, even/odd frames, or sub-sampled pairs of one image."),
    "apbsn": ("AP-BSN", "For spatially correlated noise (sCMOS patterns, demosaicked or compressed images): a "
              "network blind to a box as wide as the noise correlation (or, with a training stride, the paper's "
              "pixel-shuffle sub-images) cannot learn the noise."),
}
N2N_PAIRS = {
    "subsample": "sub-sampling one image",
    "layer": "another layer",
    "adjacent": "adjacent frames / planes",
    "even-odd": "even / odd frames",
}
LENGTH_UNITS = {"minutes": 3.0, "seconds": 180.0, "steps": 1000.0, "epochs": 20.0}
NETWORK_DEFAULTS = {"features": 16, "depth": 2}  # the engine's U-Net defaults (methods/base.py)


class PreviewRegion:
    """The raw region the preview shows: the user's current slice, around the centre of the view.

    Computed in the GUI thread from the viewer's dims and camera (:meth:`update`), read in the worker thread
    (:meth:`read`, the callable given to ``train_iter(preview=...)``); a lock keeps the two consistent.
    """

    def __init__(self, layer: Image, layout: Layout, max_yx: int = 256, max_z: int = 32):
        self.layer, self.layout = layer, layout
        self.data = layer_data(layer)
        self.max = {"Y": max_yx, "X": max_yx, "Z": max_z}
        self._lock = threading.Lock()
        self._index: tuple | None = None
        self.used: tuple | None = None  # the index of the region last read (worker thread)

    def update(self, viewer: Any) -> None:
        lay = self.layout
        point = np.asarray(viewer.dims.point, float)
        displayed = list(viewer.dims.displayed)
        centre = list(_camera(viewer).center)[-len(displayed):]
        for d, c in zip(displayed, centre):
            point[d] = c
        geo_axes = lay.axes[:-1] if self.layer.rgb else lay.axes  # an RGB layer's colour axis is not a dimension
        pos = self.layer.world_to_data(point)
        index = []
        for a, n in zip(lay.axes, lay.shape):
            p = pos[geo_axes.index(a)] if a in geo_axes else 0.0
            if a in lay.sample_axes:
                i = int(np.clip(round(p), 0, n - 1))
                index.append(slice(i, i + 1))
            elif a == "C":
                index.append(slice(None))
            else:
                size = min(n, self.max[a])
                start = int(np.clip(round(p) - size // 2, 0, n - size))
                index.append(slice(start, start + size))
        with self._lock:
            self._index = tuple(index)

    def read(self) -> np.ndarray | None:
        """The current region as float32 ``(C, *spatial)`` (worker thread)."""
        with self._lock:
            index = self._index
        if index is None:
            return None
        block = np.asarray(self.data[index], np.float32)
        lay = self.layout
        block = block.reshape([n for a, n in zip(lay.axes, block.shape) if a not in lay.sample_axes])
        kept = [a for a in lay.axes if a not in lay.sample_axes]
        order = ([kept.index("C")] if lay.channel_axis else []) + [kept.index(a) for a in lay.spatial]
        block = np.transpose(block, order)
        self.used = index
        return block if lay.channel_axis else block[None]

    def place(self, preview: np.ndarray, index: tuple) -> tuple[np.ndarray, list[float]]:
        """``preview`` ``(C, *spatial)`` back in the layer's axis order with singleton sample axes, and its
        translation in data pixels (per napari dimension) so it sits exactly over the region it came from."""
        lay = self.layout
        current = (["C"] if lay.channel_axis else []) + list(lay.spatial)
        arr = preview if lay.channel_axis else preview[0]
        target = [a for a in lay.axes if a not in lay.sample_axes]
        arr = np.transpose(arr, [current.index(a) for a in target])
        arr = arr.reshape([1 if a in lay.sample_axes else arr.shape[target.index(a)] for a in lay.axes])
        geo_axes = lay.axes[:-1] if self.layer.rgb else lay.axes
        offsets = [float(index[lay.axes.index(a)].start or 0) for a in geo_axes]
        return arr, offsets


def _spin(lo: float, hi: float, value: float, step: float = 1, decimals: int | None = None, tip: str = "",
          suffix: str = "") -> QSpinBox | QDoubleSpinBox:
    box: QSpinBox | QDoubleSpinBox = QDoubleSpinBox() if decimals is not None else QSpinBox()
    if decimals is not None:
        box.setDecimals(decimals)
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    box.setToolTip(tip)
    if suffix:
        box.setSuffix(suffix)
    return box


class TrainWidget(QWidget):
    """Plugins > n2x > Train."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker: Any = None
        self.model: Any = None
        self.model_name: str | None = None
        self.preview_layer: Image | None = None
        self.denoise_job: DenoiseJob | None = None
        self._stop = threading.Event()
        self._region: PreviewRegion | None = None
        self._train_layer: Image | None = None
        self._train_axes = ""
        self._probe_worker: Any = None
        self._report: Any = None
        self._errored = False
        self._started = 0.0
        self._training = False

        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        # Vertical scrolling only: controls shrink to the dock's width instead of hiding behind a scroll bar.
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        outer.addWidget(scroll)
        body = QWidget()
        scroll.setWidget(body)
        root = QVBoxLayout(body)
        root.setContentsMargins(6, 6, 6, 6)
        self.settings = QWidget()  # everything that is frozen while training
        settings = QVBoxLayout(self.settings)
        settings.setContentsMargins(0, 0, 0, 0)
        root.addWidget(self.settings)

        # Data -----------------------------------------------------------------------------------------------------
        box = QGroupBox("Data")
        form = QFormLayout(box)
        self.layer_combo = LayerCombo(napari_viewer)
        self.layer_combo.setToolTip("The noisy image to learn from (numpy, dask or zarr; 2D, 3D, time, channels, RGB)")
        form.addRow("Image", self.layer_combo)
        self.axes_edit = QLineEdit()
        self.axes_edit.setToolTip("One letter per dimension: S (sample), T (time), C (channel), Z, Y, X. Guessed "
                                  "from the layer; correct it if the guess is wrong.")
        form.addRow("Axes", self.axes_edit)
        self.data_info = hint_label()
        form.addRow(self.data_info)
        settings.addWidget(box)

        # Method ---------------------------------------------------------------------------------------------------
        box = QGroupBox("Method")
        form = QFormLayout(box)
        self.method_combo = QComboBox()
        available = set(method_names())
        for key, (label, help_text) in METHODS.items():
            self.method_combo.addItem(label, key)
            item = self.method_combo.model().item(self.method_combo.count() - 1)
            item.setToolTip(help_text)
            if key not in available:
                item.setEnabled(False)
                item.setToolTip("not available in this installation")
        self.method_combo.setCurrentIndex(self.method_combo.findData("n2v2" if "n2v2" in available else "n2v"))
        form.addRow("Method", self.method_combo)
        self.method_help = hint_label()
        form.addRow(self.method_help)
        probe_row = QHBoxLayout()
        self.probe_btn = QPushButton("Check noise")
        self.probe_btn.setToolTip("Measure the noise of the layer (level, spatial correlation) and recommend a method")
        self.probe_btn.clicked.connect(self.check_noise)
        self.follow_btn = QPushButton("Use recommendation")
        self.follow_btn.setVisible(False)
        self.follow_btn.clicked.connect(self.follow_recommendation)
        probe_row.addWidget(self.probe_btn)
        probe_row.addWidget(self.follow_btn)
        probe_row.addStretch()
        form.addRow(probe_row)
        self.probe_label = hint_label()
        self.probe_label.setVisible(False)
        form.addRow(self.probe_label)
        if getattr(n2x, "probe_noise", None) is None and _probe_fn() is None:
            self.probe_btn.setEnabled(False)
            self.probe_btn.setToolTip("The noise probe is not available in this installation")

        # N2V options
        self.n2v_box = QWidget()
        f = QFormLayout(self.n2v_box)
        f.setContentsMargins(0, 0, 0, 0)
        self.mask_spin = _spin(0.1, 25.0, 2.0, 0.5, 1, "Share of pixels masked (blind spots) in each patch", " %")
        f.addRow("Masked pixels", self.mask_spin)
        self.replacement_combo = QComboBox()
        for key, label in (("", "default"), ("neighbour", "random neighbour"),
                           ("mean", "neighbourhood mean"), ("median", "neighbourhood median"),
                           ("random", "random value")):
            self.replacement_combo.addItem(label, key)
        self.replacement_combo.setToolTip("What a masked pixel is replaced with (default: a random neighbour for "
                                          "N2V, the neighbourhood median for N2V2)")
        f.addRow("Replacement", self.replacement_combo)
        form.addRow(self.n2v_box)
        # N2N options
        self.n2n_box = QWidget()
        f = QFormLayout(self.n2n_box)
        f.setContentsMargins(0, 0, 0, 0)
        self.pairs_combo = QComboBox()
        for key, label in N2N_PAIRS.items():
            self.pairs_combo.addItem(label, key)
        self.pairs_combo.setToolTip("Where the second, independent noisy view of each patch comes from")
        f.addRow("Partner", self.pairs_combo)
        self.partner_combo = LayerCombo(napari_viewer)
        self.partner_combo.setToolTip("A second acquisition of the same scene, same shape as the image")
        f.addRow("Partner layer", self.partner_combo)
        self.along_combo = QComboBox()
        self.along_combo.setToolTip("The axis along which neighbouring frames or planes are paired")
        f.addRow("Along", self.along_combo)
        self.loss_combo = QComboBox()
        self.loss_combo.addItem("L2 (zero-mean noise)", "l2")
        self.loss_combo.addItem("L1 (median-preserving, outliers)", "l1")
        f.addRow("Loss", self.loss_combo)
        form.addRow(self.n2n_box)
        # AP-BSN options
        self.apbsn_box = QWidget()
        f = QFormLayout(self.apbsn_box)
        f.setContentsMargins(0, 0, 0, 0)
        self.stride_train_spin = _spin(1, 9, 1, tip="auto (recommended): a full-resolution network blind to a box as "
                                       "wide as the noise correlation, measured by the noise check when training "
                                       "starts. A number: the paper's pixel-shuffle design with that training stride "
                                       "(larger than the noise correlation length)")
        self.stride_train_spin.setSpecialValueText("auto")  # the minimum, 1, stands for "auto"
        f.addRow("Stride (training)", self.stride_train_spin)
        self.stride_infer_spin = _spin(1, 9, 2, tip="Pixel-shuffle design: stride when denoising")
        f.addRow("Stride (denoising)", self.stride_infer_spin)
        self.r3_spin = _spin(0, 32, 8, tip="Pixel-shuffle design: R3 refinement passes averaged at inference (0: off; "
                             "more: smoother, slower)")
        f.addRow("R3 passes", self.r3_spin)
        self.stride_train_spin.valueChanged.connect(self._enable_pd_options)
        self._enable_pd_options()
        form.addRow(self.apbsn_box)
        settings.addWidget(box)

        # Training ---------------------------------------------------------------------------------------------------
        box = QGroupBox("Training")
        form = QFormLayout(box)
        self.length_spin = _spin(0.1, 1e6, 3.0, 1, 1, "How long to train; Stop ends earlier and keeps the best model")
        self.length_unit = QComboBox()
        self.length_unit.addItems(list(LENGTH_UNITS))
        row = QHBoxLayout()
        row.addWidget(self.length_spin, 1)
        row.addWidget(self.length_unit)
        form.addRow("Length", row)
        self.patch_edit = QLineEdit()
        self.patch_edit.setPlaceholderText("auto")
        self.patch_edit.setToolTip("Training patch size: auto (64×64 in 2D, 16×64×64 in 3D), one size (64) or one "
                                   "per spatial axis (16, 64, 64); multiples of the network's downsampling factor")
        form.addRow("Patch size", self.patch_edit)
        self.batch_spin = _spin(0, 1024, 0, tip="Patches per step; lower it if the device runs out of memory. auto: "
                                "64 patches of 32 x 32 in 2D, 16 in 3D, the same number of pixels for other patch sizes")
        self.batch_spin.setSpecialValueText("auto")  # 0 stands for "auto"
        form.addRow("Batch size", self.batch_spin)
        self.device_combo = QComboBox()
        _fill_devices(self.device_combo)
        form.addRow("Device", self.device_combo)
        settings.addWidget(box)

        # Advanced ---------------------------------------------------------------------------------------------------
        self.advanced = QCollapsible("Advanced")
        adv = QWidget()
        form = QFormLayout(adv)
        form.setContentsMargins(0, 0, 0, 0)
        self.lr_spin = _spin(1e-5, 1.0, 4e-3, 1e-4, 5, "Peak learning rate (warm-up, then cosine decay)")
        form.addRow("Learning rate", self.lr_spin)
        self.features_spin = _spin(4, 256, NETWORK_DEFAULTS["features"], 4, tip="Feature maps in the first "
                                   "network level; fewer is faster, more can be more accurate")
        form.addRow("Network features", self.features_spin)
        self.depth_spin = _spin(1, 5, NETWORK_DEFAULTS["depth"], tip="Resolution levels of the U-Net")
        form.addRow("Network depth", self.depth_spin)
        self.dims_combo = QComboBox()
        for label, val in (("auto (3D if Z)", None), ("2D", 2), ("3D", 3)):
            self.dims_combo.addItem(label, val)
        self.dims_combo.setToolTip("2D treats Z planes as separate images; 3D learns from the volume")
        form.addRow("Network", self.dims_combo)
        self.channels_combo = QComboBox()
        self.channels_combo.addItem("independent", "independent")
        self.channels_combo.addItem("joint", "joint")
        self.channels_combo.setToolTip("independent: one network applied to each channel, each normalised on its "
                                       "own; joint: all channels in and out of one network")
        form.addRow("Channels", self.channels_combo)
        self.norm_combo = QComboBox()
        self.norm_combo.addItem("mean / std", "meanstd")
        self.norm_combo.addItem("percentiles (1, 99.8)", "percentile")
        form.addRow("Normalisation", self.norm_combo)
        self.val_spin = _spin(1.0, 50.0, 10.0, 1, 1, "Share of patches held out to measure validation loss", " %")
        form.addRow("Validation", self.val_spin)
        self.seed_spin = _spin(-1, 2**31 - 1, -1, tip="Random seed for a reproducible run (random: a new one)")
        self.seed_spin.setSpecialValueText("random")
        form.addRow("Seed", self.seed_spin)
        self.memory_spin = _spin(0.1, 256, 2.0, 0.5, 1, "Patches kept in memory; larger data are sampled region "
                                 "by region", " GB")
        form.addRow("Patch memory", self.memory_spin)
        self.preview_check = QCheckBox("live preview of the current view")
        self.preview_check.setChecked(True)
        form.addRow(self.preview_check)
        self.preview_every_spin = _spin(0.5, 120, 3.0, 0.5, 1, "Seconds between preview updates", " s")
        form.addRow("Preview every", self.preview_every_spin)
        self.denoise_after_check = QCheckBox("denoise the image when training ends")
        self.denoise_after_check.setChecked(True)
        form.addRow(self.denoise_after_check)
        self.advanced.addWidget(adv)
        settings.addWidget(self.advanced)

        # Run ---------------------------------------------------------------------------------------------------
        row = QHBoxLayout()
        self.train_btn = QPushButton("Train")
        self.train_btn.setMinimumHeight(30)
        self.train_btn.clicked.connect(self._train_or_stop)
        self.save_btn = QPushButton("Save model…")
        self.save_btn.setEnabled(False)
        self.save_btn.setToolTip("Save the trained model as a .n2x file (loads in the Denoise widget and the CLI)")
        self.save_btn.clicked.connect(self._browse_save)
        row.addWidget(self.train_btn, 2)
        row.addWidget(self.save_btn, 1)
        root.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("ready")
        self.progress.setTextVisible(True)
        root.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setStyleSheet("font-size: 11px;")
        root.addWidget(self.status)
        self.plot = LossPlot()
        root.addWidget(self.plot)
        root.addStretch()

        _let_fields_shrink(self)
        self.setMinimumWidth(280)

        # Wiring ---------------------------------------------------------------------------------------------------
        self.layer_combo.layer_changed.connect(self._layer_changed)
        self.axes_edit.textChanged.connect(lambda _t: self._axes_changed())
        self.dims_combo.currentIndexChanged.connect(lambda _i: self._axes_changed())
        self.method_combo.currentIndexChanged.connect(lambda _i: self._method_changed())
        self.pairs_combo.currentIndexChanged.connect(lambda _i: self._method_changed())
        self.length_unit.currentTextChanged.connect(self._unit_changed)
        self._layer_changed(self.layer_combo.layer())
        self._method_changed()
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)

    # -- reacting to choices ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True from Train until the worker has finished (also before its thread has actually started)."""
        return self._training

    @property
    def busy(self) -> bool:
        """Training, or denoising the layer after training."""
        return self.running or (self.denoise_job is not None and self.denoise_job.running)

    def _layer_changed(self, layer: Image | None) -> None:
        self.axes_edit.blockSignals(True)
        self.axes_edit.setText(layer_axes(layer) if layer is not None else "")
        self.axes_edit.blockSignals(False)
        self.probe_label.setVisible(False)
        self.follow_btn.setVisible(False)
        self._axes_changed()

    def _axes_changed(self) -> None:
        layer = self.layer_combo.layer()
        axes = self.axes_edit.text().strip().upper()
        self.along_combo.clear()
        for a in axes:
            if a in "TZS":
                self.along_combo.addItem(a)
        if "T" in axes:
            self.along_combo.setCurrentText("T")
        if layer is None:
            set_status(self.data_info, "No image layer: open an image or use File > Open Sample > n2x.", None)
            return
        data = layer_data(layer)
        try:
            text = f"{describe_data(data)}\n{describe_layout(tuple(data.shape), axes, self.dims_combo.currentData())}"
            set_status(self.data_info, text, True)
        except N2xError as exc:
            set_status(self.data_info, f"{describe_data(data)}\n{exc}", False)

    def _method_changed(self) -> None:
        key = self.method_combo.currentData()
        self.method_help.setText(METHODS[key][1])
        self.n2v_box.setVisible(key in ("n2v", "n2v2"))
        self.n2n_box.setVisible(key == "n2n")
        self.apbsn_box.setVisible(key == "apbsn")
        pairs = self.pairs_combo.currentData()
        form = self.n2n_box.layout()
        form.setRowVisible(self.partner_combo, pairs == "layer")
        form.setRowVisible(self.along_combo, pairs in ("adjacent", "even-odd"))
        if self._report is not None:
            self._show_report(self._report)

    def _unit_changed(self, unit: str) -> None:
        self.length_spin.setDecimals(0 if unit == "steps" else 1)
        self.length_spin.setValue(LENGTH_UNITS[unit])

    def set_method(self, key: str) -> None:
        i = self.method_combo.findData(key)
        if i >= 0:
            self.method_combo.setCurrentIndex(i)

    def set_length(self, value: float, unit: str) -> None:
        self.length_unit.setCurrentText(unit)
        self.length_spin.setValue(value)

    # -- noise probe -------------------------------------------------------------------------------------------
    def check_noise(self) -> None:
        """Run the noise probe on the chosen layer in a worker; the result appears under the method."""
        layer = self.layer_combo.layer()
        try:
            check_trainable(layer, self.axes_edit.text().strip().upper(), self.dims_combo.currentData(), min_size=8)
        except N2xError as exc:
            show_error(f"n2x: {exc}")
            return
        probe = _probe_fn()
        self.probe_btn.setEnabled(False)
        self.probe_btn.setText("Checking…")
        self.probe_label.setVisible(True)
        set_status(self.probe_label, "Measuring the noise…", None)

        def done() -> None:
            self.probe_btn.setEnabled(True)
            self.probe_btn.setText("Check noise")

        def failed(exc: BaseException) -> None:
            msg = exc.message if isinstance(exc, N2xWorkerError) else str(exc)
            set_status(self.probe_label, f"The noise check failed: {msg}", False)
            show_error(f"n2x: {msg}")

        self._probe_worker = start_worker(probe, layer_data(layer), self.axes_edit.text().strip().upper() or None,
                                          doing="the noise check", on_return=self._show_report, on_error=failed,
                                          on_finish=done)

    def _show_report(self, report: Any) -> None:
        self._report = report
        rec = getattr(report, "recommended", None)
        text = report.summary() if hasattr(report, "summary") else str(report)
        current = self.method_combo.currentData()
        follows = rec is None or rec == current or (rec == "n2v" and current in ("n2v", "n2v2", "n2n"))
        if rec == "apbsn" and current == "apbsn" and getattr(report, "stride", None):
            spin = self.stride_train_spin
            follows = spin.value() == spin.minimum() or spin.value() >= int(report.stride)
        self.probe_label.setVisible(True)
        set_status(self.probe_label, text, True if follows else None)
        if rec is not None and not follows:
            self.follow_btn.setText(f"Use {METHODS.get(rec, (rec,))[0]}")
        self.follow_btn.setVisible(rec is not None and not follows)

    def _enable_pd_options(self, *_: Any) -> None:
        """Inference stride and R3 belong to the pixel-shuffle design (a number as training stride)."""
        pd = self.stride_train_spin.value() != self.stride_train_spin.minimum()
        self.stride_infer_spin.setEnabled(pd)
        self.r3_spin.setEnabled(pd)

    def follow_recommendation(self) -> None:
        """Switch the method to what the noise check recommended (AP-BSN: with its automatic blind box)."""
        report = self._report
        if report is None:
            return
        rec = report.recommended
        if rec == "n2v" and "n2v2" in method_names():
            rec = "n2v2"  # same assumption (independent noise), without checkerboard artefacts
        self.set_method(rec)
        if rec == "apbsn":  # auto: the blind box sized by the same noise measurement
            self.stride_train_spin.setValue(self.stride_train_spin.minimum())
        self._show_report(report)

    # -- training ----------------------------------------------------------------------------------------------
    def _train_or_stop(self) -> None:
        if self.running:
            self.stop()
        elif not self.busy:
            self.train()

    def training_kwargs(self) -> dict[str, Any]:
        """The arguments for :func:`n2x.train_iter` from the widget's state (N2xError when one is unusable)."""
        method = self.method_combo.currentData()
        unit = self.length_unit.currentText()
        value = self.length_spin.value()
        kw: dict[str, Any] = {
            "method": method, "batch_size": self.batch_spin.value() or None, "learning_rate": self.lr_spin.value(),
            "channels": self.channels_combo.currentData(), "dims": self.dims_combo.currentData(),
            "device": self.device_combo.currentData(), "normalization": self.norm_combo.currentData(),
            "val_fraction": self.val_spin.value() / 100, "max_memory": self.memory_spin.value() * 1e9,
            "preview_every": self.preview_every_spin.value(),
        }
        if unit == "minutes":
            kw["time"] = value * 60
        elif unit == "seconds":
            kw["time"] = value
        elif unit == "steps":
            kw["steps"] = int(value)
        else:
            kw["epochs"] = value
        if self.seed_spin.value() >= 0:
            kw["seed"] = self.seed_spin.value()
        patch = self.patch_edit.text().strip().lower()
        if patch and patch != "auto":
            from .denoise_widget import parse_tile

            try:
                kw["patch_size"] = parse_tile(patch)
            except N2xError:
                raise N2xError(f"cannot read the patch size {patch!r}; write auto, 64 or 16, 64, 64") from None
        network = {k: spin.value() for k, spin in (("features", self.features_spin), ("depth", self.depth_spin))
                   if spin.value() != NETWORK_DEFAULTS[k]}
        if method == "apbsn":
            network.pop("depth", None)  # a U-Net setting; AP-BSN's networks have no resolution levels
        if network:
            kw["network"] = network
        if method in ("n2v", "n2v2"):
            kw["mask_fraction"] = self.mask_spin.value() / 100
            if self.replacement_combo.currentData():
                kw["replacement"] = self.replacement_combo.currentData()
        elif method == "n2n":
            pairs = self.pairs_combo.currentData()
            kw["loss"] = self.loss_combo.currentData()
            if pairs == "layer":
                partner = self.partner_combo.layer()
                if partner is None or partner is self.layer_combo.layer():
                    raise N2xError("Noise2Noise with another layer needs a second image layer of the same scene "
                                   "(choose it as partner layer), or choose another partner")
                kw["target"] = layer_data(partner)
            else:
                kw["pairs"] = pairs
                if pairs in ("adjacent", "even-odd"):
                    along = self.along_combo.currentText()
                    if not along:
                        raise N2xError(f"pairs of {N2N_PAIRS[pairs]} need a T or Z axis in the axes")
                    kw["along"] = along
        elif method == "apbsn":
            spin = self.stride_train_spin
            kw.update(stride_train="auto" if spin.value() == spin.minimum() else spin.value(), stride_infer=self.stride_infer_spin.value(),
                      r3_passes=self.r3_spin.value())
        return kw

    def train(self) -> bool:
        """Start training with the current choices; a notification instead when something does not fit."""
        layer = self.layer_combo.layer()
        axes = self.axes_edit.text().strip().upper()
        try:
            check_trainable(layer, axes, self.dims_combo.currentData())
            kw = self.training_kwargs()
            layout = make_layout(tuple(layer_data(layer).shape), axes, kw["dims"])
        except N2xError as exc:
            show_error(f"n2x: {exc}")
            return False
        method = kw.pop("method")
        _warm_up_torch()
        self._stop.clear()
        self._errored = False
        self._train_layer, self._train_axes = layer, axes
        self.model = None
        self.plot.clear()
        self._region = None
        if self.preview_check.isChecked():
            self._region = PreviewRegion(layer, layout)
            self._region.update(self.viewer)
            self.viewer.dims.events.current_step.connect(self._view_moved)
            _camera(self.viewer).events.center.connect(self._view_moved)
        self.settings.setEnabled(False)
        self.save_btn.setEnabled(False)
        self.train_btn.setText("Stop")
        self.train_btn.setToolTip("Stop now and keep the best model so far")
        self.progress.setValue(0)
        self.progress.setFormat("preparing patches…")
        self.status.setText(f"Training {METHODS[method][0]} on {layer.name!r}…")
        self._started = time.monotonic()
        self._training = True
        self.worker = start_worker(
            _train_gen, layer_data(layer), axes, method, kw, self._region, self._stop.is_set, doing="training",
            on_yield=self._on_progress, on_return=self._on_trained, on_error=self._on_error,
            on_finish=self._on_finished)
        return True

    def stop(self) -> None:
        """Ask training to end after the current step; the best model so far is kept."""
        self._stop.set()
        self.train_btn.setText("Stopping…")
        self.train_btn.setEnabled(False)

    def _view_moved(self, *_: Any) -> None:
        if self._region is not None:
            self._region.update(self.viewer)

    def _on_progress(self, item: tuple) -> None:
        p, index = item
        self.plot.add(p.step, p.loss, p.val_loss, p.total_steps)
        self.progress.setValue(int(1000 * min(1.0, p.fraction)))
        remaining = ""
        if 0 < p.fraction < 1:
            eta = p.elapsed * (1 - p.fraction) / p.fraction
            remaining = f" · ~{_fmt_seconds(eta)} left"
        self.progress.setFormat(f"{100 * p.fraction:.0f} %{remaining}")
        best = f" (best {p.best_val_loss:.4g})" if p.best_val_loss is not None else ""
        self.status.setText(f"step {p.step} · epoch {p.epoch:.1f} · {_fmt_seconds(p.elapsed)} · loss {p.loss:.4g}"
                            f"{best} · {p.patches_per_second:.0f} patches/s")
        if p.preview is not None and index is not None and self._region is not None:
            self._show_preview(p.preview, index)

    def _show_preview(self, preview: np.ndarray, index: tuple) -> None:
        layer = self._train_layer
        arr, offsets = self._region.place(preview, index)
        translate = [t + o * s for t, o, s in zip(layer.translate, offsets, layer.scale)]
        if self.preview_layer is None or self.preview_layer not in self.viewer.layers:
            kwargs = result_layer_kwargs(layer, PREVIEW_SUFFIX, self._train_axes)
            kwargs["translate"] = translate
            kwargs["metadata"] = {**kwargs["metadata"], ROLE_KEY: "preview"}
            self.preview_layer = insert_after(self.viewer, layer, Image(arr, **kwargs))
        else:
            self.preview_layer.data = arr
            self.preview_layer.translate = translate

    def _on_trained(self, model: Any) -> None:
        if model is None:
            return
        self.model = model
        layer = self._train_layer
        hist = model.history or {}
        name = f"{model.method_name.upper()} · {layer.name} · {datetime.now():%H:%M:%S}"
        entry = MODELS.add(model, name=name, source=f"trained on layer {layer.name!r}")
        self.model_name = entry.name
        self.save_btn.setEnabled(True)
        how = "stopped" if hist.get("stopped") else "finished"
        best = hist.get("best_val_loss")
        self.status.setText(f"Training {how} after {hist.get('steps', '?')} steps"
                            + (f"; best validation loss {best:.4g} at step {hist.get('best_step')}" if best else "")
                            + f". Model listed in Denoise as “{entry.name}”.")
        if self.denoise_after_check.isChecked() and layer in self.viewer.layers:
            self._denoise_trained(layer)

    def _denoise_trained(self, layer: Image) -> None:
        self.progress.setRange(0, 0)
        self.progress.setFormat("denoising the layer…")
        try:
            self.denoise_job = DenoiseJob(self.viewer, self.model, layer=layer, axes=self._train_axes,
                                          on_progress=self._on_denoise_progress, on_finished=self._on_denoised)
            self.denoise_job.start()
        except N2xError as exc:
            show_error(f"n2x: {exc}")
            self.denoise_job = None
            self._reset_progress("trained")

    def _on_denoise_progress(self, done: int, total: int, unit: str) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.progress.setFormat(f"denoising: {done} / {total} {unit}")

    def _on_denoised(self, layers: list) -> None:
        if layers and self.preview_layer is not None and self.preview_layer in self.viewer.layers:
            self.viewer.layers.remove(self.preview_layer)  # the full result supersedes the preview
            self.preview_layer = None
        self._reset_progress("done" if layers else "trained")
        self.train_btn.setEnabled(True)

    def _on_error(self, exc: BaseException) -> None:
        self._errored = True
        message = exc.message if isinstance(exc, N2xWorkerError) else str(exc)
        if isinstance(exc, N2xWorkerError) and exc.details and not isinstance(exc.original, N2xError):
            print(exc.details)  # for a bug report; the user reads the notification
        show_error(f"n2x: {message}")
        self.status.setText(f"Training failed: {message}")

    def _on_finished(self) -> None:
        self._training = False
        for emitter in (self.viewer.dims.events.current_step, _camera(self.viewer).events.center):
            emitter.disconnect(self._view_moved)
        self.settings.setEnabled(True)
        self.train_btn.setText("Train")
        self.train_btn.setToolTip("")
        self.train_btn.setEnabled(not self.busy)
        if self._errored:
            self._reset_progress("failed")
        elif self.denoise_job is None or not self.denoise_job.running:
            self._reset_progress("done" if self.model is not None else "ready")

    def _reset_progress(self, text: str) -> None:
        self.progress.setRange(0, 1000)
        self.progress.setValue(1000 if text == "done" else self.progress.value() if text == "trained" else 0)
        self.progress.setFormat(text)
        self.train_btn.setEnabled(True)

    # -- saving ------------------------------------------------------------------------------------------------
    def _browse_save(self) -> None:
        if self.model is None:
            return
        default = f"{self._train_layer.name if self._train_layer else 'model'}_{self.model.method_name}.n2x"
        path, _ = QFileDialog.getSaveFileName(self, "Save the model", default, "n2x models (*.n2x)")
        if path:
            self.save_model(path)

    def save_model(self, path: str | Path) -> Path | None:
        """Save the trained model (``.n2x`` added when missing); a notification says where or why not."""
        if self.model is None:
            show_error("n2x: there is no trained model to save yet")
            return None
        path = Path(path)
        if path.suffix != ".n2x":
            path = path.with_name(path.name + ".n2x")
        try:
            saved = self.model.save(path)
        except N2xError as exc:
            show_error(f"n2x: {exc}")
            return None
        except OSError as exc:
            show_error(f"n2x: cannot write {path}: {exc.strerror or exc}")
            return None
        show_info(f"n2x: model saved to {saved}")
        return saved


def _train_gen(data: Any, axes: str, method: str, kw: dict[str, Any], region: PreviewRegion | None,
               should_stop: Any):
    """Worker body: train, yielding ``(TrainProgress, preview region index)``; returns the model."""
    gen = n2x.train_iter(data, axes, method, should_stop=should_stop,
                         preview=region.read if region is not None else None, **kw)
    while True:
        try:
            p = next(gen)
        except StopIteration as done:
            return done.value
        yield p, (region.used if region is not None and p.preview is not None else None)


def _camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def _warm_up_torch() -> None:
    """Import torch's lazily loaded compiler machinery in the GUI thread.

    ``torch.optim`` imports ``torch._dynamo`` on first use; done for the first time inside a worker thread, that
    import races with torch's operator registration and fails ("'prims' object has no attribute 'sum'").
    """
    import torch._dynamo  # noqa: F401


def _probe_fn() -> Any:
    fn = getattr(n2x, "probe_noise", None)
    if fn is None:
        try:
            from ..data.probe import probe_noise as fn
        except ImportError:
            return None
    return fn


def _fmt_seconds(s: float) -> str:
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"
