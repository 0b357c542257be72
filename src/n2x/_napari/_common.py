"""Pieces both dock widgets use: an image-layer chooser, axes guessing, result layers placed like their source."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from napari.layers import Image, Layer
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QComboBox, QLabel, QSizePolicy

from ..data.axes import guess_axes, make_layout
from ..errors import N2xError

ROLE_KEY = "n2x_role"  # metadata key marking layers this plugin made (preview, denoised)
DENOISED_SUFFIX = " [n2x denoised]"
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


def check_trainable(layer: Layer | None, axes: str, dims: int | None = None, min_size: int = 16) -> None:
    """Refuse what cannot be trained on, before any thread starts; N2xError with the reason."""
    from ..data.axes import check_dtype

    if layer is None:
        raise N2xError("choose an image layer first (open an image, or File > Open Sample > n2x)")
    if not isinstance(layer, Image):
        raise N2xError(f"layer {layer.name!r} is a {type(layer).__name__} layer; choose an image layer with "
                       "the raw noisy intensities")
    data = layer_data(layer)
    check_dtype(data.dtype)
    lay = make_layout(tuple(data.shape), axes, dims)
    small = [n for n in lay.spatial_shape if n < min_size]
    if small:
        raise N2xError(f"layer {layer.name!r} is too small to train on: its spatial shape is "
                       f"{lay.spatial_shape} ({lay.spatial}); each spatial axis needs at least {min_size} pixels")


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


def _let_fields_shrink(widget: Any) -> None:
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
