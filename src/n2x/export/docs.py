"""The text of an exported package: its README (method, training data, noise probe, tiling, citation, licence)
and its citation entries. Plain strings and dicts; :mod:`.package` turns them into bioimage.io fields."""
from __future__ import annotations

from typing import Any

from ..methods.pilot_wiener import block_sizes
from ..nets.ensemble import member_config

#: licence of an exported package unless the caller gives another (an SPDX identifier)
DEFAULT_LICENSE = "CC-BY-4.0"
#: author of an exported package unless the caller names them
DEFAULT_AUTHOR = "Unknown (exported with napari-n2x; pass authors to name the people who trained the model)"

#: papers per method: (text, url) — arXiv pages, stable and free to read
_PAPERS = {
    "n2v": [("Krull, Buchholz, Jug. Noise2Void - Learning Denoising from Single Noisy Images. CVPR 2019.",
             "https://arxiv.org/abs/1811.10980")],
    "n2v2": [("Höck, Buchholz, Lalit, et al. N2V2 - Fixing Noise2Void Checkerboard Artifacts with Modified "
              "Sampling Strategies and a Tweaked Network Architecture. ECCV Workshops 2022.",
              "https://arxiv.org/abs/2211.08512"),
             ("Krull, Buchholz, Jug. Noise2Void - Learning Denoising from Single Noisy Images. CVPR 2019.",
              "https://arxiv.org/abs/1811.10980")],
    "n2n": [("Lehtinen, Munkberg, Hasselgren, et al. Noise2Noise: Learning Image Restoration without Clean Data. "
             "ICML 2018.", "https://arxiv.org/abs/1803.04189")],
    "n2n-subsample": [("Huang, Li, Jia, Lu, Liu. Neighbor2Neighbor: Self-Supervised Denoising from Single Noisy "
                       "Images. CVPR 2021.", "https://arxiv.org/abs/2101.02824")],
    "apbsn": [("Lee, Son, Lee. AP-BSN: Self-Supervised Denoising for Real-World Images via Asymmetric PD and "
               "Blind-Spot Network. CVPR 2022.", "https://arxiv.org/abs/2203.11799")],
    "apbsn-box": [("Laine, Karras, Lehtinen, Aila. High-Quality Self-Supervised Deep Image Denoising. NeurIPS 2019.",
                   "https://arxiv.org/abs/1901.10277")],
    "vst": [("Makitalo, Foi. Optimal inversion of the generalized Anscombe transformation for Poisson-Gaussian "
             "noise. IEEE Transactions on Image Processing 22(1), 2013.", "https://doi.org/10.1109/TIP.2012.2202675")],
}
_PAPERS["bsn"] = _PAPERS["apbsn-box"]


def citations(model: Any) -> list[tuple[str, str]]:
    """``(text, url)`` of the papers to cite for ``model``'s method and design."""
    name = model.method_name
    p = model.method.params
    out = list(_PAPERS.get(name, []))
    if name == "n2n" and p.get("pairing") == "subsample":
        out += _PAPERS["n2n-subsample"]
    if name == "apbsn" and getattr(model.method, "design", "pd") == "box":
        out += _PAPERS["apbsn-box"]
    if model.normalization.vst is not None:
        out += _PAPERS["vst"]
    return out


def describe_method(model: Any) -> str:
    """One paragraph: the method and the design settings the package reproduces."""
    name, p = model.method_name, model.method.params
    net = member_config(model.config["network"])
    count = model.config["network"].get("count", 1) if model.config["network"].get("name") == "ensemble" else 1
    if name in ("n2v", "n2v2"):
        what = (f"{'N2V2' if name == 'n2v2' else 'Noise2Void'}: a blind-spot trained U-Net (depth "
                f"{net.get('depth')}, {net.get('features')} features"
                + (", max-blur-pool, no top skip connection" if name == "n2v2" else "") + ").")
    elif name == "n2n":
        what = (f"Noise2Noise ({p.get('pairing')} pairs): a U-Net (depth {net.get('depth')}, {net.get('features')} "
                f"features{', residual' if net.get('residual') else ''}).")
    elif name == "bsn":
        trunk = (f"shifted U-Net (depth {net.get('depth')})" if net.get("trunk") == "unet"
                 else "dilated half-plane convolutions")
        what = (f"All-pixel blind spot (Laine et al.): a network blind to each pixel ({trunk}, {net.get('features')} "
                "features"
                + (f", {net.get('z_context')} planes of context on each side" if net.get("z_context") else "")
                + ") predicts a prior mean and variance; the noisy pixel is weighed in by the Gaussian posterior "
                f"mean (noise standard deviation {p.get('noise_sigma')}, normalised units), averaged over "
                f"{p.get('ensemble')} flips/rotations"
                + (f", and over {count} such networks trained with different seeds" if count > 1 else "")
                + (f"; then the noisy image is filtered by the Wiener weights of that estimate in every "
                   f"{' x '.join(map(str, block_sizes((1 << 20,) * len(model.spatial), block, len(model.spatial))))} "
                   "block (sliding DCT)."
                   if (block := model.method.wiener_block_used(len(model.spatial))) else "."))
    else:
        design = getattr(model.method, "design", "pd")
        if design == "box":
            what = (f"AP-BSN, blind-box design: a network blind to the {2 * p['blind'] + 1} x {2 * p['blind'] + 1} "
                    f"box around each pixel, averaged over {p.get('ensemble', 1)} flips/rotations, "
                    + ("then the fitted box filter of the residual" if p.get("box_filter")
                       else "without a box filter (none was fitted).")
                    + (", weighed per pixel by the noise's share of the residual variance the network predicts."
                       if p.get("box_filter") and len(p.get("box_knots") or ()) > 1 else
                       "." if p.get("box_filter") else ""))
        else:
            what = (f"AP-BSN, pixel-shuffle design: a blind-spot network on pixel-shuffle sub-images (training "
                    f"stride {p.get('stride_train')}, inference stride {p.get('stride_infer')}), no R3 passes.")
    return what


