"""The noise probe tells pixel-independent noise (the all-pixel blind-spot method, or N2V) from spatially correlated
noise (AP-BSN), and fits the noise model (Gaussian, Poisson-Gaussian, correlated)."""
import json

import numpy as np
import pytest

import n2x
from n2x.data.samples import clean_cells

SIGMA = 25 / 255
#: what the probe recommends for pixel-independent noise: what ``method="auto"`` trains
INDEPENDENT = "bsn"  # what auto picks for pixel-independent noise (n2x/api/_auto.py)


def _box3(white):
    """The benchmark's correlated noise: white noise through a 3 x 3 box filter (wrapped), back to unit std."""
    out = sum(np.roll(np.roll(white, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    return out / out.std()


def _conditions():
    clean = clean_cells((256, 256), seed=1)
    rng = np.random.default_rng(0)
    white = rng.normal(0, 1, clean.shape)
    return clean, {
        "G25": clean + SIGMA * white,
        "PG": rng.poisson(clean * 20) / 20 + rng.normal(0, 0.02, clean.shape),
        "CORR": clean + SIGMA * _box3(white),
    }


@pytest.mark.parametrize("kind,expected,model", [("G25", INDEPENDENT, None), ("PG", INDEPENDENT, "poisson-gaussian"),
                                                 ("CORR", "apbsn", "correlated")])
def test_recommendation(kind, expected, model):
    """(The kind of G25 is checked on the dev images below: these synthetic cells have sharp filaments in nearly
    every bright block, which read as a variance that grows with the signal.)"""
    _, noisy = _conditions()
    report = n2x.probe_noise(noisy[kind].astype(np.float32), "YX")
    assert report.recommended == expected, report.summary()
    if model is not None:
        assert report.kind == model and report.noise_model.kind == model, report.summary()
    assert f"noise model: {report.noise_model.describe()}" in report.summary()
    if expected == "apbsn":
        assert report.correlation_length >= 1 and report.stride > report.correlation_length
        assert report.correlation["X"][1] > 0.4 and report.correlation["Y"][1] > 0.4
    else:
        assert report.stride is None and report.correlation_length == 0
    assert report.summary().splitlines()[-1] == (
        f"recommended method: {expected}" if expected != "apbsn" else
        f"recommended method: apbsn (stride {report.stride})")


@pytest.mark.parametrize("gain,read_sigma,check_read", [(0.05, 0.05, True), (0.1, 0.1, True), (0.2, 0.05, False),
                                                        (0.5, 0.05, False)])
def test_probe_recovers_gain_and_read_noise(gain, read_sigma, check_read):
    """A smooth 512 x 512 image (a quadratic ramp from 0 to 1, so nothing but noise is left in the blocks) with
    Poisson-Gaussian noise of known gain and read noise. The read noise is checked where it is at least comparable
    with the photon noise of the darkest blocks; under much stronger photon noise only its order is identifiable."""
    yy, xx = np.mgrid[0:512, 0:512] / 511
    clean = (xx + yy ** 2) / 2
    rng = np.random.default_rng(0)
    noisy = gain * rng.poisson(clean / gain) + rng.normal(0, read_sigma, clean.shape)
    report = n2x.probe_noise(noisy.astype(np.float32))
    model = report.noise_model
    assert report.kind == "poisson-gaussian" and model.kind == "poisson-gaussian"
    assert model.gain == pytest.approx(gain, rel=0.1)
    if check_read:
        assert model.read_sigma == pytest.approx(read_sigma, rel=0.1)
    else:
        assert read_sigma / 3 < model.read_sigma < 3 * read_sigma
    assert report.noise_fits[0].r2 > 0.9


def test_noise_model_of_the_dev_images():
    """Gaussian / white for G25 and correlated for CORR noise of BENCHMARK.md (the dev images, 512 x 512), and the
    dev set's Poisson-Gaussian noise (gain 0.05, read sigma 0.02) fitted with its gain within 15%."""
    skimage = pytest.importorskip("skimage")
    clean = skimage.data.camera().astype(np.float32)
    clean = (clean - clean.min()) / (clean.max() - clean.min())
    rng = np.random.default_rng(3)
    white = rng.normal(0, 1, clean.shape)
    g25 = n2x.probe_noise((clean + SIGMA * white).astype(np.float32))
    corr = n2x.probe_noise((clean + SIGMA * _box3(white)).astype(np.float32))
    pg = n2x.probe_noise((rng.poisson(clean * 20) / 20 + rng.normal(0, 0.02, clean.shape)).astype(np.float32))
    assert g25.kind == "gaussian" and g25.noise_model.sigma == pytest.approx(SIGMA, rel=0.15)
    assert corr.kind == "correlated" and corr.noise_model.correlation_length >= 1
    assert pg.kind == "poisson-gaussian" and pg.noise_model.gain == pytest.approx(0.05, rel=0.15)


def test_sigma_of_white_noise_in_input_units():
    clean, noisy = _conditions()
    report = n2x.probe_noise((noisy["G25"] * 1000).astype(np.float32))
    assert report.sigma == pytest.approx(SIGMA * 1000, rel=0.2)


def test_stacks_and_channels():
    clean, noisy = _conditions()
    stack = np.stack([noisy["CORR"], noisy["CORR"][::-1]]).astype(np.float32)
    assert n2x.probe_noise(stack, "ZYX").recommended == "apbsn"
    rgb = np.stack([noisy["G25"]] * 3, -1).astype(np.float32)
    report = n2x.probe_noise(rgb, "YXC")
    assert report.recommended == INDEPENDENT and len(report.sigma_per_channel) == 3
    assert len(report.noise_models) == 3 and "(channel 2)" in report.summary()


def test_real_image_is_pixel_independent(real2d_path):
    import tifffile

    report = n2x.probe_noise(tifffile.imread(real2d_path))
    assert report.recommended == INDEPENDENT and report.kind in ("gaussian", "poisson-gaussian")
    assert report.noise_fits[0].gain > 0  # its variance grows with the signal (low photon counts)


def test_too_small_or_flat_image_is_a_clear_error():
    with pytest.raises(n2x.InputError, match="too small or too flat"):
        n2x.probe_noise(np.zeros((64, 64), np.float32))


def test_cli_probe(tmp_path, capsys):
    import tifffile

    from n2x.cli import main

    _, noisy = _conditions()
    path = tmp_path / "corr.tif"
    tifffile.imwrite(path, noisy["CORR"].astype(np.float32))
    assert main(["probe", str(path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("noise model: Gaussian, spatially correlated over ")
    assert out[-2].startswith("recommended method: apbsn (stride ")
    assert out[-1].startswith("auto: AP-BSN, because the noise is correlated over ")
    assert main(["probe", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["recommended"] == "apbsn" and data["correlation"]["X"]["1"] > 0.4
    assert data["kind"] == "correlated" and data["noise_models"][0]["kind"] == "correlated"
    assert data["auto"]["method"] == "apbsn" and data["noise_fits"][0]["r2"] <= 1
