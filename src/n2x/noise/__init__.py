"""Noise models (Gaussian, Poisson-Gaussian, spatially correlated Gaussian), their fit from mean-variance pairs and
the variance-stabilising generalised Anscombe transform with its exact unbiased inverse.

A layer of its own, below ``data``/``io``/``nets`` (the probe fits these models, the normalisation applies the
transform) and above the utilities: numpy only, no torch.
"""
from .anscombe import GeneralizedAnscombe, closed_form_inverse
from .fit import PoissonGaussianFit, fit_poisson_gaussian, selection_factor
from .models import (NOISE_KINDS, CorrelatedNoise, GaussianNoise, NoiseModel, PoissonGaussianNoise,
                     noise_model_from_dict)

__all__ = ["GeneralizedAnscombe", "closed_form_inverse", "PoissonGaussianFit", "fit_poisson_gaussian",
           "selection_factor", "NOISE_KINDS", "CorrelatedNoise", "GaussianNoise", "NoiseModel", "PoissonGaussianNoise",
           "noise_model_from_dict"]
