"""``method="auto"`` and ``vst="auto"``: the noise probe decides, and says why in one line.

The rule (:func:`choose_method`):

- a partner was given (N2N's ``target`` or ``pairs``): ``n2n``, which learns from two independent noisy views;
- the noise is spatially correlated (the probe's correlation length is above 0): ``apbsn``, whose blind box or
  pixel-shuffle stride covers the correlation;
- otherwise (pixel-independent Gaussian or Poisson-Gaussian noise): ``bsn``, the all-pixel blind-spot method, for
  planes and volumes (:data:`INDEPENDENT_METHODS` says why).

``vst="auto"`` turns the generalised Anscombe transform on when the probe finds Poisson-Gaussian noise whose
variance at least :data:`VST_MIN_SPREAD`-folds between the darker and the brighter regions (below, the transform
changes little, and white noise on an image whose bright regions are all fine texture reads up to x1.9: synthetic
cells with sharp filaments). A method whose model assumes one noise variance for every pixel (``bsn``'s posterior:
``MethodInfo.constant_noise``) gets it at any spread when the Poisson-Gaussian line fits the flat blocks closely
(R² at least :data:`CONSTANT_NOISE_MIN_R2`): the flat blocks may span a narrow range of intensities (moon/PG:
x1.18, cell at 5 photons: x1.58) while the image's noise varies far more, and a constant variance then weighs the
noisy pixel in where the noise is strongest. A method that models photon noise itself (``bsn``:
``MethodInfo.photon_noise``) gets no transform under ``auto`` where it would get one: its posterior takes a noise
variance that grows with the signal instead (:func:`photon_noise_wanted`). Cheap to import (no torch): the probe
is numpy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..data.axes import make_layout
from ..data.normalize import Normalization
from ..data.noise_report import NoiseReport
from ..data.probe import probe_noise as _probe
from ..errors import InputError, OptionError
from ..methods import method_info, method_names
from ..noise import GeneralizedAnscombe, PoissonGaussianNoise
from ._options import AUTO_METHOD, VST_CHOICES

#: the method ``auto`` picks for pixel-independent noise, by the training's dimensionality: the all-pixel blind-spot
#: method ``bsn`` for both (180 s protocol, docs/methods.md). Volumes: on the dev volume it made 1277-1451 steps
#: where N2V's 3D U-Net made 61-62, and beat N2V by 3.7 dB (PG, photon noise in its posterior) and 3.6 dB (G25), and
#: BM4D given the true sigma by 7.2 and 1.1 dB. Planes: above N2V on 8 of 11 images and noises (camera, coins:
#: G25 +1.3 and +1.5 dB, PG +0.7 and +0.3; cell/G15 +3.4; the 102 x 102 microaneurysms/G25 +0.2; the camera
#: 100 x 100 crop, G25 +0.3 to +1.0 and PG +1.1, since small images hold pixels out instead of a stripe), level
#: on moon/G25, under it on moon/PG (-0.6 to -0.8) and on cell at 5 photons (-0.4). Its inference takes about 6
#: times N2V's.
INDEPENDENT_METHODS = {2: "bsn", 3: "bsn"}
#: at most this many samples (planes or volumes) of each image are read to fit a transformed normalisation
_NORM_SAMPLES = 4
#: ``vst="auto"`` needs the fitted variance to grow by this factor from the 10th to the 90th percentile of the
#: block means (Poisson-Gaussian noise: 8.5 / 4.4 / 1.18 on camera / coins / moon of the dev set, 3.7-5.4 on the
#: synthetic cells; white noise on those cells 1.55-1.93)
VST_MIN_SPREAD = 2.5
#: below :data:`VST_MIN_SPREAD`, a method that assumes one noise variance gets the transform when the line fits this
#: well. Photon noise: R² 0.95-0.997 (camera, coins, moon and cell with PG noise; cell at 5 and 10 photons; brick at
#: 10; camera at 20 photons over 0.2-0.6); white noise the probe calls Poisson-Gaussian on fine texture: 0.78-0.89
#: (synthetic cells, 5 draws; brick/G25)
CONSTANT_NOISE_MIN_R2 = 0.93
#: ``vst="on"`` needs a gain at least this many standard errors above 0 (weaker evidence than ``auto`` asks for)
MIN_GAIN_T_ON = 3.0
_NORM_SIDE = 512
_NORM_DEPTH = 16

_KIND_WORDS = {"gaussian": "white Gaussian", "poisson-gaussian": "Poisson-Gaussian (variance grows with the signal)",
               "correlated": "spatially correlated"}


@dataclass(frozen=True)
class MethodChoice:
    """What ``method="auto"`` resolved to: ``name`` (a registered method), ``reason`` (one line for people),
    ``requested`` (what the user asked for: ``"auto"`` or a method name) and the probe's ``report`` (None when no
    probe was needed or it could not measure the image)."""

    name: str
    reason: str
    requested: str = AUTO_METHOD
    report: NoiseReport | None = None

    @property
    def automatic(self) -> bool:
        return self.requested == AUTO_METHOD

    def to_config(self) -> dict[str, Any]:
        return {"requested": self.requested, "method": self.name, "reason": self.reason}


def independent_method(volume: bool = False) -> str:
    """The method for pixel-independent noise in planes or in volumes (:data:`INDEPENDENT_METHODS`; the first
    registered method where that one is not registered)."""
    names = method_names()
    name = INDEPENDENT_METHODS[3 if volume else 2]
    return name if name in names else names[0]


def trains_volumes(images: Any, axes: str | None, dims: int | None = None) -> bool:
    """Whether training on ``images`` with ``axes`` and ``dims`` uses a 3D network: ``dims`` 3, or no ``dims`` and a
    Z axis (:func:`n2x.data.axes.make_layout`)."""
    if dims is not None:
        return int(dims) == 3
    first = images[0] if isinstance(images, (list, tuple)) else images
    if first is None or not hasattr(first, "shape"):
        return bool(axes) and "Z" in axes.upper()
    try:
        return make_layout(first.shape, axes).ndim_spatial == 3
    except InputError:
        return False


def vst_wanted(report: NoiseReport | None, constant_noise: bool = False) -> bool:
    """Whether ``vst="auto"`` turns the transform on for ``report``, for a method whose model assumes one noise
    variance (``constant_noise``) or not."""
    if report is None or report.kind != "poisson-gaussian":
        return False
    if max(f.spread for f in report.noise_fits) >= VST_MIN_SPREAD:
        return True
    return constant_noise and min(f.r2 for f in report.noise_fits) >= CONSTANT_NOISE_MIN_R2


def probe_noise(image: Any, axes: str | None = None) -> NoiseReport:
    """Measure the noise of ``image`` (:func:`n2x.data.probe.probe_noise`: level, correlation, noise model and fit
    quality); its ``recommended`` method is the one ``method="auto"`` would train (without a partner)."""
    report = _probe(image, axes)
    if report.recommended != "apbsn":
        report.recommended = independent_method(trains_volumes(image, axes))
    return report


def choose_method(images: Any, axes: str | None = None, method: str = AUTO_METHOD, *, target: Any = None,
                  pairs: Any = None, report: NoiseReport | None = None, vst: str = "auto",
                  dims: int | None = None) -> MethodChoice:
    """Resolve ``method``: a method name stays as it is (checked); ``"auto"`` follows the rule of this module,
    probing the first image (``report``: a probe already made of it; ``vst``: the training's setting, for the
    reason's wording; ``dims``: the training's, which with ``axes`` says planes or volumes). Returns a
    :class:`MethodChoice`."""
    if (method or "").lower() != AUTO_METHOD:
        info = method_info(method)  # an unknown method is an OptionError here
        return MethodChoice(info.name, f"{info.label} (chosen by the user)", info.name, report)
    if target is not None or pairs is not None:
        partner = "a second noisy image (target)" if target is not None else f"pairs ({pairs})"
        return MethodChoice("n2n", f"auto: Noise2Noise, because a partner was given: {partner}", report=report)
    if report is None:
        first = images[0] if isinstance(images, (list, tuple)) else images
        try:
            report = probe_noise(first, axes)
        except InputError as exc:
            name = independent_method(trains_volumes(images, axes, dims))
            return MethodChoice(name, f"auto: {method_info(name).label}, the default for independent noise (the "
                                      f"noise could not be measured: {exc.message})")
    if report.kind == "correlated":
        why = f"correlated over {report.correlation_length} px (blind box / stride {report.stride})"
        return MethodChoice("apbsn", f"auto: AP-BSN, because the noise is {why}", report=report)
    volume = trains_volumes(images, axes, dims)
    name = independent_method(volume)
    kind = _KIND_WORDS.get(report.kind, report.kind)
    if photon_noise_wanted(vst, report, name):
        with_vst = " (photon noise in its posterior)"
    elif vst == "on" or (vst == "auto" and vst_wanted(report, method_info(name).constant_noise)):
        with_vst = " (with the Anscombe transform)"
    else:
        with_vst = ""
    why = f"the noise is pixel-independent, {kind}, sigma {report.sigma:.3g}{' (3D)' if volume else ''}"
    return MethodChoice(name, f"auto: {method_info(name).label}{with_vst}, because {why}", report=report)


def resolve_vst(vst: str, report: NoiseReport | None, method: str) -> list[GeneralizedAnscombe] | None:
    """The transforms (one per channel) that ``vst`` (``auto``/``on``/``off``) asks for, or None.

    ``auto``: on when ``report`` found Poisson-Gaussian noise that varies enough, or that fits the line closely
    for a method that assumes one noise variance (:func:`vst_wanted`). ``on``: the
    fitted Poisson-Gaussian model of each channel, whatever kind the probe called the noise; an OptionError when a
    channel shows no photon noise (a gain not above 0 by :data:`MIN_GAIN_T_ON` standard errors). AP-BSN models
    correlated Gaussian noise in the input's units and takes no transform.
    """
    if vst not in VST_CHOICES:
        raise OptionError(f"vst must be one of {', '.join(VST_CHOICES)}, not {vst!r}")
    if vst == "off" or report is None or (vst == "auto" and not vst_wanted(report, method_info(method).constant_noise)):
        return None
    if vst == "auto" and method_info(method).photon_noise:
        return None  # the method models the photon noise itself (photon_noise_wanted)
    if method == "apbsn":
        if vst == "on":
            raise OptionError("the variance-stabilising transform does not apply to AP-BSN, whose filter models "
                              "correlated Gaussian noise in the input's units", hint="give {vst} off or auto")
        return None
    models = [m if isinstance(m, PoissonGaussianNoise) else f.model
              for m, f in zip(report.noise_models, report.noise_fits)]
    if any(f.gain <= 0 or f.gain_t < MIN_GAIN_T_ON for f in report.noise_fits):
        raise OptionError("the variance-stabilising transform needs photon (Poisson) noise, and the noise probe "
                          "found none: the noise variance does not grow with the signal", hint="give {vst} off or auto")
    return [GeneralizedAnscombe.from_noise(m) for m in models]


def photon_noise_wanted(vst: str, report: NoiseReport | None, method: str) -> bool:
    """Whether ``method`` models the noise as photon noise in its posterior (``params["noise_model"] = "photon"``):
    under ``vst="auto"``, for a method that can (:attr:`MethodInfo.photon_noise`), where the transform would
    otherwise be on (:func:`vst_wanted`). The transform is an approximation where counts are low: at 5 photons
    ``bsn`` with it stayed 3.3 dB under N2V (cell/PG5), and its posterior fell below its own prior mean."""
    info = method_info(method)
    return vst == "auto" and info.photon_noise and vst_wanted(report, info.constant_noise)


def fit_vst_normalization(images: Sequence[Any], layouts: Sequence[Any], mode: str,
                          transforms: list[GeneralizedAnscombe]) -> Normalization:
    """The normalisation of the transformed data: statistics from up to four samples of each image, central crops
    of at most 512 x 512 pixels in YX (and 16 planes in Z): raw regions are read, then transformed."""
    blocks = []
    for img, lay in zip(images, layouts):
        picks = np.unique(np.linspace(0, lay.n_samples - 1, min(_NORM_SAMPLES, lay.n_samples)).round().astype(int))
        sides = [_NORM_DEPTH] * (len(lay.spatial_shape) - 2) + [_NORM_SIDE, _NORM_SIDE]
        region = tuple(slice(max(0, (n - side) // 2), max(0, (n - side) // 2) + min(n, side))
                       for n, side in zip(lay.spatial_shape, sides))
        blocks += [np.asarray(lay.read(img, int(s), region), np.float32) for s in picks]
    return Normalization.fit(blocks, mode, vst=transforms)


def noise_config(report: NoiseReport | None, transforms: list[GeneralizedAnscombe] | None) -> dict[str, Any]:
    """What the model file records of the noise: the probe's kind, the fitted model per channel, its fit quality,
    and whether the transform was applied."""
    if report is None:
        return {"kind": None, "vst": transforms is not None}
    return {"kind": report.kind, "sigma": report.sigma, "models": [m.to_dict() for m in report.noise_models],
            "fit": [{k: v for k, v in f.to_dict().items() if k not in ("levels", "weights")}
                    for f in report.noise_fits],
            "vst": transforms is not None}


def probe_quietly(images: Any, axes: str | None) -> NoiseReport | None:
    """The probe of the first image, or None where it cannot measure it (too small or too flat): training goes on
    without the transform then."""
    first = images[0] if isinstance(images, (list, tuple)) else images
    try:
        return probe_noise(first, axes)
    except InputError:
        return None
