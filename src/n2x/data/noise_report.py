"""What the noise probe (:func:`n2x.data.probe.probe_noise`) reports: :class:`NoiseReport`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..noise import NoiseModel, PoissonGaussianFit
from .motion import recommended_pairing

#: the noise counts as correlated when the lag-1 coefficient exceeds this (white noise measures below 0.1 on busy
#: synthetic images, the dev set's 3 x 3 correlated noise (true 0.67) about 0.4 through the quadratic fit)
CORRELATED = 0.2


@dataclass
class NoiseReport:
    """What :func:`probe_noise` found.

    ``sigma``: noise standard deviation in the input's intensity units (mean over channels, measured in the
    flattest regions; for signal-dependent noise it is the level of the darker flat regions). ``correlation``:
    correlation coefficient of the noise between a pixel and its neighbour at each lag, ``{"Y": {1: r, 2: ...},
    "X": {...}}``. ``correlation_length``: the largest lag (pixels) up to which the noise stays correlated (above
    0.05, fit-corrected) along Y or X; 0 for pixel-independent noise. ``recommended``: ``"apbsn"``, or for
    pixel-independent noise ``"n2v"`` here and the all-pixel blind-spot method where :func:`n2x.api.probe_noise`
    finds it registered. ``stride``: for AP-BSN, the smallest pixel-shuffle stride that exceeds the correlation
    length (None otherwise).
    """

    sigma: float
    correlation: dict[str, dict[int, float]]
    correlation_length: int
    recommended: str
    stride: int | None
    n_blocks: int = 0
    #: per channel, the noise's autocovariance in the input's units squared at 2D lags ``(dy, dx)`` up to
    #: ``LONG_LAG``: a ``(2 * LONG_LAG + 1)``-square nested list, variance at the centre; None when the image is too
    #: small for the 16 x 16 blocks it is solved from or textured throughout (see texture_ratio)
    autocovariance: list | None = None
    #: the noise variance from 16 x 16 blocks over that from 8 x 8 blocks (largest over channels): 1.2-1.4 for noise
    #: alone; above ``TEXTURE_RATIO`` image texture inflates it and ``autocovariance`` is None
    texture_ratio: float | None = None
    sigma_per_channel: list[float] = field(default_factory=list)
    #: lag-1 correlation of the 8 x 8 quadratic-fit residuals (the robust figure the decision uses)
    lag1_highpass: float = 0.0
    #: ``"gaussian"`` (white), ``"poisson-gaussian"`` (variance grows with the signal) or ``"correlated"``
    kind: str = "gaussian"
    #: per channel, the fitted noise model (:mod:`n2x.noise`): GaussianNoise, PoissonGaussianNoise or CorrelatedNoise
    noise_models: list[NoiseModel] = field(default_factory=list)
    #: per channel, the Poisson-Gaussian line fit and its quality (:class:`n2x.noise.PoissonGaussianFit`), also
    #: for the other kinds (it is what decided against them)
    noise_fits: list[PoissonGaussianFit] = field(default_factory=list)
    #: time-lapses: the median optical-flow motion between neighbouring frames in pixels (None without a T axis);
    #: above :data:`n2x.data.motion.MOTION_THRESHOLD_PX` neighbouring frames are paired with motion compensation (``pairs="f2f"``)
    motion: float | None = None

    @property
    def noise_model(self) -> NoiseModel | None:
        """The first channel's noise model (None for a report built without one)."""
        return self.noise_models[0] if self.noise_models else None

    def model_lines(self) -> list[str]:
        """The fitted noise model and how well the variance-vs-mean line holds, one line each (per channel when
        there are several)."""
        lines = []
        for c, (model, fit) in enumerate(zip(self.noise_models, self.noise_fits)):
            where = f" (channel {c})" if len(self.noise_models) > 1 else ""
            lines.append(f"noise model{where}: {model.describe()}")
            lines.append(f"  {fit.describe()}")
        return lines

    def summary(self) -> str:
        """A few lines for people; the last is ``recommended method: bsn`` (through the api) or ``... apbsn (stride
        N)``."""
        lags = sorted(self.correlation.get("X", {}))
        lines = [*self.model_lines(),
                 f"noise sigma: {self.sigma:.4g} (input units, from {self.n_blocks} flat 8x8 blocks)",
                 f"lag-1 correlation of the high-pass residual: {self.lag1_highpass:+.2f} (above {CORRELATED}: "
                 "correlated)"]
        for ax in ("Y", "X"):
            vals = ", ".join(f"lag {k}: {self.correlation[ax][k]:+.2f}" for k in lags)
            lines.append(f"neighbour correlation along {ax}: {vals}")
        if self.correlation_length == 0:
            lines.append("correlation length: 0 px (pixel-independent noise)")
        else:
            box = 2 * self.correlation_length + 1
            lines.append(f"correlation length: {self.correlation_length} px (spatially correlated noise: N2V would "
                         f"learn to reproduce it; AP-BSN hides a {box} x {box} box, or uses this pixel-shuffle stride)")
        if self.motion is not None:
            pairing = recommended_pairing(self.motion)
            why = ("frames move: pair them with motion compensation" if pairing == "f2f"
                   else "frames barely move: plain neighbouring frames are partners")
            lines.append(f"motion between neighbouring frames: {self.motion:.2f} px median ({why}; with Noise2Noise "
                         f"use pairs {pairing} along T)")
        rec = f"apbsn (stride {self.stride})" if self.recommended == "apbsn" else self.recommended
        lines.append(f"recommended method: {rec}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: lags become strings."""
        d = asdict(self)
        d["correlation"] = {ax: {str(k): float(v) for k, v in c.items()} for ax, c in self.correlation.items()}
        d["noise_models"] = [m.to_dict() for m in self.noise_models]
        d["noise_fits"] = [f.to_dict() for f in self.noise_fits]
        return d
