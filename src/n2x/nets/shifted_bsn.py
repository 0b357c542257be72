"""The all-pixel blind-spot network of the ``bsn`` method: a prior mean and a prior variance for every pixel from
everything but the pixel itself (Laine et al., NeurIPS 2019), in 2D and in 3D.

- **In the plane** (``trunk``) four rotated branches of half-plane networks, each shifted by one pixel, so together
  they see every pixel of the plane but the centre; their fused output here is a feature map, not a prediction.
  ``"unet"``: Laine et al.'s U-Net of shifted convolutions and poolings (:class:`~n2x.nets.shifted_unet.ShiftedUNet`,
  sizes padded to a multiple of ``2 ** depth``); ``"dilated"``: AP-BSN's blind box with a 1 x 1 box
  (:class:`~n2x.nets.blindbox.BlindBoxNet` with ``blind=0``: dilated half-plane convolutions at full resolution).
- **In 3D** the noise of the neighbouring planes is independent of the centre voxel's (pixel-independent noise), so
  they need no blind spot at all: the planes ``z - k .. z - 1`` and ``z + 1 .. z + k`` go through a small ordinary
  2D convolution stack and join the blind in-plane features in the 1 x 1 head. Every convolution is 2D: a voxel
  costs about what a pixel costs in 2D, where Laine et al.'s six rotated half-space branches of 3D convolutions
  cost about 4.5 times more per voxel (six branches instead of four, 2 x 3 x 3 taps instead of 2 x 3) and the
  3D U-Net of N2V made 60 steps in 180 s on two CPU cores.
- **Output** ``(B, 2C, *spatial)``: channels ``0..C-1`` the prior mean (a linear blind estimate, the mean of the
  eight in-plane neighbours, plus the learnt correction), channels ``C..2C-1`` the raw prior variance (the method
  makes it positive with a softplus). The network also holds the noise model (``noise_var``, ``noise_gain`` and
  ``noise_floor``: per channel, in the normalised units of its input), so that it is stored with the weights.

Input ``(B, C, Y, X)`` for ``ndim=2`` or ``(B, C, Z, Y, X)`` for ``ndim=3``; any size. Blindness (an output does not
depend on its own input pixel) holds by construction and is checked by a gradient test.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from . import register_network
from .blindbox import BlindBoxNet, BoxMaskedConv2d
from .shifted_unet import ShiftedUNet

#: the in-plane trunks; a model file without ``trunk`` predates the U-Net and has the dilated one
TRUNKS = ("unet", "dilated")
#: knots of the curve that corrects the prior mean after training (:mod:`n2x.methods.prior_offset`). 16 kept all
#: but 0.01-0.1 dB of 32 on 180 s models (camera/G25 28.44 against 28.46, brick/PG10 28.74 against 28.85); 4
#: lost 0.2-1.7 dB of it
OFFSET_KNOTS = 16



@register_network("shifted_bsn")
class ShiftedBSN(nn.Module):
    """Blind in-plane features (``trunk``) + in 3D the ``z_context`` planes on each side.

    ``trunk``: ``"unet"`` (:class:`ShiftedUNet` with ``depth`` poolings) or ``"dilated"`` (:class:`BlindBoxNet`,
    ``blind=0``, with ``dilations``: receptive radius in the plane ``2 + sum(dilations)`` pixels); ``features``:
    channels of every layer (the U-Net's encoder); ``z_context``: planes on each side seen in 3D; ``noise_var``: the
    initial noise variance in normalised units; ``leak``: the negative slope of the activations of the head and of
    the 3D context stack (0: ReLU, as in model files that do not store it).
    """

    def __init__(self, ndim: int = 2, in_channels: int = 1, out_channels: int | None = None, features: int = 16,
                 dilations: tuple[int, ...] | list[int] = (1, 2, 4, 8, 1, 2), z_context: int = 2,
                 noise_var: float = 0.1, trunk: str = "dilated", depth: int = 3, leak: float = 0.0):
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"the shifted blind-spot network is 2D or 3D, not {ndim}D")
        if out_channels is not None and int(out_channels) != 2 * int(in_channels):
            raise ValueError("the shifted blind-spot network outputs a mean and a variance per input channel "
                             f"(out_channels {2 * int(in_channels)})")
        c, f = int(in_channels), int(features)
        self.ndim, self.channels = ndim, c
        self.z_context = int(z_context) if ndim == 3 else 0
        if trunk not in TRUNKS:
            raise ValueError(f"trunk must be one of {TRUNKS}, not {trunk!r}")
        self.trunk = trunk
        if trunk == "unet":
            self.plane: nn.Module = ShiftedUNet(2, c, f, features=f, depth=depth)
        else:
            self.plane = BlindBoxNet(2, c, f, features=f, blind=0, dilations=dilations)
        #: tile sizes that need no padding (the U-Net's pooling factor)
        self.multiple = getattr(self.plane, "multiple", 1)
        n_in = f
        if self.z_context > 0:
            self.context = nn.Sequential(nn.Conv2d(2 * self.z_context * c, f, 3, padding=1), _activation(leak),
                                         nn.Conv2d(f, f, 3, padding=1), _activation(leak))
            n_in += f
        self.head = nn.Sequential(_activation(leak), nn.Conv2d(n_in, f, 1), _activation(leak), nn.Conv2d(f, 2 * c, 1))
        # The linear blind estimate: the mean of the 8 neighbours in the plane (a 1 x 1 blind box), so the prior
        # mean is sensible from the first step and the layers learn a correction.
        self.shortcut = BoxMaskedConv2d(c, c, 0)
        with torch.no_grad():
            self.shortcut.weight.zero_()
            self.shortcut.bias.zero_()
            for i in range(c):
                self.shortcut.weight[i, i] = 1.0 / 8
            self.head[-1].weight.mul_(0.1)
            self.head[-1].bias.zero_()
        #: the noise variance per channel, normalised units: ``noise_var + noise_gain * signal``, at least
        #: ``noise_floor`` (photon noise; ``noise_gain`` 0: one variance). The method sets them from the data before
        #: training (``noise_initialised``) and they are stored with the weights
        self.register_buffer("noise_var", torch.full((c,), float(noise_var)))
        self.register_buffer("noise_gain", torch.zeros(c))
        self.register_buffer("noise_floor", torch.zeros(c))
        self.register_buffer("noise_initialised", torch.zeros((), dtype=torch.bool))
        #: added to the prior mean, per channel, normalised units: the offset left by training, measured after it
        #: (:meth:`n2x.methods.bsn.BlindSpotAllPixels.calibrate`)
        self.register_buffer("mean_offset", torch.zeros(c))
        #: and the offset that remains, as a curve in the network's prior mean: knots and values per channel,
        #: normalised units (:mod:`n2x.methods.prior_offset`); all zeros, no offset
        self.register_buffer("offset_knots", torch.zeros(c, OFFSET_KNOTS))
        self.register_buffer("offset_values", torch.zeros(c, OFFSET_KNOTS))
        #: added to the prior variance at inference, per channel, normalised units: what the noise variance measured
        #: before training had too much (:mod:`n2x.methods.noise_bound`); zero, nothing
        self.register_buffer("prior_var_offset", torch.zeros(c))

    def set_noise_var(self, var: torch.Tensor, gain: torch.Tensor | None = None,
                      floor: torch.Tensor | None = None) -> None:
        """Set the noise variance per channel (normalised units): ``var`` at signal 0, growing by ``gain`` per unit
        of signal and never below ``floor`` (default: one variance, ``var``); mark it initialised."""
        with torch.no_grad():
            self.noise_var.copy_(var.clamp_min(1e-8))
            self.noise_gain.copy_(gain.clamp_min(0.0) if gain is not None else torch.zeros_like(self.noise_gain))
            self.noise_floor.copy_(floor.clamp_min(1e-8) if floor is not None else self.noise_var)
            self.noise_initialised.fill_(True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: D102
        # Model files written before photon noise have one variance: no gain, floored at that variance.
        if prefix + "noise_var" in state_dict and prefix + "noise_gain" not in state_dict:
            state_dict[prefix + "noise_gain"] = torch.zeros_like(state_dict[prefix + "noise_var"])
            state_dict[prefix + "noise_floor"] = state_dict[prefix + "noise_var"].clone()
        if prefix + "noise_var" in state_dict and prefix + "mean_offset" not in state_dict:  # before the offset
            state_dict[prefix + "mean_offset"] = torch.zeros_like(state_dict[prefix + "noise_var"])
        if prefix + "noise_var" in state_dict and prefix + "offset_knots" not in state_dict:  # before the curve
            for name in ("offset_knots", "offset_values"):
                state_dict[prefix + name] = torch.zeros(len(state_dict[prefix + "noise_var"]), OFFSET_KNOTS)
        if prefix + "noise_var" in state_dict and prefix + "prior_var_offset" not in state_dict:  # before the bound
            state_dict[prefix + "prior_var_offset"] = torch.zeros_like(state_dict[prefix + "noise_var"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def to(self, *args, **kwargs):  # noqa: D102
        # The engine asks 3D networks for the channels-last-3d layout; every convolution here is 2D.
        if kwargs.get("memory_format") is torch.channels_last_3d:
            kwargs["memory_format"] = torch.channels_last
        return super().to(*args, **kwargs)

    def receptive_radius(self) -> int:
        """Pixels on each side of an output pixel (along any axis) that can influence it."""
        return max(self.plane.receptive_radius(), self.z_context, 2 if self.z_context else 0)

    def _neighbour_planes(self, x: torch.Tensor) -> torch.Tensor:
        """``(B * Z, 2kC, Y, X)``: for each plane z, the planes ``z - k .. z - 1, z + 1 .. z + k`` of ``x``
        ``(B, C, Z, Y, X)`` (zeros beyond the ends)."""
        k, z = self.z_context, x.shape[2]
        padded = F.pad(x, (0, 0, 0, 0, k, k))
        offsets = [o for o in range(-k, k + 1) if o != 0]
        stack = torch.cat([padded[:, :, k + o:k + o + z] for o in offsets], 1)  # (B, 2kC, Z, Y, X)
        return _planes(stack)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.ndim + 2:
            raise ValueError(f"expected a (B, C, {'Z, ' if self.ndim == 3 else ''}Y, X) tensor, got {tuple(x.shape)}")
        planes = _planes(x) if self.ndim == 3 else x
        feats = self.plane(planes)
        if self.z_context > 0:
            feats = torch.cat([feats, self.context(self._neighbour_planes(x))], 1)
        out = self.head(feats)
        c = self.channels
        out = torch.cat([out[:, :c] + self.shortcut(planes), out[:, c:]], 1)
        if self.ndim == 3:
            out = out.unflatten(0, (x.shape[0], x.shape[2])).transpose(1, 2)
        return out


def _activation(leak: float) -> nn.Module:
    """ReLU, or a leaky ReLU with slope ``leak`` for negative inputs: a unit pushed negative everywhere by one large
    step then still has a gradient (with ReLU such units stay dead)."""
    return nn.LeakyReLU(float(leak)) if leak else nn.ReLU()


def _planes(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, Z, Y, X)`` -> ``(B * Z, C, Y, X)``: every Z plane a 2D sample."""
    return x.transpose(1, 2).flatten(0, 1)
