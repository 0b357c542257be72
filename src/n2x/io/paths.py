"""Which paths are images that n2x reads and writes: TIFF files and zarr folders, told by name or by content.

The one place that knows the suffixes: ``.tif``/``.tiff`` (``.ome.tif`` included) and ``.zarr`` (``.ome.zarr``
included), compared case-insensitively.
"""
from __future__ import annotations

import os
from pathlib import Path

TIFF_SUFFIXES = (".tif", ".tiff")
ZARR_SUFFIX = ".zarr"
#: what :func:`image_stem` strips, longest first (``.ome.tif`` before ``.tif``)
IMAGE_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr")
#: files that make a folder a zarr store (zarr format 2 group or array, zarr format 3 node)
_ZARR_METADATA = (".zgroup", ".zarray", "zarr.json")


def is_tiff_name(path: str | os.PathLike) -> bool:
    """Whether ``path``'s name ends in ``.tif`` or ``.tiff`` (``.ome.tif`` too); the file is not looked at."""
    return Path(path).name.lower().endswith(TIFF_SUFFIXES)


def is_zarr_name(path: str | os.PathLike) -> bool:
    """Whether ``path``'s name ends in ``.zarr`` (``.ome.zarr`` too); the folder is not looked at."""
    return Path(path).name.lower().endswith(ZARR_SUFFIX)


def is_zarr_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding zarr metadata, whatever its name."""
    p = Path(path)
    return p.is_dir() and any((p / name).exists() for name in _ZARR_METADATA)


def is_zarr_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a zarr image: its name ends in ``.zarr``, or it is a folder holding zarr metadata."""
    return is_zarr_name(path) or is_zarr_dir(path)


def image_stem(path: str | os.PathLike) -> str:
    """``path``'s name without its image suffix (``.ome.tif``, ``.tif``, ``.ome.zarr``, ``.zarr``...)."""
    p = Path(path)
    name = p.name
    low = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if low.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return p.stem


def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved, so links and ``..`` are followed)."""
    a, b = Path(path).resolve(), Path(folder).resolve()
    return a == b or b in a.parents
