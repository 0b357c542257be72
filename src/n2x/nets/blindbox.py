"""A full-resolution blind-box network: blind to a ``(2b + 1) x (2b + 1)`` box around each output pixel.

For noise correlated over ``b`` pixels, a network that sees the noise of the neighbours within ``b`` pixels can
predict part of the centre pixel's noise, and self-supervised training then learns to keep the noise. Pixel-shuffle
downsampling (AP-BSN) avoids this by training on sub-images whose neighbours were far apart, at the price of the
image's detail. This network instead hides the whole box from each output and sees every pixel outside it, at full
resolution (the blind-spot construction of Laine et al., NeurIPS 2019, with a box instead of a single pixel):

- one branch sees only an upper half-plane: each spatial layer is a ``2 x 3`` convolution over rows ``y - d`` and
  ``y`` (dilation ``d``), so the branch output at row ``y`` depends on input rows ``<= y``; shifting it down by
  ``b + 1`` rows leaves rows ``<= y - b - 1``;
- the same branch (shared weights) runs on the image rotated by 0, 90, 180 and 270 degrees; rotated back, the four
  half-planes are "above", "left of", "below" and "right of" the box, and their union is everything outside it;
- 1 x 1 convolutions fuse the four, plus a linear blind path (the mean of the ring just outside the box) that gives
  a sensible estimate from the first step.

Input and output are ``(B, C, Y, X)``; any ``Y`` and ``X``. ``blind=0`` is the one-pixel blind spot (white noise).
With ``variance=True`` the output has ``2 * out_channels`` channels: the means, then an unconstrained value per
channel that the method maps to a predicted variance (AP-BSN's box filter weighs the residual by it). The variance
has its own 1 x 1 tail on the branches' features, without a gradient into them: trained through the shared trunk it
cost the means 0.26 dB (camera/CORR, 180 s: 25.19 against 25.45).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

from . import register_network
from .dihedral import four_rotations


class HalfPlaneConv2d(nn.Conv2d):
    """Output row ``y`` sees input rows ``y - d`` and ``y`` and columns ``x - d, x, x + d``.

    Rows are not padded: the output has ``d`` fewer rows than the input (its first row is input row ``d``), which
    the caller accounts for by padding the top once. Columns keep their number ("same" padding).
    """

    def __init__(self, c_in: int, c_out: int, dilation: int):
        super().__init__(c_in, c_out, (2, 3), dilation=dilation, padding=(0, dilation))


class BoxMaskedConv2d(nn.Conv2d):
    """A ``(2b + 3)``-wide convolution whose central ``(2b + 1)``-wide box of taps is always zero."""

    def __init__(self, c_in: int, c_out: int, blind: int):
        k = 2 * blind + 3
        super().__init__(c_in, c_out, k, padding=k // 2)
        mask = torch.ones(1, 1, k, k)
        mask[..., 1:-1, 1:-1] = 0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)


@register_network("blindbox")
class BlindBoxNet(nn.Module):
    """Four rotated half-plane branches (shared weights) around a blind box of radius ``blind`` pixels.

    ``dilations``: one ``2 x 3`` layer each after a first undilated one (``features`` channels, ReLU); the receptive
    radius is ``1 + sum(dilations) + blind + 1`` pixels. ``variance``: also output one unconstrained value per
    channel after the means (for a predicted variance), from a tail of its own on the branches' features, which it
    does not train.
    """

    multiple = 1

    def __init__(self, ndim: int = 2, in_channels: int = 1, out_channels: int = 1, features: int = 16,
                 blind: int = 2, dilations: tuple[int, ...] | list[int] = (1, 2, 4, 8, 1, 2), variance: bool = False):
        super().__init__()
        if ndim != 2:
            raise ValueError("the blind-box network is 2D; 3D data are processed plane by plane")
        if int(blind) < 0:
            raise ValueError(f"blind must be 0 or more pixels, not {blind}")
        self.blind = int(blind)
        self.dilations = tuple(int(d) for d in dilations)
        f = int(features)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, f, 1), nn.ReLU(inplace=True),
                                   HalfPlaneConv2d(f, f, 1), nn.ReLU(inplace=True)]
        for d in self.dilations:
            layers += [HalfPlaneConv2d(f, f, d), nn.ReLU(inplace=True)]
        self.branch = nn.Sequential(*layers)
        self.tail = _tail(f, out_channels)
        _he_init([*self.branch, *self.tail])
        self.shortcut = BoxMaskedConv2d(in_channels, out_channels, self.blind)
        with torch.no_grad():
            self.shortcut.weight.zero_()
            self.shortcut.bias.zero_()
            for c in range(min(in_channels, out_channels)):
                self.shortcut.weight[c, c] = 1.0 / (8 * (self.blind + 1))
        self.variance_tail = _tail(f, out_channels) if variance else None
        if self.variance_tail is not None:
            _he_init(self.variance_tail)

    def receptive_radius(self) -> int:
        """Pixels on each side of an output pixel that can influence it."""
        return 1 + sum(self.dilations) + self.blind + 1

    def _upper(self, x: torch.Tensor) -> torch.Tensor:
        """Branch features at each pixel from input rows at least ``blind + 1`` above it."""
        shift = self.blind + 1
        # Pad the top for the rows the unpadded layers consume, plus the shift; dropping the last `shift` rows
        # (negative padding) moves everything down so that row y ends up seeing rows <= y - shift only.
        return self.branch(F.pad(x, (0, 0, 1 + sum(self.dilations) + shift, -shift)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.cat(four_rotations(self._upper, x), 1)
        means = self.tail(feats) + self.shortcut(x)
        if self.variance_tail is None:
            return means
        return torch.cat([means, self.variance_tail(feats.detach())], 1)


def _tail(features: int, out_channels: int) -> nn.Sequential:
    """1 x 1 convolutions from the four branches' features to ``out_channels``."""
    f = features
    return nn.Sequential(nn.Conv2d(4 * f, f, 1), nn.ReLU(inplace=True), nn.Conv2d(f, max(1, f // 2), 1),
                         nn.ReLU(inplace=True), nn.Conv2d(max(1, f // 2), out_channels, 1))


def _he_init(modules: Any) -> None:
    """He initialisation of the convolutions followed by a ReLU; the last convolution, an output, starts small.

    With PyTorch's default the signal shrinks through the plain ReLU chain and training sits on a plateau for a
    hundred steps."""
    modules = list(modules)
    with torch.no_grad():
        for mod in modules[:-1]:
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                nn.init.zeros_(mod.bias)
        modules[-1].weight.mul_(0.1)
