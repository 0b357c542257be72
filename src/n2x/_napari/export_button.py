"""The Train widget's "Export…" button: the trained model as a BioImage Model Zoo package (``.zip``); and
:func:`write_and_notify`, which "Save model…" shares.

Kept apart from :mod:`.train_widget` (which builds the button and enables it with "Save model…"): a file dialog,
then :func:`n2x.api.export_bioimageio` with the training image as test input; errors and the result are
notifications.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from napari.utils.notifications import show_error, show_info

from n2x import api
from n2x.errors import N2xError

from ._common import layer_data, safe_file_name
from .words import error_text

TOOLTIP = ("Export the trained model as a BioImage Model Zoo package (.zip) that Fiji/deepImageJ, ilastik, QuPath "
           "and bioimageio.core run without n2x (needs pip install \"napari-n2x[bmz]\")")


def browse_export(widget: Any) -> None:
    """Ask for a ``.zip`` and export ``widget.model`` to it (the dialog has asked before replacing a file)."""
    from qtpy.QtWidgets import QFileDialog

    if widget.model is None:
        return
    layer = widget._train_layer
    default = safe_file_name(f"{layer.name if layer is not None else 'model'}_{widget.model.method_name}") + ".zip"
    path, _ = QFileDialog.getSaveFileName(widget, "Export for the BioImage Model Zoo", default,
                                          "bioimage.io packages (*.zip)")
    if path:
        export_model(widget, path, overwrite=True)


def export_model(widget: Any, path: str | Path, overwrite: bool = False) -> Path | None:
    """Export ``widget.model`` to ``path``; a crop of the training layer is the test input. A notification says
    where, or why not."""
    if widget.model is None:
        show_error("n2x: there is no trained model to export yet")
        return None
    layer = widget._train_layer
    image = layer_data(layer) if layer is not None and layer in widget.viewer.layers else None
    return write_and_notify(lambda: api.export_bioimageio(widget.model, path, test_image=image,
                                                          test_axes=widget._train_axes or None, overwrite=overwrite),
                            "BioImage Model Zoo package written to")


def write_and_notify(write: Callable[[], Path], done: str) -> Path | None:
    """Run ``write``; a notification says where the file went (``done`` + path) or, worded for the widgets, why
    not. Returns the path written, or None."""
    try:
        written = write()
    except N2xError as exc:
        show_error(f"n2x: {error_text(exc)}")
        return None
    except OSError as exc:
        show_error(f"n2x: {api.os_error_text(exc)}")
        return None
    show_info(f"n2x: {done} {written}")
    return written
