"""The noise variance of the all-pixel blind-spot method (:mod:`.bsn`), bounded after training by the prior mean's
residuals at held-out pixels.

The method measures one noise variance per channel before training (:func:`.robust_noise.robust_noise_var`), and
texture reads as noise there: 5.9% high on camera/G25 (G10: 20-30%). The network trains with it: the likelihood fits
``s_p^2 + s_n^2`` to the squared residual, so what the measure has too much, the prior variance lacks (camera: mean
``s_p^2`` 0.0102 against the prior mean's squared error of 0.0156, normalised), and the posterior weighs the noisy
pixel too little.

After training a second measure bounds it from above. At a held-out pixel the prior mean is blind to the pixel and
was never fitted to it, so ``E[(y - mu)^2] = E[(x - mu)^2] + s_n^2 >= s_n^2`` over any set of held-out pixels chosen
without looking at their noise; the surer half by the predicted prior variance (:data:`SURE_SHARE`) is where the
prior mean's error is least. Where that bound is below the first measure by more than :data:`MIN_STANDARD_ERRORS`
of its standard errors, the noise variance becomes the bound and the prior variance gets the difference back at
inference (the network's ``prior_var_offset``): ``s_p^2 + s_n^2``, what the network fitted, stays as it was.
Where the bound is not lower (moon/G25, a smooth image the first measure reads within 1%), nothing changes.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

#: the share of the held-out pixels, those of the smallest predicted prior variance, whose squared residual bounds
#: the noise variance. A smaller share reads closer to the noise where the prior is sure, from fewer pixels (camera/G25,
#: 180 s: 1.018 times the true variance from the surest tenth, 1.030 from half; moon/G25: 1.118 and 1.036, as its
#: flattest regions are where its prior variance is least right)
SURE_SHARE = 0.5
#: the bound replaces the first measure only where it is lower by more than this many of its standard errors: the
#: smaller of two noisy estimates is biased low, and a noise variance read too low over-weighs the noisy pixel
MIN_STANDARD_ERRORS = 2.0

#: ``(net, x) -> (prior mean, prior variance)`` for a batch ``x`` ``(B, C, ...)``, normalised units
PriorFn = Callable[[nn.Module, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


def held_out_residuals(prior: PriorFn, net: nn.Module, x: torch.Tensor, held: torch.Tensor, device: torch.device,
                       batch: int = 16) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per channel of ``x`` ``(N, C, ...)`` (as the network takes it): the squared residual ``(y - mu)^2`` and the
    prior variance at the pixels where ``held`` (shaped like ``x``) is true, flat float64."""
    keep = held.reshape(len(held), -1).any(1)  # patches with held-out pixels (calibration adds training ones)
    x, held = x[keep], held[keep]
    mus, pvars = [], []
    was_training = net.training
    net.eval()  # the prior as inference makes it (the offset of the prior mean included)
    with torch.no_grad():
        for xi in x.split(batch):
            mu, pvar = prior(net, xi.to(device))
            mus.append(mu.float().cpu())
            pvars.append(pvar.float().cpu().expand_as(mu))
    net.train(was_training)
    mu, pvar = torch.cat(mus), torch.cat(pvars)
    d2, pv = [], []
    for c in range(x.shape[1]):
        m = held[:, c]
        d2.append(((x[:, c] - mu[:, c])[m].double() ** 2).numpy())
        pv.append(pvar[:, c][m].double().numpy())
    return d2, pv


def residual_bound(squared_residual: np.ndarray, prior_var: np.ndarray,
                   share: float = SURE_SHARE) -> tuple[float, float]:
    """``(bound, standard error)``: the mean squared residual over the ``share`` of pixels with the smallest prior
    variance (normalised units), and the standard error of that mean; ``(inf, inf)`` without pixels."""
    if squared_residual.size == 0:
        return float("inf"), float("inf")
    n = max(1, int(round(share * squared_residual.size)))
    sure = squared_residual[np.argsort(prior_var, kind="stable")[:n]]
    se = float(sure.std() / np.sqrt(n)) if n > 1 else float("inf")
    return float(sure.mean()), se


def tightened_noise_var(measured: float, bound: float, se: float,
                        min_standard_errors: float = MIN_STANDARD_ERRORS) -> float:
    """The noise variance to denoise with: ``bound`` where it is below ``measured`` by more than
    ``min_standard_errors`` standard errors, else ``measured``."""
    return bound if measured - bound > min_standard_errors * se else measured


def tighten_noise_var(prior: PriorFn, members: list[nn.Module], x: torch.Tensor, held: torch.Tensor,
                      device: torch.device) -> None:
    """Bound the noise variance of ``members`` (networks with one noise variance per channel that measured the same
    noise) by their residuals at the held-out pixels of ``x`` (``held`` true there); where it tightens, lower
    ``noise_var`` (and its floor) and set ``prior_var_offset`` to the difference. The offset is cleared first, so
    a second call measures afresh."""
    for member in members:
        member.prior_var_offset.zero_()
    measured = members[0].noise_var.detach().double().cpu().numpy()
    best = measured.copy()
    for member in members:
        for c, (d2, pv) in enumerate(zip(*held_out_residuals(prior, member, x, held, device))):
            best[c] = min(best[c], tightened_noise_var(measured[c], *residual_bound(d2, pv)))
    with torch.no_grad():
        for member in members:
            new = torch.as_tensor(best, dtype=member.noise_var.dtype, device=member.noise_var.device)
            member.prior_var_offset.copy_(member.noise_var - new)
            member.set_noise_var(new)
