"""Write a trained model as a BioImage Model Zoo package (bioimage.io model spec 0.5, a ``.zip``).

The package holds TorchScript weights of the self-contained wrapper (:mod:`.modules`: a consumer needs no n2x),
ONNX weights where the network exports cleanly, test input/output tensors, a cover image (noisy | denoised) and a
README (:mod:`.docs`). Its tensor descriptions carry the tiling: spatial sizes ``minimum + k * multiple`` and an
output halo of the model's halo, so blockwise prediction in bioimageio.core or deepImageJ is seamless.
"""
from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .._version import __version__
from ..errors import N2xError
from .docs import DEFAULT_AUTHOR, DEFAULT_LICENSE, citations, describe_method, readme
from .anscombe import MAX_INVERSE_ERROR, inverse_error
from .modules import build_module, refusal
from .weights import check_shapes, trace_torchscript, write_onnx

#: what to install when bioimageio.spec is missing (the front doors print it as one line)
INSTALL_HINT = 'install it with: pip install "napari-n2x[bmz]"'
#: largest test tensor along each spatial axis, pixels (test tensors travel in every package: keep them small)
TEST_SIZE = {2: 256, 3: 64}


def require_spec() -> Any:
    """The ``bioimageio.spec`` module, or :class:`N2xError` saying what to install."""
    try:
        import bioimageio.spec as spec
        import bioimageio.spec.model.v0_5  # noqa: F401
    except ImportError:
        raise N2xError("exporting to the BioImage Model Zoo needs the bioimageio.spec package",
                       hint=INSTALL_HINT) from None
    return spec


def geometry(model: Any) -> tuple[int, int, int]:
    """``(halo, multiple, minimum)`` in pixels: the output halo, the size step, and the smallest block (two halos
    plus one step, so a block always has a core)."""
    halo, multiple = int(model.halo), int(model.multiple)
    return halo, multiple, 2 * halo + multiple


def check_values(model: Any) -> tuple[float, Callable[[np.ndarray], np.ndarray]]:
    """``(scale, to_input)`` for the weights' checks: the data's spread in input units (half the largest span, over
    channels, of the values one normalised unit below and above the offset) and the map of standard normal values
    ``(B, C, *spatial)`` to input units (the model's inverse normalisation, its Anscombe inverse included)."""
    norm = model.normalization
    span = norm.invert(np.array([[-1.0, 1.0]] * model.n_channels, np.float32), channel_axis=0)
    return float(max(np.abs(span[:, 1] - span[:, 0]).max() / 2, 1e-12)), lambda z: norm.invert(z, channel_axis=1)


def valid_size(n: int, minimum: int, multiple: int) -> int:
    """The largest size ``minimum + k * multiple`` not above ``n`` pixels (``minimum`` when ``n`` is smaller)."""
    return minimum + max(0, n - minimum) // multiple * multiple


def test_input(model: Any, image: Any | None, axes: str | None) -> tuple[np.ndarray, str]:
    """A ``(1, C, *spatial)`` float32 test input of a size the package accepts, and a sentence saying where it
    comes from.

    From ``image`` (the first sample, a top-left crop of at most :data:`TEST_SIZE` pixels per axis, cut to a valid
    size; an axis shorter than the package's minimum is mirrored up to it), or, without one, a deterministic
    synthetic image of the model's axes and channels in the units of its training data (cells with Gaussian
    noise, scaled by the stored normalisation).
    """
    nd = len(model.spatial)
    halo, m, minimum = geometry(model)
    if image is not None:
        layout = model.layout_for(tuple(np.shape(image)), axes)
        block = layout.read(image, 0)
        sizes = [valid_size(min(n, TEST_SIZE[nd]), minimum, m) for n in block.shape[1:]]
        crop = block[(slice(None),) + tuple(slice(0, s) for s in sizes)]
        pads = [(0, 0)] + [(0, s - n) for s, n in zip(sizes, crop.shape[1:])]
        if any(p[1] for p in pads):
            crop = np.pad(crop, pads, mode="symmetric")
        return (np.ascontiguousarray(crop[None], np.float32),
                f"a {' x '.join(map(str, sizes))} crop (first sample, top-left corner) of the image given at export"
                + (", mirrored at its end up to the package's minimum size" if any(p[1] for p in pads) else ""))
    from ..data.samples import clean_cells

    shape = tuple(valid_size(max(n, minimum), minimum, m) for n in ((32, 64, 64) if nd == 3 else (128, 128)))
    rng = np.random.default_rng(0)
    norm = model.normalization
    chans = []
    for c in range(model.n_channels):
        cells = clean_cells(shape, seed=c)
        noisy = (cells - cells.mean()) / (cells.std() + 1e-6) * 0.8 + rng.normal(0, 0.6, shape)
        chans.append(noisy * norm.scale[c] + norm.offset[c])
    x = np.stack(chans)[None].astype(np.float32)
    return x, (f"a deterministic synthetic image ({' x '.join(map(str, shape))}: cells with Gaussian noise, "
               "scaled to the training data's mean and spread), because no image was given at export")


