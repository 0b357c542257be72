"""Models shared between the Train and Denoise widgets and the ``.n2x`` reader.

One registry per Python process, so a model trained in the Train widget (or dropped onto the viewer as a ``.n2x``
file) shows up in every Denoise widget. Signals are psygnal (Qt-free, already a napari dependency) and are only
emitted from the main thread: the widgets add models in their ``returned`` handlers, never from a worker.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from psygnal import Signal


@dataclass
class ModelEntry:
    """A model listed for the Denoise widget: ``name`` shown to the user, where it came from, when it was added."""

    name: str
    model: object  # n2x.Model; not imported here so that importing the state stays cheap
    source: str = ""
    added: float = field(default_factory=time.time)
    #: a short name for the layers this model makes ("N2V 14:02:31", or a file's stem): it says which model made a
    #: result in a layer list that shows ~25 characters
    tag: str = ""

    def describe(self) -> str:
        """One line about the model: method, dimensionality, channels and what it was trained on."""
        cfg = getattr(self.model, "config", {}) or {}
        method = (cfg.get("method") or {}).get("name", "?").upper()
        spatial = cfg.get("spatial", "?")
        nch = cfg.get("n_channels", "?")
        axes = cfg.get("axes", "?")
        hist = getattr(self.model, "history", {}) or {}
        steps = hist.get("steps")
        best = hist.get("best_val_loss")
        parts = [f"{method}, {len(spatial)}D ({spatial})", f"{nch} channel(s)", f"trained on axes {axes}"]
        if steps:
            parts.append(f"{steps} steps")
        if best is not None:
            parts.append(f"best val. loss {best:.4g}")
        return " · ".join(parts)


class ModelRegistry:
    """The list of models available to the widgets, newest last."""

    changed = Signal()

    def __init__(self) -> None:
        self._entries: list[ModelEntry] = []

    def add(self, model: object, name: str | None = None, source: str = "", tag: str | None = None) -> ModelEntry:
        """Add ``model`` (or return its entry if it is already listed) and announce the change."""
        for entry in self._entries:
            if entry.model is model:
                return entry
        path = getattr(model, "path", None)
        if path is not None:
            # The same file loaded twice is listed once (the newest load wins).
            self._entries = [e for e in self._entries if getattr(e.model, "path", None) != path]
        base = name or (Path(path).name if path is not None else "model")
        unique, i = base, 2
        names = {e.name for e in self._entries}
        while unique in names:
            unique, i = f"{base} ({i})", i + 1
        cfg = getattr(model, "config", {}) or {}
        default_tag = Path(path).stem if path is not None else str((cfg.get("method") or {}).get("name", "model")).upper()
        entry = ModelEntry(unique, model, source, tag=tag or default_tag)
        self._entries.append(entry)
        self.changed.emit()
        return entry

    def remove(self, name: str) -> None:
        self._entries = [e for e in self._entries if e.name != name]
        self.changed.emit()

    def get(self, name: str) -> ModelEntry | None:
        return next((e for e in self._entries if e.name == name), None)

    def entries(self) -> list[ModelEntry]:
        return list(self._entries)

    def latest(self) -> ModelEntry | None:
        return self._entries[-1] if self._entries else None

    def clear(self) -> None:
        self._entries.clear()
        self.changed.emit()

    def __len__(self) -> int:
        return len(self._entries)


#: The registry every widget of this process shares.
MODELS = ModelRegistry()


def load_model_into_registry(path: str | Path) -> ModelEntry:
    """Load a ``.n2x`` file onto the CPU and list it for the widgets; N2xError (ModelFileError) when it is not one.

    Shared by the Denoise widget's "Load…" button and the ``.n2x`` reader (drag and drop)."""
    from n2x import api  # here, not at the top: importing the state must stay cheap (no torch)

    model = api.load_model(path, device="cpu")
    return MODELS.add(model, name=Path(path).name, source=str(path))
