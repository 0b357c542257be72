"""Exporting models to the BioImage Model Zoo format through the api."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import OutputExistsError
from ..export import DEFAULT_LICENSE, require_spec, write_package
from ..model import Model
from ._models import as_model


def export_path(path: str | os.PathLike) -> Path:
    """The path a package is written to: ``path`` with ``.zip`` added when it has another ending or none."""
    path = Path(path)
    return path if path.suffix.lower() == ".zip" else path.with_name(path.name + ".zip")


def export_bioimageio(model: Model | str | os.PathLike, path: str | os.PathLike, *, name: str | None = None,
                      authors: Sequence[str] | str | None = None, license: str = DEFAULT_LICENSE,
                      test_image: Any | None = None, test_axes: str | None = None, onnx: bool = True,
                      overwrite: bool = False) -> Path:
    """Write ``model`` (a :class:`Model` or a ``.n2x`` file) as a BioImage Model Zoo package (``.zip``, spec 0.5).

    The package runs without n2x (TorchScript weights, plus ONNX weights with ``onnx`` where the network exports
    cleanly) and computes what :func:`denoise` computes, input and output in the image's units. ``name``: the
    model's display name; ``authors``: names (default: a placeholder that says to name them); ``license``: an SPDX
    identifier. ``test_image`` (an array, axes ``test_axes``, or an image file) gives the package's test input, a
    crop of its first sample; without it a deterministic synthetic image is used. An existing file is replaced only
    with ``overwrite``. Needs ``pip install "napari-n2x[bmz]"``; a method or option that cannot be reproduced
    faithfully outside n2x is refused with the reason (:class:`~n2x.errors.N2xError`).
    """
    require_spec()  # before anything else: the one-line "what to install" message
    path = export_path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists", hint="choose another file name, or {overwrite} to replace it")
    model = as_model(model, device=None)
    if isinstance(test_image, (str, os.PathLike)):
        from ..io.images import open_image

        info = open_image(test_image)
        test_image, test_axes = info.data, test_axes or info.axes
    if isinstance(authors, str):
        authors = [a.strip() for a in authors.split(",") if a.strip()]
    return write_package(model, path, name=name, authors=list(authors or []), license=license,
                         test_image=test_image, test_axes=test_axes, onnx=onnx)
