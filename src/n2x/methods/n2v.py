"""Noise2Void (Krull et al. 2019) and its N2V2 variant (Höck et al. 2022).

A fraction of pixels of each patch is masked — its value replaced from its neighbourhood — and the loss compares the
network's output with the original noisy value at those pixels only. Needs noise that is independent from pixel to
pixel. N2V2 adds max-blur-pool downsampling, drops the top skip connection and replaces by the neighbourhood median,
which removes checkerboard artefacts.
"""
from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..options import Option
from .base import Method

REPLACEMENTS = ("neighbour", "mean", "median", "random")


def neighbour_offsets(ndim: int, radius: int) -> torch.Tensor:
    """All integer offsets in the ``(2 * radius + 1) ** ndim`` window except the centre, shape ``(K, ndim)``."""
    offs = [o for o in itertools.product(range(-radius, radius + 1), repeat=ndim) if any(o)]
    return torch.tensor(offs, dtype=torch.long)


def stratified_mask_coords(shape: tuple[int, ...], fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Pixel coordinates to mask in each of ``shape[0]`` patches of spatial ``shape[1:]``.

    One pixel at a random place in each cell of a regular grid whose cell holds ``1 / fraction`` pixels, so masked
    pixels are spread evenly. Returns ``(N, 1 + ndim)`` long: batch index then spatial coordinates.
    """
    b, spatial = shape[0], shape[1:]
    ndim = len(spatial)
    cell = max(1, round((1.0 / fraction) ** (1.0 / ndim)))
    grids = [torch.arange(0, n, cell) for n in spatial]
    origins = torch.stack(torch.meshgrid(*grids, indexing="ij"), dim=-1).reshape(-1, ndim)
    origins = origins[None].expand(b, -1, -1)
    jitter = torch.randint(0, cell, origins.shape, generator=generator)
    coords = origins + jitter
    inside = torch.ones(coords.shape[:2], dtype=torch.bool)
    for d, n in enumerate(spatial):
        inside &= coords[..., d] < n
    bidx = torch.arange(b)[:, None].expand(-1, coords.shape[1])
    return torch.cat([bidx[inside][:, None], coords[inside]], dim=1)


def _flat_index(coords: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Linear index into a flattened ``(B, *spatial)`` array for ``(N, 1 + ndim)`` coordinates."""
    idx = coords[:, 0]
    for d, n in enumerate(spatial):
        idx = idx * n + coords[:, d + 1]
    return idx


def masked_input(x: torch.Tensor, coords: torch.Tensor, replacement: str, radius: int,
                 generator: torch.Generator) -> torch.Tensor:
    """Copy of ``x`` ``(B, C, *spatial)`` with the pixels at ``coords`` replaced (all channels at once)."""
    b, c, *spatial = x.shape
    spatial = tuple(spatial)
    ndim = len(spatial)
    flat = x.transpose(0, 1).reshape(c, -1)  # (C, B * prod(spatial))
    n = coords.shape[0]
    limits = torch.tensor(spatial)
    if replacement == "random":
        lo = x.amin(dim=tuple(range(2, x.ndim)))  # (B, C) patch min and max
        hi = x.amax(dim=tuple(range(2, x.ndim)))
        u = torch.rand((n, c), generator=generator).to(x.device)
        values = (lo[coords[:, 0]] + u * (hi - lo)[coords[:, 0]]).T
    else:
        offs = neighbour_offsets(ndim, radius)
        if replacement == "neighbour":
            pick = torch.randint(0, offs.shape[0], (n,), generator=generator)
            nb = coords[:, 1:] + offs[pick]
            nb = _reflect(nb, limits)
            values = flat[:, _flat_index(torch.cat([coords[:, :1], nb], 1), spatial).to(x.device)]
        else:
            nb = coords[:, None, 1:] + offs[None]  # (N, K, ndim)
            nb = _reflect(nb, limits)
            bb = coords[:, None, :1].expand(-1, offs.shape[0], 1)
            idx = _flat_index(torch.cat([bb, nb], -1).reshape(-1, ndim + 1), spatial).to(x.device)
            vals = flat[:, idx].reshape(c, n, offs.shape[0])
            values = vals.mean(-1) if replacement == "mean" else vals.median(-1).values
    out = flat.clone()
    out[:, _flat_index(coords, spatial).to(x.device)] = values
    return out.reshape((c, b) + spatial).transpose(0, 1)


def _reflect(coords: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
    """Mirror out-of-range coordinates back inside ``[0, limit)`` (without repeating the edge pixel)."""
    coords = coords.abs()
    return torch.where(coords >= limits, 2 * (limits - 1) - coords, coords)


_REPLACEMENT_HELP = ("what a masked pixel's value is replaced with: neighbour (a random pixel of the window of "
                     "half-width radius around it), mean or median (of that window without its centre), random "
                     "(uniform between the patch's minimum and maximum); default {default}")


class N2V(Method):
    """Noise2Void / N2V2.

    Options (:attr:`options`): ``mask_fraction`` (share of pixels masked per patch), ``replacement``
    (``neighbour``, ``mean``, ``median``, ``random``), ``radius`` (half-width in pixels of the neighbourhood the
    replacement comes from). ``variant`` (``"n2v"`` or ``"n2v2"``: blur-pool, no top skip, median replacement by
    default) is fixed by the registry entry.
    """

    name = "n2v"
    label = "Noise2Void (N2V)"
    description = ("Blind-spot training on the image alone. Needs noise that is independent from pixel to pixel "
                   "(photon and read noise of most fluorescence cameras).")
    options = (
        Option("mask_fraction", "float", 0.02, "share of the pixels of each training patch that are masked (blind "
               "spots) in a step, 0.001 to 0.25 (default 0.02: 2%)", label="Masked pixels", range=(0.001, 0.25)),
        Option("replacement", "str", "neighbour", _REPLACEMENT_HELP.format(default="neighbour"),
               label="Replacement", choices=REPLACEMENTS),
        Option("radius", "int", 2, "half-width in pixels of the window a masked pixel's replacement comes from "
               "(default 2: a 5 x 5 window in 2D)", label="Replacement radius", range=(1, 8), unit="px",
               advanced=True),
    )
    #: what differs for the N2V2 entry: its name, description and the median replacement (Höck et al. 2022)
    _N2V2 = ("N2V2", "Noise2Void with blur-pool and no top skip connection: no checkerboard artefacts. A good "
             "default for independent noise.", "median")

    @classmethod
    def label_for(cls, entry: str) -> str:
        return cls._N2V2[0] if entry == "n2v2" else cls.label

    @classmethod
    def description_for(cls, entry: str) -> str:
        return cls._N2V2[1] if entry == "n2v2" else cls.description

    @classmethod
    def declared_options(cls, entry: str) -> tuple[Option, ...]:
        if entry != "n2v2":
            return cls.options
        median = cls._N2V2[2]
        return tuple(replace(o, default=median, help=_REPLACEMENT_HELP.format(default=median))
                     if o.name == "replacement" else o for o in cls.options)

    def __init__(self, mask_fraction: float | None = None, replacement: str | None = None,
                 radius: int | None = None, variant: str = "n2v"):
        variant = str(variant).lower()
        if variant not in ("n2v", "n2v2"):
            raise ValueError(f"variant must be 'n2v' or 'n2v2', not {variant!r}")
        params = self.settled(variant, mask_fraction=mask_fraction, replacement=replacement, radius=radius)
        super().__init__(**params, variant=variant)
        self.name = variant

    def network_config(self, ndim: int, channels: int, overrides: dict | None = None, **options: Any) -> dict:
        cfg = super().network_config(ndim, channels)
        if self.params["variant"] == "n2v2":
            cfg.update(blur_pool=True, top_skip=False)
        cfg.update(overrides or {})
        return cfg

    def loss(self, net: nn.Module, patches: tuple[torch.Tensor, ...], generator: torch.Generator) -> torch.Tensor:
        x = patches[0]
        coords = stratified_mask_coords((x.shape[0],) + tuple(x.shape[2:]), self.params["mask_fraction"], generator)
        inp = masked_input(x, coords, self.params["replacement"], self.params["radius"], generator)
        out = net(inp)
        c = x.shape[1]
        spatial = tuple(x.shape[2:])
        idx = _flat_index(coords, spatial).to(x.device)
        pred = out.transpose(0, 1).reshape(c, -1)[:, idx]
        target = x.transpose(0, 1).reshape(c, -1)[:, idx]
        return torch.mean((pred.float() - target.float()) ** 2)
