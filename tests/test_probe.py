"""The noise probe tells pixel-independent noise (N2V) from spatially correlated noise (AP-BSN)."""
import json

import numpy as np
import pytest

import n2x
from n2x.data.samples import clean_cells

SIGMA = 25 / 255


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


@pytest.mark.parametrize("kind,expected", [("G25", "n2v"), ("PG", "n2v"), ("CORR", "apbsn")])
def test_recommendation(kind, expected):
    _, noisy = _conditions()
    report = n2x.probe_noise(noisy[kind].astype(np.float32), "YX")
    assert report.recommended == expected, report.summary()
    if expected == "apbsn":
        assert report.correlation_length >= 1 and report.stride > report.correlation_length
        assert report.correlation["X"][1] > 0.4 and report.correlation["Y"][1] > 0.4
    else:
        assert report.stride is None and report.correlation_length == 0
    assert report.summary().splitlines()[-1] == (
        "recommended method: n2v" if expected == "n2v" else f"recommended method: apbsn (stride {report.stride})")


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
    assert report.recommended == "n2v" and len(report.sigma_per_channel) == 3


def test_real_image_is_pixel_independent(real2d_path):
    import tifffile

    assert n2x.probe_noise(tifffile.imread(real2d_path)).recommended == "n2v"


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
    assert out[-1].startswith("recommended method: apbsn (stride ")
    assert main(["probe", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["recommended"] == "apbsn" and data["correlation"]["X"]["1"] > 0.4
