"""Opening a ``.n2x`` model file in napari (drag and drop, File > Open): the model is listed for the Denoise widget.

A model is not an image, so the reader adds no layer; it returns napari's "read, nothing to add" sentinel
``[(None,)]``, lists the model in the shared registry and opens the Denoise widget with the model selected.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

MODEL_SUFFIX = ".n2x"


def get_reader(path: str | list[str]) -> Callable[[Any], list] | None:
    """npe2 reader contribution: a reader for ``.n2x`` files, None for anything else."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(str(p).lower().endswith(MODEL_SUFFIX) for p in paths):
        return None
    return read_models


def read_models(path: str | list[str]) -> list:
    """Load the model file(s), list them for the widgets and show the Denoise widget."""
    from napari.utils.notifications import show_info

    from .denoise_widget import load_model_into_registry

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    entries = [load_model_into_registry(p) for p in paths]  # a ModelFileError reaches napari with its message
    _show_denoise_widget(entries[-1].name)
    show_info("n2x: model " + ", ".join(e.name for e in entries) + " loaded; it is listed in Plugins > n2x > Denoise")
    return [(None,)]


def _show_denoise_widget(model_name: str) -> None:
    try:
        import napari

        viewer = napari.current_viewer()
        if viewer is None:
            return
        _, widget = viewer.window.add_plugin_dock_widget("napari-n2x", "Denoise")
        if hasattr(widget, "select_model"):
            widget.select_model(model_name)
    except Exception:  # noqa: BLE001 - the model is listed either way; showing the widget is a convenience
        pass
