"""Reading an OME-Zarr result while it is written, or after a run was cancelled: which chunks are there.

An output is created at full size before any chunk is computed, and zarr reads an unwritten chunk as its fill value,
0: a cancelled run would look complete, with black planes. :func:`open_result` shows unwritten chunks as NaN
instead (napari draws NaN as transparent, so the missing part reads as absent, not as dark data) and says how many
chunks are written. The file itself is not changed: its fill value stays 0 for every other reader, and the engine's
own record of finished chunks (:class:`n2x.io.ome_zarr.ChunkLog`) is what tells written from unwritten.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from ..io.images import open_image
from ..io.ome_zarr import ARRAY_PATH, ChunkLog, n2x_attrs, read_group_attrs

__all__ = ["ResultView", "open_result"]


@dataclass
class ResultView:
    """An OME-Zarr result as it is now: lazy ``data`` (NaN where no chunk is written yet, in the stored axis order
    ``axes``), its ``status`` (``"complete"``, ``"running"`` while written or after a cancelled run, or ``""`` for an
    output n2x did not write) and the chunks written (``done``) of ``total``."""

    data: Any
    axes: str | None
    status: str
    done: int
    total: int

    @property
    def partial(self) -> bool:
        return self.status == "running" and self.done < self.total


def open_result(path: str | os.PathLike, level: int = 0) -> ResultView:
    """Open resolution ``level`` of the OME-Zarr result at ``path`` (see the module's docstring); InputError when
    it cannot be read."""
    import dask.array as da
    import zarr

    path = Path(path)
    info = open_image(path)
    arr = zarr.open_array(str(path / (str(level) if level else ARRAY_PATH)), mode="r")
    # A new dask name each time: napari's dask cache would otherwise keep showing chunks read while they were empty.
    data = da.from_zarr(arr, name=f"n2x-{uuid.uuid4().hex}")
    total = prod(len(c) for c in data.chunks)
    status = str((n2x_attrs(read_group_attrs(path)) or {}).get("status", ""))
    if status != "running":
        return ResultView(data, info.axes, status, total, total)
    done = ChunkLog(path, level).done()

    def absent_as_nan(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        where = (block_info or {}).get(0, {}).get("chunk-location")
        if where is not None and ChunkLog.key(where) not in done:
            return np.full(block.shape, np.nan, np.float32)
        return block

    data = data.map_blocks(absent_as_nan, dtype=np.float32)
    return ResultView(data, info.axes, status, len(done), total)
