"""Opening a ``.n2x`` model file in napari (drag and drop, File > Open): the model is listed for the Denoise widget.

A model is not an image, so the reader adds no layer; it returns napari's "read, nothing to add" sentinel
``[(None,)]``, lists the model in the shared registry and opens the Denoise widget with the model selected.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

MODEL_SUFFIX = ".n2x"
PLUGIN_NAME = "napari-n2x"


def get_reader(path: str | list[str]) -> Callable[[Any], list] | None:
    """npe2 reader contribution: a reader for ``.n2x`` files, None for anything else."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(str(p).lower().endswith(MODEL_SUFFIX) for p in paths):
        return None
    return read_models


def read_models(path: str | list[str]) -> list:
    """Load the model file(s), list them for the widgets and show the Denoise widget.

    A file that is not a model gets one n2x notification with the reason, and the reader still returns "nothing to
    add": raising would make napari show its generic reader error, with a traceback button and the reason last."""
    from napari.utils.notifications import show_error, show_info

    from n2x.errors import N2xError

    from .state import load_model_into_registry
    from .words import error_text

    prefer_our_ome_zarr_reader()
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    entries, failed = [], []
    for p in paths:
        try:
            entries.append(load_model_into_registry(p))
        except N2xError as exc:
            failed.append(error_text(exc))
        except Exception as exc:  # noqa: BLE001 - a damaged file must not end in napari's traceback dialog
            failed.append(f"{p} could not be loaded as a model ({type(exc).__name__}: {exc})")
    if failed:
        show_error("n2x: " + "; ".join(failed))
    if entries:
        _show_denoise_widget(entries[-1].name)
        show_info("n2x: model " + ", ".join(e.name for e in entries)
                  + " loaded; it is listed in Plugins > n2x > Denoise")
    return [(None,)]


#: napari's reader preference pattern for OME-Zarr folders (napari matches a folder's path with a trailing "/").
OME_ZARR_PATTERN = "*.ome.zarr" + os.sep
#: Readers that read an OME-Zarr's scale themselves: with one of them installed the choice is left to the user.
OTHER_OME_READERS = ("napari-ome-zarr",)


def prefer_our_ome_zarr_reader() -> bool:
    """Make this plugin napari's reader for ``*.ome.zarr`` folders when the user has not chosen one.

    napari offers "napari builtins" or "n2x" for a dropped OME-Zarr with no hint, and its builtin reader drops the
    NGFF scale and origin (a denoised volume shows at 1, 1, 1, stretched against its input). A choice the user made
    is kept, and so is the choice when another OME-aware reader is installed. Called when an n2x widget opens or a
    model is read. Returns True when the preference names this plugin afterwards."""
    try:
        from napari.plugins import _npe2
        from napari.settings import get_settings

        plugins = get_settings().plugins
        current = dict(plugins.extension2reader)
        if OME_ZARR_PATTERN in current:
            return current[OME_ZARR_PATTERN] == PLUGIN_NAME
        if any(name in _npe2.get_readers() for name in OTHER_OME_READERS):
            return False
        plugins.extension2reader = {**current, OME_ZARR_PATTERN: PLUGIN_NAME}
        return True
    except Exception:  # noqa: BLE001 - a preference is a convenience; napari then asks, as before
        return False


def _show_denoise_widget(model_name: str) -> None:
    try:
        import napari

        viewer = napari.current_viewer()
        if viewer is None:
            return
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Denoise")
        if hasattr(widget, "select_model"):
            widget.select_model(model_name)
    except Exception:  # noqa: BLE001 - the model is listed either way; showing the widget is a convenience
        pass


def get_ome_zarr_reader(path: str | list[str]) -> Callable[[Any], list] | None:
    """npe2 reader contribution: OME-Zarr images (n2x outputs among them) with their physical scale and origin.

    napari's built-in zarr reader ignores the OME-NGFF scale and translation, which would show a denoised volume
    rescaled against its input; this one keeps them. Returns None for anything that is not OME-Zarr.
    """
    if not isinstance(path, (str, Path)):
        return None
    from n2x.api import is_zarr_path, open_image
    from n2x.errors import N2xError

    if not is_zarr_path(path):
        return None
    try:
        info = open_image(path)
    except N2xError:
        return None
    if info.kind != "ome-zarr" or not info.axes:
        return None
    return read_ome_zarr


def read_ome_zarr(path: str) -> list:
    """Layer data for an OME-Zarr image: lazy (dask) levels, scale and translation per axis, channels split."""
    from n2x.api import open_image

    info = open_image(path)
    n_levels = len(info.extra.get("multiscales", {}).get("datasets", [])) or 1
    levels = [info.data] + [open_image(path, level=k).data for k in range(1, n_levels)]
    axes = info.axes
    shown = [a for a in axes if a != "C"]
    kwargs: dict[str, Any] = {
        "name": Path(path).name.removesuffix(".zarr").removesuffix(".ome"),
        "scale": [info.scale.get(a, 1.0) for a in shown],
        "translate": [info.translation.get(a, 0.0) for a in shown],
        "metadata": {"n2x_axes": "".join(shown), "source": str(path)},
        "multiscale": n_levels > 1,
    }
    if info.units.get("X"):
        kwargs["units"] = [info.units.get(a, "pixel") for a in shown]
    if "C" in axes:
        kwargs["channel_axis"] = axes.index("C")
    if "T" in shown:
        kwargs["axis_labels"] = list(shown)
    from n2x.api import open_result

    try:
        views = [open_result(path, level=k) for k in range(n_levels)]
    except Exception:  # noqa: BLE001 - not laid out as n2x writes: shown as read above
        views = []
    if views and views[0].partial:  # a cancelled n2x run: unwritten chunks absent (every level), and said so
        levels = [v.data for v in views]
        kwargs["name"] += f" (partial {views[0].done}/{views[0].total} chunks)"
    return [(levels if n_levels > 1 else levels[0], kwargs, "image")]
