"""The api: the one place that wires methods, training, inference, io and data. The CLI, the napari widgets and
notebooks call these functions and nothing below them.

Training: :func:`train`, :func:`train_iter` (options: :data:`TRAIN_OPTIONS` and each method's declared options,
:func:`method_info`), :func:`probe_noise`. Models: :func:`load_model`, :func:`save_model`. Denoising:
:func:`denoise` (in memory), :func:`denoise_volume`/:func:`iter_denoise_volume` (any size, chunk by chunk),
:func:`denoise_files` (files, globs and folders, here or on a dask cluster), with the one planner of outputs
(:func:`plan_batch`, :func:`output_format`). Data: :func:`open_image`, :func:`guess_axes`, :func:`make_layout`.
"""
from __future__ import annotations

from .._progress import drain
from ..batch import (BatchEvent, BatchSummary, FileResult, PlanItem, expand_inputs, input_paths, is_batch_job,
                     output_format, output_stem, plan_batch)
from ..data.axes import Layout, check_dtype, guess_axes, make_layout
from ..data.probe import NoiseReport, probe_noise
from ..data.samples import noisy_sample
from ..device import DEVICE_CHOICES, PRECISION_CHOICES, available_devices, is_out_of_memory
from ..durations import parse_duration
from ..errors import N2xError, N2xWarning
from ..inference.volume import VolumeProgress
from ..io.images import ImageInfo, is_zarr_path, open_image, write_tiff
from ..methods import MethodInfo, method_info, method_names, register_method, unregister_method
from ..model import Model
from ..options import AUTO, Option, parse_shape
from ..training import TrainProgress
from ._denoising import denoise, denoise_files, denoise_volume, iter_denoise_volume
from ._models import as_model, load_model, model_file_path, save_model
from ._training import DEFAULT_SECONDS, TRAIN_OPTIONS, train, train_iter

__all__ = [
    "train", "train_iter", "TrainProgress", "TRAIN_OPTIONS", "DEFAULT_SECONDS",
    "method_names", "method_info", "MethodInfo", "register_method", "unregister_method", "Option", "AUTO",
    "parse_shape", "probe_noise", "NoiseReport",
    "Model", "load_model", "save_model", "as_model", "model_file_path",
    "denoise", "denoise_volume", "iter_denoise_volume", "VolumeProgress",
    "denoise_files", "BatchEvent", "BatchSummary", "FileResult", "PlanItem", "plan_batch", "expand_inputs",
    "input_paths", "is_batch_job", "output_format", "output_stem",
    "open_image", "ImageInfo", "is_zarr_path", "write_tiff", "guess_axes", "make_layout", "Layout", "check_dtype",
    "noisy_sample", "parse_duration", "drain", "DEVICE_CHOICES", "PRECISION_CHOICES", "available_devices",
    "is_out_of_memory", "N2xError", "N2xWarning",
]
