"""AP-BSN: asymmetric pixel-shuffle downsampling and a blind-spot network (Lee et al., CVPR 2022).

For spatially correlated noise (camera, sCMOS pattern noise, demosaicked or compressed data), where Noise2Void's
pixel-independence assumption fails.

- Training: each patch is split by pixel-shuffle downsampling (PD) with ``stride_train`` into
  ``stride_train ** 2`` sub-images whose neighbouring pixels were ``stride_train`` pixels apart: noise correlated
  over a shorter distance becomes independent. Each sub-image runs through the blind-spot network on its own (the
  network zero-pads every sub-image: the "padding between sub-images" of the paper, with no leakage between them),
  and the loss compares the output with the sub-image itself at every pixel; the blind spot is in the architecture,
  so no pixel needs masking. ``stride_train="auto"`` (the default) runs the noise probe on the first training
  image and takes one more than the noise's correlation length (at least 2): the smallest stride that decorrelates
  the noise keeps the most detail per sub-image (3 for a 3 x 3 correlation; the paper's fixed 5 is for camera noise
  of unknown extent). When the probe cannot measure the noise (a tiny or flat image), the paper's 5 is used.
- Inference: PD with the smaller ``stride_infer`` (default 2) keeps more image detail; then R3 refinement:
  ``r3_passes`` passes in which a fraction ``r3_fraction`` of the pixels of the denoised image is replaced by the
  noisy input and the blind-spot network (without PD) runs on the mix; the passes are averaged. ``r3_passes=0``
  turns R3 off. R3's random choice of pixels is a hash of the global pixel coordinates and the pass, so tiled and
  untiled predictions agree.
- The network is 2D: Z planes and time frames are processed as separate samples; grayscale and multichannel.
  The strides and R3 settings are stored in the model file, so inference does what training assumed.
"""
from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import N2xError
from .base import Method

LOSSES = ("l1", "l2")


