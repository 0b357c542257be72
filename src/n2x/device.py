"""Choice of the torch device and of mixed precision."""
from __future__ import annotations

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
            raise N2xError(f"device {device!r} was asked for but CUDA is not available here; use --device cpu or auto")
        return torch.device(name)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise N2xError("device 'mps' was asked for but Apple MPS is not available here; use --device cpu or auto")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise N2xError(f"unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype worth using on ``device``, or None (full float32).

    Only CUDA gains from it; on CPU and MPS float32 is as fast or faster for these small networks.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None
