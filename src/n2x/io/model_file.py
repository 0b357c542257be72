"""Model files: one safetensors file whose header carries the JSON config and the training history.

No pickling anywhere: safetensors holds only tensors and a string-to-string metadata map. Writes go to a temporary
file in the same folder that is renamed into place, so an interrupted save never leaves a half-written model.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .._files import atomic_path
from ..errors import ModelFileError

FORMAT_NAME = "n2x-model"
FORMAT_VERSION = 1
MODEL_SUFFIX = ".n2x"


def write_model_file(path: str | os.PathLike, state: dict[str, torch.Tensor], config: dict, history: dict) -> Path:
    """Write weights, config and history to ``path`` atomically; returns the path written."""
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder; give a file name for the model, e.g. {path / ('model' + MODEL_SUFFIX)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(config),
        "history": json.dumps(history),
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Read ``(state_dict, config, history)``; :class:`ModelFileError` if it is not a usable n2x model."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not an n2x model file ({MODEL_SUFFIX})")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for a file that is not one of its own
        raise ModelFileError(f"{path} is not an n2x model file (cannot be read as safetensors: {exc})") from None
    if meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path} is a safetensors file but not an n2x model (no n2x header)")
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        raise ModelFileError(f"{path} has an unreadable format version {meta.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by a newer napari-n2x (model format {version}, this version reads up to "
            f"{FORMAT_VERSION}); upgrade napari-n2x to use it"
        )
    try:
        config = json.loads(meta["config"])
        history = json.loads(meta.get("history", "{}"))
    except (KeyError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path} has a damaged n2x header ({exc})") from None
    return state, config, history


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (model provenance)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_sha256(state: dict[str, Any]) -> str:
    """Hex SHA-256 of the weights themselves (independent of file metadata)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
