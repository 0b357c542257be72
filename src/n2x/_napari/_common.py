"""Pieces both dock widgets use: an image-layer chooser, axes guessing, result layers placed like their source."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from napari.layers import Image, Layer
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QProgressBar, QPushButton,
                            QSizePolicy)

from n2x import api
from n2x.api import DEVICE_CHOICES, Option, available_devices, guess_axes, make_layout
from n2x.errors import N2xError

ROLE_KEY = "n2x_role"  # metadata key marking layers this plugin made (preview, denoised)
DENOISED_SUFFIX = " [n2x denoised]"  # kept for scripts that look for it; results are named "<source> · <model>"
RESULT_SEPARATOR = " · "  # a result layer: "<source> · <model tag>", the tag saying which model made it
PARTIAL_MARK = " (partial {done}/{total} chunks)"  # appended to a result whose run was cancelled
PREVIEW_SUFFIX = " [n2x preview]"


def layer_data(layer: Image) -> Any:
    """The full-resolution array of an image layer (level 0 of a multiscale layer), not loaded into memory."""
    return layer.data[0] if layer.multiscale else layer.data


def layer_axes(layer: Image) -> str:
    """Axes for ``layer``: ours from metadata, else napari's axis labels when they are axis letters, else a guess."""
    shape = tuple(layer_data(layer).shape)
    meta = (layer.metadata or {}).get("n2x_axes")
    if isinstance(meta, str) and len(meta) == len(shape):
        return meta.upper()
    labels = [str(a).upper() for a in getattr(layer, "axis_labels", ())]
    if layer.rgb:
        labels = labels + ["C"]
    if len(labels) == len(shape) and all(len(a) == 1 and a in "STCZYX" for a in labels) \
            and len(set(labels)) == len(labels) and {"Y", "X"} <= set(labels):
        return "".join(labels)
    return guess_axes(shape, rgb=bool(layer.rgb))


def describe_data(data: Any) -> str:
    """"shape (32, 256, 256) · uint16 · dask" — what the user should know about an array at a glance."""
    kind = type(data).__module__.split(".")[0]
    kind = {"numpy": "in memory", "dask": "dask (lazy)", "zarr": "zarr (lazy)"}.get(kind, kind)
    nbytes = int(np.prod(data.shape)) * np.dtype(data.dtype).itemsize
    size = f"{nbytes / 2**20:.1f} MB" if nbytes < 2**30 else f"{nbytes / 2**30:.2f} GB"
    return f"shape {tuple(data.shape)} · {np.dtype(data.dtype)} · {size} · {kind}"


def describe_layout(shape: tuple[int, ...], axes: str, dims: int | None = None) -> str:
    """What the engine will make of ``axes``: network dimensionality, channels and samples; raises N2xError."""
    lay = make_layout(shape, axes, dims)
    parts = [f"{lay.ndim_spatial}D ({lay.spatial} {'×'.join(map(str, lay.spatial_shape))})",
             f"{lay.n_channels} channel{'s' if lay.n_channels > 1 else ''}"]
    if lay.sample_axes:
        parts.append(f"{lay.n_samples} {'/'.join(lay.sample_axes)} sample{'s' if lay.n_samples > 1 else ''}")
    return " · ".join(parts)


def check_trainable(layer: Layer | None, axes: str, dims: int | None = None) -> None:
    """Refuse what cannot be trained on, before any thread starts: N2xError with the reason. The engine's one rule
    (:func:`n2x.api.check_trainable`: intensities, axes that fit, at least ``api.MIN_TRAIN_SIZE`` pixels per spatial
    axis), shared by Train, Check noise and the data line."""
    if layer is None:
        raise N2xError("choose an image layer first (open an image, or File > Open Sample > n2x)")
    if not isinstance(layer, Image):
        raise N2xError(f"layer {layer.name!r} is a {type(layer).__name__} layer; choose an image layer with "
                       "the raw noisy intensities")
    data = layer_data(layer)
    api.check_trainable(tuple(data.shape), axes, dims, data.dtype)


#: In-memory layers up to this size are checked whole for NaN and constant values on the data line; larger or lazy
#: ones are checked by the engine when training reads them (reading them here would freeze the viewer).
VALUES_CHECK_BYTES = 64 * 2**20


def value_problem(data: Any) -> str | None:
    """What the data line should say about ``data``'s values: NaN/inf (InputError raised) or a constant image
    (the engine's warning text); None when fine or not checked (a lazy or large layer)."""
    if not isinstance(data, np.ndarray) or data.nbytes > VALUES_CHECK_BYTES:
        return None
    return api.check_values(data, "the layer")


def safe_file_name(name: str) -> str:
    """``name`` as a file name without spaces or brackets ("nuclei 2D (real noise)" -> "nuclei_2D_real_noise")."""
    import re

    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_.") or "model"  # underscores too: no "__" runs


