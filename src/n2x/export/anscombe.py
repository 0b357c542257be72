"""The generalised Anscombe transform and its exact unbiased inverse as an ``nn.Module`` (TorchScript and ONNX).

n2x inverts the transform by :meth:`n2x.noise.GeneralizedAnscombe.inverse`: ``np.interp`` on a table of
``E[forward | photons]`` whose knots are not evenly spaced (finer below 4 photons, geometric above), then a closed
form above the table. A consumer has neither numpy nor a search over knots in ONNX, so the package holds the same
inverse resampled on an evenly spaced grid of the stabilised value ``d`` (:data:`INVERSE_POINTS` points per
channel): an index is then ``floor((d - low) / step)``, a gather and a linear interpolation, which ONNX expresses
(Floor, Cast, Gather). Below the table the result is 0 photons (the black level), as ``np.interp`` clamps; above
it the closed form, selected with ``torch.where``. :func:`inverse_error` measures the difference to n2x's inverse;
the export refuses a table that differs by more than :data:`MAX_INVERSE_ERROR` photons.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..noise import GeneralizedAnscombe
from ..noise.anscombe import expected_table

#: evenly spaced points of the resampled inverse per channel (64 KiB each). The error is set by the table's kinks
#: (linear interpolation between knots) falling between grid points, so it halves with each doubling: 4096 points
#: 1.5e-4 photons, 16384 points 3.7e-5 in float64, 4.4e-5 with the float32 table (read-noise variance 0 to 100
#: photons^2)
INVERSE_POINTS = 16384
#: largest |package inverse - n2x inverse| allowed, photons (the gain in input units)
MAX_INVERSE_ERROR = 1e-4
_SQRT_1_5 = math.sqrt(1.5)


def resampled_inverse(gat: GeneralizedAnscombe, points: int = INVERSE_POINTS) -> tuple[float, float, float,
                                                                                         np.ndarray]:
    """``(low, step, high, photons)``: n2x's exact unbiased inverse in photons (float32, ``points`` values) at
    ``d = low + i * step``, and ``high``, the largest float32 not above the table's end (above it the closed form
    applies: for a float32 ``d``, ``d > high`` exactly when n2x's float64 comparison is true)."""
    photons, expected = expected_table(round(gat.s2, 12))
    low = float(np.float32(expected[0]))
    end = np.float32(expected[-1])
    high = float(end if float(end) <= expected[-1] else np.nextafter(end, np.float32(-np.inf)))
    step = np.float32((expected[-1] - low) / (points - 1))
    if low + float(step) * (points - 1) < expected[-1]:  # the grid reaches the table's end
        step = np.nextafter(step, np.float32(np.inf))
    grid = low + float(step) * np.arange(points, dtype=np.float64)
    return low, float(step), high, np.interp(grid, expected, photons).astype(np.float32)


class AnscombeTransform(nn.Module):
    """Per channel, the generalised Anscombe transform (:meth:`stabilise`) and its exact unbiased inverse
    (:meth:`invert`) of blocks ``(B, C, *spatial)`` in the input's units; ``transforms``: one per channel (the
    model's :attr:`n2x.data.normalize.Normalization.vst`), ``ndim``: spatial axes."""

    def __init__(self, transforms: Sequence[GeneralizedAnscombe], ndim: int, points: int = INVERSE_POINTS):
        super().__init__()
        shape = [1, len(transforms)] + [1] * int(ndim)
        tables = [resampled_inverse(t, points) for t in transforms]

        def per_channel(values: Sequence[float]) -> torch.Tensor:
            return torch.tensor(list(values), dtype=torch.float32).reshape(shape)

        self.register_buffer("gain", per_channel(t.gain for t in transforms))
        self.register_buffer("offset", per_channel(t.offset for t in transforms))
        self.register_buffer("s2", per_channel(t.s2 for t in transforms))
        self.register_buffer("low", per_channel(low for low, _, _, _ in tables))
        self.register_buffer("step", per_channel(step for _, step, _, _ in tables))
        self.register_buffer("high", per_channel(high for _, _, high, _ in tables))
        #: the channels' tables end to end, and where each channel's starts (Gather takes one flat index)
        self.register_buffer("table", torch.from_numpy(np.concatenate([t[3] for t in tables])))
        self.register_buffer("start", torch.arange(len(transforms), dtype=torch.int64).reshape(shape) * points)
        self.points = int(points)

    def stabilise(self, x: torch.Tensor) -> torch.Tensor:
        """``2 sqrt(max((x - offset) / gain + 3/8 + s^2, 0))``: noise of variance close to 1."""
        return 2.0 * torch.sqrt(torch.clamp((x - self.offset) / self.gain + 0.375 + self.s2, min=0.0))

    def invert(self, d: torch.Tensor) -> torch.Tensor:
        """The exact unbiased inverse of stabilised values ``d``, back in the input's units."""
        position = torch.clamp((d - self.low) / self.step, min=0.0, max=float(self.points - 1))
        index = torch.clamp(torch.floor(position), max=float(self.points - 2))
        frac = position - index
        flat = index.to(torch.int64) + self.start
        below, above = self.table[flat], self.table[flat + 1]
        photons = below + frac * (above - below)
        photons = torch.where(d > self.high, self._closed_form(d), photons)
        return photons * self.gain + self.offset

    def _closed_form(self, d: torch.Tensor) -> torch.Tensor:
        """Makitalo & Foi's closed form above the table (:func:`n2x.noise.anscombe.closed_form_inverse`), photons."""
        d = torch.clamp(d, min=1e-3)
        return torch.clamp(0.25 * d ** 2 + 0.25 * _SQRT_1_5 / d - 1.375 / d ** 2 + 0.625 * _SQRT_1_5 / d ** 3
                           - 0.125 - self.s2, min=0.0)


def inverse_error(module: AnscombeTransform, transforms: Sequence[GeneralizedAnscombe], samples: int = 200_001
                  ) -> float:
    """Largest ``|module.invert(d) - GeneralizedAnscombe.inverse(d)|`` in photons over every channel, on ``samples``
    evenly spaced float32 values from below the table to 1.5 times its end, plus the table's knots and the midpoints
    between them (where resampling a piecewise-linear table errs most). The module is evaluated in float64 and n2x's
    inverse in photons (gain 1, no offset), so the figure is the resampling's error, not the float32 rounding of
    large values in input units that both share."""
    exact = copy.deepcopy(module).double()
    worst = 0.0
    for c, gat in enumerate(transforms):
        _, expected = expected_table(round(gat.s2, 12))
        d = np.concatenate([np.linspace(expected[0] - 1.0, 1.5 * expected[-1], samples), expected,
                            (expected[1:] + expected[:-1]) / 2]).astype(np.float32)
        # one block (1, C, d.size, 1, ...): the values along the first spatial axis of channel c
        block = torch.zeros((1, len(transforms), d.size) + (1,) * (module.gain.ndim - 3), dtype=torch.float64)
        block[0, c] = torch.from_numpy(d.astype(np.float64)).reshape(block.shape[2:])
        with torch.no_grad():
            got = ((exact.invert(block)[0, c] - gat.offset) / gat.gain).reshape(-1).numpy()
        ref = GeneralizedAnscombe(1.0, gat.s2).inverse(d).astype(np.float64)
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst
