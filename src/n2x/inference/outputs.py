"""The outputs of a volume run: what kind a path is, what an existing output holds, and opening the target.

**One resume rule.** Every output carries its job fingerprint (:mod:`n2x.inference.fingerprint`): an OME-Zarr in
its group attributes (``n2x.fingerprint``, with ``n2x.status`` ``running`` until the last chunk), a TIFF in a
private tag (:func:`n2x.io.images.read_tiff_record`; a TIFF is renamed into place only when complete).
:func:`existing_output` compares it with this job's: the same job's finished output is ``complete``, its
unfinished OME-Zarr is ``partial`` (resumed chunk by chunk), anything else at the path is ``foreign`` (another
job's result) or ``unknown`` (not an n2x result), never replaced without ``overwrite``.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._version import __version__
from ..data.axes import Layout
from ..errors import InputError, N2xError, OutputExistsError
from ..io import ome_zarr
from ..io.images import read_tiff_record, write_tiff
from ..io.paths import is_tiff_name, is_zarr_name
from .fingerprint import describe_difference
from .volume_plan import ShardPlan

#: what a TIFF result may use of the available RAM: it is built in memory before it is written
TIFF_MEMORY_SHARE = 0.5


def output_kind(dest: Path) -> str:
    """``"zarr"`` (OME-Zarr) or ``"tiff"``, from the output path's suffix; :class:`N2xError` for any other."""
    if is_zarr_name(dest):
        return "zarr"
    if is_tiff_name(dest):
        return "tiff"
    raise N2xError(f"cannot write {dest}: the output must end in .zarr / .ome.zarr (OME-Zarr, any size) "
                   "or .tif / .tiff (results that fit in memory)")


@dataclass(frozen=True)
class ExistingOutput:
    """What is at an output path, judged against this job's fingerprint.

    ``state``: ``absent``, ``complete`` (this job's finished result), ``partial`` (this job's unfinished OME-Zarr;
    ``done_chunks`` recorded), ``foreign`` (another job's result; ``record`` is its n2x entry) or ``unknown``
    (something that is not an n2x result).
    """

    path: Path
    state: str
    record: dict | None = None
    done_chunks: int = 0

    @property
    def ours(self) -> bool:
        return self.state in ("complete", "partial")

    def refusal(self, fingerprint: dict) -> OutputExistsError:
        """The error for not replacing this output without ``overwrite``."""
        hint = "choose another output, or {overwrite} to replace it"
        if self.state == "foreign":
            what = describe_difference((self.record or {}).get("fingerprint"), fingerprint)
            return OutputExistsError(f"{self.path} holds the result of {what}", hint=hint)
        if self.ours:
            return OutputExistsError(f"{self.path} exists (the result of this same job)", hint=hint)
        return OutputExistsError(f"{self.path} exists and is not an n2x result", hint=hint)


def existing_output(dest: Path, kind: str, fingerprint: dict) -> ExistingOutput:
    """What is at ``dest`` (an output of ``kind`` ``"zarr"`` or ``"tiff"``) for the job of ``fingerprint``.

    Reads only metadata: the OME-Zarr group attributes and its chunk records, or the TIFF's first-page tags.
    """
    if not (dest.exists() or dest.is_symlink()):
        return ExistingOutput(dest, "absent")
    if kind == "tiff":
        record = read_tiff_record(dest) if dest.is_file() else None
    else:
        record = ome_zarr.n2x_attrs(ome_zarr.read_group_attrs(dest))
    if record is None:
        return ExistingOutput(dest, "unknown")
    if record.get("fingerprint") != fingerprint:
        return ExistingOutput(dest, "foreign", record)
    if kind == "tiff" or record.get("status") == "complete":
        return ExistingOutput(dest, "complete", record)
    return ExistingOutput(dest, "partial", record, len(ome_zarr.ChunkLog(dest).done()))


