"""The all-pixel blind spot's prediction (:mod:`.bsn`): the network's prior, the noise model, the Gaussian
posterior mean and the Wiener filter after it. Functions, not methods, so that the exported package
(:mod:`n2x.export.modules`) computes what :meth:`n2x.methods.bsn.BlindSpotAllPixels.predict` does. Values are in
normalised units; tiles are ``(B, C, ...)``.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ..errors import N2xError
from ..nets.ensemble import members_of
from .pilot_wiener import STRIP_ROWS, pilot_wiener
from .prior_offset import offset_curve

#: the smallest prior variance (normalised units): keeps the likelihood finite where the prior is certain
MIN_PRIOR_VAR = 1e-6


def prior_and_noise(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prior mean, prior variance and noise variance of ``net`` (a :class:`~n2x.nets.shifted_bsn.ShiftedBSN`) for
    the tile ``x`` ``(B, C, ...)`` (float32, normalised units, shaped like ``x`` or broadcastable). A function, not
    a method, so that the exported package (:mod:`n2x.export.modules`) computes the same."""
    out = net(x).float()
    c = x.shape[1]
    if out.shape[1] != 2 * c:
        raise N2xError(f"the all-pixel blind-spot network gives {out.shape[1]} channels for {c} input channels; "
                       f"it must give {2 * c} (a mean and a variance each)")
    shape = (1, c) + (1,) * (x.ndim - 2)
    mu, prior_var = out[:, :c] + net.mean_offset.float().reshape(shape), F.softplus(out[:, c:]) + MIN_PRIOR_VAR
    if not net.training:  # measured after training (zero until then), and not worth its cost in every step
        mu = mu + offset_curve(out[:, :c], net.offset_knots, net.offset_values)
        prior_var = prior_var + net.prior_var_offset.float().reshape(shape)
    # Photon noise grows with the signal, which the prior mean stands for (Laine et al.'s Poisson-Gaussian variant).
    # A plug-in, without a gradient: through it the likelihood pulls the mean to where the noise is weaker (the
    # synthetic cells at 20 photons, 300 steps: 22.05 dB with the gradient, 23.15 without, 23.23 with the transform)
    return mu, prior_var, noise_variance(net, mu.detach())


def wiener_refined(net: nn.Module, x: torch.Tensor, estimate: torch.Tensor, block: int,
                   strip_rows: int | None = STRIP_ROWS) -> torch.Tensor:
    """The tile ``x`` filtered by the Wiener weights of ``estimate`` in ``block``-wide blocks (:mod:`.pilot_wiener`)
    with ``net``'s noise variance at the estimate (normalised units): squares in each plane of a 2D tile, cubes in a
    3D one; ``estimate`` itself where ``block`` is 0. A function, not a method, so that the exported package
    computes the same."""
    if not block:
        return estimate
    return pilot_wiener(x, estimate, noise_variance(members_of(net)[0], estimate), block, strip_rows,
                        dims=min(x.ndim - 2, 3))


def noise_variance(net: nn.Module, signal: torch.Tensor) -> torch.Tensor:
    """The noise variance of ``net``'s noise model at ``signal`` ``(B, C, ...)`` (normalised units): one variance
    per channel, or with photon noise the line ``var0 + gain * signal``, never below its floor."""
    shape = (1, signal.shape[1]) + (1,) * (signal.ndim - 2)
    return torch.maximum(net.noise_var.float().reshape(shape) + net.noise_gain.float().reshape(shape) * signal,
                         net.noise_floor.float().reshape(shape))


def posterior_mean(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(s_p^2 y + s_n^2 mu) / (s_p^2 + s_n^2)`` for the tile ``x`` (float32, normalised units); for an ensemble
    (:class:`~n2x.nets.ensemble.NetworkEnsemble`) the mean of its members' posterior means."""
    members = members_of(net)
    if len(members) > 1:
        return torch.stack([posterior_mean(m, x) for m in members]).mean(0)
    mu, prior_var, noise_var = prior_and_noise(net, x)
    return mu + prior_var / (prior_var + noise_var) * (x.float() - mu)
