"""AP-BSN: blind-spot denoising of spatially correlated noise (after Lee et al., CVPR 2022).

For spatially correlated noise (camera, sCMOS pattern noise, demosaicked or compressed data), where Noise2Void's
pixel-independence assumption fails. A blind-spot network trained to predict each pixel from its surroundings learns
the signal only if it cannot see any noise correlated with the pixel's own. Two designs achieve this:

- **blind box** (the default when the noise probe can measure the noise): a full-resolution network that is blind
  to the ``(2 * blind + 1)``-wide box around each pixel, ``blind`` being the noise's correlation length measured by
  the probe (:class:`~n2x.nets.blindbox.BlindBoxNet`). It sees every pixel outside the box, so no detail is lost
  to downsampling; training and inference see the same thing. Inference averages the predictions of ``ensemble``
  flips and rotations of the tile (default 8: about the cost of R3's 8 passes, which this design does not need),
  then adds the **box filter** of the residual ``noisy - prediction`` over the box (:func:`fit_box_filter`, fitted
  after training from the noise autocovariance the probe measured): it puts back the detail of the pixels the
  network could not see. The box must cover the correlation: one pixel too small lets the network learn part of
  the noise.
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
from typing import Any, ClassVar

import numpy as np
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


#: the largest blind box radius the probe may set (its correlation profile is measured up to this lag)
MAX_BLIND = 6
DESIGNS = ("box", "pd")
#: dihedral transforms of a tile for the self-ensemble, in the order used: (transpose?, flip Y?, flip X?)
ENSEMBLE = ((False, False, False), (False, False, True), (True, False, False), (False, True, False),
            (True, True, False), (False, True, True), (True, False, True), (True, True, True))


def measure_noise(image: Any, axes: str) -> Any:
    """The noise probe's report on ``image``, or None when the probe cannot measure it (too small or too flat; a
    warning says so)."""
    from ..data.probe import probe_noise
    from ..errors import InputError

    try:
        return probe_noise(image, axes)
    except InputError as exc:
        warnings.warn(f"AP-BSN: the noise probe could not measure this image ({exc}); without a measured "
                      f"correlation, the pixel-shuffle design with the paper's stride {FALLBACK_STRIDE} is used (or "
                      f"the blind box as given, without its filter)", stacklevel=3)
        return None


def fit_box_filter(residual: torch.Tensor, covariance: np.ndarray) -> np.ndarray:
    """The ``(2b + 1)``-square filter ``w`` that minimises an unbiased estimate of the error of
    ``prediction + w * (noisy - prediction)`` (``*``: correlation), by linear least squares.

    ``residual``: ``noisy - prediction`` on training data ``(N, 1, Y, X)``, the prediction being blind to the
    ``(2b + 1)``-box. ``covariance``: the noise's autocovariance at the box's lags, same units, ``(2b + 1)``-square.
    With ``s`` the clean value and ``n`` the noise, ``E (s - out)^2 = E (noisy - out)^2 - E n^2 + 2 w . E[n_c n_box]``
    (the prediction does not see the box's noise), so minimising ``mean (r_c - w . r_box)^2 + 2 w . cov`` over
    ``w`` minimises the error against the clean image without knowing it.
    """
    k = covariance.shape[0]
    cols = torch.nn.functional.unfold(residual.double(), k)  # (N, k * k, L): each pixel's box
    cols = cols.permute(1, 0, 2).reshape(k * k, -1)
    centre = cols[(k * k) // 2]
    gram = (cols @ cols.T) / cols.shape[1]
    rhs = (cols @ centre) / cols.shape[1] - torch.from_numpy(covariance.ravel()).double()
    # A whisker of ridge keeps the solve well posed on flat (constant) training data.
    gram += torch.eye(k * k, dtype=gram.dtype) * 1e-6 * float(gram.diagonal().mean() + 1e-12)
    w = torch.linalg.solve(gram, rhs)
    return w.reshape(k, k).numpy()


def _dihedral(x: torch.Tensor, transform: tuple[bool, bool, bool], inverse: bool = False) -> torch.Tensor:
    transpose, flip_y, flip_x = transform
    dims = [d for d, on in ((2, flip_y), (3, flip_x)) if on]
    if not inverse:
        x = x.transpose(2, 3) if transpose else x
        return x.flip(dims) if dims else x
    x = x.flip(dims) if dims else x
    return x.transpose(2, 3) if transpose else x


def _auto_or_int(value: Any) -> int | str:
    return "auto" if value is None or str(value).lower() == "auto" else int(value)


class APBSN(Method):
    """AP-BSN: a blind-box network at full resolution, or the paper's pixel-shuffle design.

    Parameters: ``blind`` (blind-box design: radius in pixels of the hidden box, at least the noise's correlation
    length; default ``"auto"``, from the noise probe of the training data), ``stride_train`` (giving it chooses the
    pixel-shuffle design: PD stride in training, more than the noise's correlation length; ``"auto"``: one more than
    the probe's length), ``design`` (``"box"`` or ``"pd"``; default: ``"pd"`` when ``stride_train`` is given or the
    probe cannot measure the noise, else ``"box"``), ``ensemble`` (box design: flips and rotations averaged at
    inference, 1, 2, 4 or 8, default 8), ``stride_infer`` (PD stride at inference, default 2), ``r3_passes`` (R3
    refinement passes of the PD design, default 8, 0 turns it off), ``r3_fraction`` (share of pixels taken from the
    noisy input in each R3 pass, default 0.16), ``loss`` (``"l2"``, default, the mean for zero-mean noise; ``"l1"``
    as in the paper, the median), ``residual_filter`` (box design: fit the filter of the box's residuals after
    training, default True), ``sub_batch`` (PD design: sub-images trained on per step, drawn at random from the PD
    sub-images of the batch: bounds the cost of a step on a CPU; 0 uses them all), ``seed`` (of R3's pixel choice).
    """

    name = "apbsn"
    #: training patches and patches per step, by design (2D)
    patch_by_design: ClassVar[dict[str, tuple[tuple[int, int], int]]] = {"box": ((64, 64), 16), "pd": ((120, 120), 16)}

    def __init__(self, stride_train: int | str = "auto", stride_infer: int = 2, r3_passes: int = 8, r3_fraction: float = 0.16,
                 loss: str = "l2", sub_batch: int = 16, seed: int = 0, blind: int | str = "auto",
                 design: str | None = None, ensemble: int = 8, residual_filter: bool = True, **extra: Any):
        stride_train, blind = _auto_or_int(stride_train), _auto_or_int(blind)
        stride_infer, r3_passes, ensemble = int(stride_infer), int(r3_passes), int(ensemble)
        if design is None or str(design).lower() == "auto":
            design = "pd" if stride_train != "auto" else "box" if blind != "auto" else None
        else:
            design = str(design).lower()
            if design not in DESIGNS:
                raise ValueError(f"design must be 'box' (blind box) or 'pd' (pixel-shuffle), not {design!r}")
        if stride_train != "auto" and blind != "auto":
            raise ValueError("give stride_train (pixel-shuffle design) or blind (blind-box design), not both")
        if design == "box" and stride_train != "auto":
            raise ValueError("stride_train belongs to the pixel-shuffle design (design='pd'), not the blind box")
        if design == "pd" and blind != "auto":
            raise ValueError("blind belongs to the blind-box design (design='box'), not the pixel-shuffle one")
        if blind != "auto" and not 0 <= blind <= 16:
            raise ValueError(f"blind must be between 0 and 16 pixels, not {blind}")
        if ensemble not in (1, 2, 4, 8):
            raise ValueError(f"ensemble must be 1, 2, 4 or 8 transforms, not {ensemble}")
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
        super().__init__(design=design, blind=blind, ensemble=ensemble, residual_filter=bool(residual_filter),
                         stride_train=stride_train,
                         stride_infer=stride_infer, r3_passes=r3_passes, r3_fraction=float(r3_fraction), loss=loss,
                         sub_batch=int(sub_batch), seed=int(seed), **extra)

    @property
    def design(self) -> str:
        # Model files written before the blind box existed hold only the pixel-shuffle design.
        return self.params.get("design") or "pd"

    def prepare(self, images: list, layouts: list) -> None:
        """Settle ``design``, ``blind`` and ``stride_train`` left to ``"auto"`` from the noise probe of the first
        training image, and keep its noise autocovariance for the blind box's filter."""
        p = self.params
        self._autocovariance = None
        if p["design"] == "pd" and p["stride_train"] != "auto":
            return
        report = measure_noise(images[0], layouts[0].axes)
        length = None if report is None else report.correlation_length
        p["noise_probe"] = {"correlation_length": length}
        if p["design"] is None:
            p["design"] = "pd" if length is None or length > MAX_BLIND else "box"
        if p["design"] == "box":
            if p["blind"] == "auto":
                p["blind"] = length if length is not None else FALLBACK_STRIDE - 1
            if report is not None and report.autocovariance is not None:
                self._autocovariance = np.asarray(report.autocovariance, np.float64)  # (C, 2L + 1, 2L + 1)
            elif report is not None and p["residual_filter"]:
                warnings.warn("AP-BSN: the noise probe could not tell the noise from the image's texture (no flat "
                              "areas), so the box filter, which needs the noise's exact level, is off",
                              stacklevel=3)
        elif p["stride_train"] == "auto":
            p["stride_train"] = FALLBACK_STRIDE if length is None else min(16, max(2, length + 1))

    def calibrate(self, net: nn.Module, val_patches: tuple[np.ndarray, ...] | None, scale: list[float],
                  device: torch.device, fold_channels: bool) -> None:
        """Blind-box design: fit the filter of the box's residuals (:func:`fit_box_filter`) on the held-out
        patches ``(N, C, Y, X)`` (normalised; ``scale``: the normalisation's scale per channel; ``fold_channels``:
        the network takes one channel at a time)."""
        p = self.params
        p.pop("box_filter", None)
        cov = getattr(self, "_autocovariance", None)
        if self.design != "box" or not p["residual_filter"] or cov is None or val_patches is None:
            return
        b, lag = p["blind"], cov.shape[-1] // 2
        if b > lag:
            return
        scale2 = np.asarray(scale, np.float64)[:, None, None] ** 2
        cov = (cov / scale2).mean(axis=0)[lag - b:lag + b + 1, lag - b:lag + b + 1]  # normalised units
        x = torch.from_numpy(np.ascontiguousarray(val_patches[0], np.float32))
        if fold_channels:
            x = x.reshape(-1, 1, *x.shape[2:])
        net.eval()
        with torch.no_grad():
            res = torch.cat([xi - self._ensemble(net, xi) for xi in x.to(device).split(16)]).cpu()
        res = res.reshape(-1, 1, *res.shape[2:])
        # The residual holds the noise plus what the prediction missed, so its variance bounds the noise variance:
        # where the probe read signal texture as noise (a larger estimate than that), scale its estimate down to the
        # bound, which makes the filter about zero instead of subtracting detail.
        bound = float((res.double() ** 2).mean())
        if cov[b, b] > bound:
            cov = cov * (bound / cov[b, b])
        p["box_filter"] = fit_box_filter(res, cov).round(6).tolist()

    # -- network ---------------------------------------------------------------------------------------------
    def spatial_dims(self, requested: int | None, **options: Any) -> int:
        if requested == 3:
            raise N2xError("AP-BSN uses a 2D network; Z planes are denoised one by one. Leave dims unset or use "
                           "dims=2 (--dims 2)")
        return 2

    def network_config(self, ndim: int, channels: int, overrides: dict | None = None, **options: Any) -> dict:
        if ndim != 2:
            raise N2xError("AP-BSN uses a 2D network; train with dims=2 (--dims 2) to process Z planes one by one")
        if self.design == "box":
            # 16 features: on coins/CORR at 180 s of CPU the 32-feature net made 477 steps and memorised the image
            # after 190 (23.6 dB); 16 features made 1349 steps and reached 24.1 dB.
            cfg = {"name": "blindbox", "ndim": 2, "in_channels": channels, "out_channels": channels,
                   "features": 16, "blind": self.params["blind"], "dilations": [1, 2, 4, 8, 1, 2]}
        else:
            cfg = {"name": "blindspot", "ndim": 2, "in_channels": channels, "out_channels": channels,
                   "features": 32, "blocks": 3, "dilations": [2, 3]}
        cfg.update(overrides or {})
        return cfg

    def training_defaults(self, ndim: int, **options: Any) -> tuple[tuple[int, ...] | None, int | None]:
        return self.patch_by_design[self.design]

    def multiple(self, net: nn.Module) -> int:
        if self.design == "box":
            return 1
        # Tile origins on multiples of the inference stride keep every tile on the image's global PD grid.
        return self.params["stride_infer"]

    def halo(self, net: nn.Module) -> int:
        r = net.receptive_radius()
        if self.design == "box":  # the filter of the residuals reaches `blind` pixels further
            return r + (self.params["blind"] if self.params.get("box_filter") else 0)
        s = self.params["stride_infer"]
        # A sub-image pixel r away is s * r image pixels away, plus up to s - 1 for the phase within the PD cell;
        # each R3 pass runs the network once more at full resolution on the output of the PD pass.
        need = r * s + s - 1 + (r if self.params["r3_passes"] > 0 else 0)
        m = self.multiple(net)
        return -(-need // m) * m

    # -- training --------------------------------------------------------------------------------------------
    def loss(self, net: nn.Module, patches: tuple[torch.Tensor, ...], generator: torch.Generator) -> torch.Tensor:
        x = patches[0]
        if x.ndim != 4:
            raise N2xError("AP-BSN trains on 2D patches (B, C, Y, X)")
        if self.design == "box":
            return self._error(net(x), x)
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
        return self._error(net(sub), sub)

    def _error(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = out.float() - target.float()
        return diff.abs().mean() if self.params["loss"] == "l1" else (diff ** 2).mean()

    # -- inference -------------------------------------------------------------------------------------------
    def _ensemble(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Mean of the network's predictions over ``ensemble`` flips/rotations of ``x`` (float32)."""
        n = self.params.get("ensemble", 1)
        acc = None
        for t in ENSEMBLE[:n]:
            y = _dihedral(net(_dihedral(x, t)).float(), t, inverse=True)
            acc = y if acc is None else acc + y
        return acc / n

    def predict(self, net: nn.Module, x: torch.Tensor, position: tuple = ()) -> torch.Tensor:
        if self.design == "box":
            den = self._ensemble(net, x)
            kernel = self.params.get("box_filter")
            if kernel:
                k = torch.tensor(kernel, dtype=den.dtype, device=den.device)
                c = x.shape[1]
                w = k.expand(c, 1, *k.shape).contiguous()
                den = den + torch.nn.functional.conv2d(x.float() - den, w, padding=k.shape[-1] // 2, groups=c)
            return den.to(x.dtype)
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