def pd_down(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Pixel-shuffle downsampling: ``(B, C, H, W)`` -> ``(B * s * s, C, H / s, W / s)``.

    Sub-image ``(i, j)`` of image ``b`` (index ``b * s * s + i * s + j``) holds pixels ``(s * y + i, s * x + j)``.
    ``H`` and ``W`` must be multiples of ``stride``.
    """
    b, c, h, w = x.shape
    s = stride
    x = x.reshape(b, c, h // s, s, w // s, s).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(b * s * s, c, h // s, w // s)


def pd_up(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Inverse of :func:`pd_down`."""
    n, c, h, w = x.shape
    s = stride
    b = n // (s * s)
    x = x.reshape(b, s, s, c, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(b, c, h * s, w * s)


def r3_mask(origins: torch.Tensor, shape: tuple[int, int], pass_index: int, fraction: float, seed: int = 0) -> torch.Tensor:
    """Which pixels R3 pass ``pass_index`` takes from the noisy input: ``(B, 1, H, W)`` bool.

    A deterministic integer hash of the global pixel coordinates ``origins[b] + (y, x)``, the pass and ``seed``,
    so every tile draws the same pixels for the same place in the image.
    """
    h, w = shape
    dev = origins.device
    # Offset keeps the hashed coordinates positive whatever origins a caller passes.
    y = origins[:, 0, None, None] + torch.arange(h, device=dev)[None, :, None] + (1 << 20)
    x = origins[:, 1, None, None] + torch.arange(w, device=dev)[None, None, :] + (1 << 20)
    m32 = 0xFFFFFFFF
    k = (y * 0x9E37 + x * 0x85EB + (pass_index + 1) * 0xC2B2AE35 + seed * 0x27D4EB2F) & m32
    # Three xor-shift-multiply rounds (a 32-bit integer finaliser); products stay below 2**63.
    for _ in range(3):
        k = ((k ^ (k >> 16)) * 0x45D9F3B) & m32
    k = k ^ (k >> 16)
    return (k.to(torch.float64) / 2.0 ** 32 < fraction)[:, None]


#: the paper's training stride, used when the probe cannot measure the noise
FALLBACK_STRIDE = 5


def auto_stride(image: Any, axes: str) -> tuple[int, dict]:
    """The training stride for ``image``: one more than the probe's noise correlation length, at least 2.

    Returns the stride and what it was based on (stored in the model file with the method's parameters).
    """
    from ..data.probe import probe_noise
    from ..errors import InputError

    try:
        report = probe_noise(image, axes)
    except InputError as exc:
        warnings.warn(f"AP-BSN: the noise probe could not measure this image ({exc}); training with the "
                      f"default stride {FALLBACK_STRIDE}", stacklevel=3)
        return FALLBACK_STRIDE, {"correlation_length": None}
    stride = min(16, max(2, report.correlation_length + 1))
    return stride, {"correlation_length": report.correlation_length, "lag1": report.lag1_highpass}


class APBSN(Method):
    """AP-BSN on a light two-branch blind-spot network.

    Parameters: ``stride_train`` (PD stride in training: more than the noise's correlation length; default
    ``"auto"``, from the noise probe of the training data),
    ``stride_infer`` (PD stride at inference, default 2), ``r3_passes`` (R3 refinement passes, default 8, 0 turns
    it off), ``r3_fraction`` (share of pixels taken from the noisy input in each R3 pass, default 0.16), ``loss``
    (``"l2"``, default, the mean for zero-mean noise; ``"l1"`` as in the paper, the median), ``sub_batch`` (sub-images trained on per step, drawn at
    random from the PD sub-images of the batch: bounds the cost of a step on a CPU; 0 uses them all), ``seed``
    (of R3's pixel choice).
    """

    name = "apbsn"
    default_patch: ClassVar[dict[int, tuple[int, ...]]] = {2: (120, 120)}
    default_batch: ClassVar[dict[int, int]] = {2: 16}

    def __init__(self, stride_train: int | str = "auto", stride_infer: int = 2, r3_passes: int = 8, r3_fraction: float = 0.16,
                 loss: str = "l2", sub_batch: int = 16, seed: int = 0, **extra: Any):
        if stride_train is None or str(stride_train).lower() == "auto":
            stride_train = "auto"
        else:
            stride_train = int(stride_train)
        stride_infer, r3_passes = int(stride_infer), int(r3_passes)
        if stride_train != "auto" and not 1 <= stride_train <= 16:
            raise ValueError(f"stride_train must be between 1 and 16, not {stride_train}")
        if not 1 <= stride_infer <= 16:
            raise ValueError(f"stride_infer must be between 1 and 16, not {stride_infer}")
        if r3_passes < 0:
            raise ValueError(f"r3_passes must be 0 (off) or more, not {r3_passes}")
        if not 0 < r3_fraction < 1:
            raise ValueError(f"r3_fraction must be between 0 and 1, not {r3_fraction}")
        loss = str(loss).lower()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, not {loss!r}")
        super().__init__(stride_train=stride_train, stride_infer=stride_infer, r3_passes=r3_passes,
                         r3_fraction=float(r3_fraction), loss=loss, sub_batch=int(sub_batch), seed=int(seed), **extra)

    # -- network ---------------------------------------------------------------------------------------------
    def spatial_dims(self, requested: int | None, **options: Any) -> int:
        if requested == 3:
            raise N2xError("AP-BSN uses a 2D network; Z planes are denoised one by one. Leave dims unset or use "
                           "dims=2 (--dims 2)")
        return 2

    def network_config(self, ndim: int, channels: int, overrides: dict | None = None, **options: Any) -> dict:
        if ndim != 2:
            raise N2xError("AP-BSN uses a 2D network; train with dims=2 (--dims 2) to process Z planes one by one")
        cfg = {"name": "blindspot", "ndim": 2, "in_channels": channels, "out_channels": channels,
               "features": 32, "blocks": 3, "dilations": [2, 3]}
        cfg.update(overrides or {})
        return cfg

    def multiple(self, net: nn.Module) -> int:
        # Tile origins on multiples of the inference stride keep every tile on the image's global PD grid.
        return self.params["stride_infer"]

    def halo(self, net: nn.Module) -> int:
        r = net.receptive_radius()
        s = self.params["stride_infer"]
        # A sub-image pixel r away is s * r image pixels away, plus up to s - 1 for the phase within the PD cell;
        # each R3 pass runs the network once more at full resolution on the output of the PD pass.
        need = r * s + s - 1 + (r if self.params["r3_passes"] > 0 else 0)
        m = self.multiple(net)
        return -(-need // m) * m

    # -- training --------------------------------------------------------------------------------------------
    def make_sources(self, images: list, layouts: list, **options: Any) -> list:
        sources = super().make_sources(images, layouts, **options)
        if self.params["stride_train"] == "auto":
            self.params["stride_train"], self.params["stride_probe"] = auto_stride(images[0], layouts[0].axes)
        return sources

    def loss(self, net: nn.Module, patches: tuple[torch.Tensor, ...], generator: torch.Generator) -> torch.Tensor:
        x = patches[0]
        if x.ndim != 4:
            raise N2xError("AP-BSN trains on 2D patches (B, C, Y, X)")
        s = self.params["stride_train"]
        h, w = (x.shape[2] // s) * s, (x.shape[3] // s) * s
        if h < 4 * s or w < 4 * s:
            raise N2xError(f"AP-BSN needs training patches of at least {4 * s} x {4 * s} pixels for stride {s}; "
                           f"these are {tuple(x.shape[2:])}")
        sub = pd_down(x[:, :, :h, :w], s)
        k = self.params["sub_batch"]
        if 0 < k < sub.shape[0]:
            pick = torch.randperm(sub.shape[0], generator=generator)[:k].to(x.device)
            sub = sub[pick]
        out = net(sub)
        diff = out.float() - sub.float()
        return diff.abs().mean() if self.params["loss"] == "l1" else (diff ** 2).mean()

    # -- inference -------------------------------------------------------------------------------------------
    def predict(self, net: nn.Module, x: torch.Tensor, position: tuple = ()) -> torch.Tensor:
        s = self.params["stride_infer"]
        b, c, h, w = x.shape
        if h % s or w % s:
            raise N2xError(f"AP-BSN tiles must be multiples of the inference stride {s}, not {h} x {w}")
        den = pd_up(net(pd_down(x, s)), s)
        passes = self.params["r3_passes"]
        if passes <= 0:
            return den
        if len(position) == b:
            origins = torch.tensor([tuple(p)[-2:] for p in position], dtype=torch.int64, device=x.device)
        else:  # no positions (a lone tile): the tile's own coordinates
            origins = torch.zeros((b, 2), dtype=torch.int64, device=x.device)
        acc = torch.zeros_like(den, dtype=torch.float32)
        for t in range(passes):
            mask = r3_mask(origins, (h, w), t, self.params["r3_fraction"], self.params["seed"])
            acc += net(torch.where(mask, x, den)).float()
        return (acc / passes).to(den.dtype)

