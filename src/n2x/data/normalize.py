"""Per-dataset intensity normalisation, stored with the model so that predictions return in the input's units."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

NORMALIZATIONS = ("meanstd", "percentile")


@dataclass
class Normalization:
    """Affine map ``(x - offset) / scale`` per channel.

    ``mode`` is ``"meanstd"`` (offset = mean, scale = standard deviation) or ``"percentile"`` (offset = low
    percentile, scale = high minus low percentile). Values are in the input's intensity units.
    """

    mode: str = "meanstd"
    offset: list[float] = field(default_factory=lambda: [0.0])
    scale: list[float] = field(default_factory=lambda: [1.0])
    percentiles: tuple[float, float] = (1.0, 99.8)

    @classmethod
    def fit(cls, samples: Sequence[np.ndarray], mode: str = "meanstd",
            percentiles: tuple[float, float] = (1.0, 99.8)) -> "Normalization":
        """Statistics from blocks shaped ``(C, ...)`` (the whole data or a bounded random sample of it)."""
        if mode not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, not {mode!r}")
        n_ch = samples[0].shape[0]
        flat = [np.concatenate([np.asarray(b[c], np.float64).ravel() for b in samples]) for c in range(n_ch)]
        if mode == "meanstd":
            offset = [float(v.mean()) for v in flat]
            scale = [float(v.std()) for v in flat]
        else:
            lo_hi = [np.percentile(v, percentiles) for v in flat]
            offset = [float(lo) for lo, _ in lo_hi]
            scale = [float(hi - lo) for lo, hi in lo_hi]
        # A constant channel would divide by zero; it then only gets shifted.
        scale = [s if s > 0 and np.isfinite(s) else 1.0 for s in scale]
        return cls(mode=mode, offset=offset, scale=scale, percentiles=tuple(percentiles))

    def _bcast(self, values: list[float], ndim: int, channel_axis: int) -> np.ndarray:
        shape = [1] * ndim
        shape[channel_axis] = len(values)
        return np.asarray(values, np.float32).reshape(shape)

    def apply(self, x: np.ndarray, channel_axis: int = 0) -> np.ndarray:
        """Normalise ``x`` whose channels lie on ``channel_axis`` (float32 out)."""
        x = np.asarray(x, np.float32)
        return (x - self._bcast(self.offset, x.ndim, channel_axis)) / self._bcast(self.scale, x.ndim, channel_axis)

    def invert(self, x: np.ndarray, channel_axis: int = 0) -> np.ndarray:
        """Back to the input's intensity units (float32)."""
        x = np.asarray(x, np.float32)
        return x * self._bcast(self.scale, x.ndim, channel_axis) + self._bcast(self.offset, x.ndim, channel_axis)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "offset": list(self.offset), "scale": list(self.scale),
                "percentiles": list(self.percentiles)}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalization":
        return cls(mode=d["mode"], offset=[float(v) for v in d["offset"]], scale=[float(v) for v in d["scale"]],
                   percentiles=tuple(d.get("percentiles", (1.0, 99.8))))
