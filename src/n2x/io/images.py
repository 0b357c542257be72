"""Opening images lazily (TIFF/OME-TIFF through ``tifffile.aszarr``, zarr/OME-Zarr) and writing TIFF results.

Nothing here reads a whole image: openers return a ``dask.array`` plus what the file says about its axes and
pixel sizes. A TIFF result carries its own record (the job fingerprint that decides whether a later run may skip
it) in a private TIFF tag: see :func:`write_tiff` and :func:`read_tiff_record`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from .._files import atomic_path
from ..errors import InputError, OutputExistsError
from .paths import TIFF_SUFFIXES, is_tiff_name, is_zarr_path

__all__ = ["ImageInfo", "open_image", "write_tiff", "read_tiff_record", "is_zarr_path", "TIFF_SUFFIXES",
           "N2X_TIFF_TAG"]

#: Private TIFF tag (in the range TIFF reserves for private use) holding the n2x record of a result as ASCII JSON:
#: ``{"status": "complete", "fingerprint": {...}, "provenance": {...}}``, the same entry an OME-Zarr result keeps
#: in its group attributes under ``n2x``. Readers that do not know the tag ignore it.
N2X_TIFF_TAG = 65117
# tifffile's axis letters -> ours. 'S' in tifffile is RGB samples, which are channels here.
_TIFF_AXES = {"T": "T", "C": "C", "Z": "Z", "Y": "Y", "X": "X", "S": "C", "Q": "S", "I": "S", "R": "S",
              "A": "S", "P": "S", "E": "S", "V": "S", "L": "S", "H": "S", "O": "S", "M": "S"}


@dataclass
class ImageInfo:
    """An opened image: lazy ``data``, its ``axes`` (None when unknown), and per-axis ``scale``/``translation``
    (physical units per pixel and origin, keyed by axis letter) with ``units``."""

    data: Any
    axes: str | None
    path: Path | None = None
    scale: dict[str, float] = field(default_factory=dict)
    translation: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    kind: str = "array"
    extra: dict = field(default_factory=dict)
    #: False when the file does not name its axes (a plain TIFF: tifffile calls its extra axes "Q"/"I", read here as
    #: sample axes); :func:`n2x.api.input_axes` then prefers a model's axes
    axes_named: bool = True


def open_image(path: str | os.PathLike, level: int = 0) -> ImageInfo:
    """Open a TIFF/OME-TIFF or zarr/OME-Zarr image lazily; :class:`InputError` when it cannot be read."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist")
    if is_zarr_path(p):
        return _open_zarr(p, level)
    if is_tiff_name(p):
        return _open_tiff(p, level)
    raise InputError(f"{p} is not a TIFF or zarr image (supported: .tif, .tiff, .ome.tif, .zarr, .ome.zarr)")


def _open_tiff(p: Path, level: int) -> ImageInfo:
    import tifffile
    import zarr

    try:
        tif = tifffile.TiffFile(p)
        series = tif.series[0]
        levels = getattr(series, "levels", [series])
        if level >= len(levels):
            raise InputError(f"{p} has {len(levels)} resolution level(s); level {level} does not exist")
        store = levels[level].aszarr()
        arr = zarr.open(store, mode="r")
        data = _guarded(arr, p, level)
        axes = "".join(_TIFF_AXES.get(a, "S") for a in series.axes)
        if len(set(axes)) != len(axes):
            axes = None  # e.g. two unknown axes: let the user say
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{p} cannot be read as a TIFF image ({type(exc).__name__}: {exc})") from None
    scale, translation, units = _tiff_physical(tif, series, axes or "")
    if level and axes:
        # A pyramid level's pixels are larger by the level's downsampling factor.
        for a, full, here in zip(axes, levels[0].shape, levels[level].shape):
            if a in scale and here:
                scale[a] *= full / here
    return ImageInfo(data=data, axes=axes, path=p, scale=scale, translation=translation, units=units, kind="tiff",
                     extra={"tiff": tif}, axes_named=not set(series.axes) & set("QI"))


class _GuardedReads:
    """A TIFF's pixels, read lazily, where a read that fails (a truncated file, a corrupt strip) is an
    :class:`InputError` naming the file: opening reads only the header, so damage shows up at the first read, deep
    inside training or denoising, and would otherwise surface as tifffile's traceback."""

    def __init__(self, arr: Any, path: Path, level: int):
        self.arr, self.path, self.level = arr, path, level
        self.shape, self.dtype, self.ndim = tuple(arr.shape), np.dtype(arr.dtype), arr.ndim

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            return np.asarray(self.arr[index])
        except Exception as exc:  # noqa: BLE001 - whatever the decoder raises, the file is damaged
            raise InputError(f"{self.path} cannot be read: its pixel data are damaged or truncated "
                             f"({type(exc).__name__}: {exc})", hint="check the file, or copy it again") from None

    def __dask_tokenize__(self) -> tuple:
        stat = self.path.stat()
        return ("n2x-tiff", str(self.path.resolve()), self.level, stat.st_size, stat.st_mtime_ns)


def _guarded(arr: Any, path: Path, level: int) -> Any:
    """``arr`` (tifffile's zarr view) as a dask array whose read errors name the file (:class:`_GuardedReads`)."""
    reads = _GuardedReads(arr, path, level)
    return da.from_array(reads, chunks=arr.chunks, asarray=False, meta=np.empty((0,) * reads.ndim, reads.dtype))


def _tiff_physical(tif: Any, series: Any, axes: str) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """Pixel sizes, origin and units of a TIFF: OME-XML first, then ImageJ metadata, then the resolution tags.

    Pixel sizes are a nicety: a file without (or with broken) metadata still opens, with empty dicts.
    """
    scale: dict[str, float] = {}
    translation: dict[str, float] = {}
    units: dict[str, str] = {}
    try:
        if tif.is_ome and tif.ome_metadata:
            import tifffile

            meta = tifffile.xml2dict(tif.ome_metadata)
            image = meta.get("OME", {}).get("Image", {})
            image = image[0] if isinstance(image, list) else image
            pixels = image.get("Pixels", {})
            for a in "XYZ":
                size = pixels.get(f"PhysicalSize{a}")
                if size:
                    scale[a] = float(size)
                    units[a] = str(pixels.get(f"PhysicalSize{a}Unit", "µm"))
            if pixels.get("TimeIncrement"):
                scale["T"] = float(pixels["TimeIncrement"])
                units["T"] = str(pixels.get("TimeIncrementUnit", "s"))
            plane = pixels.get("Plane")
            plane = plane[0] if isinstance(plane, list) else plane
            if isinstance(plane, dict):
                for a in "XYZ":
                    if plane.get(f"Position{a}") is not None:
                        translation[a] = float(plane[f"Position{a}"])
            if scale:
                return _only(scale, axes), _only(translation, axes), _only(units, axes)
        page = series.pages[0]
        xres = page.tags.get("XResolution")
        yres = page.tags.get("YResolution")
        if xres is not None and yres is not None:
            xr, yr = xres.value, yres.value
            if xr[0] and yr[0] and (xr != (1, 1) or yr != (1, 1)):
                scale["X"] = xr[1] / xr[0]
                scale["Y"] = yr[1] / yr[0]
                res_unit = page.tags.get("ResolutionUnit")
                code = int(res_unit.value) if res_unit is not None else 1
                if code in (2, 3) and not tif.is_imagej:
                    # Resolution per inch (2) or per centimetre (3): sizes in micrometres.
                    factor = 25400.0 if code == 2 else 10000.0
                    scale = {a: v * factor for a, v in scale.items()}
                    units = {a: "micrometer" for a in scale}
        ij = tif.imagej_metadata or {}
        if "spacing" in ij:
            scale["Z"] = float(ij["spacing"])
        if ij.get("unit"):
            unit = str(ij["unit"]).replace("\\u00B5", "µ")
            units = {a: unit for a in scale if a in "XYZ"}
        if ij.get("finterval"):
            scale["T"] = float(ij["finterval"])
            units["T"] = str(ij.get("tunit", "s")) if ij.get("tunit") else "s"
        for a, key in (("X", "xorigin"), ("Y", "yorigin"), ("Z", "zorigin")):
            if ij.get(key) and a in scale:
                # ImageJ stores the origin in pixels, counted the other way round.
                translation[a] = -float(ij[key]) * scale[a]
    except Exception:
        return {}, {}, {}
    return _only(scale, axes), _only(translation, axes), _only(units, axes)


def _only(d: dict, axes: str) -> dict:
    return {a: v for a, v in d.items() if a in axes} if axes else d


def _open_zarr(p: Path, level: int) -> ImageInfo:
    import zarr

    try:
        node = zarr.open(str(p), mode="r")
    except Exception as exc:
        raise InputError(f"{p} cannot be opened as zarr ({type(exc).__name__}: {exc})") from None
    if isinstance(node, zarr.Array):
        found = _zarr_dimension_axes(node)
        return ImageInfo(data=da.from_zarr(node), axes=found, path=p, kind="zarr", axes_named=found is not None)
    attrs = dict(node.attrs)
    ome = attrs.get("ome", attrs)
    ms = ome.get("multiscales")
    if not ms:
        arrays = list(node.array_keys())
        if len(arrays) == 1:
            return ImageInfo(data=da.from_zarr(node[arrays[0]]), axes=None, path=p, kind="zarr", axes_named=False)
        raise InputError(f"{p} is a zarr group without OME-NGFF multiscales metadata; point to one of its arrays")
    m = ms[0]
    datasets = m["datasets"]
    if level >= len(datasets):
        raise InputError(f"{p} has {len(datasets)} resolution level(s); level {level} does not exist")
    ds = datasets[level]
    arr = node[ds["path"]]
    axes_meta = m.get("axes", [])
    names = [a["name"] if isinstance(a, dict) else a for a in axes_meta]
    axes = "".join(n.upper() if n.upper() in "TCZYX" else "S" for n in names) or None
    if axes and len(set(axes)) != len(axes):
        axes = None
    scale, translation, units = {}, {}, {}
    for t in ds.get("coordinateTransformations", []):
        if t.get("type") == "scale" and axes:
            scale = {a: float(v) for a, v in zip(axes, t["scale"])}
        if t.get("type") == "translation" and axes:
            translation = {a: float(v) for a, v in zip(axes, t["translation"])}
    for a, meta in zip(axes or "", axes_meta):
        if isinstance(meta, dict) and meta.get("unit"):
            units[a] = meta["unit"]
    return ImageInfo(data=da.from_zarr(arr), axes=axes, path=p, scale=scale, translation=translation,
                     units=units, kind="ome-zarr", extra={"multiscales": m})


