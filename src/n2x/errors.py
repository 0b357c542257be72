"""Typed errors and warnings of napari-n2x, worded for every front door.

Every error a user can cause derives from :class:`N2xError`. It carries a neutral ``message`` (what is wrong) and
an optional ``hint`` (what to do). A hint names the engine's options as ``{name}`` placeholders (``{overwrite}``,
``{tile}``...); each front door words them as its own controls through :meth:`N2xError.render`: the CLI as flags
(``pass --overwrite``), napari as widget controls (``tick “Replace existing output”``), the Python API as keyword
arguments (``pass overwrite=True``), which is what ``str(error)`` shows.

Warnings the engine raises for a user (a method falling back to another design, say) are :class:`N2xWarning`,
issued with :func:`warnings.warn`; the CLI prints them on stderr and napari shows them as notifications.
"""
from __future__ import annotations

import string
from typing import Callable, Mapping

#: How the Python API words an option in a hint. A boolean switch reads as an action; other options by name.
API_WORDS: dict[str, str] = {
    "overwrite": "pass overwrite=True",
    "recursive": "pass recursive=True",
    "format": "fmt",  # run_batch's keyword (``format`` is a Python builtin)
}

Wording = Mapping[str, str] | Callable[[str], str]


class N2xError(Exception):
    """Base class of every error napari-n2x raises on purpose.

    ``message``: what is wrong, in neutral words. ``hint``: what to do, with ``{option}`` placeholders for the
    engine's option names; :meth:`render` words them for a front door.
    """

    def __init__(self, message: str = "", *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    @property
    def options(self) -> list[str]:
        """The option names the hint refers to."""
        if not self.hint:
            return []
        return [field for _, field, _, _ in string.Formatter().parse(self.hint) if field]

    def render(self, words: Wording | None = None) -> str:
        """The message and its hint, with each ``{option}`` worded by ``words`` (a mapping or a function of the
        option name); unknown names fall back to the API's wording."""
        if not self.hint:
            return self.message

        def word(name: str) -> str:
            if callable(words):
                found = words(name)
            else:
                found = (words or {}).get(name)
            return found or API_WORDS.get(name, name)

        hint = self.hint.format(**{name: word(name) for name in self.options})
        return f"{self.message}; {hint}" if self.message else hint

    def __str__(self) -> str:
        return self.render(None)


class InputError(N2xError, ValueError):
    """The image data cannot be used as given (dtype, NaN/Inf, empty, too small...)."""


class AxesError(InputError):
    """The axes string is missing, malformed, or does not match the array."""


class OptionError(N2xError, ValueError):
    """An option is unknown, mistyped or out of range for the chosen method or call."""


class ModelFileError(N2xError):
    """A file is not an n2x model, is corrupt, or comes from a newer format version."""


class ModelMismatchError(N2xError, ValueError):
    """A model does not fit the data it is applied to (axes, channels, dimensionality)."""


class TrainingError(N2xError):
    """Training failed (device out of memory, diverged loss...)."""


class OutputExistsError(N2xError):
    """An output exists and belongs to another job; it is not overwritten without ``overwrite=True``."""


class N2xWarning(UserWarning):
    """Something the user should know that does not stop the work (a fallback, a setting turned off)."""
