"""napari-n2x: self-supervised denoising (Noise2Void/N2V2, Noise2Noise, AP-BSN) for napari, the CLI and notebooks.

The public API is Qt-free (:mod:`n2x.api`, re-exported here)::

    import n2x
    model = n2x.train(noisy, axes="YX", method="n2v", time="60s")
    clean = n2x.denoise(model, noisy)
    n2x.save_model(model, "model.n2x"); model = n2x.load_model("model.n2x")
"""
from ._version import __version__
from .errors import (AxesError, InputError, ModelFileError, ModelMismatchError, N2xError, N2xWarning, OptionError,
                     OutputExistsError, TrainingError)

#: The api's names re-exported here, loaded on first use (PEP 562): ``import n2x`` and ``n2x --help`` do not import
#: torch; ``n2x.train`` and the others import the engine when first touched.
_FROM_API = ("BatchSummary", "Model", "NoiseReport", "TrainProgress", "VolumeProgress", "denoise", "denoise_files",
             "denoise_volume", "iter_denoise_volume", "load_model", "method_info", "method_names", "probe_noise",
             "register_method", "save_model", "train", "train_iter", "export_bioimageio")


def __getattr__(name: str):  # noqa: ANN202 - PEP 562
    if name in _FROM_API or name == "api":
        import importlib

        api = importlib.import_module("n2x.api")  # not ``from . import api``: that would call this function again
        value = api if name == "api" else getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "__version__", "train", "train_iter", "denoise", "denoise_volume", "iter_denoise_volume", "denoise_files",
    "VolumeProgress", "BatchSummary", "load_model", "save_model", "Model", "TrainProgress", "probe_noise",
    "NoiseReport", "method_names", "method_info", "register_method", "export_bioimageio",
    "N2xError", "InputError", "AxesError", "OptionError", "ModelFileError", "ModelMismatchError", "TrainingError",
    "OutputExistsError", "N2xWarning",
]
