"""A 2D/3D U-Net with the options N2V2 needs (max-blur-pool downsampling, no top-level skip connection)."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from . import register_network


def _conv(ndim: int):
    return nn.Conv2d if ndim == 2 else nn.Conv3d


def _bn(ndim: int):
    return nn.BatchNorm2d if ndim == 2 else nn.BatchNorm3d


class ConvBlock(nn.Sequential):
    """Two 3x3(x3) convolutions, each followed by optional batch norm and ReLU."""

    def __init__(self, ndim: int, c_in: int, c_out: int, batch_norm: bool):
        layers: list[nn.Module] = []
        for c in (c_in, c_out):
            layers.append(_conv(ndim)(c, c_out, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(_bn(ndim)(c_out))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class MaxBlurPool(nn.Module):
    """Anti-aliased downsampling of N2V2: max over 2x2 with stride 1, then a [1, 2, 1] blur with stride 2."""

    def __init__(self, ndim: int, channels: int):
        super().__init__()
        self.ndim = ndim
        k1 = torch.tensor([1.0, 2.0, 1.0])
        k = k1[:, None] * k1[None, :] if ndim == 2 else k1[:, None, None] * k1[None, :, None] * k1[None, None, :]
        k = (k / k.sum())[None, None].repeat(channels, *([1] * (ndim + 1)))
        self.register_buffer("kernel", k, persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ndim == 2:
            x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, stride=1)
            return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.kernel, stride=2, groups=self.channels)
        x = F.max_pool3d(F.pad(x, (0, 1, 0, 1, 0, 1), mode="replicate"), 2, stride=1)
        return F.conv3d(F.pad(x, (1,) * 6, mode="replicate"), self.kernel, stride=2, groups=self.channels)


@register_network("unet")
class UNet(nn.Module):
    """U-Net for 2D (``ndim=2``, input ``(B, C, Y, X)``) or 3D (``ndim=3``, ``(B, C, Z, Y, X)``) images.

    ``depth`` poolings by 2, ``features`` channels at full resolution, doubled at each level. ``blur_pool`` and
    ``top_skip=False`` give the N2V2 architecture. ``residual`` adds the input to the output (the network learns
    the correction; only when input and output channels match). Spatial sizes must be multiples of ``2 ** depth``.
    """

    def __init__(self, ndim: int = 2, in_channels: int = 1, out_channels: int = 1, depth: int = 2,
                 features: int = 32, batch_norm: bool = True, blur_pool: bool = False, top_skip: bool = True,
                 residual: bool = False):
        super().__init__()
        self.residual = bool(residual) and in_channels == out_channels
        self.ndim, self.depth = ndim, depth
        self.top_skip = top_skip
        chans = [features * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        self.pools = nn.ModuleList()
        c_prev = in_channels
        for i in range(depth):
            self.down.append(ConvBlock(ndim, c_prev, chans[i], batch_norm))
            self.pools.append(MaxBlurPool(ndim, chans[i]) if blur_pool else (nn.MaxPool2d(2) if ndim == 2 else nn.MaxPool3d(2)))
            c_prev = chans[i]
        self.bottom = ConvBlock(ndim, c_prev, chans[depth], batch_norm)
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):
            skip = chans[i] if (i > 0 or top_skip) else 0
            self.up.append(ConvBlock(ndim, chans[i + 1] + skip, chans[i], batch_norm))
        self.head = _conv(ndim)(chans[0], out_channels, 1)
        self._mode = "bilinear" if ndim == 2 else "trilinear"

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this (the total downsampling factor)."""
        return 2 ** self.depth

    def receptive_radius(self) -> int:
        """Pixels on each side of an output pixel that can influence it (an upper bound)."""
        r = 0
        for lvl in range(self.depth):
            r += 2 * 2 ** lvl + 2 ** lvl + (2 ** (lvl + 1) if isinstance(self.pools[lvl], MaxBlurPool) else 0)
            r += 2 * 2 ** lvl + 2 ** (lvl + 1)  # decoder convs and the interpolation into this level
        r += 2 * 2 ** self.depth
        return r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = x
        skips = []
        for block, pool in zip(self.down, self.pools):
            x = block(x)
            skips.append(x)
            x = pool(x)
        x = self.bottom(x)
        for block, i in zip(self.up, reversed(range(self.depth))):
            x = F.interpolate(x, scale_factor=2, mode=self._mode, align_corners=False)
            if i > 0 or self.top_skip:
                x = torch.cat([x, skips[i]], dim=1)
            x = block(x)
        return self.head(x) + inp if self.residual else self.head(x)
