"""Denoising one layer, one file or a folder of files in a worker thread, with the CLI's rules for outputs.

A layer whose float32 result is small (:func:`n2x.api.output_format` says ``"tiff"``) is denoised in memory into a
new layer; a larger one (or one saved as OME-Zarr) goes through the engine's volume path, which writes an OME-Zarr
chunk by chunk while the new layer shows it filling. Files follow the command line: one file with "Save to" naming a
file is denoised into that file; anything else is planned by :func:`n2x.api.plan_batch` into an output folder
(``<stem>.tif`` or ``<stem>.ome.zarr``). The Train widget uses :class:`DenoiseJob` too, for the layer it trained on.
"""
from __future__ import annotations

import re
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
from napari.layers import Image, Layer
from napari.utils.notifications import show_error, show_info, show_warning

from n2x import api
from n2x.errors import N2xError, OutputExistsError

from ._common import PARTIAL_MARK, RESULT_SEPARATOR, ROLE_KEY, layer_axes, layer_data, result_layer_kwargs
from .words import error_text
from .workers import N2xWorkerError, ProgressRelay, start_worker


def _result_bytes(data: Any) -> int:
    return int(np.prod(data.shape)) * 4


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "image"


class DenoiseJob:
    """Denoise one layer, one file or a folder of files with a model, in a worker thread.

    ``output``: ``"auto"``, ``"tiff"`` (in memory) or ``"zarr"`` (chunk by chunk), as the CLI's ``--format``.
    Calls ``on_progress(done, total, unit)`` and finally ``on_finished(layers)`` (the layers added; empty when
    cancelled or failed) in the GUI thread. Errors are shown as napari notifications and also passed to
    ``on_error(message)``. ``scheduler``: a dask scheduler address to run the chunks of file inputs on (their
    progress and the filling layer come back as the cluster's tasks finish); layers always run here.
    """

    def __init__(self, viewer: Any, model: Any, *, layer: Image | None = None, path: str | Path | None = None,
                 axes: str | None = None, tile: int | tuple[int, ...] | None = None, halo: int | None = None,
                 device: str | None = None, output: str = "auto", save_to: str | Path | None = None,
                 overwrite: bool = False, model_entry: Any = None, scheduler: str | None = None,
                 on_progress: Callable[[int, int, str], None] | None = None,
                 on_finished: Callable[[list[Layer]], None] | None = None,
                 on_error: Callable[[str], None] | None = None):
        if (layer is None) == (path is None):
            raise N2xError("choose either an image layer or a file/folder to denoise")
        self.viewer, self.model, self.layer = viewer, model, layer
        self.path = Path(path) if path is not None else None
        self.axes, self.tile, self.halo, self.device, self.output = axes, tile, halo, device, output
        self.save_to = Path(save_to) if save_to else None
        self.overwrite, self.scheduler = overwrite, scheduler
        self.model_entry = model_entry  # the listed model (its short tag names the result layers), or None
        self.on_progress, self.on_finished, self.on_error = on_progress, on_finished, on_error
        self.stop = threading.Event()
        self.worker: Any = None
        self.layers: list[Layer] = []
        self.errored = False
        self._live: dict[int, tuple[Layer | None, float]] = {}
        self._views: dict[str, Any] = {}  # output path -> its latest api.open_result view
        self._items: list[dict[str, Any]] = []
        self._running = False

    # -- planning (GUI thread, cheap: files are opened lazily) -------------------------------------------------
    def _plan_layer(self) -> dict[str, Any]:
        data = layer_data(self.layer)
        axes = self.axes or layer_axes(self.layer)
        self.model.layout_for(tuple(data.shape), axes)  # ModelMismatchError, before a thread starts
        # The OME-Zarr gets the layer's pixel size and origin (keyed by axis; an RGB colour axis has none).
        geo = axes[:-1] if self.layer.rgb else axes
        geometry = {"scale": {a: float(s) for a, s in zip(geo, self.layer.scale) if a != "C"},
                    "translation": {a: float(t) for a, t in zip(geo, self.layer.translate) if a != "C"}}
        dest = self.save_to
        in_memory = (self.halo is None and api.output_format(_result_bytes(data), self.output) == "tiff"
                     and (dest is None or dest.suffix.lower() in (".tif", ".tiff")))
        if not in_memory and dest is None:
            dest = Path(tempfile.mkdtemp(prefix="n2x-")) / f"{_safe_name(self.layer.name)}.ome.zarr"
        if dest is not None and dest.exists() and not self.overwrite and dest.suffix.lower() != ".zarr":
            raise OutputExistsError(f"{dest} exists", hint="choose another output, or {overwrite} to replace it")
        return {"source": data, "data": data, "axes": axes, "name": self.layer.name, "layer": self.layer,
                "dest": dest, "geometry": geometry, "memory": in_memory, "skip": False}

    def _plan_files(self) -> list[dict[str, Any]]:
        p = self.path
        if not api.is_batch_job([str(p)], str(self.save_to or "")):
            # One file into the file "Save to" names, as `n2x denoise IN -o OUT.ome.zarr`.
            info = api.open_image(p)
            axes = self.axes or info.axes or api.guess_axes(info.data.shape)
            self.model.layout_for(tuple(info.data.shape), axes)
            if self.save_to.exists() and not self.overwrite and self.save_to.suffix.lower() != ".zarr":
                raise OutputExistsError(f"{self.save_to} exists",
                                        hint="choose another output, or {overwrite} to replace it")
            return [self._file_item(p, info, axes, self.save_to)]
        outdir = self.save_to or Path(tempfile.mkdtemp(prefix="n2x-denoised-"))
        inputs = api.expand_inputs([str(p)])
        if not inputs:
            raise N2xError(f"{p} holds no TIFF or zarr images")
        plan = api.plan_batch(self.model, inputs, outdir, fmt=self.output, overwrite=self.overwrite, axes=self.axes)
        failed = [item for item in plan if item.action == "fail"]
        if len(failed) == len(plan):
            raise N2xError(f"{failed[0].file}: {failed[0].reason}")
        for item in failed:  # the others go on, as in a batch on the command line
            show_warning(f"n2x: {item.file} is left out: {item.reason}")
        items = []
        for item in plan:
            if item.action != "fail":
                info = api.open_image(item.input.path)
                axes = self.axes or info.axes or api.guess_axes(info.data.shape)
                items.append(self._file_item(item.input.path, info, axes, item.output, skip=item.action == "skip"))
        return items

    @staticmethod
    def _file_item(path: Path, info: Any, axes: str, dest: Path, skip: bool = False) -> dict[str, Any]:
        return {"source": path, "data": info.data, "axes": axes, "name": api.output_stem(Path(path)), "layer": None,
                "dest": Path(dest), "scale": [info.scale.get(a, 1.0) for a in axes],
                "translate": [info.translation.get(a, 0.0) for a in axes], "memory": False, "skip": skip}

    # -- running -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Check everything that can be checked quickly, then start the worker (N2xError when it cannot run)."""
        self._items = [self._plan_layer()] if self.layer is not None else self._plan_files()
        self._running = True
        if all(item["memory"] for item in self._items):
            self._relay = ProgressRelay()
            self._relay.progress.connect(lambda d, t: self.on_progress and self.on_progress(d, t, "planes"))
            self.worker = start_worker(
                self._memory_fn, self._relay, doing="denoising", on_return=self._on_memory_result,
                on_error=self._on_worker_error, on_finish=self._on_finish)
        else:
            self.worker = start_worker(
                self._volume_gen, doing="denoising", on_yield=self._on_volume_event,
                on_error=self._on_worker_error, on_finish=self._on_finish)

    def cancel(self) -> None:
        """Ask the worker to stop after the current tile batch/chunk (chunks written stay on disk)."""
        self.stop.set()

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the worker has finished (also before its thread has started)."""
        return self._running

    def _memory_fn(self, progress: Callable[[int, int], None]) -> list[np.ndarray]:
        outs = []
        for item in self._items:
            out = api.denoise(self.model, item["data"], item["axes"], tile=self.tile, device=self.device,
                              progress=progress, should_stop=self.stop.is_set)
            if self.stop.is_set():
                return []
            if item["dest"] is not None:  # only a TIFF is written from memory (see _plan_layer)
                api.write_tiff(item["dest"], out, item["axes"], overwrite=self.overwrite)
            outs.append(out)
        return outs

    def _volume_gen(self):
        for k, item in enumerate(self._items):
            if self.stop.is_set():
                return
            if item["skip"]:  # finished by an earlier run with the same model and input
                yield ("done", k, item["dest"])
                continue
            extra: dict[str, Any] = dict(item.get("geometry") or {})
            if self.halo is not None:
                extra["halo"] = self.halo
            if self.scheduler and item["layer"] is None:
                extra["scheduler"] = self.scheduler
            gen = api.iter_denoise_volume(self.model, item["source"], item["dest"], item["axes"], tile=self.tile,
                                          overwrite=self.overwrite, device=self.device,
                                          should_stop=self.stop.is_set, **extra)
            while True:
                try:
                    prog = next(gen)
                except StopIteration as stop:
                    result = stop.value
                    break
                yield ("progress", k, int(prog.done), int(prog.total))
            yield ("done", k, Path(result) if isinstance(result, (str, Path)) else item["dest"])

    # -- GUI-thread handlers ---------------------------------------------------------------------------------
    def _model_tag(self) -> str:
        entry = self.model_entry
        if entry is not None and getattr(entry, "tag", ""):
            return entry.tag
        cfg = getattr(self.model, "config", {}) or {}
        return str((cfg.get("method") or {}).get("name", "model")).upper()

    def _add_layer(self, item: dict[str, Any], data: Any, role: str = "denoised") -> Layer:
        """Add a result layer on top of the layer list, selected: the newest result is the one in view.

        Its name is short and says which model made it ("cells · N2V 14:02:31"); the full story (model, source,
        axes, when, whether complete) is in the layer's metadata under ``n2x_result``."""
        src = item["layer"]
        tag = self._model_tag()
        if src is not None:
            kwargs = result_layer_kwargs(src, f"{RESULT_SEPARATOR}{tag}", item["axes"])
        else:
            kwargs = dict(name=f"{item['name']}{RESULT_SEPARATOR}{tag}", scale=item["scale"],
                          translate=item["translate"], rgb=False,
                          metadata={"n2x_axes": item["axes"], "n2x_source": str(item["source"])},
                          contrast_limits=_quick_limits(item["data"]))
        entry = self.model_entry
        describe = entry.describe() if entry is not None and hasattr(entry, "describe") else ""
        result = {"model": entry.name if entry is not None else tag, "model_description": describe,
                  "model_source": getattr(entry, "source", "") if entry is not None else "",
                  "source": str(item["source"]) if src is None else src.name, "axes": item["axes"],
                  "created": datetime.now().isoformat(timespec="seconds"),
                  "output": str(item["dest"]) if item.get("dest") is not None else "",
                  "status": "complete" if item["memory"] else "running"}
        kwargs["metadata"] = {**kwargs["metadata"], ROLE_KEY: role, "n2x_result": result}
        layer = Image(data, multiscale=isinstance(data, list), **kwargs)
        self.viewer.layers.append(layer)
        self.viewer.layers.selection.active = layer
        self.layers.append(layer)
        return layer

    def _mark(self, layer: Layer, view: Any) -> None:
        """Say in the layer's name and metadata whether its OME-Zarr is complete (a cancelled run is partial)."""
        meta = dict(layer.metadata.get("n2x_result", {}))
        meta.update(status="partial" if view.partial else "complete", chunks_written=view.done,
                    chunks_total=view.total)
        layer.metadata = {**layer.metadata, "n2x_result": meta}
        if view.partial and " (partial " not in layer.name:
            layer.name = f"{layer.name}{PARTIAL_MARK.format(done=view.done, total=view.total)}"

    def _open_result(self, dest: Path, axes: str) -> Any:
        """The result as a lazy array in the input's axis order (the OME-Zarr stores NGFF order: T, C, Z, Y, X), or
        the list of its resolution levels (a multiscale layer, filling in at every level); chunks not written yet are
        NaN, which napari draws as transparent (see :func:`n2x.api.open_result`)."""
        if dest.suffix != ".zarr" and not (dest / "0").exists():
            return api.open_image(dest).data  # a TIFF: written whole or not at all
        view = api.open_result(dest)
        self._views[str(dest)] = view
        n_levels = len(api.open_image(dest).extra.get("multiscales", {}).get("datasets", [])) or 1
        levels = [view.data] + [api.open_result(dest, level=k).data for k in range(1, n_levels)]
        stored = view.axes
        if stored and stored != axes and sorted(stored) == sorted(axes):
            levels = [d.transpose([stored.index(a) for a in axes]) for d in levels]
        return levels if n_levels > 1 else levels[0]

    def _on_volume_event(self, event: tuple) -> None:
        kind, k = event[0], event[1]
        item = self._items[k]
        dest: Path = item["dest"]
        entry = self._live.get(k)
        if kind == "progress":
            if self.on_progress:
                self.on_progress(event[2], event[3], "chunks")
            now = time.monotonic()
            if dest.suffix == ".zarr" and (dest / "0").exists():
                if entry is None:
                    self._live[k] = (self._add_layer(item, self._open_result(dest, item["axes"])), now)
                elif now - entry[1] > 0.5 and entry[0] in self.viewer.layers:  # refresh twice a second at most
                    entry[0].data = self._open_result(dest, item["axes"])
                    self._live[k] = (entry[0], now)
            return
        path = event[2]
        layer = None
        if entry is not None and entry[0] in self.viewer.layers:
            layer = entry[0]
            layer.data = self._open_result(path, item["axes"])
        elif not self.stop.is_set():
            layer = self._add_layer(item, self._open_result(path, item["axes"]))
        view = self._views.get(str(path))
        if layer is not None and view is not None:
            self._mark(layer, view)
        if self.stop.is_set():
            show_warning(f"Denoising cancelled; the chunks already computed are in {path} and a run with the "
                         "same output resumes from there.")

    def _on_memory_result(self, outs: list[np.ndarray]) -> None:
        if self.stop.is_set() or not outs:
            show_info("Denoising cancelled; no layer was added.")
            return
        for item, out in zip(self._items, outs):
            self._add_layer(item, out)

    def _on_worker_error(self, exc: BaseException) -> None:
        self.errored = True
        message = exc.message if isinstance(exc, N2xWorkerError) else error_text(exc)
        if isinstance(exc, N2xWorkerError) and exc.details and not isinstance(exc.original, N2xError):
            print(exc.details)  # the traceback goes to the console for a bug report; the user sees the message
        show_error(f"n2x: {message}")
        if self.on_error:
            self.on_error(message)

    def _on_finish(self) -> None:
        self._running = False
        if self.on_finished:
            self.on_finished(list(self.layers))


def _quick_limits(data: Any) -> tuple[float, float]:
    """Contrast limits from a small strided sample, so a lazy volume is not read in full."""
    step = tuple(max(1, n // 64) for n in data.shape)
    sample = np.asarray(data[tuple(slice(None, None, s) for s in step)], np.float32)
    sample = sample[np.isfinite(sample)]
    lo, hi = np.percentile(sample, [0.5, 99.8]) if sample.size else (0.0, 1.0)
    return float(lo), float(hi if hi > lo else lo + 1)
