"""Loading and saving models through the api."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import OutputExistsError
from ..model import Model


def load_model(path: str | os.PathLike, device: str | torch.device | None = "auto") -> Model:
    """Load a model file (``.n2x``) onto ``device``; :class:`~n2x.errors.ModelFileError` when it is not one."""
    return Model.load(path, device=device)


def model_file_path(path: str | os.PathLike) -> Path:
    """The path a model is saved to: ``path`` with ``.n2x`` added when it has another ending or none."""
    path = Path(path)
    return path if path.suffix == ".n2x" else path.with_name(path.name + ".n2x")


def save_model(model: Model, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``model`` to ``path`` (``.n2x`` is added when missing), atomically; returns the path written.

    An existing file is replaced only with ``overwrite`` (:class:`~n2x.errors.OutputExistsError` otherwise).
    """
    path = model_file_path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists", hint="choose another file name, or {overwrite} to replace it")
    return model.save(path)


def as_model(model: Model | str | os.PathLike, device: str | torch.device | None = None) -> Model:
    """``model`` itself (moved to ``device`` when one is given) or the model file it names, loaded."""
    if not isinstance(model, Model):
        return load_model(model, device=device or "auto")
    if device is not None:
        model.to(device)
    return model
