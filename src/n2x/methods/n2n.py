"""Noise2Noise (Lehtinen et al. 2018) and its single-image form, Neighbor2Neighbor (Huang et al. 2021).

Noise2Noise learns to map one noisy realisation of a scene to another, independent one: with zero-mean noise and an
L2 loss the network converges to the clean signal's mean (L1: its median, for impulse-like noise). The loss covers
every pixel of every patch, which makes it learn faster than Noise2Void. Pairs come from

- two arrays of the same shape (``target=``): two acquisitions of the same scene;
- one stack (``pairs="adjacent"``: frame/plane ``k`` with ``k + 1``; ``pairs="even-odd"``: ``2k`` with ``2k + 1``)
  along ``along="T"`` or ``"Z"``; Z partners are planes, so pairing along Z uses a 2D network;
- one time-lapse with motion (``pairs="f2f"``, frame-to-frame, Ehret et al. 2019): frame ``t`` with ``t + 1``, the
  network's prediction of one warped onto the other by their optical flow (:mod:`n2x.data.flow`) and the loss taken
  where the alignment holds; 2D frames along T, Z planes one by one. Inference is a plain single-frame prediction;
- one image (``pairs="subsample"``, Neighbor2Neighbor): in every 2 x 2 (x 2) cell two neighbouring pixels are picked
  at random, one for each of two half-size sub-images; the network maps one sub-image to the other, and a
  regulariser ties this to the network's output on the full image (weight ``gamma``). Needs pixel-independent noise.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import InputError, N2xError
from ..options import Option
from .base import Method

LOSSES = ("l2", "l1")

PAIRS = ("adjacent", "even-odd", "subsample", "f2f")
#: what to do when no pairs were given (a hint in the engine's option names, worded by each front door)
HOW_TO_PAIR = ("give a second acquisition of the same scene as {target}, pair frames or planes inside a stack with "
               "{pairs} adjacent or even-odd and {along} T or Z (or {pairs} f2f for moving time-lapses), or "
               "sub-sample a single image with {pairs} subsample")


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


#: how the prediction is sampled at the flow's sub-pixel positions: bicubic smooths less than bilinear, which the
#: network would otherwise learn to undo (dev time-lapse, G25, 300 steps: +0.07 dB static, +0.29 dB moving)
WARP_INTERPOLATION = "bicubic"
#: share of a training patch that the motion may push out of it (its pixels are masked); the f2f patch side grows
#: with the frames' motion d so that (1 - d / side)^2 >= 1 - this
MOTION_MASKED_SHARE = 0.25


def warp_prediction(pred: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``pred`` ``(B, C, Y, X)`` sampled (:data:`WARP_INTERPOLATION`, differentiably) at ``p + flow[p]``, and where
    that is inside.

    ``flow`` ``(B, 2, Y, X)``: displacements (dy, dx) in pixels on the target's grid. Returns the warped prediction and
    a ``(B, 1, Y, X)`` float mask, 0 where the sample falls outside the predicted patch (the border rule: no sample
    without support).
    """
    b, _, ny, nx = pred.shape
    gy, gx = torch.meshgrid(torch.arange(ny, device=pred.device, dtype=torch.float32),
                            torch.arange(nx, device=pred.device, dtype=torch.float32), indexing="ij")
    py, px = gy + flow[:, 0].float(), gx + flow[:, 1].float()
    inside = (py >= 0) & (py <= ny - 1) & (px >= 0) & (px <= nx - 1)
    grid = torch.stack([2 * px / max(nx - 1, 1) - 1, 2 * py / max(ny - 1, 1) - 1], -1)
    warped = nn.functional.grid_sample(pred.float(), grid, mode=WARP_INTERPOLATION, padding_mode="border",
                                       align_corners=True)
    return warped, inside.unsqueeze(1).float()


def f2f_patch_side(motion_px: float | None) -> int:
    """The side (px, a multiple of 16 from 32 to 128) of frame-to-frame training patches for frames moving by
    ``motion_px`` (None: unknown, 64): the smallest for which the motion masks at most
    :data:`MOTION_MASKED_SHARE` of a patch."""
    if motion_px is None:
        return 64
    side = motion_px / (1.0 - (1.0 - MOTION_MASKED_SHARE) ** 0.5)
    return int(min(128, max(32, 16 * math.ceil(side / 16))))


def _motion_px(training_data: tuple[list, list] | None) -> float | None:
    """Median frame motion (px) of the first of the training ``(images, layouts)``; None where it cannot be
    measured."""
    from ..data.motion import frame_motion

    if not training_data or not training_data[0]:
        return None
    images, layouts = training_data
    try:
        return frame_motion(images[0], layouts[0].axes)
    except N2xError:  # no T axis: make_sources says what is wrong with the pairing
        return None


