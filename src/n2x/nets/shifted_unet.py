"""Laine et al.'s blind-spot U-Net (NeurIPS 2019), in 2D: four rotated half-plane U-Nets whose union sees every
pixel but the centre.

One branch is a U-Net whose output row ``y`` depends on input rows ``<= y`` only:

- every ``3 x 3`` convolution is shifted: the top is padded by two rows and none at the bottom, so output row ``y``
  sees input rows ``y - 2 .. y`` (columns as usual);
- every ``2 x 2`` max-pooling follows a one-row shift down, so pooled row ``i`` covers rows ``2i - 1`` and ``2i``
  (without the shift it would cover ``2i + 1``, which nearest upsampling hands back to row ``2i``);
- upsampling is nearest (bilinear would mix in the next coarse row), then concatenation with the skip, as in a usual
  U-Net.

By induction a row ``i`` at scale ``s`` depends on input rows ``<= s * i``. The branch's output is shifted down by
one more row, so row ``y`` then sees rows ``<= y - 1``: the half-plane strictly above. The same branch (shared
weights) runs on the image rotated by 0, 90, 180 and 270 degrees, batched together; rotated back, the four
half-planes are above, left of, below and right of the pixel, whose union is everything but the pixel itself.
1 x 1 convolutions fuse the four.

Compared with the dilated half-plane trunk (:class:`~n2x.nets.blindbox.BlindBoxNet`, ``blind=0``) this one sees far
more context per operation (the receptive field doubles at each level) at the cost of a pooling grid: sizes are
zero-padded at their end to a multiple of ``2 ** depth`` (:attr:`ShiftedUNet.multiple`) and cropped back. Zero
padding carries no information, so it keeps the blindness (reflection would mirror a pixel into its own view).

Input ``(B, C, Y, X)``, output ``(B, out_channels, Y, X)`` features; any ``Y`` and ``X``.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from . import register_network
from .dihedral import four_rotations

#: Laine et al.'s leaky ReLU slope
LEAK = 0.1


class ShiftConv2d(nn.Conv2d):
    """``3 x 3`` convolution whose output row ``y`` sees input rows ``y - 2 .. y`` only (same size out)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, 3, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (1, 1, 2, 0)))


def shift_down(x: torch.Tensor, rows: int = 1) -> torch.Tensor:
    """``x`` moved down by ``rows`` (zeros enter at the top, the last rows drop out)."""
    return F.pad(x, (0, 0, rows, -rows))


class _Level(nn.Sequential):
    """Shifted ``3 x 3`` convolutions, each followed by a leaky ReLU (no batch norm: with it camera/G25 fell from
    26.7 to 23.0 dB at 300 steps, moon/G25 gained nothing)."""

    def __init__(self, *channels: int):
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [ShiftConv2d(c_in, c_out), nn.LeakyReLU(LEAK, inplace=True)]
        super().__init__(*layers)
        self.n_convs = len(channels) - 1


@register_network("shifted_unet")
class ShiftedUNet(nn.Module):
    """Four rotated half-plane U-Nets (shared weights), shifted by one pixel, fused by 1 x 1 convolutions.

    ``depth``: poolings by 2 (sizes are padded to multiples of ``2 ** depth``); ``features``: channels of the
    encoder at every level (the decoder has twice as many, the top level's last convolution ``features``), as in
    Laine et al., whose network is ``depth=5, features=48``; ``out_channels``: the fused output's channels.
    """

    def __init__(self, ndim: int = 2, in_channels: int = 1, out_channels: int = 16, features: int = 16,
                 depth: int = 3):
        super().__init__()
        if ndim != 2:
            raise ValueError("the shifted U-Net is 2D; 3D data are processed plane by plane")
        if int(depth) < 1:
            raise ValueError(f"depth must be 1 or more poolings, not {depth}")
        c, f = int(in_channels), int(features)
        self.depth = int(depth)
        self.enc = nn.ModuleList([_Level(c, f, f)] + [_Level(f, f) for _ in range(self.depth - 1)])
        self.bottom = _Level(f, f)
        # decoder from the bottom up: upsampled features + the skip (the input at the top level, else the pooled
        # features that entered that level)
        self.dec = nn.ModuleList()
        below = f
        for level in reversed(range(self.depth)):
            skip = c if level == 0 else f
            last = f if level == 0 else 2 * f
            self.dec.append(_Level(below + skip, 2 * f, last))
            below = last
        self.fuse = nn.Sequential(nn.Conv2d(4 * f, 2 * f, 1), nn.LeakyReLU(LEAK, inplace=True),
                                  nn.Conv2d(2 * f, int(out_channels), 1))
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, a=LEAK, nonlinearity="leaky_relu")
                nn.init.zeros_(mod.bias)

    @property
    def multiple(self) -> int:
        """The pooling factor: sizes that are multiples of it need no padding."""
        return 2 ** self.depth

    def receptive_radius(self) -> int:
        """Pixels on each side of an output pixel (along rows or columns) that can influence it: an upper bound,
        counted along the branch's reach upwards (2 rows per shifted convolution at each scale, a shift and a
        window per pooling, a coarse row per upsampling), plus the final one-row shift."""
        r = 0
        for level in range(self.depth):
            s = 2 ** level
            r += 2 * s * self.enc[level].n_convs  # shifted convolutions
            r += 2 * s  # shift + pooling window
            r += 2 * s * self.dec[self.depth - 1 - level].n_convs + 2 * s  # decoder + upsampling into it
        r += 2 * 2 ** self.depth * self.bottom.n_convs
        return r + 1

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        """Features at each pixel from the input rows strictly above it (``x``: sizes multiples of the factor)."""
        skips = [x]
        for level, block in enumerate(self.enc):
            x = F.max_pool2d(shift_down(block(x)), 2)
            if level < self.depth - 1:
                skips.append(x)
        x = self.bottom(x)
        for block, skip in zip(self.dec, reversed(skips)):
            x = block(torch.cat([F.interpolate(x, scale_factor=2, mode="nearest"), skip], 1))
        return shift_down(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.multiple
        x = F.pad(x, (0, -w % m, 0, -h % m))
        feats = four_rotations(self._branch, x)
        return self.fuse(torch.cat(feats, 1))[..., :h, :w]
