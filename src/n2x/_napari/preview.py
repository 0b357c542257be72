"""The live preview of training: which raw region of the layer it shows, read while the network trains."""
from __future__ import annotations

import threading
from typing import Any

import numpy as np
from napari.layers import Image

from n2x.api import Layout

from ._common import layer_data


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
        centre = list(camera(viewer).center)[-len(displayed):]
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
        block = self.read_at(index)
        self.used = index
        return block

    def read_at(self, index: tuple) -> np.ndarray:
        """The raw region at ``index`` as float32 ``(C, *spatial)``: what the preview shows until the model has
        validated once (a network a few steps old outputs a flat, dark square that looks like an erased image)."""
        block = np.asarray(self.data[index], np.float32)
        lay = self.layout
        block = block.reshape([n for a, n in zip(lay.axes, block.shape) if a not in lay.sample_axes])
        kept = [a for a in lay.axes if a not in lay.sample_axes]
        order = ([kept.index("C")] if lay.channel_axis else []) + [kept.index(a) for a in lay.spatial]
        block = np.transpose(block, order)
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


def camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera
