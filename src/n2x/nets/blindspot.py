"""A light blind-spot network for AP-BSN (after DBSN, Wu et al. 2020, and AP-BSN, Lee et al. 2022).

The output at a pixel never sees the input value at that pixel: the first spatial layer of each branch is a
``(2d - 1) x (2d - 1)`` convolution whose centre tap is zeroed, and every later spatial layer of that branch is a
3 x 3 convolution with dilation ``d``. An input offset reachable through the masked convolution has all coordinates
within ``d - 1``; the dilated layers only add multiples of ``d``; so the only way back to offset 0 is through the
masked centre. 1 x 1 convolutions and the fusion of the branches keep the property. The blindness is architectural,
so the training loss can use every pixel.

The official AP-BSN uses 128 channels and 9 blocks per branch: far too slow on a CPU. The default here is 32 channels
and 3 blocks per branch (dilations 2 and 3), about 0.1 M parameters, which learns in minutes on two CPU cores.
Input and output are ``(B, C, Y, X)``; the network is 2D (stacks are processed plane by plane).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from . import register_network


class CentralMaskedConv2d(nn.Conv2d):
    """A square convolution whose centre tap is always zero (the blind spot)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int):
        super().__init__(c_in, c_out, kernel_size, padding=kernel_size // 2)
        mask = torch.ones(1, 1, kernel_size, kernel_size)
        mask[..., kernel_size // 2, kernel_size // 2] = 0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Masking in forward (not once at init) keeps the centre at zero whatever the optimiser does.
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)


class DilatedBlock(nn.Module):
    """Residual block: 3 x 3 convolution with dilation ``d``, ReLU, 1 x 1 convolution."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.mix = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(F.relu(self.conv(x)))


class Branch(nn.Sequential):
    """Masked ``(2d - 1)``-wide convolution, then ``blocks`` dilated blocks, then a 1 x 1 convolution."""

    def __init__(self, channels: int, dilation: int, blocks: int):
        layers: list[nn.Module] = [CentralMaskedConv2d(channels, channels, 2 * dilation - 1), nn.ReLU(inplace=True),
                                   nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True)]
        layers += [DilatedBlock(channels, dilation) for _ in range(blocks)]
        layers += [nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True)]
        super().__init__(*layers)


@register_network("blindspot")
class BlindSpotNet(nn.Module):
    """Two-branch blind-spot network (dilations ``dilations``, ``blocks`` residual blocks each, ``features`` channels).

    ``receptive_radius()`` is in the pixels the network is applied to (sub-image pixels under pixel-shuffle).
    """

    multiple = 1

    def __init__(self, ndim: int = 2, in_channels: int = 1, out_channels: int = 1, features: int = 32,
                 blocks: int = 3, dilations: tuple[int, ...] | list[int] = (2, 3)):
        super().__init__()
        if ndim != 2:
            raise ValueError("the blind-spot network is 2D; 3D data are processed plane by plane")
        self.dilations = tuple(int(d) for d in dilations)
        self.blocks = int(blocks)
        self.head = nn.Sequential(nn.Conv2d(in_channels, features, 1), nn.ReLU(inplace=True))
        self.branches = nn.ModuleList(Branch(features, d, blocks) for d in self.dilations)
        n = len(self.dilations) * features
        self.tail = nn.Sequential(nn.Conv2d(n, features, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(features, features // 2, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(features // 2, out_channels, 1))
        # A linear blind path: the mean of the 8 neighbours (learnable, also blind). From the first step the output
        # is a sensible estimate, so the branches learn a correction instead of starting from a constant; without it
        # training sits on a plateau for the first hundred steps, which a CPU budget of minutes cannot afford.
        self.shortcut = CentralMaskedConv2d(in_channels, out_channels, 3)
        with torch.no_grad():
            self.shortcut.weight.zero_()
            self.shortcut.bias.zero_()
            for c in range(min(in_channels, out_channels)):
                self.shortcut.weight[c, c] = 1.0 / 8
            self.tail[-1].weight.mul_(0.1)

    def receptive_radius(self) -> int:
        """Pixels on each side of an output pixel that can influence it."""
        return max((d - 1) + self.blocks * d for d in self.dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        return self.tail(torch.cat([b(h) for b in self.branches], dim=1)) + self.shortcut(x)
