"""Pixel-shuffle downsampling (PD) and its inverse, for 2D tensors ``(B, C, Y, X)``.

PD with stride ``s`` splits an image into ``s * s`` sub-images whose neighbouring pixels were ``s`` pixels apart in
the image: noise correlated over less than ``s`` pixels is independent within a sub-image (AP-BSN, Lee et al. 2022).
"""
from __future__ import annotations

import torch


def pixel_shuffle_down(x: torch.Tensor, stride: int) -> torch.Tensor:
    """``(B, C, Y, X)`` -> ``(B * s * s, C, Y / s, X / s)`` with ``s = stride`` (pixels).

    Sub-image ``(i, j)`` of image ``b`` (index ``b * s * s + i * s + j``) holds pixels ``(s * y + i, s * x + j)``.
    ``Y`` and ``X`` must be multiples of ``stride``.
    """
    b, c, h, w = x.shape
    s = int(stride)
    x = x.reshape(b, c, h // s, s, w // s, s).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(b * s * s, c, h // s, w // s)


def pixel_shuffle_up(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Inverse of :func:`pixel_shuffle_down`: ``(B * s * s, C, Y, X)`` -> ``(B, C, Y * s, X * s)``."""
    n, c, h, w = x.shape
    s = int(stride)
    b = n // (s * s)
    x = x.reshape(b, s, s, c, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(b, c, h * s, w * s)
