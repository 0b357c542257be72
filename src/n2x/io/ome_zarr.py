"""Writing OME-Zarr (OME-NGFF 0.4 or 0.5) images chunk by chunk, with a record of the chunks already written.

Layout of an output written by :func:`n2x.denoise_volume`::

    out.ome.zarr/
        .zgroup, .zattrs            (NGFF 0.4, zarr format 2)   or  zarr.json (NGFF 0.5, zarr format 3)
        0/                          the float32 result, created with its full shape before any chunk is computed
        0/.n2x-done/                one empty marker file per finished chunk, removed once the output is complete
        1/, 2/, ...                 the resolution pyramid (:mod:`n2x.io.pyramid`), each with its own .n2x-done/

The group attributes hold the NGFF ``multiscales`` (axes with types and units, scale and translation) and an
``n2x`` entry: ``status`` (``"running"`` until the very end, then ``"complete"``), the job ``fingerprint`` used to
decide whether an existing output may be resumed, and the ``provenance`` (model hashes, method, parameters,
package version).

The markers live inside the array's folder: zarr warns about any unknown entry next to the group's members (napari's
reader lists them while the output fills), but ignores files among an array's chunks that are not chunk keys.
The marker of a chunk is created only after zarr has written the chunk (zarr's local store writes each chunk to a
temporary file renamed into place), so a run killed at any moment never records a chunk that is not on disk. A
marker is an empty file created with ``O_EXCL``: creating it is itself atomic, and several processes may record
chunks of the same output concurrently without a shared log to rewrite.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from ..errors import OutputExistsError
from .paths import is_within, is_zarr_dir

NGFF_VERSIONS = ("0.4", "0.5")
DONE_DIR = ".n2x-done"
ARRAY_PATH = "0"

# NGFF axis types of our axis letters; 'S' (samples) has no NGFF type and is written as a custom one.
_AXIS_TYPES = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}
_AXIS_NAMES = {"T": "t", "C": "c", "Z": "z", "Y": "y", "X": "x", "S": "s"}

# Unit spellings found in TIFF/ImageJ/OME metadata -> the UDUNITS-2 names NGFF asks for.
_UNITS = {
    "micron": "micrometer", "microns": "micrometer", "um": "micrometer", "µm": "micrometer", "μm": "micrometer",
    "\\u00b5m": "micrometer", "micrometer": "micrometer", "micrometre": "micrometer",
    "nm": "nanometer", "nanometer": "nanometer", "nanometre": "nanometer",
    "mm": "millimeter", "millimeter": "millimeter", "cm": "centimeter", "centimeter": "centimeter",
    "m": "meter", "meter": "meter", "å": "angstrom", "angstrom": "angstrom", "pm": "picometer",
    "s": "second", "sec": "second", "second": "second", "seconds": "second",
    "ms": "millisecond", "millisecond": "millisecond", "us": "microsecond", "µs": "microsecond",
    "microsecond": "microsecond", "min": "minute", "minute": "minute", "h": "hour", "hour": "hour",
    "ns": "nanosecond", "nanosecond": "nanosecond",
}


def ngff_unit(unit: str | None) -> str | None:
    """The NGFF (UDUNITS-2) name of ``unit``, or None when it is unknown or not physical (e.g. ``"pixel"``)."""
    if not unit:
        return None
    return _UNITS.get(str(unit).strip().lower())


def ngff_order(axes: str) -> str:
    """``axes`` reordered as NGFF requires: time, then channel or custom (samples), then space (Z, Y, X)."""
    return "".join(a for a in "TSCZYX" if a in axes)


def check_ngff_axes(axes: str) -> str | None:
    """Why ``axes`` cannot be written as an NGFF image (None when they can)."""
    if "S" in axes and "C" in axes:
        return ("OME-NGFF allows one channel-or-custom axis, but the data have both samples (S) and channels (C); "
                "write a TIFF, or denoise the samples one by one")
    spatial = sum(a in "ZYX" for a in axes)
    if spatial < 2:
        return f"OME-NGFF needs 2 or 3 spatial axes, the axes {axes!r} have {spatial}"
    return None


def multiscales_metadata(axes: str, *, scale: dict[str, float] | None = None,
                         translation: dict[str, float] | None = None, units: dict[str, str] | None = None,
                         name: str = "", version: str = "0.4",
                         level_factors: Sequence[dict[str, int]] = ()) -> dict[str, Any]:
    """The NGFF ``multiscales`` entry of an image with ``axes`` (already in NGFF order).

    ``scale`` and ``translation`` are physical size per pixel and origin per axis letter (missing: 1 and 0);
    ``units`` per axis letter are mapped to UDUNITS-2 names (unknown ones are left out, as NGFF requires).
    ``level_factors``: per resolution level, the downsampling factor per axis letter (missing: 1); none or one
    entry is a single-level image. Level ``k`` is the array ``k`` and its scale is level 0's times its factors.
    """
    scale, translation, units = scale or {}, translation or {}, units or {}
    ax_meta = []
    for a in axes:
        entry: dict[str, Any] = {"name": _AXIS_NAMES[a]}
        if a in _AXIS_TYPES:
            entry["type"] = _AXIS_TYPES[a]
        unit = ngff_unit(units.get(a)) if a not in "CS" else None
        if unit:
            entry["unit"] = unit
        ax_meta.append(entry)
    datasets = []
    for k, factors in enumerate(level_factors or [{}]):
        transforms: list[dict[str, Any]] = [
            {"type": "scale", "scale": [float(scale.get(a, 1.0)) * factors.get(a, 1) if a not in "CS" else 1.0
                                        for a in axes]}]
        if any(float(translation.get(a, 0.0)) != 0.0 for a in axes if a not in "CS"):
            transforms.append({"type": "translation", "translation": [float(translation.get(a, 0.0))
                                                                      if a not in "CS" else 0.0 for a in axes]})
        datasets.append({"path": str(k), "coordinateTransformations": transforms})
    ms: dict[str, Any] = {"axes": ax_meta, "datasets": datasets, "name": name}
    if version == "0.4":
        ms["version"] = "0.4"
    return ms


def read_group_attrs(path: Path) -> dict | None:
    """The attributes of the zarr group at ``path`` (None when there is none or it cannot be read)."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception:
        return None
    if not isinstance(node, zarr.Group):
        return None
    return dict(node.attrs)


