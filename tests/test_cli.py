"""The real ``n2x`` command on real TIFF files."""
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from conftest import run_cli as run


def test_train_then_denoise_real_tiff(tmp_path, real2d_path):
    img = tifffile.imread(real2d_path)[:192, :192]
    src = tmp_path / "nuclei.tif"
    tifffile.imwrite(src, img)
    before = src.read_bytes()
    model = tmp_path / "model.n2x"
    run("train", src, "--method", "n2v", "--axes", "YX", "--steps", "8", "--patch", "32", "--batch", "4",
        "--device", "cpu", "--precision", "float32", "-o", model, "-q")
    assert model.exists()
    out = tmp_path / "out.tif"
    run("denoise", model, src, "-o", out, "-q")
    res = tifffile.imread(out)
    assert res.shape == img.shape and res.dtype == np.float32
    assert src.read_bytes() == before  # the input is never modified
    # an existing output is not overwritten without --overwrite
    proc = run("denoise", model, src, "-o", out, check=False)
    assert proc.returncode == 2 and "exists" in proc.stderr and "Traceback" not in proc.stderr
    run("denoise", model, src, "-o", out, "--overwrite", "-q")
    info = run("info", model)
    assert '"name": "n2v"' in info.stdout
    assert '"precision": "float32"' in info.stdout


@pytest.mark.parametrize("args,message", [
    (["denoise", "missing.n2x", "x.tif", "-o", "y.tif"], "does not exist"),
    (["train", "missing.tif", "-o", "m.n2x", "--steps", "1"], "does not exist"),
    (["train", "{img}", "-o", "m.n2x", "--time", "soon"], "duration"),
    (["train", "{img}", "-o", "m.n2x", "--steps", "1", "--method", "bogus"], "unknown method"),
    (["train", "{img}", "-o", "m.n2x", "--steps", "1", "--precision", "half"], "precision must be one of"),
    (["denoise", "{bad}", "{img}", "-o", "y.tif"], "not an n2x model"),
])
def test_errors_are_one_line(tmp_path, args, message):
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, np.random.rand(64, 64).astype(np.float32))
    bad = tmp_path / "bad.n2x"
    bad.write_text("garbage")
    args = [a.format(img=img, bad=bad) for a in args]
    proc = subprocess.run([sys.executable, "-m", "n2x.cli", *args], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_demo_reports_psnr_gain(tmp_path):
    proc = run("demo", "--steps", "60", "--device", "cpu", "-q", "-o", tmp_path)
    line = [l for l in proc.stdout.splitlines() if "gain" in l][0]
    gain = float(line.split("gain")[1].split("dB")[0])
    assert gain > 1.0
    assert (tmp_path / "sample_model.n2x").exists()


def test_bsn_past_its_passes_over_a_small_image_trains_more_networks(tmp_path):
    # 128 x 128: a 40 x 40 patch, 4 per step, so 150 passes are 413 steps; 1000 steps train a second network of 413
    # and a third of the 174 left (more than a quarter of the first's)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    clean = 0.5 + 0.3 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    src = tmp_path / "small.tif"
    tifffile.imwrite(src, (clean + 0.1 * rng.normal(size=clean.shape)).astype(np.float32))
    model = tmp_path / "small.n2x"
    proc = run("train", src, "--method", "bsn", "--axes", "YX", "--steps", "1000", "--device", "cpu",
               "--seed", "0", "-o", model)
    assert "one network learns what it can from these data in 413 steps" in proc.stdout
    assert "of 3 networks kept" in proc.stdout
    info = run("info", model)
    assert '"mean_offset"' in info.stdout, "the prior mean's offset is measured after training and recorded"
