"""Export a trained model to the BioImage Model Zoo format (bioimage.io model spec 0.5), so that Fiji/deepImageJ,
ilastik, QuPath, BiaPy and bioimageio.core can run it without n2x.

:func:`write_package` writes the ``.zip``; :mod:`.modules` holds the self-contained wrappers that compute what
``n2x denoise`` computes (normalisation, the method's inference, the return to input units), :mod:`.weights` turns
them into checked TorchScript and ONNX weights, :mod:`.docs` writes the README and the citations. Needs the optional
``bioimageio.spec`` package (``pip install "napari-n2x[bmz]"``); :func:`require_spec` says so when it is missing.
"""
from .docs import DEFAULT_AUTHOR, DEFAULT_LICENSE
from .modules import build_module, refusal
from .package import INSTALL_HINT, geometry, require_spec, write_package

__all__ = ["write_package", "require_spec", "build_module", "refusal", "geometry", "DEFAULT_LICENSE",
           "DEFAULT_AUTHOR", "INSTALL_HINT"]
