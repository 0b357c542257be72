"""How the napari widgets word the engine's hints: each option a hint names (``{overwrite}``, ``{tile}``...) becomes
the control the user changes in the widget. Qt-free, so the settings and their tests can use it."""
from __future__ import annotations

from n2x.errors import N2xError

#: Engine option name -> what to do with the widget's control (see :meth:`n2x.errors.N2xError.render`).
NAPARI_WORDS: dict[str, str] = {
    "overwrite": "tick “Replace existing output”",
    "tile": "a smaller “Tile” size",
    "dims": "the “Network” choice",
    "batch_size": "a smaller “Batch”",
    "patch_size": "a smaller “Patch size”",
    "device": "the “Device” choice",
    "axes": "the “Axes” field",
    "precision": "the “Precision” choice",
    "channels": "the “Channels” choice",
    "output": "another “Save to” path",
    "format": "the “Output” choice",
    "method": "the “Method” choice",
    "time": "the “Length”",
    "steps": "the “Length”",
    "epochs": "the “Length”",
}


def error_text(exc: BaseException) -> str:
    """What a notification says about ``exc``: an engine error worded for the widgets, anything else as text."""
    if isinstance(exc, N2xError):
        return exc.render(NAPARI_WORDS)
    return str(exc)