def _zarr_dimension_axes(arr: Any) -> str | None:
    """Axes from a plain zarr array's dimension names (zarr 3 ``dimension_names`` or xarray's
    ``_ARRAY_DIMENSIONS``) when they are all axis letters; None otherwise."""
    names = getattr(arr.metadata, "dimension_names", None) or arr.attrs.get("_ARRAY_DIMENSIONS")
    if not names or len(names) != arr.ndim:
        return None
    axes = "".join(str(n).upper() for n in names if n is not None)
    return axes if len(axes) == arr.ndim and set(axes) <= set("STCZYX") and len(set(axes)) == len(axes) else None


def write_tiff(path: str | os.PathLike, data: np.ndarray, axes: str, *, scale: dict[str, float] | None = None,
               overwrite: bool = False, units: dict[str, str] | None = None, fingerprint: dict | None = None,
               provenance: dict | None = None) -> Path:
    """Write ``data`` (float32, axes ``axes``) as a (BigTIFF-capable) TIFF atomically: a temporary file renamed
    into place when complete, so a TIFF under the final name is always whole.

    ``scale`` (physical size per pixel per axis letter) and ``units`` (per axis letter, e.g. ``"micrometer"``)
    go into the ImageJ metadata where the axes allow an ImageJ hyperstack. ``fingerprint`` (the job fingerprint of
    :func:`n2x.inference.fingerprint.job_fingerprint`) and ``provenance`` are stored in the tag
    :data:`N2X_TIFF_TAG`, read back by :func:`read_tiff_record`; without a fingerprint no tag is written.
    """
    import tifffile

    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{p} exists", hint="choose another output, or {overwrite} to replace it")
    p.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(data, np.float32)
    if set(axes) <= set("TZCYX"):
        # ImageJ hyperstacks hold float32 in TZCYX order with pixel sizes, and napari and Fiji read them.
        order = "".join(a for a in "TZCYX" if a in axes)
        arr = np.transpose(arr, [axes.index(a) for a in order])
        kwargs: dict[str, Any] = {"imagej": True, "metadata": {"axes": order}}
        if scale and "X" in scale and "Y" in scale:
            kwargs["resolution"] = (1.0 / scale["X"], 1.0 / scale["Y"])
        if scale and "Z" in scale:
            kwargs["metadata"]["spacing"] = scale["Z"]
        if scale and "T" in scale:
            kwargs["metadata"]["finterval"] = scale["T"]
        unit = (units or {}).get("X") or (units or {}).get("Y")
        if unit:
            # ImageJ spells micrometres "micron"; other units go as given.
            kwargs["metadata"]["unit"] = "micron" if unit in ("micrometer", "µm", "um") else unit
    else:
        # Other sample axes: tifffile's shaped format keeps the axes (ours 'S' is its 'Q').
        kwargs = {"metadata": {"axes": axes.replace("S", "Q")}}
    if fingerprint is not None:
        record = {"status": "complete", "fingerprint": fingerprint, "provenance": provenance or {}}
        # ASCII tag: JSON escapes any non-ASCII character; written once, in the first page.
        text = json.dumps(record, sort_keys=True, ensure_ascii=True, default=str)
        kwargs["extratags"] = [(N2X_TIFF_TAG, 2, 0, text, True)]
    with atomic_path(p) as tmp:
        tifffile.imwrite(tmp, arr, **kwargs)
    return p


def read_tiff_record(path: str | os.PathLike) -> dict | None:
    """The n2x record a TIFF written by :func:`write_tiff` carries (``status``, ``fingerprint``, ``provenance``);
    None for a file without one (not an n2x result, or not a readable TIFF). Reads the first page's tags only."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tag = tif.pages[0].tags.get(N2X_TIFF_TAG)
            value = tag.value if tag is not None else None
    except Exception:  # not a TIFF, damaged, unreadable: no record, the caller treats it as not ours
        return None
    if not isinstance(value, str):
        return None
    try:
        record = json.loads(value)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("fingerprint"), dict) else None
