"""BioImage Model Zoo export: every method and design exports, passes bioimageio.core's test_model, and the package
predicts what ``n2x denoise`` predicts (untiled and blockwise, ONNX too), away from one halo of the border; with
the Anscombe transform too."""
from __future__ import annotations

import builtins
import io
import warnings
import zipfile

import numpy as np
import pytest
import torch

import n2x
from n2x.errors import N2xError
from n2x.model import Model
from n2x.nets.ensemble import NetworkEnsemble

bioimageio_core = pytest.importorskip("bioimageio.core")

#: (label, training options): a few steps of small networks; the package must compute what these compute
CASES = {
    "n2v": dict(method="n2v", patch_size=32),
    "n2v2": dict(method="n2v2", patch_size=32),
    "n2n-pair": dict(method="n2n", patch_size=32, network={"features": 8, "residual": False}),
    "n2n-residual": dict(method="n2n", patch_size=32),
    "apbsn-box": dict(method="apbsn", design="box", blind=1, ensemble=4, patch_size=64),
    "apbsn-pd": dict(method="apbsn", stride_train=2, stride_infer=2, r3_passes=0, patch_size=64),
    # The shifted U-Net with 2 poolings (multiple 4, halo 44; the default 3 give a halo of 96, too wide for SHAPE)
    "bsn-unet": dict(method="bsn", trunk="unet", ensemble=2, patch_size=32, network={"features": 8, "depth": 2}),
    # Poisson-Gaussian data: the generalised Anscombe transform and its exact unbiased inverse inside the package,
    # around the all-pixel blind spot (what method auto and vst auto train on a small image of such noise)
    "bsn-dilated-vst": dict(method="bsn", trunk="dilated", ensemble=2, patch_size=32, vst="on"),
    # the same data with vst auto (what method auto trains on photon noise): the noise variance is a line in the
    # prior mean, inside the package
    "bsn-photon": dict(method="bsn", trunk="dilated", ensemble=2, patch_size=32),
    # two networks whose posterior means are averaged (what a memorising run's leftover budget trains)
    "bsn-members": dict(method="bsn", trunk="dilated", ensemble=2, patch_size=32, members=2),
}
#: the cases trained on the Poisson-Gaussian image
PHOTON_CASES = ("bsn-dilated-vst", "bsn-photon")
#: the image compared: larger than one block, sizes multiples of every model's multiple (8)
SHAPE = (144, 176)
#: measured max |package - n2x denoise| per case and mode, printed at the end (for the report)
MEASURED: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def images(cells2d):
    """(Gaussian noisy image, its N2N partner, a Poisson-Gaussian noisy image), 256 x 256, 0.05-1 intensity."""
    from n2x.api import noisy_sample

    noisy, clean = cells2d
    partner = (clean + np.random.default_rng(7).normal(0, 0.1, clean.shape)).astype(np.float32)
    return noisy, partner, noisy_sample("2d", "pg", seed=3)[0]


def _image(label: str, images) -> np.ndarray:
    """The noisy image of ``label``'s case: Poisson-Gaussian for :data:`PHOTON_CASES`, else Gaussian."""
    return images[2] if label in PHOTON_CASES else images[0]


