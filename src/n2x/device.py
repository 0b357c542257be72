"""Choice of the torch device and of mixed precision."""
from __future__ import annotations

import os

import torch

from .errors import N2xError

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def select_device(device: str | torch.device | None = "auto") -> torch.device:
    """Return the torch device to use.

    ``"auto"`` (or ``None``) picks CUDA, then Apple MPS, then the CPU. An explicit choice that is not available
    raises :class:`N2xError` naming what is available.
    """
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise N2xError(f"device {device!r} was asked for but CUDA is not available here",
                           hint="set {device} to cpu or auto")
        return torch.device(name)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise N2xError("device 'mps' was asked for but Apple MPS is not available here",
                           hint="set {device} to cpu or auto")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise N2xError(f"unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}")


PRECISION_CHOICES = ("auto", "float32", "bfloat16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX): there, oneDNN's bfloat16 convolutions
    run about 1.6x faster than float32 for these networks; elsewhere bfloat16 is emulated and slower."""
    cpu = getattr(torch, "cpu", None)
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(cpu, name, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # an old or unusual build without the check: assume no hardware support
            pass
    return False


def autocast_dtype(device: torch.device, training: bool = False, precision: str = "auto",
                   ndim: int = 2) -> torch.dtype | None:
    """Mixed-precision dtype worth using on ``device``, or None (full float32).

    ``precision="auto"``: CUDA uses bfloat16 (float16 where bfloat16 is not supported) for training and inference.
    A CPU with hardware bfloat16 uses it for training 2D networks (``ndim`` spatial dims; weights, optimiser and
    loss stay float32): the steps run about 1.6x faster and a 3-minute run reaches a better model. Predictions stay
    float32 on the CPU, and so do 3D networks, whose bfloat16 training on the CPU (oneDNN, torch 2.13) produced NaN
    within a few steps. MPS and other CPUs stay in float32, which is as fast or faster there.
    ``"float32"`` turns mixed precision off; ``"bfloat16"`` forces it.
    """
    if precision not in PRECISION_CHOICES:
        raise N2xError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, not {precision!r}")
    if precision == "float32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if precision == "bfloat16" or torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bfloat16":
        return torch.bfloat16
    if device.type == "cpu" and training and ndim == 2 and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """``"float32"``, ``"bfloat16"`` or ``"float16"``: how :func:`autocast_dtype`'s choice is recorded."""
    return str(dtype).replace("torch.", "") if dtype is not None else "float32"


def available_devices() -> dict[str, bool]:
    """Each of :data:`DEVICE_CHOICES` and whether this machine has it (``auto`` and ``cpu`` always)."""
    mps = getattr(torch.backends, "mps", None)
    return {"auto": True, "cuda": torch.cuda.is_available(), "mps": mps is not None and mps.is_available(),
            "cpu": True}


def usable_cpu_count() -> int:
    """CPU cores this process may run on (its affinity where the OS tells, else all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error: Python's, torch's on any device, or the allocator's message
    (torch reports some CPU and MPS allocation failures as a plain ``RuntimeError``)."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("out of memory", "can't allocate memory", "cannot allocate memory"))
