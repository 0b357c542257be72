"""Typed errors of napari-n2x.

Every error a user can cause derives from :class:`N2xError`; its message says what is wrong and what to do.
Front doors (CLI, widgets) catch ``N2xError`` and show the message instead of a traceback.
"""


class N2xError(Exception):
    """Base class of every error napari-n2x raises on purpose."""


class InputError(N2xError, ValueError):
    """The image data cannot be used as given (dtype, NaN/Inf, empty, too small...)."""


class AxesError(InputError):
    """The axes string is missing, malformed, or does not match the array."""


class ModelFileError(N2xError):
    """A file is not an n2x model, is corrupt, or comes from a newer format version."""


class ModelMismatchError(N2xError, ValueError):
    """A model does not fit the data it is applied to (axes, channels, dimensionality)."""


class TrainingError(N2xError):
    """Training failed (device out of memory, diverged loss...)."""


class OutputExistsError(N2xError):
    """An output exists and belongs to another job; it is not overwritten without ``overwrite=True``."""
