"""The api: the one place that wires methods, training, inference, io and data. The CLI, the napari widgets and
notebooks call these functions and nothing below them.

Training: :func:`train`, :func:`train_iter` (options: :data:`TRAIN_OPTIONS` and each method's declared options,
:func:`method_info`), :func:`probe_noise` (the noise model), :func:`choose_method` (``method="auto"``), and the
one rule for what can be trained on (:func:`check_trainable`).
Models: :func:`load_model`, :func:`save_model`,
:func:`export_bioimageio` (a BioImage Model Zoo package). Denoising: :func:`denoise` (in memory),
:func:`denoise_volume`/:func:`iter_denoise_volume` (any size, chunk by chunk), :func:`denoise_files` (files, globs and
folders, here or on a dask cluster), with the one planner of outputs (:func:`plan_batch`, :func:`output_format`).
Data: :func:`open_image`, :func:`guess_axes`, :func:`make_layout`, :func:`input_axes`.

Names are loaded on first use (PEP 562): ``import n2x.api`` and the option declarations (:data:`TRAIN_OPTIONS`)
cost no torch import, so ``n2x --help`` answers at once; the engine is imported by the first call that needs it.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the module (relative to ``n2x``) that defines it
_WHERE: dict[str, str] = {
    "drain": "_progress",
    "os_error_text": "_files",
    **dict.fromkeys(("BatchEvent", "BatchSummary", "FileResult", "PlanItem", "expand_inputs", "input_paths",
                     "is_batch_job", "output_format", "output_stem", "plan_batch"), "batch"),
    **dict.fromkeys(("Layout", "check_dtype", "guess_axes", "make_layout"), "data.axes"),
    "NoiseReport": "data.noise_report",
    **dict.fromkeys(("MethodChoice", "choose_method", "probe_noise"), "api._auto"),
    "noisy_sample": "data.samples",
    **dict.fromkeys(("DEVICE_CHOICES", "PRECISION_CHOICES", "available_devices", "is_out_of_memory"), "device"),
    "parse_duration": "durations",
    **dict.fromkeys(("N2xError", "N2xWarning"), "errors"),
    "VolumeProgress": "inference.volume",
    **dict.fromkeys(("ImageInfo", "is_zarr_path", "open_image", "write_tiff"), "io.images"),
    **dict.fromkeys(("MethodInfo", "method_info", "method_names", "register_method", "unregister_method"),
                    "methods"),
    "Model": "model",
    **dict.fromkeys(("AUTO", "Option", "parse_shape"), "options"),
    "TrainProgress": "training",
    **dict.fromkeys(("denoise", "denoise_files", "denoise_volume", "iter_denoise_volume"), "api._denoising"),
    **dict.fromkeys(("as_model", "load_model", "model_file_path", "save_model"), "api._models"),
    **dict.fromkeys(("export_bioimageio", "export_path"), "api._export"),
    **dict.fromkeys(("train", "train_iter"), "api._training"),
    **dict.fromkeys(("AUTO_METHOD", "DEFAULT_SECONDS", "TRAIN_OPTIONS", "VST_CHOICES"), "api._options"),
    **dict.fromkeys(("ResultView", "open_result"), "api._results"),
    **dict.fromkeys(("MIN_TRAIN_SIZE", "check_trainable", "check_values", "input_axes", "prepare_training",
                     "cells_sample"), "api._checks"),
}

__all__ = [
    "train", "train_iter", "TrainProgress", "TRAIN_OPTIONS", "DEFAULT_SECONDS",
    "method_names", "method_info", "MethodInfo", "register_method", "unregister_method", "Option", "AUTO",
    "parse_shape", "probe_noise", "NoiseReport", "choose_method", "MethodChoice", "AUTO_METHOD", "VST_CHOICES",
    "Model", "load_model", "save_model", "as_model", "model_file_path", "export_bioimageio", "export_path",
    "denoise", "denoise_volume", "iter_denoise_volume", "VolumeProgress",
    "denoise_files", "BatchEvent", "BatchSummary", "FileResult", "PlanItem", "plan_batch", "expand_inputs",
    "input_paths", "is_batch_job", "output_format", "output_stem",
    "open_image", "ImageInfo", "is_zarr_path", "write_tiff", "guess_axes", "make_layout", "Layout", "check_dtype",
    "noisy_sample", "parse_duration", "drain", "DEVICE_CHOICES", "PRECISION_CHOICES", "available_devices",
    "is_out_of_memory", "N2xError", "N2xWarning",
    "MIN_TRAIN_SIZE", "check_trainable", "check_values", "input_axes", "prepare_training", "cells_sample",
    "os_error_text", "ResultView", "open_result",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"n2x.{where}"), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and import-linter's picture of the layers (it skips these imports)
    from .._files import os_error_text  # noqa: F401
    from .._progress import drain  # noqa: F401
    from ..batch import (BatchEvent, BatchSummary, FileResult, PlanItem, expand_inputs, input_paths,  # noqa: F401
                         is_batch_job, output_format, output_stem, plan_batch)
    from ..data.axes import Layout, check_dtype, guess_axes, make_layout  # noqa: F401
    from ..data.noise_report import NoiseReport  # noqa: F401
    from ..data.samples import noisy_sample  # noqa: F401
    from ..device import DEVICE_CHOICES, PRECISION_CHOICES, available_devices, is_out_of_memory  # noqa: F401
    from ..durations import parse_duration  # noqa: F401
    from ..errors import N2xError, N2xWarning  # noqa: F401
    from ..inference.volume import VolumeProgress  # noqa: F401
    from ..io.images import ImageInfo, is_zarr_path, open_image, write_tiff  # noqa: F401
    from ..methods import MethodInfo, method_info, method_names, register_method, unregister_method  # noqa: F401
    from ..model import Model  # noqa: F401
    from ..options import AUTO, Option, parse_shape  # noqa: F401
    from ..training import TrainProgress  # noqa: F401
    from ._auto import MethodChoice, choose_method, probe_noise  # noqa: F401
    from ._checks import (MIN_TRAIN_SIZE, cells_sample, check_trainable, check_values, input_axes,  # noqa: F401
                          prepare_training)
    from ._denoising import denoise, denoise_files, denoise_volume, iter_denoise_volume  # noqa: F401
    from ._export import export_bioimageio, export_path  # noqa: F401
    from ._models import as_model, load_model, model_file_path, save_model  # noqa: F401
    from ._options import AUTO_METHOD, DEFAULT_SECONDS, TRAIN_OPTIONS, VST_CHOICES  # noqa: F401
    from ._results import ResultView, open_result  # noqa: F401
    from ._training import train, train_iter  # noqa: F401
