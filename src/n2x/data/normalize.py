"""Per-dataset intensity normalisation, stored with the model so that predictions return in the input's units.

Optionally with a variance-stabilising transform first: the generalised Anscombe transform of each channel's
Poisson-Gaussian noise (:class:`n2x.noise.GeneralizedAnscombe`), inverted with its exact unbiased inverse after the
affine map. Every training patch and inference tile goes through :meth:`Normalization.apply` and back through
:meth:`Normalization.invert`, so the transform wraps any method. Model files written before the transform existed
have no ``"vst"`` entry and load without one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..noise import GeneralizedAnscombe

NORMALIZATIONS = ("meanstd", "percentile")


@dataclass
class Normalization:
    """Affine map ``(x - offset) / scale`` per channel, after an optional variance-stabilising transform.

    ``mode`` is ``"meanstd"`` (offset = mean, scale = standard deviation) or ``"percentile"`` (offset = low
    percentile, scale = high minus low percentile). ``vst``: None, or one generalised Anscombe transform per channel
    (:class:`n2x.noise.GeneralizedAnscombe`); with it, ``offset`` and ``scale`` are in the transform's units (the
    noise has a standard deviation close to 1 there), else in the input's intensity units.
    """

    mode: str = "meanstd"
    offset: list[float] = field(default_factory=lambda: [0.0])
    scale: list[float] = field(default_factory=lambda: [1.0])
    percentiles: tuple[float, float] = (1.0, 99.8)
    vst: list[GeneralizedAnscombe] | None = None

    @classmethod
    def fit(cls, samples: Sequence[np.ndarray], mode: str = "meanstd",
            percentiles: tuple[float, float] = (1.0, 99.8),
            vst: Sequence[GeneralizedAnscombe] | None = None) -> "Normalization":
        """Statistics from raw blocks shaped ``(C, ...)`` (the whole data or a bounded random sample of it); with
        ``vst`` (one transform per channel) they are taken after the transform."""
        if mode not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, not {mode!r}")
        n_ch = samples[0].shape[0]
        if vst is not None:
            if len(vst) != n_ch:
                raise ValueError(f"{len(vst)} variance-stabilising transforms for {n_ch} channels")
            samples = [np.stack([t.forward(b[c]) for c, t in enumerate(vst)]) for b in samples]
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
        return cls(mode=mode, offset=offset, scale=scale, percentiles=tuple(percentiles),
                   vst=list(vst) if vst is not None else None)

    def _bcast(self, values: list[float], ndim: int, channel_axis: int) -> np.ndarray:
        shape = [1] * ndim
        shape[channel_axis] = len(values)
        return np.asarray(values, np.float32).reshape(shape)

    def _per_channel(self, x: np.ndarray, channel_axis: int, inverse: bool) -> np.ndarray:
        """The variance-stabilising transform (or its inverse) of each channel of ``x``."""
        assert self.vst is not None
        moved = np.moveaxis(x, channel_axis, 0)
        if len(self.vst) != moved.shape[0]:
            raise ValueError(f"{len(self.vst)} variance-stabilising transforms for {moved.shape[0]} channels")
        out = np.stack([t.inverse(c) if inverse else t.forward(c) for t, c in zip(self.vst, moved)])
        return np.moveaxis(out, 0, channel_axis)

    def apply(self, x: np.ndarray, channel_axis: int = 0) -> np.ndarray:
        """Normalise ``x`` whose channels lie on ``channel_axis`` (float32 out)."""
        x = np.asarray(x, np.float32)
        if self.vst is not None:
            x = self._per_channel(x, channel_axis % x.ndim, inverse=False)
        return (x - self._bcast(self.offset, x.ndim, channel_axis)) / self._bcast(self.scale, x.ndim, channel_axis)

    def invert(self, x: np.ndarray, channel_axis: int = 0) -> np.ndarray:
        """Back to the input's intensity units (float32); with a transform, through its exact unbiased inverse."""
        x = np.asarray(x, np.float32)
        x = x * self._bcast(self.scale, x.ndim, channel_axis) + self._bcast(self.offset, x.ndim, channel_axis)
        if self.vst is not None:
            x = self._per_channel(x, channel_axis % x.ndim, inverse=True)
        return x

    def to_dict(self) -> dict:
        d = {"mode": self.mode, "offset": list(self.offset), "scale": list(self.scale),
             "percentiles": list(self.percentiles)}
        if self.vst is not None:
            d["vst"] = [t.to_dict() for t in self.vst]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Normalization":
        vst = d.get("vst")
        return cls(mode=d["mode"], offset=[float(v) for v in d["offset"]], scale=[float(v) for v in d["scale"]],
                   percentiles=tuple(d.get("percentiles", (1.0, 99.8))),
                   vst=[GeneralizedAnscombe.from_dict(t) for t in vst] if vst else None)
