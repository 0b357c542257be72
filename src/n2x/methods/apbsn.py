"""AP-BSN: blind-spot denoising of spatially correlated noise (after Lee et al., CVPR 2022).

For spatially correlated noise (camera, sCMOS pattern noise, demosaicked or compressed data), where Noise2Void's
pixel-independence assumption fails. A blind-spot network trained to predict each pixel from its surroundings learns
the signal only if it cannot see any noise correlated with the pixel's own. Two designs achieve this:

- **blind box** (the default when the noise probe can measure the noise): a full-resolution network that is blind
  to the ``(2 * blind + 1)``-wide box around each pixel, ``blind`` being the noise's correlation length measured by
  the probe (:class:`~n2x.nets.blindbox.BlindBoxNet`). It sees every pixel outside the box, so no detail is lost
  to downsampling; training and inference see the same thing. Inference averages the predictions of ``ensemble``
  flips and rotations of the tile (default 8: about the cost of R3's 8 passes, which this design does not need),
  then adds the **box filter** of the residual ``noisy - prediction`` over the box (:mod:`~n2x.methods.box_filter`,
  fitted after training without the clean image): it puts back the detail of the pixels the network could not
  see. The network also predicts the variance of its residual, and the filter is weighed by the noise's share of
  it, pixel by pixel: near zero where the surroundings tell the value, more at edges; the noise's autocovariance
  comes from the residual where that variance is smallest (the probe decides whether there is a filter). The box
  must cover the correlation: one pixel too small lets the network learn part of the noise.
- **pixel-shuffle** (the paper's design, chosen by giving ``stride_train``, and the fallback when the probe cannot
  measure the noise): each patch is split by pixel-shuffle downsampling (PD) with ``stride_train`` into
  ``stride_train ** 2`` sub-images whose neighbouring pixels were ``stride_train`` pixels apart: noise correlated
  over a shorter distance becomes independent. Each sub-image runs through a one-pixel blind-spot network on its
  own (zero padding around every sub-image: the "padding between sub-images" of the paper). Inference: PD with the
  smaller ``stride_infer`` (default 2) keeps more detail; then R3 refinement: ``r3_passes`` passes in which a
  fraction ``r3_fraction`` of the pixels of the denoised image is replaced by the noisy input and the network
  (without PD) runs on the mix; the passes are averaged (``r3_passes=0``: off). R3's random choice of pixels is a
  hash of the global pixel coordinates and the pass, so tiled and untiled predictions agree.

In both, the loss compares the output with the input at every pixel: the blind region is in the architecture. The
networks are 2D: Z planes and time frames are processed as separate samples; grayscale and multichannel. The design,
box or strides and inference settings are stored in the model file, so inference does what training assumed.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import N2xError, N2xWarning, OptionError
from ..options import AUTO, Option
from .apbsn_designs import DESIGNS, FALLBACK_STRIDE, Design
from .base import InContext, Method

LOSSES = ("l2", "l1")
#: the largest blind box radius the probe may set (its correlation profile is measured up to this lag)
MAX_BLIND = 6


def measure_noise(image: Any, axes: str) -> Any:
    """The noise probe's report on ``image``, or None when the probe cannot measure it (too small or too flat; an
    :class:`~n2x.errors.N2xWarning` says so)."""
    from ..data.probe import probe_noise
    from ..errors import InputError

    try:
        return probe_noise(image, axes)
    except InputError as exc:
        warnings.warn(f"AP-BSN: the noise probe could not measure this image ({exc}); without a measured "
                      f"correlation, the pixel-shuffle design with the paper's stride {FALLBACK_STRIDE} is used (or "
                      f"the blind box as given, without its filter)", N2xWarning, stacklevel=3)
        return None


def choose_design(design: str, blind: int | str, stride_train: int | str, stride_given: bool) -> str | None:
    """The design (``"box"``, ``"pd"``, or None: the noise probe decides) from the user's ``design`` (``"auto"``,
    ``"box"``, ``"pd"``), ``blind`` and ``stride_train`` (pixels or ``"auto"``); ``stride_given``: stride_train was
    given, even as ``"auto"``. A number as ``blind`` chooses the blind box, a given ``stride_train`` pixel-shuffle."""
    if (stride_train != AUTO or (design == AUTO and stride_given)) and blind != AUTO:
        raise OptionError("stride_train chooses the pixel-shuffle design and blind the blind-box design",
                          hint="give {stride_train} or {blind}, not both")
    if design == AUTO:
        return "pd" if stride_given else "box" if blind != AUTO else None
    if design == "box" and stride_train != AUTO:
        raise OptionError("stride_train belongs to the pixel-shuffle design, not the blind box",
                          hint="leave {stride_train} unset or set {design} to pd")
    if design == "pd" and blind != AUTO:
        raise OptionError("blind belongs to the blind-box design, not the pixel-shuffle one",
                          hint="leave {blind} unset or set {design} to box")
    return design


_BOX = "blind-box design: "
_PD = "pixel-shuffle design: "


class APBSN(Method):
    """AP-BSN: a blind-box network at full resolution, or the paper's pixel-shuffle design.

    Options (:attr:`options`): ``blind`` (blind-box design: radius in pixels of the hidden box, at least the
    noise's correlation length; default ``"auto"``, from the noise probe of the training data; a number chooses the
    blind box), ``stride_train`` (giving it, a number or ``"auto"``, chooses the pixel-shuffle design: PD stride in
    training, more than the noise's correlation length; ``"auto"``: one more than the probe's length), ``design``
    (``"box"`` or ``"pd"``; default ``"auto"``: ``"pd"`` when ``stride_train`` is given or the probe cannot measure
    the noise, else ``"box"``), ``ensemble`` (box design: flips and rotations averaged at inference, 1, 2, 4 or 8,
    default 8), ``stride_infer`` (PD stride at inference, default 2), ``r3_passes`` (R3 refinement passes of the
    PD design, default 8, 0 turns it off), ``r3_fraction`` (share of pixels taken from the noisy input in each R3
    pass, default 0.16), ``loss`` (``"l2"``, default, the mean for zero-mean noise; ``"l1"`` as in the paper, the
    median), ``residual_filter`` (box design: fit the filter of the box's residuals after training, default True),
    ``sub_batch`` (PD design: sub-images trained on per step, drawn at random from the PD sub-images of the batch:
    bounds the cost of a step on a CPU; 0 uses them all). Stored by training: ``noise_probe``, ``box_filter`` (one
    filter, or one per knot), ``box_knots`` (the knots in the noise share), ``box_noise_var`` (the noise variance
    the share divides, normalised units), ``noise_covariance_from`` (where the noise's autocovariance came from:
    ``"residuals"`` or ``"probe"``) and ``seed`` (of R3's pixel choice, 0).

    The two designs are strategies (:mod:`n2x.methods.apbsn_designs`); this class declares the options, settles
    the design from them and the noise probe, and delegates.
    """

    name = "apbsn"
    label = "AP-BSN"
    description = ("For spatially correlated noise (sCMOS patterns, demosaicked or compressed images): a network "
                   "blind to a box as wide as the noise correlation (or, with a training stride, the paper's "
                   "pixel-shuffle sub-images) cannot learn the noise.")
    options = (
        Option("design", "str", AUTO, "blind box (box) or pixel-shuffle (pd); default auto: pd when stride_train is "
               "given or the noise probe cannot measure the noise's correlation (or measures more than "
               f"{MAX_BLIND} pixels), else box", label="Design", choices=(AUTO, "box", "pd"), advanced=True),
        Option("blind", "int", AUTO, _BOX + "radius in pixels of the box hidden from each output pixel, at least "
               "the noise's correlation length; a number chooses this design (default auto: the correlation length "
               "the noise probe measures on the first training image)", label="Blind radius", range=(0, 16),
               auto=True, design="box", unit="px"),
        Option("ensemble", "int", 8, _BOX + "flips and 90-degree rotations of each tile averaged when denoising: "
               "1, 2, 4 or 8 (default 8)", label="Ensemble", choices=(1, 2, 4, 8), design="box"),
        Option("residual_filter", "bool", True, _BOX + "after training, fit the filter that adds back the detail "
               "of the hidden box from the noisy pixels (needs the noise level the probe measures; default true)",
               label="Box filter", design="box", advanced=True),
        Option("stride_train", "int", AUTO, _PD + "pixel-shuffle stride in training, in pixels, more than the "
               "noise's correlation length (default auto: one more than the correlation length the noise probe "
               "measures); giving it, a number or auto, chooses this design", label="Stride (training)", range=(1, 16), auto=True,
               design="pd", unit="px"),
        Option("stride_infer", "int", 2, _PD + "pixel-shuffle stride when denoising, in pixels (default 2)",
               label="Stride (denoising)", range=(1, 16), design="pd", unit="px"),
        Option("r3_passes", "int", 8, _PD + "R3 refinement passes averaged when denoising (default 8; 0 turns R3 "
               "off)", label="R3 passes", range=(0, 64), design="pd"),
        Option("r3_fraction", "float", 0.16, _PD + "share of the pixels taken from the noisy image in each R3 pass "
               "(default 0.16)", label="R3 share", range=(0.01, 0.99), design="pd", advanced=True),
        Option("sub_batch", "int", 16, _PD + "pixel-shuffle sub-images trained on per step, drawn at random from "
               "those of the batch: bounds the cost of a step (default 16; 0 uses them all)", label="Sub-batch",
               range=(0, 4096), design="pd", advanced=True),
        Option("loss", "str", "l2", "training loss: l2 (mean squared error, the mean for zero-mean noise; default) "
               "or l1 (mean absolute error, the median, as in the paper)", label="Loss", choices=LOSSES),
    )
    internal = ("noise_probe", "box_filter", "box_knots", "box_noise_var", "noise_covariance_from", "seed")
    #: the box filter is fitted on the held-out stripe and 2^18 pixels of training patches: the stripe alone (one
    #: region of the image) fitted it worse (camera/CORR, the same network: 26.48 dB, with 64 patches of 64 x 64
    #: from the rest 27.19, on the whole image 27.23)
    calibration_pixels = 2 ** 18

    def __init__(self, design: str | None = None, blind: int | str | None = None,
                 stride_train: int | str | None = None, ensemble: int | None = None,
                 residual_filter: bool | None = None, stride_infer: int | None = None, r3_passes: int | None = None,
                 r3_fraction: float | None = None, sub_batch: int | None = None, loss: str | None = None):
        p = self.settled("apbsn", design=design, blind=blind, stride_train=stride_train, ensemble=ensemble,
                         residual_filter=residual_filter, stride_infer=stride_infer, r3_passes=r3_passes,
                         r3_fraction=r3_fraction, sub_batch=sub_batch, loss=loss)
        # None: the noise probe of the training data decides in prepare()
        p["design"] = choose_design(p["design"], p["blind"], p["stride_train"], stride_train is not None)
        super().__init__(**p, seed=0)
        self._design: Design | None = None

    @property
    def design(self) -> str:
        # Model files written before the blind box existed hold only the pixel-shuffle design.
        return self.params.get("design") or "pd"

    @property
    def strategy(self) -> Design:
        """The design's strategy object (made when the design is known, kept with what it settled)."""
        if self._design is None or self._design.name != self.design:
            self._design = DESIGNS[self.design](self.params)
        return self._design

    def prepare(self, images: list, layouts: list) -> None:
        """Settle ``design``, ``blind`` and ``stride_train`` left to ``"auto"`` from the noise probe of the first
        training image (the blind box also keeps its noise autocovariance for the box filter)."""
        p = self.params
        if p["design"] == "pd" and p["stride_train"] != AUTO:
            return
        report = measure_noise(images[0], layouts[0].axes)
        length = None if report is None else report.correlation_length
        p["noise_probe"] = {"correlation_length": length}
        if p["design"] is None:
            p["design"] = "pd" if length is None or length > MAX_BLIND else "box"
        self.strategy.settle(report, length)

    def calibrate(self, net: nn.Module, val_patches: tuple[np.ndarray, ...] | None, scale: list[float],
                  device: torch.device, fold_channels: bool, in_context: InContext | None = None) -> None:
        """Blind-box design: fit the filter of the box's residuals on the held-out patches ``(N, C, Y, X)``
        (normalised; ``scale``: the normalisation's scale per channel; ``fold_channels``: the network takes one
        channel at a time). The pixel-shuffle design has nothing to fit."""
        for key in ("box_filter", "box_knots", "box_noise_var", "noise_covariance_from"):
            self.params.pop(key, None)
        self.strategy.calibrate(net, val_patches, scale, device, fold_channels)

    # -- network ---------------------------------------------------------------------------------------------
    def spatial_dims(self, requested: int | None, **options: Any) -> int:
        if requested == 3:
            raise OptionError("AP-BSN uses a 2D network; Z planes are denoised one by one",
                              hint="leave {dims} unset or set it to 2")
        return 2

    def network_config(self, ndim: int, channels: int, overrides: dict | None = None, **options: Any) -> dict:
        if ndim != 2:
            raise N2xError("AP-BSN uses a 2D network; Z planes are denoised one by one",
                           hint="leave {dims} unset or set it to 2")
        return {**self.strategy.network_config(channels), **(overrides or {})}

    def training_defaults(self, ndim: int, **options: Any) -> tuple[tuple[int, ...] | None, int | None]:
        return self.strategy.patch

    def multiple(self, net: nn.Module) -> int:
        return self.strategy.multiple(net)

    def halo(self, net: nn.Module) -> int:
        return self.strategy.halo(net)

    # -- training and inference ------------------------------------------------------------------------------
    def loss(self, net: nn.Module, patches: tuple[torch.Tensor, ...], generator: torch.Generator) -> torch.Tensor:
        x = patches[0]
        if x.ndim != 4:
            raise N2xError("AP-BSN trains on 2D patches (B, C, Y, X)")
        return self.strategy.loss(net, x, generator)

    def predict(self, net: nn.Module, x: torch.Tensor, position: tuple = ()) -> torch.Tensor:
        return self.strategy.predict(net, x, position)
