"""The engine's rules about inputs, for the front doors to show before anything runs.

:func:`check_trainable` is the one rule for what can be trained on (the widgets' data line and noise check use it,
and :func:`n2x.api.train_iter` applies the same size rule); :func:`check_values` looks at a small block for NaN and
constant images; :func:`input_axes` decides the axes of a file that does not name its own. Cheap to import (no
torch): the widgets call these while the user chooses.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..data.axes import (CONSTANT_MESSAGE, MIN_TRAIN_SIZE, Layout, check_dtype, check_finite, check_train_size,
                         constant_value, input_axes, make_layout)

__all__ = ["MIN_TRAIN_SIZE", "check_trainable", "check_values", "input_axes", "prepare_training", "cells_sample"]


def check_trainable(shape: Sequence[int], axes: str | None, dims: int | None = None, dtype: Any = None) -> Layout:
    """The layout of an image of ``shape`` with ``axes`` when it can be trained on; InputError/AxesError (the same
    messages as :func:`n2x.api.train_iter`) when it cannot: a dtype that is not intensities, axes that do not fit,
    or a spatial axis under :data:`MIN_TRAIN_SIZE` pixels."""
    if dtype is not None:
        check_dtype(dtype)
    layout = make_layout(tuple(shape), axes, dims)
    check_train_size(layout)
    return layout


def check_values(block: Any, where: str = "the image") -> str | None:
    """Look at ``block`` (an in-memory array or a small sample of a large one): InputError when it holds NaN or
    infinite values (training and denoising refuse those); the engine's warning text when it is constant; else None.
    """
    arr = np.asarray(block)
    if arr.dtype.kind == "f":
        check_finite(arr, where)
    value = constant_value([arr])
    return CONSTANT_MESSAGE.format(value=value) if value is not None else None


def prepare_training() -> None:
    """Load what training needs in this thread (torch's optimiser support, about a second); call it before starting a
    training worker thread. :func:`n2x.api.train_iter` calls it too."""
    from ..training import import_optimiser_support

    import_optimiser_support()


def cells_sample(kind: str = "2d", seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """``(noisy, clean, axes)``: round, textured cells with Poisson-Gaussian noise (napari's "noisy cells" samples)."""
    from ..data.samples import noisy_cells

    return noisy_cells(kind, seed=seed)
