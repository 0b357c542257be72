"""Model files: round trip, provenance, and clear errors for files that are not usable models."""
import json

import numpy as np
import pytest

import n2x
from n2x.io.model_file import FORMAT_VERSION, read_model_file, write_model_file


def test_round_trip_identical_predictions(trained_n2v, cells2d, tmp_path):
    noisy, _ = cells2d
    path = trained_n2v.save(tmp_path / "m.n2x")
    loaded = n2x.load_model(path, device="cpu")
    out = n2x.denoise(loaded, noisy[:96, :80])
    np.testing.assert_array_equal(n2x.denoise(trained_n2v, noisy[:96, :80]), out)
    # Equal predictions prove nothing of a pass-through network: the loaded one must change the image by about the
    # noise (sigma 0.1; measured 0.15 after these 30 steps).
    assert np.std(out - noisy[:96, :80]) > 0.05
    assert loaded.config["method"]["name"] == "n2v"
    assert loaded.config["package_version"] == n2x.__version__
    assert loaded.history["steps"] == 30
    assert loaded.config["normalization"]["mode"] == "meanstd"


def test_file_is_safetensors_without_pickle(trained_n2v, tmp_path):
    path = trained_n2v.save(tmp_path / "m.n2x")
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    assert header["__metadata__"]["format"] == "n2x-model"
    assert json.loads(header["__metadata__"]["config"])["axes"] == "YX"


def test_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.n2x"
    bad.write_bytes(b"not a model at all" * 10)
    with pytest.raises(n2x.ModelFileError, match="not an n2x model"):
        n2x.load_model(bad)
    with pytest.raises(n2x.ModelFileError, match="does not exist"):
        n2x.load_model(tmp_path / "missing.n2x")
    from safetensors.numpy import save_file
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(foreign))
    with pytest.raises(n2x.ModelFileError, match="not an n2x model"):
        n2x.load_model(foreign)


def test_truncated_file(trained_n2v, tmp_path):
    path = trained_n2v.save(tmp_path / "m.n2x")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(n2x.ModelFileError):
        n2x.load_model(path)


def test_newer_format_version_is_refused(trained_n2v, tmp_path):
    state, config, history = read_model_file(trained_n2v.save(tmp_path / "m.n2x"))
    newer = tmp_path / "newer.n2x"
    write_model_file(newer, state, config, history)
    raw = newer.read_bytes()
    raw = raw.replace(f'"format_version":"{FORMAT_VERSION}"'.encode(), f'"format_version":"{FORMAT_VERSION + 1}"'.encode())
    newer.write_bytes(raw)
    with pytest.raises(n2x.ModelFileError, match="newer napari-n2x"):
        n2x.load_model(newer)


def test_model_does_not_fit_data(trained_n2v, cells2d):
    noisy, _ = cells2d
    with pytest.raises(n2x.ModelMismatchError, match="channel"):
        n2x.denoise(trained_n2v, np.stack([noisy, noisy, noisy]), axes="CYX")
    # a 2D model applies plane by plane to a stack
    out = n2x.denoise(trained_n2v, np.stack([noisy[:64, :64]] * 2), axes="ZYX")
    assert out.shape == (2, 64, 64)


def test_saving_over_a_folder_is_refused(trained_n2v, tmp_path):
    with pytest.raises(n2x.ModelFileError, match="folder"):
        trained_n2v.save(tmp_path)
