"""``method="auto"`` and ``vst``: the noise probe picks the method (and says why) and switches the Anscombe
transform on for Poisson-Gaussian noise; the model file records both (tests/test_export.py exports a transformed
model)."""
import numpy as np
import pytest
import tifffile

from n2x import api
from n2x.data.samples import clean_cells
from n2x.errors import OptionError

SIGMA = 25 / 255
INDEPENDENT = "bsn"  # the all-pixel blind-spot method, for planes and volumes (api/_auto.py)


def _box3(white):
    out = sum(np.roll(np.roll(white, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    return out / out.std()


@pytest.fixture(scope="module")
def noisy():
    """The dev set's noise kinds on camera (BENCHMARK.md), a 256 x 256 crop."""
    skimage = pytest.importorskip("skimage")
    clean = skimage.data.camera()[128:384, 128:384].astype(np.float32)
    clean = (clean - clean.min()) / (clean.max() - clean.min())
    rng = np.random.default_rng(7)
    white = rng.normal(0, 1, clean.shape)
    return {"G25": (clean + SIGMA * white).astype(np.float32),
            "PG": (rng.poisson(clean * 20) / 20 + rng.normal(0, 0.02, clean.shape)).astype(np.float32),
            "CORR": (clean + SIGMA * _box3(white)).astype(np.float32)}


@pytest.mark.parametrize("kind,method,photon", [("G25", INDEPENDENT, False), ("PG", INDEPENDENT, True),
                                                ("CORR", "apbsn", False)])
def test_auto_picks_the_method_for_the_noise(noisy, kind, method, photon):
    choice = api.choose_method(noisy[kind], "YX")
    assert choice.name == method and choice.automatic
    assert choice.reason.startswith("auto: ") and "\n" not in choice.reason
    assert ("photon noise in its posterior" in choice.reason) == photon and "Anscombe" not in choice.reason
    assert ("correlated over" in choice.reason) == (kind == "CORR")


def test_auto_picks_the_all_pixel_blind_spot_method_for_volumes():
    """A Z stack with white noise trains in 3D by default: auto picks bsn (about 20 times N2V's steps per second in
    3D, api/_auto.py); the same stack trained as planes (dims 2) gets it too, in 2D."""
    skimage = pytest.importorskip("skimage")
    clean = skimage.data.camera()[128:384, 128:384].astype(np.float32) / 255
    stack = np.stack([clean[z:z + 192, :192] for z in range(0, 16, 2)])
    volume = (stack + np.random.default_rng(3).normal(0, SIGMA, stack.shape)).astype(np.float32)
    choice = api.choose_method(volume, "ZYX")
    assert choice.name == "bsn" and choice.reason.endswith("(3D)"), choice.reason
    assert api.probe_noise(volume, "ZYX").recommended == "bsn"
    planes = api.choose_method(volume, "ZYX", dims=2)
    assert planes.name == INDEPENDENT and not planes.reason.endswith("(3D)"), planes.reason
    assert api.choose_method(volume[0], "YX").name == INDEPENDENT


def test_auto_picks_n2n_for_a_partner(noisy):
    choice = api.choose_method(noisy["G25"], "YX", target=noisy["PG"])
    assert choice.name == "n2n" and "partner" in choice.reason and choice.report is None  # no probe needed
    assert api.choose_method(noisy["G25"], "YX", pairs="subsample").name == "n2n"
    named = api.choose_method(noisy["G25"], "YX", "n2v2")
    assert named.name == "n2v2" and not named.automatic


def test_auto_on_an_image_too_small_to_measure():
    choice = api.choose_method(np.zeros((16, 16), np.float32), "YX")
    assert choice.name == INDEPENDENT and "could not be measured" in choice.reason


def _small(image):
    """A 128 x 128 crop: training tests stay fast."""
    return np.ascontiguousarray(image[64:192, 64:192])


def test_auto_training_records_the_choice_and_the_transform(noisy, tmp_path):
    """auto on photon noise: bsn, which models it in its posterior (no transform); N2V under ``vst="auto"`` gets the
    transform, which the model file records and denoising inverts."""
    pg = _small(noisy["PG"])
    auto = api.train(pg, "YX", "auto", steps=2, patch_size=32, batch_size=4, seed=0)
    assert auto.method_name == INDEPENDENT and auto.config["method"]["noise_model"] == "photon"
    assert auto.config["method_choice"]["requested"] == "auto"
    assert auto.config["noise"]["kind"] == "poisson-gaussian" and not auto.config["noise"]["vst"]
    model = api.train(pg, "YX", "n2v", steps=2, patch_size=32, batch_size=4, seed=0)
    assert model.config["noise"]["kind"] == "poisson-gaussian" and model.config["noise"]["vst"]
    (gat,) = model.config["normalization"]["vst"]
    assert gat["kind"] == "generalized-anscombe" and gat["gain"] == pytest.approx(0.05, rel=0.3)
    path = api.save_model(model, tmp_path / "m.n2x")
    loaded = api.load_model(path, device="cpu")
    assert loaded.normalization.vst is not None and loaded.config["method_choice"] == model.config["method_choice"]
    assert api.load_model(api.save_model(auto, tmp_path / "a.n2x")).config["method_choice"]["requested"] == "auto"
    out = api.denoise(loaded, pg)
    assert out.shape == pg.shape and np.isfinite(out).all()
    # The transform is inverted: the result is in the input's units, not the stabilised ones
    assert abs(float(out.mean()) - float(pg.mean())) < 0.1


def test_vst_setting(noisy):
    off = api.train(_small(noisy["PG"]), "YX", "n2v", steps=1, patch_size=32, batch_size=4, seed=0, vst="off")
    assert "vst" not in off.config["normalization"] and not off.config["noise"]["vst"]
    white = api.train(_small(noisy["G25"]), "YX", "n2v", steps=1, patch_size=32, batch_size=4, seed=0)  # not PG
    assert "vst" not in white.config["normalization"] and white.config["noise"]["kind"] == "gaussian"
    with pytest.raises(OptionError, match="vst must be one of"):
        api.train(noisy["PG"], "YX", "n2v", steps=1, vst="maybe")
    with pytest.raises(OptionError, match="does not apply to AP-BSN"):
        api.train(noisy["CORR"], "YX", "apbsn", steps=1, vst="on")
    with pytest.raises(OptionError, match="found none"):
        ramp = np.linspace(0, 1, 128)[None, :] + np.zeros((128, 1))
        white = (ramp + np.random.default_rng(0).normal(0, 0.1, ramp.shape)).astype(np.float32)
        api.train(white, "YX", "n2v", steps=1, vst="on")


def test_cli_train_auto_says_why(noisy, tmp_path, capsys):
    """``n2x train`` (in this process: the command's own code, without a second torch import) prints the reason as
    its first line; ``n2x info`` shows the choice and its noise model; a flag of another method than the one auto
    chose is refused, naming the choice."""
    from n2x.cli import main

    img = tmp_path / "pg.tif"
    tifffile.imwrite(img, _small(noisy["PG"]))
    model_path = str(tmp_path / "m.n2x")
    assert main(["train", str(img), "-o", model_path, "--steps", "2", "--patch", "32", "--batch", "4"]) == 0
    reason = capsys.readouterr().out.splitlines()[0]
    assert reason.startswith(f"auto: {api.method_info(INDEPENDENT).label} (photon noise in its posterior), because")
    assert main(["info", str(tmp_path / "m.n2x")]) == 0
    info = capsys.readouterr().out
    assert '"requested": "auto"' in info and '"noise_model": "photon"' in info
    assert main(["train", str(img), "-o", str(tmp_path / "x.n2x"), "--steps", "1", "--mask-fraction", "0.05"]) == 2
    assert "--method auto (which chose" in capsys.readouterr().err


def test_train_widget_auto_says_why(qtbot, make_napari_viewer, noisy):
    """The widget's first choice is Auto; the reason arrives as a notification and in the status line, and "Check
    noise" shows the fitted model."""
    from napari.utils.notifications import notification_manager

    from n2x._napari.noise_check import verdict
    from n2x._napari.train_widget import TrainWidget

    got = []
    notification_manager.notification_ready.connect(got.append)
    try:
        viewer = make_napari_viewer()
        viewer.add_image(_small(noisy["PG"]), name="pg")
        widget = TrainWidget(viewer)
        assert widget.methods.combo.currentData() == "auto" and widget.methods.combo.currentIndex() == 0
        widget.set_length(2, "steps")
        widget.control("patch_size").setText("32")
        widget.control("batch_size").setValue(4)
        widget.control("preview").setChecked(False)
        widget.control("denoise_after").setChecked(False)
        assert widget.train()
        qtbot.waitUntil(lambda: widget.model is not None and not widget.busy, timeout=120_000)
    finally:
        notification_manager.notification_ready.disconnect(got.append)
    reasons = [str(n.message) for n in got if "auto: " in str(n.message)]
    assert reasons and "photon noise in its posterior" in reasons[0]
    assert widget.model.config["method_choice"]["requested"] == "auto"
    line = verdict(api.probe_noise(noisy["PG"], "YX"))
    assert "Poisson-Gaussian (gain 0.0" in line and "fit R²" in line and "photon noise in its posterior" in line


def test_vst_auto_leaves_photon_noise_to_a_method_that_models_it():
    """Poisson-Gaussian noise over a narrow range of intensities (0.2-0.6, 20 photons at 1): the probe finds it, but
    its variance grows less than VST_MIN_SPREAD-fold over the flat regions. N2V (MSE, any noise variance) trains
    on the raw data. bsn, whose posterior weighs the pixel by the noise variance, trains on the raw data too and
    models the photon noise as a line in the signal; with ``vst="on"`` it trains on stabilised data with one
    variance. White noise that the probe calls Poisson-Gaussian on fine texture (a loose fit) gets one variance."""
    skimage = pytest.importorskip("skimage")
    clean = skimage.data.camera()[128:384, 128:384].astype(np.float32)
    clean = 0.2 + 0.4 * (clean - clean.min()) / (clean.max() - clean.min())
    rng = np.random.default_rng(7)
    pg = (rng.poisson(clean * 20) / 20 + rng.normal(0, 0.02, clean.shape)).astype(np.float32)
    report = api.probe_noise(pg, "YX")
    assert report.kind == "poisson-gaussian" and max(f.spread for f in report.noise_fits) < 2.5
    n2v = api.train(pg, "YX", "n2v", steps=1, patch_size=32, batch_size=4, seed=0)
    assert "vst" not in n2v.config["normalization"] and not n2v.config["noise"]["vst"]
    tiny = dict(steps=1, patch_size=32, batch_size=1, seed=0, network={"features": 8})
    bsn = api.train(pg, "YX", "bsn", **tiny)
    assert bsn.normalization.vst is None and bsn.config["method"]["noise_model"] == "photon"
    # the gain in normalised units: the data's 1/20 per unit of signal, over the normalisation's scale
    scale = bsn.config["normalization"]["scale"][0]
    assert bsn.config["method"]["noise_gain"][0] == pytest.approx(1 / 20 / scale, rel=0.25)
    stabilised = api.train(pg, "YX", "bsn", vst="on", **tiny)
    assert stabilised.normalization.vst is not None and "noise_model" not in stabilised.config["method"]
    off = api.train(pg, "YX", "bsn", vst="off", **tiny)
    assert off.normalization.vst is None and "noise_model" not in off.config["method"]
    cells = clean_cells((256, 256), seed=3)
    white = (cells + np.random.default_rng(4).normal(0, 0.1, cells.shape)).astype(np.float32)
    report = api.probe_noise(white, "YX")
    assert report.kind == "poisson-gaussian" and report.noise_fits[0].r2 < 0.93  # the probe's false call
    loose = api.train(white, "YX", "bsn", **tiny)
    assert loose.normalization.vst is None and "noise_model" not in loose.config["method"]