def _train(label: str, images) -> n2x.Model:
    noisy, partner = _image(label, images), images[1]
    kw = dict(CASES[label])
    kw.setdefault("network", {"features": 8})
    if kw["method"] == "n2n":
        kw["target"] = partner[:128, :128]
    members = kw.pop("members", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = [n2x.train(noisy[:128, :128], "YX", steps=2, batch_size=4, seed=s, device="cpu", **kw)
                  for s in range(members)]
    if members == 1:
        return models[0]
    first = models[0]
    member = first.config["network"]
    config = {**first.config, "network": {"name": "ensemble", "member": member, "count": members}}
    return Model(first.method, NetworkEnsemble.of([m.net for m in models], member), config, first.history)


@pytest.mark.parametrize("label", list(CASES))
def test_package_matches_denoise(label, images, tmp_path):
    from bioimageio.core import Tensor, load_model_description, predict, test_model

    model = _train(label, images)
    image = _image(label, images)
    if label == "bsn-photon":
        assert model.config["method"]["noise_model"] == "photon" and model.normalization.vst is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = n2x.export_bioimageio(model, tmp_path / label, test_image=image, test_axes="YX",
                                     authors="A. Tester, B. Tester")
    assert path.suffix == ".zip" and path.exists()
    summary = test_model(path)
    assert summary.status == "passed", [(d.name, [e.msg for e in d.errors]) for d in summary.details
                                        if d.status != "passed"]

    noisy = image[:SHAPE[0], :SHAPE[1]]
    ref = n2x.denoise(model, noisy)
    h, m = model.halo, model.multiple
    inner = slice(h, -h)  # bioimageio.core pads the border by the halo; n2x's network pads every layer with zeros
    descr = load_model_description(path)
    x = Tensor.from_numpy(noisy[None, None], dims=("batch", "channel", "y", "x"))
    # Blocks whose core is about 48 pixels: several blocks across the image.
    n_blocks = max(0, (48 - m) // m)
    got = {}
    for mode, bs in (("untiled", None), ("blockwise", n_blocks)):
        out = predict(model=descr, inputs={"input": x}, blocksize_parameter=bs)
        y = out.members["output"].data.values[0, 0]
        assert y.shape == noisy.shape
        got[mode] = float(np.abs(y - ref)[inner, inner].max())
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        assert {"README.md", "cover.png", "test_input.npy", "test_output.npy", "weights_torchscript.pt"} <= names
        readme = z.read("README.md").decode()
        assert model.config["training"]["data_hash"] in readme and "arxiv.org" in readme
        if CASES[label].get("vst") == "on":  # the case is what it claims: a transformed model, said so
            assert model.normalization.vst is not None and "exact unbiased inverse" in readme
        assert "weights.onnx" in names, "every method exports ONNX weights here"
        import onnxruntime as ort

        session = ort.InferenceSession(z.read("weights.onnx"), providers=["CPUExecutionProvider"])
        ts = torch.jit.load(io.BytesIO(z.read("weights_torchscript.pt")))
    yo = session.run(None, {"input": noisy[None, None].copy()})[0][0, 0]
    with torch.no_grad():
        yt = ts(torch.from_numpy(noisy[None, None].copy())).numpy()[0, 0]
    got["onnx-vs-torchscript"] = float(np.abs(yo - yt).max())
    MEASURED[label] = got
    print(f"\n{label}: halo {h}, multiple {m}, max |package - n2x denoise| {got}")
    tol = 1e-5 * max(1.0, float(np.abs(ref).max()))
    assert got["untiled"] <= tol and got["blockwise"] <= tol
    # Two runtimes with their own convolution kernels sum in their own order: on an AMD EPYC, AP-BSN's box network
    # differed by 1.1e-5 between ONNX Runtime and TorchScript (a few float32 roundings over its depth)
    assert got["onnx-vs-torchscript"] <= 5 * tol


def test_anscombe_module_matches_n2x():
    """The package's transform and inverse (two channels, one of them with a black level) against n2x's, from below
    the inverse's table to above it, where the closed form takes over."""
    from n2x.export.anscombe import MAX_INVERSE_ERROR, AnscombeTransform, inverse_error
    from n2x.noise import GeneralizedAnscombe

    gats = [GeneralizedAnscombe(0.05, 0.0004), GeneralizedAnscombe(3.0, 90.0, 100.0)]
    module = AnscombeTransform(gats, ndim=2)
    error = inverse_error(module, gats)
    print(f"\nresampled Anscombe inverse: max |package - n2x| {error:.2g} photons")
    assert error <= MAX_INVERSE_ERROR / 2
    rng = np.random.default_rng(0)
    photons = rng.uniform(0, 400, (2, 2, 16, 16))  # the table ends at 200 photons
    x = np.stack([photons[:, c] * g.gain + g.offset for c, g in enumerate(gats)], 1).astype(np.float32)
    with torch.no_grad():
        d = module.stabilise(torch.from_numpy(x))
        back = module.invert(d).numpy()
    for c, g in enumerate(gats):
        assert np.abs(d[:, c].numpy() - g.forward(x[:, c])).max() < 1e-5
        assert np.abs(back[:, c] - g.inverse(d[:, c].numpy())).max() < 2e-4 * g.gain + 1e-6 * np.abs(x[:, c]).max()


def test_r3_is_refused_with_the_reason(images, tmp_path):
    noisy = images[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = n2x.train(noisy[:128, :128], "YX", "apbsn", stride_train=2, r3_passes=2, steps=1, patch_size=64,
                          batch_size=2, seed=0, device="cpu", network={"features": 8})
    with pytest.raises(N2xError, match="R3") as info:
        n2x.export_bioimageio(model, tmp_path / "r3.zip")
    assert "r3_passes" in str(info.value)
    assert not (tmp_path / "r3.zip").exists()


def test_synthetic_test_input_and_existing_file(trained_n2v, tmp_path):
    path = n2x.export_bioimageio(trained_n2v, tmp_path / "m.zip", onnx=False)
    with zipfile.ZipFile(path) as z:
        assert "weights.onnx" not in z.namelist()
        assert "synthetic" in z.read("README.md").decode()
        assert "Unknown" in z.read("rdf.yaml").decode()  # the default author says to name the authors
    with pytest.raises(n2x.OutputExistsError):
        n2x.export_bioimageio(trained_n2v, path)


def test_without_the_extra_one_line(trained_n2v, tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_bioimageio(name, *args, **kwargs):
        if name.startswith("bioimageio"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bioimageio)
    with pytest.raises(N2xError) as info:
        n2x.export_bioimageio(trained_n2v, tmp_path / "m.zip")
    assert 'pip install "napari-n2x[bmz]"' in str(info.value)
    model_file = n2x.save_model(trained_n2v, tmp_path / "m.n2x")
    from n2x.cli import main

    assert main(["export", str(model_file), "-o", str(tmp_path / "m.zip")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("n2x: error:") and "napari-n2x[bmz]" in err[0]
    assert not (tmp_path / "m.zip").exists()


def test_cli_export(trained_n2v, tmp_path, real2d_path, capsys):
    from n2x.cli import main

    model_file = n2x.save_model(trained_n2v, tmp_path / "m.n2x")
    out = tmp_path / "pkg"
    assert main(["export", str(model_file), "-o", str(out), "--no-onnx", "--name", "My model",
                 "--authors", "Ada, Grace", "--license", "MIT", "--test-image", real2d_path]) == 0
    assert "wrote" in capsys.readouterr().out
    rdf = zipfile.ZipFile(tmp_path / "pkg.zip").read("rdf.yaml").decode()
    assert "My model" in rdf and "Grace" in rdf and "MIT" in rdf
    assert main(["export", str(model_file), "-o", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err


def test_widget_export_button(make_napari_viewer, trained_n2v, cells2d, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    from n2x._napari.train_widget import TrainWidget

    viewer = make_napari_viewer()
    layer = viewer.add_image(cells2d[0], name="cells")
    widget = TrainWidget(viewer)
    assert not widget.export_btn.isEnabled()
    widget._train_layer, widget._train_axes = layer, "YX"
    widget._on_trained(trained_n2v)
    assert widget.export_btn.isEnabled()
    target = tmp_path / "from_widget.zip"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    widget.export_btn.click()
    assert target.exists()
    with zipfile.ZipFile(target) as z:
        assert "crop" in z.read("README.md").decode()  # the training layer gave the test input


@pytest.mark.parametrize("channels", ["independent", "joint"])
def test_two_channels(cells2d, channels, tmp_path):
    noisy = np.stack([cells2d[0], 2 * cells2d[0][::-1] + 5])[:, :96, :96].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = n2x.train(noisy, "CYX", "n2v", steps=2, patch_size=32, batch_size=4, seed=0, device="cpu",
                          channels=channels, network={"features": 8})
        path = n2x.export_bioimageio(model, tmp_path / "c2.zip", onnx=False)
    ts = torch.jit.load(io.BytesIO(zipfile.ZipFile(path).read("weights_torchscript.pt")))
    with torch.no_grad():
        y = ts(torch.from_numpy(noisy[None])).numpy()[0]
    h = model.halo
    assert np.abs(y - n2x.denoise(model, noisy))[:, h:-h, h:-h].max() < 1e-5 * np.abs(noisy).max()


def test_3d_bsn_package_with_its_cube_filter(tmp_path):
    """A volume model: the Wiener filter in cubes is inside both weights (2D convolutions only: ONNX Runtime refused
    the 3D ones the exporter wrote), and they compute what n2x does."""
    from n2x.api import noisy_sample

    noisy = noisy_sample("3d", "gaussian", seed=1)[0][:, :64, :64].astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = n2x.train(noisy, "ZYX", "bsn", steps=2, batch_size=2, patch_size=32, seed=0, device="cpu",
                          network={"features": 8})
        path = n2x.export_bioimageio(model, tmp_path / "bsn3d", test_image=noisy, test_axes="ZYX",
                                     authors="A. Tester")
    assert model.method.wiener_block_used(3) == 8
    ref = n2x.denoise(model, noisy)
    with zipfile.ZipFile(path) as z:
        assert "weights.onnx" in z.namelist() and "every 4 x 8 x 8 block" in z.read("README.md").decode()
        import onnxruntime as ort

        session = ort.InferenceSession(z.read("weights.onnx"), providers=["CPUExecutionProvider"])
        ts = torch.jit.load(io.BytesIO(z.read("weights_torchscript.pt")))
    with torch.no_grad():
        yt = ts(torch.from_numpy(noisy[None, None].copy())).numpy()[0, 0]
    yo = session.run(None, {"input": noisy[None, None].copy()})[0][0, 0]
    assert np.abs(yt - ref).max() < 1e-5 and np.abs(yo - yt).max() < 1e-4