def _take(cells: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    idx = idx.expand(cells.shape[:-1]).unsqueeze(-1)
    return torch.gather(cells, -1, idx).squeeze(-1)


class N2N(Method):
    """Noise2Noise.

    Options (:attr:`options`): ``loss`` (``"l2"``, default, for zero-mean noise; ``"l1"`` for impulse noise),
    ``swap`` (use each pair both ways, input->target and target->input: both are noisy realisations; default True),
    ``gamma`` (weight of the Neighbor2Neighbor regulariser, default 1), and the data options ``target``, ``pairs``
    and ``along`` (passed to :meth:`make_sources`). Recorded by training: ``pairing`` (``target``, ``adjacent``,
    ``even-odd``, ``subsample`` or ``f2f``), ``along`` and, for ``f2f``, ``flow`` (the flow settings).
    """

    name = "n2n"
    label = "Noise2Noise (N2N)"
    description = ("Learns from two noisy views of the same scene: another image, neighbouring frames/planes, "
                   "even/odd frames, or sub-sampled pairs of one image.")
    options = (
        Option("pairs", "str", None, "form the pairs inside the image: adjacent (frame or plane k with k + 1), "
               "even-odd (2k with 2k + 1), both along the axis given by along, subsample (two neighbouring "
               "pixels of every 2 x 2 cell, Neighbor2Neighbor; needs pixel-independent noise), or f2f (frame t "
               "with t + 1 along T, aligned by optical flow: for time-lapses where the sample moves); give pairs "
               "or target", label="Partner", choices=PAIRS, data=True),
        Option("target", "image", None, "a second noisy acquisition of the same scene, same shape and axes as the "
               "image; give target or pairs", label="Partner image", data=True),
        Option("along", "str", None, "the axis along which adjacent or even-odd pairs are formed: T (time frames) "
               "or Z (planes; the network is then 2D); f2f pairs are along T", label="Pair along",
               choices=("T", "Z"), data=True),
        Option("loss", "str", "l2", "training loss: l2 (mean squared error, for zero-mean noise; default) or l1 "
               "(mean absolute error, for impulse-like noise)", label="Loss", choices=LOSSES),
        Option("swap", "bool", True, "use each pair both ways, input to target and target to input (both are "
               "noisy views; default true)", label="Swap pairs", advanced=True),
        Option("gamma", "float", 1.0, "weight of the Neighbor2Neighbor regulariser with pairs subsample (default "
               "1; 0 turns it off)", label="Regulariser weight", range=(0.0, 100.0), advanced=True),
    )
    internal = ("pairing", "along", "flow")

    def __init__(self, loss: str | None = None, swap: bool | None = None, gamma: float | None = None):
        super().__init__(**self.settled("n2n", loss=loss, swap=swap, gamma=gamma), pairing=None, along=None,
                         flow=None)

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
        if pairs == "f2f":  # flows align 2D frames: Z planes are samples, paired with the same plane in time
            if requested == 3:
                raise InputError("frame-to-frame pairs align 2D frames, so the network must be 2D",
                                 hint="leave {dims} unset or set it to 2")
            return 2
        if pairs in ("adjacent", "even-odd") and isinstance(along, str) and along.upper() == "Z":
            if requested == 3:
                raise InputError("pairs along Z pair planes, so the network must be 2D",
                                 hint="leave {dims} unset or set it to 2, or set {along} to T for a 3D network")
            return 2
        return requested

    # -- training data ---------------------------------------------------------------------------------------
    def training_defaults(self, ndim: int, **options: Any) -> tuple[tuple[int, ...] | None, int | None]:
        from ..data.pairs import normalize_pairs

        training_data = self.__dict__.pop("_training_data", None)  # not kept: the method lives as long as its model
        if ndim == 2 and normalize_pairs(options.get("pairs")) == "subsample":
            # Sub-sampling halves each patch: 32 x 32 patches leave 16 x 16 sub-images, too little context
            # (camera/G25 at 180 s: 28.1 dB with 64 of 32 x 32, 29.0 dB with 16 of 64 x 64).
            return (64, 64), 16
        if ndim == 2 and normalize_pairs(options.get("pairs")) == "f2f":
            # Warped samples that leave the patch are masked: 32 x 32 patches (the default) would lose a third of
            # their pixels to a motion of 7 px per frame, but 64 x 64 patches (16 per batch, the same pixels per
            # step) learn slower than 32 x 32 (64 per batch) where nothing moves (static dev time-lapse, 300
            # steps: 29.18 against 29.43 dB). So the side follows the measured motion.
            side = f2f_patch_side(_motion_px(training_data))
            return (side, side), max(1, 64 * 32 * 32 // side ** 2)
        return super().training_defaults(ndim, **options)

    def prepare(self, images: list, layouts: list) -> None:
        self._training_data = (images, layouts)  # the f2f patch follows the frames' motion (training_defaults)

    def make_sources(self, images: list, layouts: list, target: Any = None, pairs: str | None = None,
                     along: str | None = None, **options: Any) -> list:
        from ..data.flow import FlowSettings
        from ..data.pairs import (STACK_PAIRINGS, f2f_sources, normalize_along, normalize_pairs, stack_sources,
                                  target_sources)
        from ..data.patches import single_source

        extra = {k: v for k, v in options.items() if v is not None}
        if extra:
            raise N2xError(f"method 'n2n' does not take {', '.join(sorted(extra))}")
        pairs = normalize_pairs(pairs)
        if target is not None and pairs is not None:
            raise InputError("Noise2Noise takes one source of pairs",
                             hint="give either {target} (a second acquisition) or {pairs}, not both")
        if target is None and pairs is None:
            raise InputError("Noise2Noise needs pairs of independent noisy images of the same scene",
                             hint=HOW_TO_PAIR)
        if along is not None and pairs not in STACK_PAIRINGS:
            raise InputError(f"the pairing axis ({along}) only applies to adjacent, even-odd or f2f pairs",
                             hint="leave {along} unset or set {pairs} to adjacent, even-odd or f2f")
        if target is not None:
            sources = target_sources(images, layouts, target)
            self.params.update(pairing="target", along=None)
        elif pairs == "subsample":
            sources = [single_source(img, lay, f"image {i}") for i, (img, lay) in enumerate(zip(images, layouts))]
            self.params.update(pairing="subsample", along=None)
        elif pairs == "f2f":
            along = normalize_along(along, pairs)
            settings = FlowSettings()
            sources = f2f_sources(images, layouts, settings)
            self.params.update(pairing="f2f", along=along, flow={**settings.to_dict(), "warp": WARP_INTERPOLATION})
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
        if len(patches) == 3:
            return self._f2f_loss(net, *patches, generator)
        if len(patches) >= 2:
            x, y = patches[0], patches[1]
            if self.params["swap"]:
                flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
                flip = flip.reshape((-1,) + (1,) * (x.ndim - 1))
                x, y = torch.where(flip, y, x), torch.where(flip, x, y)
            return self._distance(net(x), y)
        return self._subsample_loss(net, patches[0], generator)

    def _f2f_loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, align: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
        """Frame-to-frame loss: the prediction of ``x`` warped onto ``y``'s grid, against ``y`` where aligned.

        ``align`` ``(B, 6, Y, X)`` (see :func:`n2x.data.flow.align_pair`): flow and validity for ``y`` as the target,
        then for ``x`` as the target (used when the pair is swapped).
        """
        from ..data.flow import ALIGN_CHANNELS

        if align.shape[1] != ALIGN_CHANNELS:  # channels trained one by one: the block was folded as channels were
            align = align.reshape((-1, ALIGN_CHANNELS) + tuple(align.shape[2:]))
        if align.shape[0] != x.shape[0]:
            align = align.repeat_interleave(x.shape[0] // align.shape[0], dim=0)
        align = align.float()
        if self.params["swap"]:
            flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device).reshape(-1, 1, 1, 1)
            x, y = torch.where(flip, y, x), torch.where(flip, x, y)
            align = torch.where(flip, align[:, 3:6], align[:, 0:3])
        else:
            align = align[:, 0:3]
        warped, inside = warp_prediction(net(x), align[:, 0:2])
        weight = inside * (align[:, 2:3] > 0.5)
        d = warped - y.float()
        d = d.abs() if self.params["loss"] == "l1" else d ** 2
        # the mean over aligned pixels (all channels): a patch that is mostly occluded weighs less, not more
        return (d * weight).sum() / (weight.sum() * d.shape[1]).clamp_min(1.0)

    def _subsample_loss(self, net: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # Sub-images are half size and must still fit the network's downsampling: crop to a multiple of 2 * multiple.
        m = 2 * int(getattr(net, "multiple", 1))
        spatial = [(n // m) * m for n in x.shape[2:]]
        if min(spatial) == 0:
            raise N2xError(f"sub-sampled Noise2Noise needs patches of at least {m} pixels per axis, not "
                           f"{tuple(x.shape[2:])}", hint=f"set {{patch_size}} to {m} or more")
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