def write_cover(path: Path, noisy: np.ndarray, denoised: np.ndarray) -> None:
    """A 2:1 PNG: the test input (left) and its denoised version (right), first channel, middle plane, both on the
    noisy image's 1-99.8 percentile scale."""
    import imageio.v3 as iio

    a, b = noisy[0, 0], denoised[0, 0]
    while a.ndim > 2:
        a, b = a[a.shape[0] // 2], b[b.shape[0] // 2]
    n = min(a.shape)
    a, b = a[:n, :n], b[:n, :n]
    lo, hi = np.percentile(a, (1, 99.8))
    img = np.concatenate([a, b], axis=1)
    img = np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1)
    if n < 256:  # covers are shown at a few hundred pixels: enlarge small ones without smoothing
        f = -(-256 // n)
        img = np.kron(img, np.ones((f, f)))
    iio.imwrite(path, (img * 255).round().astype(np.uint8))


def _name_ok(name: str) -> str:
    """A model name bioimage.io accepts (letters, digits, space, ``_-.()``), from ``name``."""
    keep = "".join(ch if ch.isalnum() or ch in " _-.()" else " " for ch in name)
    return " ".join(keep.split())[:128] or "n2x denoiser"


def write_package(model: Any, path: Path, *, name: str | None = None, authors: Sequence[str] = (),
                  license: str = DEFAULT_LICENSE, test_image: Any | None = None, test_axes: str | None = None,
                  onnx: bool = True) -> Path:
    """Write ``model`` (a :class:`n2x.model.Model`) as a bioimage.io package at ``path`` (a ``.zip``)."""
    require_spec()
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bio

    why = refusal(model)
    if why is not None:
        hint = "retrain with {r3_passes} 0 (or the blind-box design), which n2x exports exactly" if "R3" in why else ""
        raise N2xError(f"cannot export this model: {why}", hint=hint)
    module = build_module(model)
    inverse = None  # the resampled Anscombe inverse's largest difference to n2x's, photons
    if module.vst is not None:
        inverse = inverse_error(module.vst, model.normalization.vst)
        if not inverse <= MAX_INVERSE_ERROR:
            raise N2xError(f"the package's Anscombe inverse differs from n2x's by {inverse:.3g} photons (more than "
                           f"{MAX_INVERSE_ERROR:g}); it cannot be exported")
    halo, multiple, minimum = geometry(model)
    nd = len(model.spatial)
    c = model.n_channels
    scale, to_input = check_values(model)
    shapes = check_shapes(minimum, multiple, nd, c)
    traced = trace_torchscript(module, shapes, scale, to_input)
    x, test_source = test_input(model, test_image, test_axes)
    with torch.no_grad():  # as bioimage.io's test runs it: the test input as it is, no padding, no cropping
        y = traced(torch.from_numpy(x)).numpy()
    name = _name_ok(name or f"n2x {model.method_name} denoiser")

    with tempfile.TemporaryDirectory(prefix="n2x-export-") as tmp:
        d = Path(tmp)
        np.save(d / "test_input.npy", x)
        np.save(d / "test_output.npy", y)
        torch.jit.save(traced, str(d / "weights_torchscript.pt"))
        opset = write_onnx(module, d / "weights.onnx", shapes, multiple, scale, to_input) if onnx else None
        write_cover(d / "cover.png", x, y)
        (d / "README.md").write_text(readme(model, name=name, license=license, test_source=test_source, halo=halo,
                                            multiple=multiple, minimum=minimum, onnx=opset is not None,
                                            inverse_error=inverse),
                                     encoding="utf-8")
        space = list(model.spatial.lower())
        chan = bio.ChannelAxis(channel_names=[bio.Identifier(f"channel{i}") for i in range(c)])
        in_axes = [bio.BatchAxis(), chan] + [
            bio.SpaceInputAxis(id=bio.AxisId(a), size=bio.ParameterizedSize(min=minimum, step=multiple))
            for a in space]
        out_axes = [bio.BatchAxis(), chan] + [
            bio.SpaceOutputAxisWithHalo(id=bio.AxisId(a), halo=halo,
                                        size=bio.SizeReference(tensor_id=bio.TensorId("input"), axis_id=bio.AxisId(a)))
            for a in space]
        inputs = [bio.InputTensorDescr(
            id=bio.TensorId("input"), axes=in_axes, test_tensor=bio.FileDescr(source=d / "test_input.npy"),
            # No ``pad``: consumers then pad symmetrically (bioimageio.core's default), which is what the test output
            # assumes. Declaring SymmetricPadding explicitly is written as ``pad: {}`` by bioimageio.spec 0.5.12 and
            # read back as constant zeros. No padding mode reproduces n2x at the border (the network's own zero
            # padding of every layer), so symmetric, the kinder to the image, is kept.
            description=f"noisy image, float32, in the units of the training data; spatial sizes multiples of "
                        f"{multiple}")]
        outputs = [bio.OutputTensorDescr(
            id=bio.TensorId("output"), axes=out_axes, test_tensor=bio.FileDescr(source=d / "test_output.npy"),
            description="denoised image, float32, same units as the input")]
        weights = bio.WeightsDescr(
            torchscript=bio.TorchscriptWeightsDescr(source=d / "weights_torchscript.pt",
                                                    pytorch_version=bio.Version(torch.__version__.split("+")[0])),
            onnx=bio.OnnxWeightsDescr(source=d / "weights.onnx", opset_version=opset,
                                      parent="torchscript") if opset is not None else None)
        descr = bio.ModelDescr(
            name=name,
            description=describe_method(model)[:1024],
            covers=[bio.FileDescr(source=d / "cover.png")],
            authors=[bio.Author(name=a) for a in (authors or [DEFAULT_AUTHOR])],
            cite=[bio.CiteEntry(text=t, url=bio.HttpUrl(u)) for t, u in citations(model)],
            license=bio.LicenseId(license),
            documentation=bio.FileDescr(source=d / "README.md"),
            tags=["denoising", "self-supervised", model.method_name, f"{nd}d", "napari-n2x"],
            inputs=inputs, outputs=outputs, weights=weights,
            timestamp=datetime.now(timezone.utc),
            config={"n2x": {"package_version": __version__, "method": model.config["method"]["name"],
                            "halo": halo, "multiple": multiple, "weights_sha256": model.weights_hash()}},
        )
        tmp_zip = d / "package.zip"
        save_bioimageio_package(descr, output_path=tmp_zip)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written in the temporary folder, then moved: a failed export leaves no half-written package behind.
        partial = path.with_name(path.name + ".part")
        os.replace(tmp_zip, partial) if _same_fs(tmp_zip, path) else partial.write_bytes(tmp_zip.read_bytes())
        os.replace(partial, path)
    return path


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b.parent).st_dev
    except OSError:
        return False
