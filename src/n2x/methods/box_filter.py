"""The box filter of AP-BSN's blind-box design: it puts back the detail of the pixels the network could not see.

A blind-box network predicts each pixel without seeing the ``(2b + 1)``-square box around it (``b``: the blind
radius in pixels), so its prediction misses the detail inside the box. The filter ``w`` adds ``w * (noisy -
prediction)`` (``*``: correlation over the box), fitted after training without the clean image, from the residuals
on held-out patches and the noise autocovariance the noise probe measured.
"""
from __future__ import annotations

import numpy as np
import torch


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


def box_covariance(autocovariance: np.ndarray, scale: list[float], blind: int) -> np.ndarray | None:
    """The noise autocovariance at the lags of the ``blind``-radius box, in normalised units, averaged over channels.

    ``autocovariance``: the probe's ``(C, 2L + 1, 2L + 1)`` in input units (lags up to ``L`` pixels); ``scale``:
    the normalisation's scale per channel. None when the box reaches beyond the measured lags.
    """
    lag = autocovariance.shape[-1] // 2
    if blind > lag:
        return None
    scale2 = np.asarray(scale, np.float64)[:, None, None] ** 2
    return (autocovariance / scale2).mean(axis=0)[lag - blind:lag + blind + 1, lag - blind:lag + blind + 1]


def apply_box_filter(noisy: torch.Tensor, prediction: torch.Tensor, kernel: list | np.ndarray) -> torch.Tensor:
    """``prediction + kernel * (noisy - prediction)`` for ``(B, C, Y, X)`` tensors, each channel on its own (float)."""
    k = torch.as_tensor(np.asarray(kernel), dtype=prediction.dtype, device=prediction.device)
    c = noisy.shape[1]
    w = k.expand(c, 1, *k.shape).contiguous()
    return prediction + torch.nn.functional.conv2d(noisy.to(prediction.dtype) - prediction, w,
                                                   padding=k.shape[-1] // 2, groups=c)
