"""Self-contained ``nn.Module`` wrappers that compute what ``n2x denoise`` computes, for TorchScript and ONNX.

A wrapper maps an image block in the input's intensity units, float32 ``(B, C, Y, X)`` (2D networks) or
``(B, C, Z, Y, X)`` (3D networks), to the denoised block in the same units and shape. Inside it does what
:meth:`n2x.model.Model.predict` does to one tile: the variance-stabilising transform where the model has one
(:mod:`.anscombe`), the stored per-channel normalisation ``(x - offset) / scale``, channels folded into the batch for
``channels="independent"`` models, the method's prediction (the network; AP-BSN's flip/rotation ensemble and box
filter of the residual; pixel-shuffle down/up; the all-pixel blind spot's ensemble of posterior means), the return
to the transform's units and the transform's exact unbiased inverse.

Spatial sizes must be multiples of the model's ``multiple`` (the U-Net's pooling factor, the pixel-shuffle stride):
the package declares this as its shape step, so a consumer never feeds another size. What cannot be expressed
faithfully is refused by :func:`refusal` with the reason.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..methods.apbsn_designs import box_prediction
from ..methods.posterior import posterior_mean, wiener_refined
from ..nets.dihedral import dihedral_mean
from .anscombe import AnscombeTransform

class Normalized(nn.Module):
    """Stabilise (``vst``), normalise, fold independent channels into the batch, run ``core``, unfold, return to
    input units (with ``vst``: through its exact unbiased inverse), in the order of
    :meth:`n2x.data.normalize.Normalization.apply` and ``invert``.

    ``offset``/``scale``: per channel, in the transform's units with ``vst``, else the input's (the model's stored
    :class:`~n2x.data.normalize.Normalization`).
    """

    def __init__(self, core: nn.Module, offset: list[float], scale: list[float], fold: bool, ndim: int,
                 vst: AnscombeTransform | None = None):
        super().__init__()
        self.core = core
        self.vst = vst
        shape = [1, len(offset)] + [1] * ndim
        self.register_buffer("offset", torch.tensor(offset, dtype=torch.float32).reshape(shape))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).reshape(shape))
        # Folding a single channel is a no-op; skipping it keeps the traced graph minimal.
        self.fold = bool(fold) and len(offset) > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        if self.vst is not None:
            y = self.vst.stabilise(y)
        y = (y - self.offset) / self.scale
        if self.fold:
            # (B, C, *S) -> (B * C, 1, *S): the network was trained on one channel at a time
            y = self.core(y.reshape((-1, 1) + y.shape[2:])).reshape(x.shape)
        else:
            y = self.core(y)
        y = y * self.scale + self.offset
        return self.vst.invert(y) if self.vst is not None else y


class BoxCore(nn.Module):
    """AP-BSN's blind box: mean over the first ``ensemble`` flips/rotations, then the box filter of the residual
    (``params``: the method's, with the fitted filter or filters) — through the same function as
    :meth:`n2x.methods.apbsn_designs.BlindBoxDesign.predict` (:func:`~n2x.methods.apbsn_designs.box_prediction`)."""

    def __init__(self, net: nn.Module, params: dict[str, Any]):
        super().__init__()
        self.net = net
        self.ensemble = int(params.get("ensemble", 1))
        self.filtered = bool(params.get("box_filter"))
        self.adaptive = len(params.get("box_knots") or ()) > 1
        # buffers, not Python lists: ONNX's exporter cannot fold tensors made while tracing
        self.register_buffer("kernel", torch.tensor(params.get("box_filter") or [[0.0]], dtype=torch.float32))
        self.register_buffer("knots", torch.tensor(params.get("box_knots") or [0.0], dtype=torch.float32))
        self.noise_var = float(params.get("box_noise_var") or 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return box_prediction(self.net, x, self.ensemble, self.kernel if self.filtered else None,
                              self.knots if self.adaptive else None, self.noise_var)


class PixelShuffleCore(nn.Module):
    """AP-BSN's pixel-shuffle design without R3: the blind-spot network on the ``stride`` x ``stride`` pixel-shuffle
    sub-images, shuffled back (:func:`n2x.nets.pixel_shuffle.pixel_shuffle_down` and ``_up``, inlined)."""

    def __init__(self, net: nn.Module, stride: int):
        super().__init__()
        self.net = net
        self.stride = int(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        b, c, h, w = x.shape
        sub = x.reshape(b, c, h // s, s, w // s, s).permute(0, 3, 5, 1, 2, 4).reshape(b * s * s, c, h // s, w // s)
        y = self.net(sub)
        y = y.reshape(b, s, s, c, h // s, w // s).permute(0, 3, 4, 1, 5, 2)
        return y.reshape(b, c, h, w)


class PosteriorCore(nn.Module):
    """The all-pixel blind spot: the mean over the first ``ensemble`` flips/rotations of the Gaussian posterior mean
    of the network's prior and the noisy pixel — :meth:`n2x.methods.bsn.BlindSpotAllPixels.predict`, through the
    same functions (:func:`n2x.methods.bsn.posterior_mean`, :func:`n2x.nets.dihedral.dihedral_mean`)."""

    def __init__(self, net: nn.Module, ensemble: int, wiener_block: int = 0):
        super().__init__()
        self.net = net
        self.ensemble = int(ensemble)
        self.wiener_block = int(wiener_block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        estimate = dihedral_mean(lambda t: posterior_mean(self.net, t), x, self.ensemble)
        return wiener_refined(self.net, x, estimate, self.wiener_block, strip_rows=None)


def refusal(model: Any) -> str | None:
    """Why ``model`` cannot be exported faithfully, or None when it can."""
    name = model.method_name
    if name == "apbsn":
        p = model.method.params
        if getattr(model.method, "design", "pd") == "pd" and int(p.get("r3_passes", 0)) > 0:
            return (f"this AP-BSN model refines with {p['r3_passes']} R3 passes, whose choice of pixels is a hash of "
                    "the global image coordinates; a block of a tiled prediction in another program does not know "
                    "where it lies in the image, so the package would compute other pixels than n2x denoise")
        return None
    if name not in ("n2v", "n2v2", "n2n", "bsn"):
        return f"method {name!r} has no export recipe (only n2v, n2v2, n2n, bsn and apbsn are exported)"
    return None


def build_module(model: Any) -> nn.Module:
    """The eval-mode, CPU, float32 wrapper of ``model`` (a :class:`n2x.model.Model`); see :func:`refusal` first."""
    net = copy.deepcopy(model.net).float().cpu().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    method = model.method
    if model.method_name == "apbsn":
        p = method.params
        if method.design == "box":
            core: nn.Module = BoxCore(net, p)
        else:
            core = PixelShuffleCore(net, int(p["stride_infer"]))
    elif model.method_name == "bsn":
        core = PosteriorCore(net, int(method.params["ensemble"]), method.wiener_block_used(len(model.spatial)))
    else:
        core = net
    norm, ndim = model.normalization, len(model.spatial)
    vst = AnscombeTransform(norm.vst, ndim) if norm.vst is not None else None
    return Normalized(core, list(norm.offset), list(norm.scale), model.config["channels"] == "independent",
                      ndim, vst).eval()