def n2x_attrs(attrs: dict | None) -> dict | None:
    """The ``n2x`` entry of an output's group attributes (NGFF 0.4 at the top level, 0.5 as well)."""
    if not attrs:
        return None
    entry = attrs.get("n2x")
    return entry if isinstance(entry, dict) else None


def remove_output(path: Path, source: Path | None = None) -> None:
    """Delete an existing output before it is replaced (``overwrite=True``).

    Only a zarr folder, an empty folder or a file is removed; a folder of other things is refused, so that a wrong
    output path can never wipe a data folder. The input itself is never removed.
    """
    if source is not None and is_within(source, path):
        raise OutputExistsError(f"the output {path} would replace the input {source}",
                                hint="choose another output path")
    if path.is_dir():
        if not is_zarr_dir(path) and any(path.iterdir()):
            raise OutputExistsError(
                f"{path} exists and is a folder that is not a zarr; it is not removed, not even to overwrite it",
                hint="choose another output path, or remove it yourself")
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def create_image(path: Path, shape: Sequence[int], axes: str, chunks: Sequence[int], *, attrs: dict[str, Any],
                 multiscales: dict[str, Any], version: Literal["0.4", "0.5"] = "0.4", dtype: str = "float32",
                 level_shapes: Sequence[Sequence[int]] = (), shards: Sequence[int] | None = None,
                 level_shards: Sequence[int] | None = None):
    """Create the OME-Zarr group at ``path`` and its full-size array ``0`` (nothing computed yet); returns the array.

    ``level_shapes``: shapes of the pyramid levels 1, 2, ... (arrays ``1``, ``2``, ..., same chunks). NGFF 0.4 is
    zarr format 2 with ``/``-separated chunk keys, 0.5 is zarr format 3. Unwritten chunks read as 0.
    ``shards`` (zarr format 3 only): the shard shape of array ``0``, a multiple of ``chunks``; each shard is one
    file holding its chunks, and is written whole (see :func:`write_unit`). ``level_shards``: the pyramid levels'
    shard shape (default ``shards``).
    """
    import zarr

    if version not in NGFF_VERSIONS:
        raise ValueError(f"ngff_version must be one of {NGFF_VERSIONS}, not {version!r}")
    fmt = 2 if version == "0.4" else 3
    if shards is not None and fmt == 2:
        raise ValueError("shards need zarr format 3 (NGFF 0.5)")
    group = zarr.open_group(str(path), mode="a", zarr_format=fmt)
    dims = [_AXIS_NAMES[a] for a in axes]
    kwargs: dict[str, Any] = {}
    if fmt == 2:
        kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    else:
        kwargs["dimension_names"] = dims
    arrays = []
    for k, level_shape in enumerate([shape, *level_shapes]):
        shard = shards if k == 0 else (level_shards or shards)
        if shard is not None:
            kwargs["shards"] = tuple(int(n) for n in shard)
        arr = group.create_array(str(k), shape=tuple(int(n) for n in level_shape),
                                 chunks=tuple(int(c) for c in chunks), dtype=dtype, fill_value=0.0, overwrite=True,
                                 **kwargs)
        if fmt == 2:
            # What xarray and other readers of zarr v2 use to name dimensions.
            arr.attrs["_ARRAY_DIMENSIONS"] = dims
        arrays.append(arr)
    meta = dict(attrs)
    if fmt == 2:
        meta["multiscales"] = [multiscales]
    else:
        meta["ome"] = {"version": "0.5", "multiscales": [multiscales]}
    group.attrs.update(meta)
    return arrays[0]