def provenance(model: Any, fingerprint: dict, source: str, layout: Layout, level: int,
               parameters: dict[str, Any]) -> dict[str, Any]:
    """Where a result comes from: package, model (file, hashes, method, network, normalisation), source and the
    run's ``parameters`` (halo, chunks, tile, batch size, device)."""
    cfg = model.config
    return {
        "software": "napari-n2x", "version": __version__, "method": model.method_name,
        "method_config": cfg["method"], "network": cfg["network"], "channels": cfg["channels"],
        "normalization": cfg["normalization"], "model_file": str(model.path) if model.path is not None else None,
        "model_file_sha256": model.file_hash(), "weights_sha256": fingerprint["model"]["weights_sha256"],
        "source": source, "source_axes": layout.axes, "source_level": int(level), "parameters": parameters,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def tiff_target(dest: Path, existing: ExistingOutput, fingerprint: dict, layout: Layout,
                overwrite: bool) -> np.ndarray:
    """The in-memory float32 array (``layout``'s shape and axes) a TIFF result is computed into.

    An existing file is refused unless ``overwrite`` (even this job's: a TIFF is finished or absent). The result
    must fit in half the available RAM; :class:`InputError` otherwise, pointing to OME-Zarr.
    """
    if existing.state != "absent" and not overwrite:
        raise existing.refusal(fingerprint)
    nbytes = int(np.prod(layout.shape)) * 4
    try:
        import psutil

        avail = psutil.virtual_memory().available
    except Exception:
        avail = None
    if avail is not None and nbytes > TIFF_MEMORY_SHARE * avail:
        raise InputError(f"the result ({nbytes / 2**30:.1f} GiB) does not fit in memory as a TIFF",
                         hint="write an OME-Zarr instead (an output path ending in .ome.zarr)")
    return np.zeros(layout.shape, np.float32)


def finish_tiff(dest: Path, target: np.ndarray, layout: Layout, fingerprint: dict, prov: dict,
                scale: dict[str, float], units: dict[str, str]) -> None:
    """Write the finished TIFF atomically, carrying its fingerprint and provenance."""
    write_tiff(dest, target, layout.axes, scale=scale, units=units, overwrite=True, fingerprint=fingerprint,
               provenance=prov)


@dataclass
class ZarrTarget:
    """An OME-Zarr output opened for writing: ``array`` (level 0, axes ``out_axes``), the spatial ``chunk`` shape
    in force (a sharded output's shard: the unit written and recorded), the level-0 chunk keys already finished
    (``skipped``; ``{"*"}`` for a complete output), the pyramid ``factors`` (per level, per spatial axis of the
    layout), per level the keys already recorded (``level_done``, level 0 included), and ``run``: the samples of
    the last sample axis that one shard holds (None: not sharded), which a work unit must then write together."""

    array: Any
    chunk: tuple[int, ...]
    skipped: set[str]
    factors: list[tuple[int, ...]]
    level_done: list[set[str]]
    run: int | None = None


def open_zarr_target(dest: Path, existing: ExistingOutput, *, fingerprint: dict, overwrite: bool,
                     source_path: Path | None, out_axes: str, layout: Layout, chunk: tuple[int, ...],
                     multiscales: Callable[[list[tuple[int, ...]]], dict[str, Any]], prov: dict[str, Any],
                     ngff_version: str, factors: list[tuple[int, ...]],
                     shard: ShardPlan | None = None) -> ZarrTarget:
    """Create the OME-Zarr output at full size (with its pyramid levels), or reopen this job's unfinished one.

    ``factors``: the pyramid of a new output (:func:`n2x.io.pyramid.pyramid_factors`), ``multiscales(factors)``
    its NGFF entry; ``shard``: the shards of a new sharded output (zarr format 3; ``chunk`` is then the chunk
    inside a shard). An existing output's own chunk grid, shards and pyramid decide on resume. Another job's output, or anything else, is refused unless
    ``overwrite`` (then removed: a zarr, an empty folder or a file only, see :func:`n2x.io.ome_zarr.remove_output`).
    """
    resumable = existing.ours and not overwrite
    if existing.state != "absent" and not resumable:
        if not overwrite:
            raise existing.refusal(fingerprint)
        ome_zarr.remove_output(dest, source_path)
    chunk_log = ome_zarr.ChunkLog(dest)
    out_shape = tuple(layout.shape[layout.axes.index(a)] for a in out_axes)
    target = None
    if resumable:
        try:
            target = ome_zarr.open_array(dest)
        except Exception:
            target = None  # killed between creating the group and its array: create the array below
        if target is not None and (tuple(target.shape) != out_shape or np.dtype(target.dtype) != np.float32):
            target = None
    # An output without a "pyramid" entry (written before pyramids) has one level.
    pyramid = [tuple(f) for f in (existing.record or {}).get("pyramid", [[1] * layout.ndim_spatial])]
    run = None
    if target is not None and len(pyramid) == ome_zarr.level_count(dest):
        unit = ome_zarr.write_unit(target)
        chunk = tuple(unit[out_axes.index(a)] for a in layout.spatial)
        if getattr(target, "shards", None) is not None:
            run = unit[out_axes.index(layout.sample_axes[-1])] if layout.sample_axes else 1
        skipped = {"*"} if existing.state == "complete" else chunk_log.done()
        level_done = [skipped] + [ome_zarr.ChunkLog(dest, k).done() for k in range(1, len(pyramid))]
    else:
        for k in range(ome_zarr.level_count(dest) or 1):
            ome_zarr.ChunkLog(dest, k).clear()
        skipped = set()
        pyramid = [tuple(f) for f in factors]
        level_done = [set() for _ in pyramid]
        out_chunks = tuple(1 if a in layout.sample_axes else (layout.n_channels if a == "C"
                           else chunk[layout.spatial.index(a)]) for a in out_axes)
        level_shapes = [tuple(-(-n // fs[layout.spatial.index(a)]) if a in layout.spatial else n
                              for a, n in zip(out_axes, out_shape)) for fs in pyramid[1:]]
        shards = level_shards = None
        if shard is not None:
            # Level 0's shard holds shard.samples samples (written by one work unit); a pyramid block is one sample.
            level_shards = tuple(shard.spatial[layout.spatial.index(a)] if a in layout.spatial else n
                                 for a, n in zip(out_axes, out_chunks))
            last = layout.sample_axes[-1] if layout.sample_axes else None
            shards = tuple(shard.samples if a == last else n for a, n in zip(out_axes, level_shards))
            chunk, run = shard.spatial, shard.samples
        dest.parent.mkdir(parents=True, exist_ok=True)
        target = ome_zarr.create_image(
            dest, out_shape, out_axes, out_chunks, version=ngff_version, multiscales=multiscales(pyramid),
            level_shapes=level_shapes, shards=shards, level_shards=level_shards,
            attrs={"n2x": {"status": "running", "fingerprint": fingerprint, "provenance": prov,
                           "pyramid": [list(f) for f in pyramid]}})
    for k in range(len(pyramid)):
        ome_zarr.ChunkLog(dest, k).ensure()
    return ZarrTarget(target, chunk, skipped, pyramid, level_done, run)


def finish_zarr(dest: Path, n_levels: int = 1) -> None:
    """Mark the OME-Zarr output complete (its attributes, written atomically by zarr), then drop the chunk records
    of its ``n_levels`` levels."""
    ome_zarr.set_status(dest, "complete", finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    for k in range(n_levels):
        ome_zarr.ChunkLog(dest, k).clear()
