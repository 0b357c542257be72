"""Denoising through the api: in memory, a volume chunk by chunk, or a batch of files."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Generator, Sequence

import numpy as np
import torch

from .._progress import drain
from ..batch import BatchEvent, BatchSummary, run_batch
from ..batch.volume_cluster import check_cluster_source, cluster_executor, connect_for_volume
from ..errors import OptionError
from ..inference.memory_budget import parse_memory
from ..inference.volume import VolumeProgress
from ..inference.volume import iter_denoise_volume as _iter_denoise_volume
from ..model import Model
from ._models import as_model


def denoise(model: Model | str | os.PathLike, array: Any, axes: str | None = None, *,
            tile: Sequence[int] | int | None = None, batch_size: int | None = None,
            device: str | torch.device | None = None, progress: Callable[[int, int], None] | None = None,
            should_stop: Callable[[], bool] | None = None, tta: bool = False) -> np.ndarray:
    """Denoise an array that fits in memory with ``model`` (a :class:`Model` or a model file path).

    ``axes`` names the array's dimensions (default: the model's training axes when the number of dimensions
    matches). ``tile``: core tile in pixels (one size or one per spatial axis; default from the model).
    ``tta``: average 8 flipped/rotated predictions (8x slower, slightly better). Returns float32 in the input's
    intensity units, same shape and axes. For volumes larger than memory use :func:`denoise_volume`.
    """
    model = as_model(model, device)
    return model.predict(array, axes, tile=tile, batch_size=batch_size, progress=progress, should_stop=should_stop,
                         tta=tta)


def iter_denoise_volume(model: Model | str | os.PathLike, source: Any, destination: str | os.PathLike,
                        axes: str | None = None, *, device: str | torch.device | None = None,
                        scheduler: str | None = None, workers: int | None = None, client: Any = None,
                        max_memory: float | str | None = None,
                        **kwargs: Any) -> Generator[VolumeProgress, None, Path]:
    """Denoise ``source`` (an array, or an image file or zarr path, opened lazily) into ``destination`` (OME-Zarr
    chunk by chunk, resumable; or TIFF) and yield :class:`VolumeProgress`; the generator returns the output path.

    ``model``: a :class:`Model` or a model file. Where the chunks run: in this process (default, and
    ``workers=1``), on a new local dask cluster of ``workers`` processes, on the dask scheduler at ``scheduler``
    (e.g. ``"tcp://head:8786"``), or through an existing ``distributed.Client`` ``client``; on a cluster the input
    must be a file path the workers can read, and the output a path they can write (see
    :mod:`n2x.batch.volume_cluster`). ``max_memory``: bytes per process or worker (``"1.5G"`` style accepted;
    default 1.5 GiB on a CPU, the device's free memory on a GPU). The other keywords are those of
    :func:`n2x.inference.volume.iter_denoise_volume` (``tile``, ``chunks``, ``halo``, ``batch_size``, ``level``,
    ``overwrite``, ``ngff_version``, ``scale``, ``translation``, ``units``, ``should_stop``, ``pyramid_levels``,
    ``shards``).
    """
    try:
        memory = parse_memory(max_memory)
    except ValueError:
        raise OptionError(f"max_memory {max_memory!r} is not a size", hint="give {max_memory} as e.g. 1.5G or 800M") \
            from None
    net = as_model(model, device)
    if client is None and not scheduler and (workers is None or workers == 1):
        return _iter_denoise_volume(net, source, destination, axes, max_memory=memory, **kwargs)
    check_cluster_source(source)  # before a cluster starts or an output is created
    cl, close, threads = connect_for_volume(scheduler, workers, client)
    try:
        executor = cluster_executor(cl, net, device=str(device or "auto"), torch_threads=threads)
        gen = _iter_denoise_volume(net, source, destination, axes, max_memory=memory, executor=executor, **kwargs)
    except BaseException:
        close()
        raise
    return _closing(gen, close)


def _closing(gen: Generator[VolumeProgress, None, Path],
             close: Callable[[], None]) -> Generator[VolumeProgress, None, Path]:
    """``gen``, then ``close()`` however it ends (the cluster this call started is shut down)."""
    try:
        return (yield from gen)
    finally:
        close()


def denoise_volume(model: Model | str | os.PathLike, source: Any, destination: str | os.PathLike,
                   axes: str | None = None, *, progress: Callable[[int, int], None] | None = None,
                   **kwargs: Any) -> Path:
    """Denoise ``source`` into ``destination`` (OME-Zarr or TIFF) chunk by chunk and return the output path.

    Takes the arguments of :func:`iter_denoise_volume`; ``progress(done, total)`` is called as chunks finish
    (``done`` counts chunks finished by earlier, interrupted runs too). Running it again after a crash resumes.
    """
    report = (lambda pr: progress(pr.done, pr.total)) if progress is not None else None
    return drain(iter_denoise_volume(model, source, destination, axes, **kwargs), report)


def denoise_files(model: str | os.PathLike, inputs: Sequence[str | os.PathLike], outdir: str | os.PathLike, *,
                  on_event: Callable[[BatchEvent], None] | None = None, **kwargs: Any) -> BatchSummary:
    """Denoise every image that ``inputs`` name (files, glob patterns, folders) into the folder ``outdir`` with the
    model file ``model``, here or on a dask cluster; resumable. See :func:`n2x.batch.run_batch` for the keywords
    and :class:`BatchSummary` for the result; ``on_event`` receives :class:`BatchEvent` progress."""
    return run_batch(model, inputs, outdir, on_event=on_event, **kwargs)
