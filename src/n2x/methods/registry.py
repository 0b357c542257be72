"""Name -> method class. A new method is one module plus one line here."""
from __future__ import annotations

from typing import Any

from ..errors import N2xError

# name: (module, class name, fixed parameters)
_ENTRIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "n2v": ("n2v", "N2V", {}),
    "n2v2": ("n2v", "N2V", {"variant": "n2v2"}),
    "n2n": ("n2n", "N2N", {}),
    "apbsn": ("apbsn", "APBSN", {}),
}
METHODS = tuple(_ENTRIES)


def method_names() -> tuple[str, ...]:
    """Names of the methods that can be imported in this installation."""
    return tuple(n for n in _ENTRIES if _load(n, quiet=True) is not None)


def _load(name: str, quiet: bool = False):
    import importlib

    module, cls, _ = _ENTRIES[name]
    try:
        return getattr(importlib.import_module(f"{__package__}.{module}"), cls)
    except (ImportError, AttributeError):
        if quiet:
            return None
        raise


def get_method(name: str, **params: Any):
    """Build method ``name`` with ``params`` (its options, e.g. ``mask_fraction`` for N2V)."""
    key = (name or "").lower().replace("-", "").replace("_", "")
    if key not in _ENTRIES or _load(key, quiet=True) is None:
        raise N2xError(f"unknown method {name!r}; choose one of {', '.join(method_names())}")
    fixed = _ENTRIES[key][2]
    return _load(key)(**{**params, **fixed})
