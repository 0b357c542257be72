"""Networks: the U-Net (N2V, N2V2, N2N) and the blind-spot network (AP-BSN). A registry builds them from a config."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

NETWORKS: dict[str, Callable[..., nn.Module]] = {}


def register_network(name: str) -> Callable:
    def deco(cls):
        NETWORKS[name] = cls
        return cls
    return deco


def build_network(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate network ``name`` with ``kwargs`` (the ``network`` section of a model config)."""
    from . import unet  # noqa: F401  (registers)
    try:
        from . import blindspot  # noqa: F401
    except ImportError:  # pragma: no cover - optional until the blind-spot network exists
        pass
    if name not in NETWORKS:
        raise KeyError(f"unknown network {name!r}; known: {sorted(NETWORKS)}")
    return NETWORKS[name](**kwargs)
