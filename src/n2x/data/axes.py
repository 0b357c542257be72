"""Explicit axes (``S``, ``T``, ``C``, ``Z``, ``Y``, ``X``) and the canonical layout the engine works in.

The engine works on arrays laid out as ``(samples, channels, [Z,] Y, X)``. Sample axes (``S``, ``T``, and ``Z`` when
a 3D stack is processed with a 2D network) are enumerated, never reshaped, so a lazy dask or zarr array is indexed in
place and nothing is read that is not needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any, Sequence

import numpy as np

from ..errors import AxesError, InputError

AXES_LETTERS = "STCZYX"


def normalize_axes(axes: str | None, ndim: int, *, what: str = "image", shape: Sequence[int] | None = None) -> str:
    """Validate an axes string against an array's number of dimensions and return it upper-cased.

    Raises :class:`AxesError` with the reason and an example when it is missing, malformed or does not fit.
    """
    if axes is None or axes == "":
        if ndim == 2:
            return "YX"
        raise AxesError(
            f"the {what} has {ndim} dimensions, so its axes must be given (for example "
            f"{_example_axes(ndim)!r}); letters are S (sample), T (time), C (channel), Z, Y, X"
        )
    if not isinstance(axes, str):
        raise AxesError(f"axes must be a string such as 'ZYX', not {type(axes).__name__}")
    up = axes.upper()
    bad = sorted(set(up) - set(AXES_LETTERS))
    if bad:
        raise AxesError(f"axes {axes!r} contain unknown letter(s) {''.join(bad)!r}; use only S, T, C, Z, Y, X")
    if len(set(up)) != len(up):
        raise AxesError(f"axes {axes!r} repeat a letter; each of S, T, C, Z, Y, X may appear once")
    if "Y" not in up or "X" not in up:
        raise AxesError(f"axes {axes!r} must contain both Y and X")
    if len(up) != ndim:
        hint = f"; for example {_example_axes(ndim)!r}"
        if shape is not None and ndim == len(up) + 1 and shape[-1] in (3, 4):
            hint = f"; an RGB or multichannel image needs a C axis, e.g. {up + 'C'!r}"
        shown = f" {tuple(shape)}" if shape is not None else ""
        raise AxesError(f"axes {axes!r} name {len(up)} dimensions but the {what}{shown} has {ndim}{hint}")
    return up


def _example_axes(ndim: int) -> str:
    return {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TCZYX", 6: "STCZYX"}.get(ndim, "YX")


def guess_axes(shape: Sequence[int], rgb: bool = False) -> str:
    """A reasonable first guess of the axes of an array of ``shape`` (shown to the user, who may edit it)."""
    ndim = len(shape)
    if rgb:
        return {3: "YXC", 4: "TYXC", 5: "TZYXC"}.get(ndim, "YXC")
    if ndim == 2:
        return "YX"
    if ndim == 3:
        # Few, small planes are more often channels; otherwise a stack (Z), which a user may relabel T.
        return "CYX" if shape[0] <= 4 else "ZYX"
    if ndim == 4:
        return "CZYX" if shape[0] <= 4 else "TZYX"
    if ndim == 5:
        return "TCZYX"
    return "STCZYX"[-ndim:]


@dataclass(frozen=True)
class Layout:
    """How an array with user axes maps onto the canonical ``(sample, channel, *spatial)`` layout.

    ``spatial`` is ``"YX"`` or ``"ZYX"``; ``sample_axes`` are the axes enumerated as samples (in the user's order);
    ``channel_axis`` is ``"C"`` or ``""``.
    """

    axes: str
    shape: tuple[int, ...]
    spatial: str
    sample_axes: str
    channel_axis: str

    @property
    def ndim_spatial(self) -> int:
        return len(self.spatial)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[self.axes.index(a)] for a in self.spatial)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[self.axes.index(a)] for a in self.sample_axes)

    @property
    def n_samples(self) -> int:
        return prod(self.sample_shape) if self.sample_axes else 1

    @property
    def n_channels(self) -> int:
        return self.shape[self.axes.index("C")] if self.channel_axis else 1

    def sample_index(self, s: int) -> dict[str, int]:
        """Map flat sample number ``s`` to a position on each sample axis."""
        if not self.sample_axes:
            return {}
        idx = np.unravel_index(s, self.sample_shape)
        return {a: int(i) for a, i in zip(self.sample_axes, idx)}

    def index(self, s: int, region: Sequence[slice] | None = None) -> tuple[Any, ...]:
        """Indexing tuple into the user's array for sample ``s`` and a spatial ``region`` (all channels)."""
        pos = self.sample_index(s)
        region = tuple(region) if region is not None else tuple(slice(None) for _ in self.spatial)
        out: list[Any] = []
        for a in self.axes:
            if a in pos:
                out.append(pos[a])
            elif a == "C":
                out.append(slice(None))
            else:
                out.append(region[self.spatial.index(a)])
        return tuple(out)

    def read(self, array: Any, s: int, region: Sequence[slice] | None = None) -> np.ndarray:
        """Read sample ``s`` (optionally a spatial region) as float32 ``(C, *spatial)`` — only that part is read."""
        block = np.asarray(array[self.index(s, region)])
        kept = [a for a in self.axes if a not in self.sample_axes]  # order in the indexed block
        order = ([kept.index("C")] if self.channel_axis else []) + [kept.index(a) for a in self.spatial]
        block = np.transpose(block, order)
        if not self.channel_axis:
            block = block[None]
        return block.astype(np.float32, copy=False)

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """Whole in-memory array as ``(S, C, *spatial)`` float32 (a view where possible)."""
        order = [self.axes.index(a) for a in self.sample_axes]
        order += [self.axes.index("C")] if self.channel_axis else []
        order += [self.axes.index(a) for a in self.spatial]
        out = np.transpose(np.asarray(array), order)
        out = out.reshape((self.n_samples, self.n_channels) + self.spatial_shape)
        return out.astype(np.float32, copy=False)

    def from_canonical(self, canon: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_canonical`: ``(S, C, *spatial)`` back to the user's axes order."""
        shaped = canon.reshape(self.sample_shape + ((self.n_channels,) if self.channel_axis else ()) + self.spatial_shape)
        current = list(self.sample_axes) + (["C"] if self.channel_axis else []) + list(self.spatial)
        return np.transpose(shaped, [current.index(a) for a in self.axes])


def make_layout(shape: Sequence[int], axes: str | None, ndim_spatial: int | None = None) -> Layout:
    """Build the :class:`Layout` for an array of ``shape`` with ``axes``.

    ``ndim_spatial`` 3 uses a 3D network over Z, 2 processes Z planes as samples; ``None`` means 3 when Z is present.
    """
    shape = tuple(int(n) for n in shape)
    axes = normalize_axes(axes, len(shape), shape=shape)
    if any(n == 0 for n in shape):
        raise InputError(f"the image is empty (shape {shape}); load an image with data in it")
    if ndim_spatial is None:
        ndim_spatial = 3 if "Z" in axes else 2
    if ndim_spatial not in (2, 3):
        raise AxesError(f"networks are 2D or 3D, not {ndim_spatial}D")
    if ndim_spatial == 3 and "Z" not in axes:
        raise AxesError(f"a 3D network needs a Z axis but the axes are {axes!r}")
    spatial = "ZYX" if ndim_spatial == 3 else "YX"
    sample_axes = "".join(a for a in axes if a not in spatial and a != "C")
    return Layout(axes=axes, shape=shape, spatial=spatial, sample_axes=sample_axes, channel_axis="C" if "C" in axes else "")


def check_dtype(dtype: Any) -> None:
    """Refuse dtypes that are not intensities: boolean masks, complex, strings and objects."""
    dt = np.dtype(dtype)
    if dt.kind == "b":
        raise InputError("the image is boolean (a mask or a label?), not intensities; denoise the raw image instead")
    if dt.kind == "c":
        raise InputError("the image is complex-valued; denoise its magnitude or its real and imaginary parts as channels")
    if dt.kind not in "uif":
        raise InputError(f"the image has dtype {dt}, which is not numeric intensities")


def check_finite(block: np.ndarray, where: str = "the image") -> None:
    """Raise :class:`InputError` if ``block`` holds NaN or infinite values."""
    if block.dtype.kind == "f" and not np.isfinite(block).all():
        n = int(np.size(block) - np.count_nonzero(np.isfinite(block)))
        raise InputError(
            f"{where} contains {n} NaN or infinite value(s); replace them (e.g. with the median) first"
        )


#: The smallest spatial size, per axis, that the engine trains on: the default networks halve an image four times
#: (16 -> 1) and the patch sampler needs whole patches. One rule for every front door (the widgets' data line and
#: noise check, ``n2x train``, :func:`n2x.train`).
MIN_TRAIN_SIZE = 16
#: planes a 3D network needs: stacks are often thin (8-20 planes) and a 3D U-Net's multiple is 4
MIN_TRAIN_DEPTH = 4


def check_train_size(layout: Layout) -> None:
    """Refuse an image too small to train on: InputError. Y and X need :data:`MIN_TRAIN_SIZE` pixels each (a
    blind spot and its neighbourhood, two poolings), Z of a 3D network :data:`MIN_TRAIN_DEPTH` planes."""
    need = [MIN_TRAIN_DEPTH if a == "Z" else MIN_TRAIN_SIZE for a in layout.spatial]
    if any(n < k for n, k in zip(layout.spatial_shape, need)):
        z = f", and Z at least {MIN_TRAIN_DEPTH} planes" if "Z" in layout.spatial else ""
        raise InputError(f"the image is too small to train on: its spatial shape is {layout.spatial_shape} "
                         f"({layout.spatial}); Y and X need at least {MIN_TRAIN_SIZE} pixels each{z}")


def constant_value(blocks: Sequence[np.ndarray]) -> float | None:
    """The one value every pixel of ``blocks`` holds, or None when they vary (a constant image has no noise to
    learn from: the engine warns, the widgets show it on their data line)."""
    lo = min((float(np.min(b)) for b in blocks if np.size(b)), default=None)
    hi = max((float(np.max(b)) for b in blocks if np.size(b)), default=None)
    return lo if lo is not None and lo == hi else None


CONSTANT_MESSAGE = ("the image is constant (every pixel is {value:g}): there is no noise to learn from, and the "
                    "model will hardly change it")


def input_axes(file_axes: str | None, shape: Sequence[int], model_axes: str | None, given: str | None = None,
               axes_named: bool = True) -> tuple[str | None, str | None]:
    """The axes to read an input with, and a one-line note when they were not the file's own.

    ``given`` (the user's) wins. A file that does not name its axes (``axes_named`` False: a plain TIFF whose extra
    axis tifffile can only call a "sample" axis) is read with the model's training axes when they fit its number of
    dimensions: the usual case of denoising the very file a model was trained on with ``--axes ZYX``.
    """
    if given:
        return given.upper(), None
    if not axes_named and model_axes and len(model_axes) == len(shape) and model_axes != file_axes:
        return model_axes, (f"the file does not name its axes; reading its shape {tuple(int(n) for n in shape)} "
                            f"with the model's axes {model_axes}")
    return file_axes, None
