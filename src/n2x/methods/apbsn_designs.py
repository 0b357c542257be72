"""AP-BSN's two designs as strategies (see :mod:`n2x.methods.apbsn`): the blind box and pixel-shuffle.

A design decides the network, the training loss, the tile geometry (halo and multiple) and the inference of
:class:`~n2x.methods.apbsn.APBSN`; the method object keeps the declaration, the noise probe and the delegation. A
design reads and settles the method's ``params`` (the same dict, stored in the model file), so what it settles in
training (the blind radius, the training stride, the box filter) is what inference reads back.
"""
from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .._numbers import round_up
from ..errors import N2xError, N2xWarning
from ..nets.dihedral import dihedral_mean
from ..nets.pixel_shuffle import pixel_shuffle_down, pixel_shuffle_up
from ..options import AUTO
from .box_filter import (apply_box_filter, box_covariance, certain_autocovariance, fit_adaptive_box_filter,
                         fit_box_filter)

#: the paper's training stride (pixels), used when the probe cannot measure the noise
FALLBACK_STRIDE = 5
#: the smallest predicted residual variance (normalised units): keeps the likelihood finite
MIN_RESIDUAL_VAR = 1e-6
#: the box filter takes the noise's autocovariance from the surest residuals where their variance is at most this
#: many times the probe's (the probe's level is good to about 15%; a residual reads high, never low, by the error
#: of the prediction), else the probe's
SUREST_AGREEMENT = 1.25


