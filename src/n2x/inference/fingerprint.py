"""The job fingerprint: what decides whether an existing output is the result of this very job.

Every output carries its fingerprint (an OME-Zarr in its group attributes, a TIFF in a private tag), and a later
run compares it with its own to skip a finished output, resume an unfinished OME-Zarr, or refuse another job's.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..data.axes import Layout

#: the model configuration entries that change the values of a result
_CONFIG_KEYS = ("method", "network", "normalization", "channels", "spatial", "n_channels")
#: pixels per spatial axis of the corner sampled from the first and last samples of the input
_SAMPLE_EDGE = 64


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _content_sample(data: Any, layout: Layout) -> str:
    """Hash of a small corner of the first and last samples: catches an input replaced by other data."""
    import dask

    h = hashlib.sha256()
    region = tuple(slice(0, min(n, _SAMPLE_EDGE)) for n in layout.spatial_shape)
    # Local threads even where a dask.distributed client is active: a lazily opened TIFF cannot be shipped.
    with dask.config.set(scheduler="threads"):
        for s in sorted({0, layout.n_samples - 1}):
            h.update(np.ascontiguousarray(layout.read(data, s, region)).tobytes())
    return h.hexdigest()


def job_fingerprint(model: Any, data: Any, layout: Layout, source_path: Path | None, level: int, halo: int,
                    ngff_version: str | None) -> dict[str, Any]:
    """The fingerprint of denoising ``data`` (axes and shape ``layout``) with ``model``, as plain JSON values.

    ``model``: model weights and configuration hashes. ``input``: the resolved ``source_path`` (None for an
    array), shape, dtype, axes, resolution ``level`` and a hash of a small corner of its first and last samples.
    ``parameters``: ``halo`` (pixels of context per side) and ``ngff_version`` (None for a TIFF output, where it
    does not apply). Reads only the sampled corners of ``data``.
    """
    cfg = model.config
    fp = {
        "model": {"weights_sha256": model.weights_hash(),
                  "config_sha256": _sha({k: cfg.get(k) for k in _CONFIG_KEYS})},
        "input": {"path": str(source_path.resolve()) if source_path is not None else None,
                  "shape": list(layout.shape), "dtype": str(np.dtype(data.dtype)), "axes": layout.axes,
                  "level": int(level), "sample_sha256": _content_sample(data, layout)},
        "parameters": {"halo": int(halo), "ngff_version": ngff_version},
    }
    # Through JSON so that it compares equal to a fingerprint read back from a file (tuples become lists).
    return json.loads(json.dumps(fp))


def describe_difference(old: dict | None, new: dict) -> str:
    """What differs between an output's fingerprint ``old`` and this job's ``new``, in words, e.g.
    ``"another model (weights_sha256 differ)"``; ``"another job"`` when nothing specific does."""
    parts = []
    names = {"model": "another model", "input": "another input", "parameters": "other parameters"}
    old = old or {}
    for key, name in names.items():
        if old.get(key) != new.get(key):
            diff = [k for k in set(old.get(key) or {}) | set(new[key])
                    if (old.get(key) or {}).get(k) != new[key].get(k)]
            parts.append(f"{name} ({', '.join(sorted(diff))} differ)")
    return ", ".join(parts) or "another job"
