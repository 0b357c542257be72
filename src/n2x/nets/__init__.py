"""Networks: the U-Net (N2V, N2V2, N2N) and AP-BSN's blind-box and pixel-shuffle blind-spot networks. A registry builds them from a config."""
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
    from . import blindbox, blindspot, ensemble, shifted_bsn, shifted_unet  # noqa: F401
    if name not in NETWORKS:
        raise KeyError(f"unknown network {name!r}; known: {sorted(NETWORKS)}")
    return NETWORKS[name](**kwargs)


def memory_format(ndim: int):
    """The faster memory layout for convolutions on 2D (``channels_last``) or 3D (``channels_last_3d``) tensors."""
    import torch

    return torch.channels_last if ndim == 2 else torch.channels_last_3d


def optimize_for_inference(net: nn.Module) -> nn.Module:
    """An eval-mode copy of ``net`` with every convolution + batch-norm pair fused into one convolution.

    Same function (to float rounding), one pass over memory less per layer: about 1.2-1.5x faster on CPU.
    """
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(net).eval()
    for mod in list(fused.modules()):
        if not isinstance(mod, nn.Sequential):
            continue
        layers, out, i = list(mod), [], 0
        while i < len(layers):
            a = layers[i]
            b = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(a, (nn.Conv2d, nn.Conv3d)) and isinstance(b, (nn.BatchNorm2d, nn.BatchNorm3d)):
                out.append(fuse_conv_bn_eval(a, b))
                i += 2
            else:
                out.append(a)
                i += 1
        for name in list(mod._modules):
            del mod._modules[name]
        for j, layer in enumerate(out):
            mod.add_module(str(j), layer)
    return fused