def result_layer_kwargs(source: Image, suffix: str, axes: str) -> dict[str, Any]:
    """Keyword arguments giving a result layer its source's geometry (scale, translation...) and display."""
    kwargs: dict[str, Any] = dict(
        name=f"{source.name}{suffix}", scale=source.scale, translate=source.translate, rotate=source.rotate,
        shear=source.shear, affine=source.affine.affine_matrix, rgb=source.rgb, blending=source.blending,
        contrast_limits=source.contrast_limits, metadata={"n2x_axes": axes, "n2x_source": source.name},
    )
    if not source.rgb:
        kwargs["colormap"] = source.colormap
    for attr in ("units", "axis_labels"):
        if hasattr(source, attr):
            kwargs[attr] = getattr(source, attr)
    return kwargs


def insert_after(viewer: Any, source: Layer | None, layer: Layer) -> Layer:
    """Insert ``layer`` just above ``source`` in the layer list (or on top when there is no source)."""
    if source is not None and source in viewer.layers:
        viewer.layers.insert(viewer.layers.index(source) + 1, layer)
    else:
        viewer.layers.append(layer)
    return layer


class LayerCombo(QComboBox):
    """A combo box of the viewer's image layers that follows additions, removals and renames.

    Layers this plugin made for display (previews) are left out. ``layer_changed`` carries the chosen layer or None.
    """

    layer_changed = Signal(object)

    def __init__(self, viewer: Any, filter: Callable[[Layer], bool] | None = None, parent: Any = None):
        super().__init__(parent)
        self._viewer = viewer
        self._filter = filter or (lambda layer: isinstance(layer, Image)
                                  and (layer.metadata or {}).get(ROLE_KEY) != "preview")
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.moved.connect(self.refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.currentIndexChanged.connect(lambda _i: self.layer_changed.emit(self.layer()))
        self.refresh()
        active = viewer.layers.selection.active
        if active is not None and self._filter(active):
            self.set_layer(active)

    def _on_inserted(self, event: Any) -> None:
        event.value.events.name.connect(self.refresh)
        self.refresh()

    def layers(self) -> list[Layer]:
        return [layer for layer in self._viewer.layers if self._filter(layer)]

    def refresh(self, *_: Any) -> None:
        """Rebuild the list, keeping the current choice when it still exists."""
        current = self.layer()
        layers = self.layers()
        self.blockSignals(True)
        self.clear()
        for layer in layers:
            self.addItem(layer.name, layer)
        if current is not None and current in layers:
            self.setCurrentIndex(layers.index(current))
        self.blockSignals(False)
        if self.layer() is not current:
            self.layer_changed.emit(self.layer())

    def layer(self) -> Layer | None:
        i = self.currentIndex()
        return self.itemData(i) if i >= 0 else None

    def set_layer(self, layer: Layer) -> None:
        for i in range(self.count()):
            if self.itemData(i) is layer:
                self.setCurrentIndex(i)
                return


def hint_label(text: str = "") -> QLabel:
    """A small, wrapping, selectable grey label for explanations under a control."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet("color: #9aa0a6; font-size: 11px;")
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def set_status(label: QLabel, text: str, ok: bool | None = None) -> None:
    """Show ``text`` in ``label``, green for ok, red for a problem, plain otherwise."""
    colour = {True: "#5fbf6f", False: "#ff6b6b", None: ""}[ok]
    label.setStyleSheet(f"color: {colour}; font-size: 11px;" if colour else "font-size: 11px;")
    label.setText(text)


def let_fields_shrink(widget: Any) -> None:
    """Let combo boxes, spin boxes and line edits shrink to a narrow dock.

    Their size hints come from their longest item or the widest number in range (a seed up to 2**31), which would
    make the dock wider than the space napari gives it and cut the widget off on the right.
    """
    from qtpy.QtWidgets import QAbstractSpinBox, QLineEdit

    for combo in widget.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(6)
    for field in widget.findChildren(QAbstractSpinBox) + widget.findChildren(QLineEdit):
        if isinstance(field.parent(), QComboBox):
            continue
        field.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        field.setMinimumWidth(60)
    # A long label ("Memory for patches") beside a field would set the dock's minimum width: in a narrow dock the
    # label goes above its field instead.
    for form in widget.findChildren(QFormLayout):
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)


def group_form(title: str) -> tuple[QGroupBox, QFormLayout]:
    """A titled group box and the form inside it."""
    box = QGroupBox(title)
    return box, QFormLayout(box)


def add_axes_rows(form: QFormLayout) -> tuple[Any, QLabel]:
    """The "Axes" field (guessed from the input, editable) and, under it, the line that says what the engine makes
    of the input and those axes; both widgets share this pair."""
    from qtpy.QtWidgets import QLineEdit

    edit = QLineEdit()
    edit.setToolTip("One letter per dimension: S (sample), T (time), C (channel), Z, Y, X. Guessed from the input; "
                    "correct it if the guess is wrong.")
    form.addRow("Axes", edit)
    info = hint_label()
    form.addRow(info)
    return edit, info


def progress_bar(maximum: int, text: str) -> QProgressBar:
    """The progress bar under a widget's run button, empty and showing ``text``."""
    bar = QProgressBar()
    bar.setRange(0, maximum)
    bar.setValue(0)
    bar.setFormat(text)
    bar.setTextVisible(True)
    return bar


def status_label() -> QLabel:
    """The wrapping line under the progress bar that says what is happening."""
    label = QLabel("")
    label.setWordWrap(True)
    label.setStyleSheet("font-size: 11px;")
    return label


def field_with_button(field: Any, *buttons: QPushButton) -> QHBoxLayout:
    """A form row: the field takes the width, its buttons sit at the right."""
    row = QHBoxLayout()
    row.addWidget(field, 1)
    for button in buttons:
        row.addWidget(button)
    return row


def fill_devices(combo: QComboBox) -> None:
    """auto, cuda, mps, cpu — the ones this machine lacks are shown but disabled, so users see why."""
    available = available_devices()
    labels = {"auto": "auto (GPU if available)", "cuda": "CUDA GPU", "mps": "Apple GPU (MPS)", "cpu": "CPU"}
    for name in DEVICE_CHOICES:
        combo.addItem(labels.get(name, name), name)
        if not available.get(name, True):
            item = combo.model().item(combo.count() - 1)
            item.setEnabled(False)
            item.setToolTip("not available on this machine")


def device_control(option: Option) -> Any:
    """The device option's control: a combo of the devices, unavailable ones disabled (an option panel override)."""
    from .option_panel import OptionControl

    combo = QComboBox()
    fill_devices(combo)

    def put(value: Any) -> None:
        i = combo.findData(value)
        if i >= 0:
            combo.setCurrentIndex(i)

    control = OptionControl(option, combo, combo.currentData, put, combo.currentIndexChanged)
    combo.setToolTip("Where the network runs; GPUs this machine lacks are listed but disabled")
    control.set_value(option.default)
    return control


def layer_control(viewer: Any) -> Any:
    """A function making an image option's control: a :class:`LayerCombo` of ``viewer`` (an option panel's
    ``image_control``)."""
    from .option_panel import OptionControl

    def make(option: Option) -> Any:
        combo = LayerCombo(viewer)
        return OptionControl(option, combo, combo.layer, lambda layer: layer is not None and combo.set_layer(layer),
                             combo.layer_changed)

    return make


def scrolling_body(widget: Any) -> Any:
    """Put a vertically scrolling area into ``widget`` and return the layout to fill: controls shrink to the dock's
    width instead of hiding behind a horizontal scroll bar."""
    from qtpy.QtWidgets import QScrollArea, QVBoxLayout, QWidget

    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QScrollArea.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    outer.addWidget(scroll)
    body = QWidget()
    scroll.setWidget(body)
    root = QVBoxLayout(body)
    root.setContentsMargins(6, 6, 6, 6)
    return root


#: Dynamic property marking the top widget of each n2x dock (Train, Denoise), so each can find the other's dock.
DOCK_PROPERTY = "n2x_dock"


def tabify_with_siblings(widget: Any) -> bool:
    """Put ``widget``'s dock into tabs with another n2x dock already in the same dock area; True when it did.

    napari stacks a new plugin dock under the existing ones and squeezes them: opening Denoise (or dropping a
    ``.n2x`` file) left Train 150 px high, without its progress bar, Stop button or loss plot. As tabs, each widget
    keeps the whole height and the user switches with one click; the new one is raised.
    """
    from qtpy.QtWidgets import QDockWidget, QMainWindow, QWidget

    dock = widget.parentWidget()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    window = dock.parentWidget() if dock is not None else None
    if not isinstance(window, QMainWindow) or dock.isFloating():
        return False
    area = window.dockWidgetArea(dock)
    for other in window.findChildren(QDockWidget):
        if other is dock or other.isFloating() or not other.isVisible() or window.dockWidgetArea(other) != area:
            continue
        if other in window.tabifiedDockWidgets(dock):
            return True
        if any(w.property(DOCK_PROPERTY) for w in other.findChildren(QWidget)):
            window.tabifyDockWidget(other, dock)
            dock.show()
            dock.raise_()
            return True
    return False


class DockJoiner:
    """Mixin of the dock widgets: marks the widget as an n2x dock and, when it is first shown in a dock, joins the
    other n2x dock as tabs (:func:`tabify_with_siblings`)."""

    _joined = False

    def mark_dock(self) -> None:
        self.setProperty(DOCK_PROPERTY, True)

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        if not self._joined:
            self._joined = True
            from qtpy.QtCore import QTimer

            # After napari has finished placing the dock (it resizes the docks of the area right after adding it).
            QTimer.singleShot(0, lambda: _safely(tabify_with_siblings, self))


def _safely(fn: Callable[[Any], Any], widget: Any) -> None:
    try:
        fn(widget)
    except RuntimeError:  # the widget was deleted before the timer fired (viewer closed)
        pass