def readme(model: Any, *, name: str, license: str, test_source: str, halo: int, multiple: int,
           minimum: int, onnx: bool, inverse_error: float | None = None) -> str:
    """The package's ``README.md``; ``inverse_error``: the resampled Anscombe inverse's largest difference to
    n2x's, photons (None without a transform)."""
    cfg, hist = model.config, model.history or {}
    training = cfg.get("training", {})
    norm = cfg["normalization"]
    probe = model.method.params.get("noise_probe") or {}
    probe_text = (f"correlation length {probe.get('correlation_length')} px (AP-BSN's noise probe on the first "
                  "training image)" if probe else "not run for this method (n2x probe measures it on an image)")
    spatial = cfg["spatial"]
    seconds = training.get("train_seconds", hist.get("train_seconds"))
    cites = "\n".join(f"- {text} <{url}>" for text, url in citations(model))
    return f"""# {name}

A self-supervised denoiser trained with napari-n2x {cfg.get('package_version', '')},
exported as a BioImage Model Zoo package. Input: float32 images in the units of the training data, axes
`b, c, {', '.join(spatial.lower())}` ({cfg['n_channels']} channel(s)); output: the denoised image, same shape and
units. Runs without napari-n2x: TorchScript weights{' and ONNX weights' if onnx else ''}.

## Method

{describe_method(model)}

Everything `n2x denoise` does to a tile is inside the weights: {_vst_text(norm, inverse_error)}the
normalisation with the stored statistics ({norm['mode']}: offset {[round(v, 6) for v in norm['offset']]}, scale
{[round(v, 6) for v in norm['scale']]}, {'stabilised' if norm.get('vst') else 'input'} units), channels
{'one at a time' if cfg['channels'] == 'independent' else 'jointly'}, the network and the return to input units.
No pre- or postprocessing is needed.

## Training

- data: shape(s) {training.get('data_shapes')}, axes `{cfg.get('axes')}`; fingerprint (SHA-256 of shapes,
  dtypes and sampled planes) `{training.get('data_hash')}`
- {hist.get('steps', training.get('steps_done', '?'))} steps in {seconds} s on {training.get('device')}
  (batch {training.get('batch_size')}, patches {cfg.get('patch_shape')}), created {cfg.get('created')}
- noise probe: {probe_text}

## Tiling

Sizes along {', '.join(spatial.lower())}: {minimum} + k x {multiple} pixels (the network's multiple is
{multiple}); halo {halo} pixels on every side. Blocks of that shape with that halo give the same result as the
whole image, away from the image border. Within {halo} pixels of the border the result differs slightly from
`n2x denoise`: a consumer pads the image by the halo (symmetrically, bioimageio.core's default), while n2x lets every
layer of the network see zeros beyond the border; no padding mode reproduces that. Spatial sizes must be
multiples of {multiple}: crop or pad the image to that first.

## Test tensors

n2x models do not keep their training data. The test input is {test_source}; the test output is this package's
prediction on it as it is (no padding, as bioimage.io's test runs it).

## Cite

{cites}

## Licence

{license}
"""


def _vst_text(norm: dict, inverse_error: float | None) -> str:
    """The README's words on the variance-stabilising transform (empty without one)."""
    if not norm.get("vst"):
        return ""
    params = "; ".join(f"gain {t['gain']:.6g}, read variance {t['read_variance']:.6g}, offset {t['offset']:.6g}"
                       for t in norm["vst"])
    return (f"the generalised Anscombe transform of the Poisson-Gaussian noise ({params}, input units) and, after "
            "the network, its exact unbiased inverse (Makitalo & Foi), resampled on an evenly spaced table of "
            f"the stabilised value (largest difference to n2x's {inverse_error:.2g} photons), with the closed form "
            "above the table; ")
