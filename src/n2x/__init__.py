"""napari-n2x: self-supervised denoising (Noise2Void/N2V2, Noise2Noise, AP-BSN) for napari, the CLI and notebooks.

The public API is Qt-free::

    import n2x
    model = n2x.train(noisy, axes="YX", method="n2v", time="60s")
    clean = n2x.denoise(model, noisy)
    model.save("model.n2x"); model = n2x.load_model("model.n2x")
"""
from ._version import __version__
from .api import NoiseReport, denoise, load_model, probe_noise, train, train_iter
from .inference.volume import VolumeProgress, denoise_volume, iter_denoise_volume
from .errors import (AxesError, InputError, ModelFileError, ModelMismatchError, N2xError, OutputExistsError,
                      TrainingError)
from .model import Model
from .training import TrainProgress

__all__ = [
    "__version__", "train", "train_iter", "denoise", "denoise_volume", "iter_denoise_volume", "VolumeProgress",
    "load_model", "Model", "TrainProgress", "probe_noise", "NoiseReport",
    "N2xError", "InputError", "AxesError", "ModelFileError", "ModelMismatchError", "TrainingError",
    "OutputExistsError",
]
