"""Noise models: what the noise of an image looks like, as data that a model file can store.

Three kinds, all in the input's intensity units:

- :class:`GaussianNoise`: additive white Gaussian noise of standard deviation ``sigma``;
- :class:`PoissonGaussianNoise`: photon (shot) noise plus read noise, ``z = offset + gain * p + n`` with
  ``p ~ Poisson(photons)`` and ``n ~ N(0, read_variance)``, so that ``var(z) = gain * (mean(z) - offset) +
  read_variance``;
- :class:`CorrelatedNoise`: stationary Gaussian noise that is correlated between neighbouring pixels, described by
  its autocovariance.

``to_dict``/:func:`noise_model_from_dict` round-trip each kind through JSON.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

NOISE_KINDS = ("gaussian", "poisson-gaussian", "correlated")


@dataclass(frozen=True)
class GaussianNoise:
    """White Gaussian noise; ``sigma`` in input units."""

    sigma: float
    kind: str = field(default="gaussian", init=False)

    def variance(self, mean: Any) -> np.ndarray:
        """Noise variance (input units squared) at signal ``mean``: constant."""
        return np.full(np.shape(mean), self.sigma ** 2, np.float64)

    def describe(self) -> str:
        return f"Gaussian, white: sigma {self.sigma:.4g}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "sigma": float(self.sigma)}


@dataclass(frozen=True)
class PoissonGaussianNoise:
    """Poisson-Gaussian noise: ``var = gain * (mean - offset) + read_variance`` (input units).

    ``gain``: input units per photon; ``read_variance``: variance of the signal-independent (read) noise;
    ``offset``: the black level, the mean of an image without photons. From mean-variance pairs alone only
    ``read_variance - gain * offset`` is identifiable: a fit takes ``offset = 0`` unless that intercept is negative
    (see :func:`n2x.noise.fit.fit_poisson_gaussian`).
    """

    gain: float
    read_variance: float
    offset: float = 0.0
    kind: str = field(default="poisson-gaussian", init=False)

    @property
    def read_sigma(self) -> float:
        return float(np.sqrt(max(self.read_variance, 0.0)))

    def variance(self, mean: Any) -> np.ndarray:
        """Noise variance at signal ``mean`` (input units squared); photon noise cannot be negative below the black
        level."""
        photons = np.maximum(np.asarray(mean, np.float64) - self.offset, 0.0)
        return self.gain * photons + self.read_variance

    def describe(self) -> str:
        return (f"Poisson-Gaussian: gain {self.gain:.4g} per photon, read noise sigma {self.read_sigma:.4g}"
                f" (variance {self.read_variance:.4g}), black level {self.offset:.4g}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "gain": float(self.gain), "read_variance": float(self.read_variance),
                "offset": float(self.offset)}


@dataclass(frozen=True)
class CorrelatedNoise:
    """Stationary Gaussian noise correlated over ``correlation_length`` pixels; ``sigma`` in input units;
    ``autocovariance``: a ``(2L + 1)``-square nested list (input units squared, variance at the centre) at 2D lags
    ``(dy, dx)``, or None where it could not be measured."""

    sigma: float
    correlation_length: int
    autocovariance: list | None = None
    kind: str = field(default="correlated", init=False)

    def variance(self, mean: Any) -> np.ndarray:
        return np.full(np.shape(mean), self.sigma ** 2, np.float64)

    def describe(self) -> str:
        return f"Gaussian, spatially correlated over {self.correlation_length} px: sigma {self.sigma:.4g}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "sigma": float(self.sigma), "correlation_length": int(self.correlation_length),
                "autocovariance": self.autocovariance}


NoiseModel = Union[GaussianNoise, PoissonGaussianNoise, CorrelatedNoise]


def noise_model_from_dict(d: dict[str, Any]) -> NoiseModel:
    """The model stored by ``to_dict``; ValueError for an unknown kind."""
    kind = d.get("kind")
    if kind == "gaussian":
        return GaussianNoise(float(d["sigma"]))
    if kind == "poisson-gaussian":
        return PoissonGaussianNoise(float(d["gain"]), float(d["read_variance"]), float(d.get("offset", 0.0)))
    if kind == "correlated":
        return CorrelatedNoise(float(d["sigma"]), int(d["correlation_length"]), d.get("autocovariance"))
    raise ValueError(f"unknown noise model kind {kind!r}; expected one of {NOISE_KINDS}")
