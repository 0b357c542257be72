"""Noise2Noise (Lehtinen et al. 2018) and its single-image form, Neighbor2Neighbor (Huang et al. 2021).

Noise2Noise learns to map one noisy realisation of a scene to another, independent one: with zero-mean noise and an
L2 loss the network converges to the clean signal's mean (L1: its median, for impulse-like noise). The loss covers
every pixel of every patch, which makes it learn faster than Noise2Void. Pairs come from

- two arrays of the same shape (``target=``): two acquisitions of the same scene;
- one stack (``pairs="adjacent"``: frame/plane ``k`` with ``k + 1``; ``pairs="even-odd"``: ``2k`` with ``2k + 1``)
  along ``along="T"`` or ``"Z"``; Z partners are planes, so pairing along Z uses a 2D network;
- one image (``pairs="subsample"``, Neighbor2Neighbor): in every 2 x 2 (x 2) cell two neighbouring pixels are picked
  at random, one for each of two half-size sub-images; the network maps one sub-image to the other, and a
  regulariser ties this to the network's output on the full image (weight ``gamma``). Needs pixel-independent noise.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InputError, N2xError
from .base import Method

LOSSES = ("l2", "l1")

HOW_TO_PAIR = ("Noise2Noise needs pairs of independent noisy images of the same scene: give a second acquisition as "
               "target (target=ARRAY; --target FILE), pair frames or planes inside a stack (pairs='adjacent' or "
               "'even-odd' with along='T' or 'Z'; --pairs adjacent --along T), or sub-sample a single image "
               "(pairs='subsample'; --pairs subsample)")


def _cells(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, *S)`` with even ``S`` -> ``(B, C, *S / 2, 2 ** ndim)``: the pixels of each 2 x 2 (x 2) cell.

    Cell index bits: the first spatial axis is the most significant bit.
    """
    b, c, *spatial = x.shape
    nd = len(spatial)
    shape = [b, c]
    for n in spatial:
        shape += [n // 2, 2]
    x = x.reshape(shape)
    order = [0, 1] + [2 + 2 * d for d in range(nd)] + [3 + 2 * d for d in range(nd)]
    return x.permute(order).reshape([b, c] + [n // 2 for n in spatial] + [2 ** nd])


def neighbour_subsample(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two Neighbor2Neighbor sub-images of ``x`` ``(B, C, *S)`` (even ``S``), and the index pair used.

    In each cell a random pixel ``a`` and one of its direct neighbours ``b`` in the cell (the same choice for all
    channels). Returns ``(g1, g2, ia, ib)``; ``g1``/``g2`` are ``(B, C, *S / 2)``, ``ia``/``ib`` the cell indices
    ``(B, 1, *S / 2)`` so the same sampling can be applied to another image of the same shape.
    """
    cells = _cells(x)
    nd = x.ndim - 2
    shape = (x.shape[0], 1) + tuple(cells.shape[2:-1])
    ia = torch.randint(0, 2 ** nd, shape, generator=generator).to(x.device)
    axis = torch.randint(0, nd, shape, generator=generator).to(x.device)
    ib = ia ^ (1 << (nd - 1 - axis))
    return _take(cells, ia), _take(cells, ib), ia, ib


def _take(cells: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    idx = idx.expand(cells.shape[:-1]).unsqueeze(-1)
    return torch.gather(cells, -1, idx).squeeze(-1)


class N2N(Method):
    """Noise2Noise.

    Parameters: ``loss`` (``"l2"``, default, for zero-mean noise; ``"l1"`` for impulse noise), ``swap`` (use each
    pair both ways, input->target and target->input: both are noisy realisations; default True), ``gamma``
    (weight of the Neighbor2Neighbor regulariser, default 1), ``pairing`` (recorded by training: ``target``,
    ``adjacent``, ``even-odd`` or ``subsample``).
    """

    name = "n2n"

    def __init__(self, loss: str = "l2", swap: bool = True, gamma: float = 1.0, pairing: str | None = None,
                 along: str | None = None, **extra: Any):
        loss = str(loss).lower()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, not {loss!r}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, not {gamma}")
        super().__init__(loss=loss, swap=bool(swap), gamma=float(gamma), pairing=pairing, along=along, **extra)

    # -- network ---------------------------------------------------------------------------------------------
    def network_config(self, ndim: int, channels: int, overrides: dict | None = None, **options: Any) -> dict:
        from ..data.pairs import normalize_pairs

        # With a second realisation, a residual U-Net (output = input + correction) learns faster: camera/G25 with a
        # pair, 180 s on a CPU, 29.5 -> 30.0 dB. Not for sub-sampling, where the identity scores about as well as a
        # denoiser under the Neighbor2Neighbor loss (with gamma 1), so early steps and the validation stall there;
        # nor for Noise2Void, whose masked pixel holds a neighbour's value: the identity path would pass the pixel's
        # own noise through at inference.
        residual = normalize_pairs(options.get("pairs")) != "subsample"
        return super().network_config(ndim, channels, {"residual": residual, **(overrides or {})})

    def spatial_dims(self, requested: int | None, **options: Any) -> int | None:
        from ..data.pairs import normalize_pairs

        pairs, along = normalize_pairs(options.get("pairs")), options.get("along")
        if pairs in ("adjacent", "even-odd") and isinstance(along, str) and along.upper() == "Z":
            if requested == 3:
                raise InputError("pairs along Z pair planes, so the network must be 2D: use dims=2 (--dims 2), or "
                                 "pair along T with a 3D network")
            return 2
        return requested

    # -- training data ---------------------------------------------------------------------------------------
    def training_defaults(self, ndim: int, **options: Any) -> tuple[tuple[int, ...] | None, int | None]:
        from ..data.pairs import normalize_pairs

        if ndim == 2 and normalize_pairs(options.get("pairs")) == "subsample":
            # Sub-sampling halves each patch: 32 x 32 patches leave 16 x 16 sub-images, too little context
            # (camera/G25 at 180 s: 28.1 dB with 64 of 32 x 32, 29.0 dB with 16 of 64 x 64).
            return (64, 64), 16
        return super().training_defaults(ndim, **options)

    def make_sources(self, images: list, layouts: list, target: Any = None, pairs: str | None = None,
                     along: str | None = None, **options: Any) -> list:
        from ..data.pairs import normalize_along, normalize_pairs, stack_sources, target_sources
        from ..data.patches import single_source

        extra = {k: v for k, v in options.items() if v is not None}
        if extra:
            raise N2xError(f"method 'n2n' does not take {', '.join(sorted(extra))}")
        pairs = normalize_pairs(pairs)
        if target is not None and pairs is not None:
            raise InputError("give either a target (a second acquisition) or pairs, not both")
        if target is None and pairs is None:
            raise InputError(HOW_TO_PAIR)
        if along is not None and pairs not in ("adjacent", "even-odd"):
            raise InputError(f"along={along!r} only applies to pairs='adjacent' or 'even-odd'")
        if target is not None:
            sources = target_sources(images, layouts, target)
            self.params.update(pairing="target", along=None)
        elif pairs == "subsample":
            sources = [single_source(img, lay, f"image {i}") for i, (img, lay) in enumerate(zip(images, layouts))]
            self.params.update(pairing="subsample", along=None)
        else:
            along = normalize_along(along, pairs)
            sources = stack_sources(images, layouts, pairs, along)
            self.params.update(pairing=pairs, along=along)
        return sources

    # -- training --------------------------------------------------------------------------------------------
    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = a.float() - b.float()
        return d.abs().mean() if self.params["loss"] == "l1" else (d ** 2).mean()

    def loss(self, net: nn.Module, patches: tuple[torch.Tensor, ...], generator: torch.Generator) -> torch.Tensor:
        if len(patches) >= 2:
            x, y = patches[0], patches[1]
            if self.params["swap"]:
                flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
                flip = flip.reshape((-1,) + (1,) * (x.ndim - 1))
                x, y = torch.where(flip, y, x), torch.where(flip, x, y)
            return self._distance(net(x), y)
        return self._subsample_loss(net, patches[0], generator)

    def _subsample_loss(self, net: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # Sub-images are half size and must still fit the network's downsampling: crop to a multiple of 2 * multiple.
        m = 2 * int(getattr(net, "multiple", 1))
        spatial = [(n // m) * m for n in x.shape[2:]]
        if min(spatial) == 0:
            raise N2xError(f"sub-sampled Noise2Noise needs patches of at least {m} pixels per axis, not "
                           f"{tuple(x.shape[2:])}")
        x = x[(slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)]
        g1, g2, ia, ib = neighbour_subsample(x, generator)
        out = net(g1)
        loss = self._distance(out, g2)
        if self.params["gamma"] > 0:
            # The regulariser: the full-image output, sub-sampled the same way, must differ between the two
            # sub-images as the noisy sub-images' targets do (corrects the small misalignment of the neighbours).
            with torch.no_grad():
                full = _cells(net(x))
                f1, f2 = _take(full, ia), _take(full, ib)
            loss = loss + self.params["gamma"] * self._distance(out - g2, f1 - f2)
        return loss
