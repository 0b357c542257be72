"""Denoising methods. Each is one module defining a :class:`~n2x.methods.base.Method` plus a registry entry."""
from .registry import METHODS, get_method, method_names  # noqa: F401
