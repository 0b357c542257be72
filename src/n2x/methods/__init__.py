"""Denoising methods. Each is one module defining a :class:`~n2x.methods.base.Method` plus a registry entry."""
from .registry import (MethodInfo, get_method, method_from_config, method_info, method_names,  # noqa: F401
                       register_method, unregister_method)
