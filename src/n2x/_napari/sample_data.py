"""Sample data for File > Open Sample > n2x — all local, no download.

Synthetic noisy cells (round cells with a nucleus, made on the fly by :func:`n2x.api.cells_sample`) and two real fluorescence images with
real noise shipped in ``n2x/sample_data`` (StarDist samples, BSD-3-Clause; see the README there).
"""
from __future__ import annotations

from importlib.resources import as_file, files

import numpy as np

from n2x.api import cells_sample


def noisy_cells_2d() -> list:
    """Noisy synthetic cells, 256 x 256."""
    noisy, _, _ = cells_sample("2d", seed=0)
    return [(noisy, {"name": "noisy cells 2D", "metadata": {"n2x_axes": "YX"}}, "image")]


def noisy_cells_3d() -> list:
    """Noisy synthetic cells, 32 x 128 x 128."""
    noisy, _, _ = cells_sample("3d", seed=0)
    return [(noisy, {"name": "noisy cells 3D", "metadata": {"n2x_axes": "ZYX"}}, "image")]


def _real(name: str) -> np.ndarray:
    import tifffile

    with as_file(files("n2x") / "sample_data" / name) as path:
        return tifffile.imread(path)


def real_nuclei_2d():
    data = _real("nuclei2d_real.tif")
    return [(data, {"name": "nuclei 2D (real noise)", "metadata": {"n2x_axes": "YX"}}, "image")]


def real_nuclei_3d():
    data = _real("nuclei3d_real.tif")
    return [(data, {"name": "nuclei 3D (real noise)", "metadata": {"n2x_axes": "ZYX"}}, "image")]