def open_array(path: Path, level: int = 0):
    """The result array of ``level`` (0: full resolution) of an existing output, opened for writing."""
    import zarr

    return zarr.open_array(str(path / str(level)), mode="r+")


def write_unit(array: Any) -> tuple[int, ...]:
    """The shape that ``array`` (zarr) is written by: its shard where it is sharded, else its chunk.

    A shard is one file: writing part of it reads, merges and rewrites the whole file, so two processes writing
    parts of one shard at once would lose one's data. Every writer here writes whole write units.
    """
    return tuple(int(n) for n in (getattr(array, "shards", None) or array.chunks))


def level_count(path: Path) -> int:
    """The number of resolution levels an existing output's ``multiscales`` metadata lists (0 when none)."""
    attrs = read_group_attrs(path) or {}
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales") or [{}]
    return len(ms[0].get("datasets", []))


def set_status(path: Path, status: str, **extra: Any) -> None:
    """Update ``n2x.status`` (and other ``n2x`` keys) in the group attributes; zarr writes them atomically."""
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    entry = dict(group.attrs.get("n2x", {}))
    entry["status"] = status
    entry.update(extra)
    group.attrs["n2x"] = entry


class ChunkLog:
    """The record of finished chunks of one level of an output: an empty marker file per chunk in
    ``<output>/<level>/.n2x-done``."""

    def __init__(self, output: Path, level: int = 0):
        self.dir = Path(output) / str(level) / DONE_DIR

    @staticmethod
    def key(chunk_index: Iterable[int]) -> str:
        return ".".join(str(int(i)) for i in chunk_index)

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    def done(self) -> set[str]:
        """Keys of the chunks recorded as written."""
        try:
            return {name for name in os.listdir(self.dir) if not name.startswith(".")}
        except FileNotFoundError:
            return set()

    def record(self, key: str) -> None:
        """Record chunk ``key`` as written; call only after its data is in the store."""
        try:
            fd = os.open(self.dir / key, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return
        os.close(fd)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
