"""Sample data for File > Open Sample > n2x: synthetic noisy cells made locally (no download)."""
from __future__ import annotations

from ..data.samples import noisy_sample


def noisy_cells_2d():
    noisy, _, _ = noisy_sample("2d", "pg", seed=0)
    return [(noisy, {"name": "noisy cells 2D", "metadata": {"n2x_axes": "YX"}}, "image")]


def noisy_cells_3d():
    noisy, _, _ = noisy_sample("3d", "pg", seed=0)
    return [(noisy, {"name": "noisy cells 3D", "metadata": {"n2x_axes": "ZYX"}}, "image")]
