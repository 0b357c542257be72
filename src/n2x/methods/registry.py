"""Name -> method class. A new method is one module plus one :func:`register_method` line here (or in a plugin's
own code: the test suite registers an extra method at run time)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ..errors import OptionError
from ..options import Option, parse_options


@dataclass(frozen=True)
class MethodInfo:
    """What a front door shows of a method: ``name`` (the key users type), ``label`` (its display name),
    ``description`` (one line), ``options`` (its declared options, with this entry's defaults) and
    ``constant_noise`` (whether its model assumes one noise variance for every pixel: :attr:`Method.constant_noise`)
    and ``photon_noise`` (whether it models Poisson-Gaussian noise itself: :attr:`Method.photon_noise`)."""

    name: str
    label: str
    description: str
    options: tuple[Option, ...]
    constant_noise: bool = False
    photon_noise: bool = False

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)


# name: ("module:Class" or the class itself, fixed parameters)
_ENTRIES: dict[str, tuple[Any, dict[str, Any]]] = {}


def register_method(name: str, cls: Any, **fixed: Any) -> None:
    """Make method class ``cls`` (or its ``"module:Class"`` path, imported when first used) available as ``name``.

    ``fixed``: parameters this entry always passes (e.g. ``variant="n2v2"``). Registering a name again replaces it.
    """
    _ENTRIES[_key(name)] = (cls, dict(fixed))


def unregister_method(name: str) -> None:
    _ENTRIES.pop(_key(name), None)


def _key(name: str) -> str:
    return (name or "").lower().replace("-", "").replace("_", "")


def _load(key: str) -> Any:
    # An import error of a method module is a bug to see, not a method to hide.
    target, _ = _ENTRIES[key]
    if isinstance(target, str):
        module, cls = target.split(":")
        mod = importlib.import_module(module if "." in module else f"{__package__}.{module}")
        return getattr(mod, cls)
    return target


def method_names() -> tuple[str, ...]:
    """The registered method names, in registration order."""
    return tuple(_ENTRIES)


def _resolve(name: str) -> str:
    key = _key(name)
    if key not in _ENTRIES:
        raise OptionError(f"unknown method {name!r}; choose one of {', '.join(method_names())}")
    return key


def method_info(name: str) -> MethodInfo:
    """The declaration of method ``name``: display name, description and options."""
    key = _resolve(name)
    cls = _load(key)
    return MethodInfo(key, cls.label_for(key), cls.description_for(key), tuple(cls.declared_options(key)),
                      bool(getattr(cls, "constant_noise", False)), bool(getattr(cls, "photon_noise", False)))


def get_method(name: str, **options: Any):
    """Build method ``name`` with the user's ``options``: each must be one it declares, with a valid value
    (:class:`~n2x.errors.OptionError` otherwise)."""
    key = _resolve(name)
    cls = _load(key)
    info = method_info(key)
    declared = [o for o in info.options if not o.data]
    params = parse_options(declared, options, f"method {key!r}")
    return cls(**{**params, **_ENTRIES[key][1]})


def method_from_config(config: dict[str, Any]):
    """Rebuild a method from the ``method`` section of a model file (every stored parameter, none checked as a
    user option: the file holds what training settled, e.g. a fitted filter)."""
    params = dict(config)
    key = _resolve(params.pop("name"))
    cls = _load(key)
    return cls.from_params(**{**params, **_ENTRIES[key][1]})


register_method("n2v", "n2v:N2V")
register_method("n2v2", "n2v:N2V", variant="n2v2")
register_method("n2n", "n2n:N2N")
register_method("apbsn", "apbsn:APBSN")
register_method("bsn", "bsn:BlindSpotAllPixels")