def distance(out: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean absolute (``"l1"``) or squared (``"l2"``) difference, in float32."""
    diff = out.float() - target.float()
    return diff.abs().mean() if loss == "l1" else (diff ** 2).mean()


def r3_mask(origins: torch.Tensor, shape: tuple[int, int], pass_index: int, fraction: float, seed: int = 0) -> torch.Tensor:
    """Which pixels R3 pass ``pass_index`` takes from the noisy input: ``(B, 1, Y, X)`` bool.

    ``origins``: ``(B, 2)`` global (Y, X) pixel coordinates of each tile's first pixel; ``shape``: the tile's
    (Y, X) in pixels. A deterministic integer hash of the global pixel coordinates, the pass and ``seed``, so every
    tile draws the same pixels for the same place in the image; about ``fraction`` of the pixels are drawn.
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


class Design:
    """One AP-BSN design. ``params``: the method's parameters (shared, not copied)."""

    name: ClassVar[str] = ""
    #: training patch (Y, X) in pixels and patches per step
    patch: ClassVar[tuple[tuple[int, int], int]] = ((64, 64), 16)

    def __init__(self, params: dict[str, Any]):
        self.params = params

    def settle(self, report: Any, length: int | None) -> None:
        """Settle what was left to ``"auto"`` from the noise probe's ``report`` (None: not measured) and its
        correlation ``length`` in pixels."""

    def calibrate(self, net: nn.Module, val_patches: tuple[np.ndarray, ...] | None, scale: list[float],
                  device: torch.device, fold_channels: bool) -> None:
        """After training: fit what inference needs to the trained ``net`` (see :meth:`APBSN.calibrate`)."""

    def network_config(self, channels: int) -> dict:
        raise NotImplementedError

    def multiple(self, net: nn.Module) -> int:
        return 1

    def halo(self, net: nn.Module) -> int:
        raise NotImplementedError

    def loss(self, net: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, net: nn.Module, x: torch.Tensor, position: tuple = ()) -> torch.Tensor:
        raise NotImplementedError


class BlindBoxDesign(Design):
    """A full-resolution network blind to the ``(2 * blind + 1)``-square box around each pixel, a self-ensemble of
    ``ensemble`` flips/rotations at inference, then the box filter of the residual (:mod:`.box_filter`)."""

    name = "box"
    patch = ((64, 64), 16)

    def __init__(self, params: dict[str, Any]):
        super().__init__(params)
        self.autocovariance: np.ndarray | None = None  # (C, 2L + 1, 2L + 1), input units: kept for calibrate

    def settle(self, report: Any, length: int | None) -> None:
        p = self.params
        if p["blind"] == AUTO:
            p["blind"] = length if length is not None else FALLBACK_STRIDE - 1
        if report is not None and report.autocovariance is not None:
            self.autocovariance = np.asarray(report.autocovariance, np.float64)
        elif report is not None and p["residual_filter"]:
            warnings.warn("AP-BSN: the noise probe could not tell the noise from the image's texture (no flat "
                          "areas), so the box filter, which needs the noise's exact level, is off", N2xWarning,
                          stacklevel=4)

    def calibrate(self, net: nn.Module, val_patches: tuple[np.ndarray, ...] | None, scale: list[float],
                  device: torch.device, fold_channels: bool) -> None:
        p = self.params
        if not p["residual_filter"] or self.autocovariance is None or val_patches is None:
            return
        cov = box_covariance(self.autocovariance, scale, p["blind"])  # normalised units
        if cov is None:  # the box reaches beyond the lags the probe measured
            return
        b = p["blind"]
        x = torch.from_numpy(np.ascontiguousarray(val_patches[0], np.float32))
        if fold_channels:
            x = x.reshape(-1, 1, *x.shape[2:])
        net.eval()
        with torch.no_grad():
            out = torch.cat([self.ensemble(net, xi) for xi in x.to(device).split(16)]).cpu()
        c = x.shape[1]
        res = (x - out[:, :c]).reshape(-1, 1, *x.shape[2:])
        # The residual holds the noise plus what the prediction missed, so its variance bounds the noise variance:
        # where the probe read signal texture as noise (a larger estimate than that), scale its estimate down to the
        # bound, which makes the filter about zero instead of subtracting detail.
        bound = float((res.double() ** 2).mean())
        if cov[b, b] > bound:
            cov = cov * (bound / cov[b, b])
        if out.shape[1] == c:  # a network without a variance (model files from before it): one filter
            p["box_filter"] = fit_box_filter(res, cov).round(6).tolist()
            return
        # The probe's small blocks misread the autocovariance at lags 1-2 on some images (cell/CORR: 13-23% low,
        # moon 9-17% low, coins 3-10% high), and a low one makes the fit put noise back (cell: -2.6 dB against the
        # prediction alone). The residual where the network is surest reads it better; with it the filter gained on
        # the same 180 s networks: camera/CORR 27.19 -> 27.38 dB, coins 25.54 -> 26.17, moon 31.86 -> 32.84, cell
        # 33.08 -> 35.55. The probe still decides whether there is a filter (it tells noise from texture).
        # An undertrained network's residual still holds its error where it is surest, and reads the noise high
        # (the test's camera crop: 2.1 times the probe's variance after 3 steps, 1.45 after 80; 180 s networks on
        # camera, coins, moon and cell: 0.86-1.08): the probe's autocovariance stays then.
        var = out[:, c:].reshape(res.shape)
        surest = certain_autocovariance(res, var, b)
        p["noise_covariance_from"] = "residuals" if surest[b, b] <= SUREST_AGREEMENT * cov[b, b] else "probe"
        cov = surest if p["noise_covariance_from"] == "residuals" else cov
        kernels, knots = fit_adaptive_box_filter(res, cov[b, b] / var, cov)
        p["box_filter"], p["box_knots"], p["box_noise_var"] = kernels.round(6).tolist(), knots, round(cov[b, b], 8)

    def network_config(self, channels: int) -> dict:
        # 16 features: on coins/CORR at 180 s of CPU the 32-feature net made 477 steps and memorised the image
        # after 190 (23.6 dB); 16 features made 1349 steps and reached 24.1 dB. The variance of the residual
        # weighs the box filter per pixel (:mod:`.box_filter`).
        return {"name": "blindbox", "ndim": 2, "in_channels": channels, "out_channels": channels,
                "features": 16, "blind": self.params["blind"], "dilations": [1, 2, 4, 8, 1, 2], "variance": True}

    def halo(self, net: nn.Module) -> int:
        # the filter of the residuals reaches `blind` pixels further
        return net.receptive_radius() + (self.params["blind"] if self.params.get("box_filter") else 0)

    def loss(self, net: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        out = net(x)
        c = x.shape[1]
        fit = distance(out[:, :c], x, self.params["loss"])
        if out.shape[1] == c or not net.training:
            return fit
        # The variance of the residual by Gaussian likelihood, around the mean without its gradient, so that the
        # mean is fitted by the distance alone, as without the variance. The loss's value stays the mean's fit, which
        # the loss plot compares with validation and validation picks the best weights by (with the likelihood in
        # it, a camera/CORR run kept step 569 of 1634: 26.96 dB, against 27.35 for its last weights); its gradient
        # also trains the variance's tail.
        var = F.softplus(out[:, c:].float()) + MIN_RESIDUAL_VAR
        nll = (0.5 * (torch.log(var) + (x.float() - out[:, :c].detach().float()) ** 2 / var)).mean()
        return fit + (nll - nll.detach())

    def ensemble(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Mean over ``ensemble`` flips/rotations of ``x`` of the network's means and, where it predicts them, its
        residual variances (channels after the means) (float32)."""
        return dihedral_mean(lambda t: means_and_variances(net, t), x, self.params.get("ensemble", 1))

    def predict(self, net: nn.Module, x: torch.Tensor, position: tuple = ()) -> torch.Tensor:
        p = self.params
        return box_prediction(net, x, p.get("ensemble", 1), p.get("box_filter"), p.get("box_knots"),
                              p.get("box_noise_var")).to(x.dtype)


def means_and_variances(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The blind-box network's output for ``x`` ``(B, C, Y, X)`` (float32): its means, then, where it predicts
    them, the variances of its residual (softplus of its second half)."""
    out = net(x).float()
    c = x.shape[1]
    if out.shape[1] == c:
        return out
    return torch.cat([out[:, :c], F.softplus(out[:, c:]) + MIN_RESIDUAL_VAR], 1)


def box_prediction(net: nn.Module, x: torch.Tensor, ensemble: int, kernel: Any = None, knots: Any = None,
                   noise_var: float | None = None) -> torch.Tensor:
    """The blind-box design's denoised tile ``x`` ``(B, C, Y, X)`` (float32, normalised units): the mean over
    ``ensemble`` flips/rotations, then the box filter ``kernel`` of the residual (None: none), one filter or
    filters at ``knots`` of the noise share ``noise_var / variance``. A function, so that the exported package
    (:mod:`n2x.export.modules`) computes the same."""
    out = dihedral_mean(lambda t: means_and_variances(net, t), x, ensemble)
    c = x.shape[1]
    den = out[:, :c]
    if kernel is None or len(kernel) == 0:
        return den
    if knots is not None and len(knots) > 1:
        return apply_box_filter(x, den, kernel, noise_var / out[:, c:], knots)
    return apply_box_filter(x, den, kernel)


class PixelShuffleDesign(Design):
    """The paper's design: a one-pixel blind-spot network on pixel-shuffle sub-images (stride ``stride_train`` in
    training, ``stride_infer`` at inference), then ``r3_passes`` R3 refinement passes at full resolution."""

    name = "pd"
    patch = ((120, 120), 16)

    def settle(self, report: Any, length: int | None) -> None:
        p = self.params
        if p["stride_train"] == AUTO:
            p["stride_train"] = FALLBACK_STRIDE if length is None else min(16, max(2, length + 1))

    def network_config(self, channels: int) -> dict:
        return {"name": "blindspot", "ndim": 2, "in_channels": channels, "out_channels": channels,
                "features": 32, "blocks": 3, "dilations": [2, 3]}

    def multiple(self, net: nn.Module) -> int:
        # Tile origins on multiples of the inference stride keep every tile on the image's global PD grid.
        return self.params["stride_infer"]

    def halo(self, net: nn.Module) -> int:
        r, s = net.receptive_radius(), self.params["stride_infer"]
        # A sub-image pixel r away is s * r image pixels away, plus up to s - 1 for the phase within the PD cell;
        # each R3 pass runs the network once more at full resolution on the output of the PD pass.
        need = r * s + s - 1 + (r if self.params["r3_passes"] > 0 else 0)
        m = self.multiple(net)
        return round_up(need, m)

    def loss(self, net: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        s = self.params["stride_train"]
        h, w = (x.shape[2] // s) * s, (x.shape[3] // s) * s
        if h < 4 * s or w < 4 * s:
            raise N2xError(f"AP-BSN needs training patches of at least {4 * s} x {4 * s} pixels for stride {s}; "
                           f"these are {tuple(x.shape[2:])}",
                           hint=f"set {{patch_size}} to {4 * s} or more, or lower {{stride_train}}")
        sub = pixel_shuffle_down(x[:, :, :h, :w], s)
        k = self.params["sub_batch"]
        if 0 < k < sub.shape[0]:  # a random subset of the sub-images bounds the cost of a step
            pick = torch.randperm(sub.shape[0], generator=generator)[:k].to(x.device)
            sub = sub[pick]
        return distance(net(sub), sub, self.params["loss"])

    def predict(self, net: nn.Module, x: torch.Tensor, position: tuple = ()) -> torch.Tensor:
        s = self.params["stride_infer"]
        b, c, h, w = x.shape
        if h % s or w % s:
            raise N2xError(f"AP-BSN tiles must be multiples of the inference stride {s}, not {h} x {w}")
        den = pixel_shuffle_up(net(pixel_shuffle_down(x, s)), s)
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


DESIGNS: dict[str, type[Design]] = {"box": BlindBoxDesign, "pd": PixelShuffleDesign}
