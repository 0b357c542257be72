"""The command line and the engine with the inputs a new user brings: damaged files, constant or tiny images, files
without axis metadata, outputs that cannot be written, and a command line that answers at once."""
import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

import n2x
from conftest import run_cli as run
from n2x import api

TRAIN = ["--steps", "1", "--batch", "2", "--device", "cpu", "-q"]


def _one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("n2x: error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_truncated_tiff_is_one_line_for_training_and_denoising(tmp_path):
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, np.random.default_rng(0).random((128, 128), dtype=np.float32))
    raw = good.read_bytes()
    bad = tmp_path / "bad.tif"
    bad.write_bytes(raw[: len(raw) // 2])  # the header is whole, the pixel data stop half-way
    _one_line_error(run("train", bad, "-o", tmp_path / "m.n2x", *TRAIN, check=False), str(bad), "damaged")
    model = tmp_path / "ok.n2x"
    run("train", good, "-o", model, "--patch", "32", *TRAIN)
    _one_line_error(run("denoise", model, bad, "-o", tmp_path / "out.tif", check=False), str(bad), "damaged")
    with pytest.raises(n2x.InputError, match="damaged"):  # the api's callers get the same typed error
        api.open_image(bad).data.compute()


def test_one_size_rule_and_a_word_for_a_constant_image(tmp_path):
    tiny = tmp_path / "tiny.tif"
    tifffile.imwrite(tiny, np.random.default_rng(0).random((7, 9), dtype=np.float32))
    line = _one_line_error(run("train", tiny, "-o", tmp_path / "t.n2x", *TRAIN, check=False), "too small",
                           f"at least {api.MIN_TRAIN_SIZE} pixels")
    with pytest.raises(n2x.InputError) as caught:  # the same rule and message through the api
        api.check_trainable((7, 9), "YX")
    assert str(caught.value) in line
    assert api.check_trainable((16, 16), "YX").spatial_shape == (16, 16)
    assert api.check_trainable((4, 16, 16), "ZYX").spatial_shape == (4, 16, 16)  # thin stacks train in 3D
    with pytest.raises(n2x.InputError, match="Z at least 4 planes"):
        api.check_trainable((3, 64, 64), "ZYX")
    assert not (tmp_path / "t.n2x").exists()

    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.full((64, 64), 3, np.float32))
    proc = run("train", flat, "-o", tmp_path / "f.n2x", "--patch", "32", *TRAIN)
    assert "n2x: warning: the image is constant (every pixel is 3)" in proc.stderr
    assert api.check_values(np.full((20, 20), 3.0)) == api.check_values(np.full((5, 5), 3.0))
    assert "constant" in api.check_values(np.full((20, 20), 3.0))
    assert api.check_values(np.random.default_rng(0).random((20, 20))) is None
    with pytest.raises(n2x.InputError, match="NaN"):
        api.check_values(np.array([[1.0, np.nan]]))


def test_nan_message_is_not_about_denoising():
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    img[3, 3] = np.nan
    with pytest.raises(n2x.InputError, match="NaN or infinite") as caught:
        n2x.train(img, "YX", steps=1, patch_size=32, batch_size=2, device="cpu")
    assert "before denoising" not in str(caught.value)


def test_denoising_the_file_a_3d_model_was_trained_on(tmp_path):
    """A plain 3D TIFF names no axes (tifffile: 'QYX', read as 'SYX'): the model's ZYX is used, and said once."""
    src = tmp_path / "small.tif"
    tifffile.imwrite(src, np.random.default_rng(0).random((16, 48, 48), dtype=np.float32))
    assert api.open_image(src).axes_named is False
    model = tmp_path / "m.n2x"
    run("train", src, "--axes", "ZYX", "-o", model, "--patch", "16", "32", "32", *TRAIN)
    out = tmp_path / "out.ome.zarr"
    proc = run("denoise", model, src, "-o", out, "-q")
    notes = [line for line in proc.stderr.splitlines() if line.startswith("n2x:")]
    assert notes == ["n2x: the file does not name its axes; reading its shape (16, 48, 48) with the model's axes "
                     "ZYX"]
    assert api.open_image(out).data.shape == (16, 48, 48)
    # The batch planner follows the same rule: a folder holding that file denoises it with the model's axes.
    outdir = tmp_path / "batch-out"
    proc = run("denoise", model, tmp_path / "*.tif", "-o", outdir, "--json", "--workers", "1")
    files = json.loads(proc.stdout)["files"]
    assert [f["status"] for f in files] == ["ok"], files
    assert api.open_image(outdir / "small.tif").data.shape == (16, 48, 48)
    # Axes the user gives, or a file that names its own, are never replaced.
    assert api.input_axes("SYX", (16, 48, 48), "ZYX", given="TYX", axes_named=False) == ("TYX", None)
    assert api.input_axes("TYX", (16, 48, 48), "ZYX", axes_named=True) == ("TYX", None)


@pytest.mark.parametrize("name", ["o5.tif", "o5.ome.zarr"])
def test_unwritable_output_names_the_users_path(tmp_path, trained_n2v, name):
    model = api.save_model(trained_n2v, tmp_path / "m.n2x")
    img = tmp_path / "in.tif"
    tifffile.imwrite(img, np.random.default_rng(0).random((64, 64), dtype=np.float32))
    target = f"/proc/{name}"  # exists as a folder, but nobody can create files in it (not even root)
    line = _one_line_error(run("denoise", model, img, "-o", target, "-q", check=False), f"cannot write {target}",
                           "choose another output path")
    assert ".part" not in line
    line = _one_line_error(run("train", img, "-o", "/proc/m.n2x", "--patch", "32", *TRAIN, check=False),
                           "cannot write /proc/m.n2x")
    assert ".part" not in line


def test_atomic_writes_name_the_final_path(tmp_path):
    """Whatever fails inside an atomic write (a missing folder, a full disk), the user reads their own path."""
    from n2x._files import atomic_path

    target = tmp_path / "no" / "such" / "x.tif"
    with pytest.raises(OSError) as caught:
        with atomic_path(target):
            pass
    text = api.os_error_text(caught.value)
    assert text.startswith(f"cannot write {target}") and "does not exist" in text and ".part" not in text
    with pytest.raises(OSError) as caught:
        with atomic_path(tmp_path / "y.tif") as tmp:
            raise OSError(28, "No space left on device", str(tmp))  # what a full disk raises while writing
    text = api.os_error_text(caught.value)
    assert str(tmp_path / "y.tif") in text and "full" in text and ".part" not in text
    assert list(tmp_path.iterdir()) == []  # no temporary file is left behind


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    return set(out.split())


def test_command_line_starts_without_torch():
    """``n2x --help`` and ``import n2x`` load no torch; info and probe no torch._dynamo (about a second)."""
    helped = subprocess.run([sys.executable, "-X", "importtime", "-m", "n2x.cli", "--help"], capture_output=True,
                            text=True, timeout=300)
    assert helped.returncode == 0 and "train" in helped.stdout
    imported = {line.split("|")[-1].strip() for line in helped.stderr.splitlines() if "|" in line}
    assert "n2x.cli" in imported and "torch" not in imported
    assert "torch" not in _modules_after("import n2x, n2x.api; n2x.api.TRAIN_OPTIONS")
    train_help = run("train", "--help").stdout
    assert "--mask-fraction" in train_help and "--patch" in train_help  # generated from the declarations


def test_info_and_probe_need_no_compiler(tmp_path, trained_n2v):
    model = api.save_model(trained_n2v, tmp_path / "m.n2x")
    img = tmp_path / "in.tif"
    tifffile.imwrite(img, np.random.default_rng(0).random((64, 64), dtype=np.float32))
    for args in (["info", str(model)], ["probe", str(img)]):
        loaded = _modules_after(f"from n2x.cli import main; assert main({args!r}) == 0")
        assert "torch._dynamo" not in loaded, args
    assert "torch._dynamo" in _modules_after("from n2x import api; api.prepare_training()")


def test_torch_free_declarations_match_the_engine():
    from n2x.api import _options
    from n2x.device import DEVICE_CHOICES, PRECISION_CHOICES

    assert _options.DEVICE_CHOICES == DEVICE_CHOICES and _options.PRECISION_CHOICES == PRECISION_CHOICES
    assert set(api.__all__) <= set(dir(api))
    assert all(getattr(api, name) is not None for name in api.__all__)
