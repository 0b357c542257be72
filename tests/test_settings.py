"""The napari widgets' settings without a viewer: defaults from the engine's declarations, the arguments of
train_iter for each method, persistence between sessions, and the wording of errors for the widgets."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from n2x import api
from n2x.errors import N2xError, OptionError, OutputExistsError

from n2x._napari import settings as st
from n2x._napari.settings import DenoiseSettings, TrainSettings, load_settings, save_settings


@pytest.fixture(autouse=True)
def settings_dir(tmp_path, monkeypatch):
    folder = tmp_path / "n2x-settings"
    monkeypatch.setenv(st.SETTINGS_ENV, str(folder))
    return folder


def _default(name: str):
    return next(o.default for o in api.TRAIN_OPTIONS if o.name == name)


def test_settings_module_is_qt_free():
    code = ("import sys, n2x._napari.settings, n2x._napari.words; "
            "print(sorted(m for m in ('qtpy', 'napari', 'PyQt6', 'PyQt5') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_defaults_come_from_the_engine():
    s = TrainSettings()
    assert s.method == api.AUTO_METHOD  # the noise probe chooses (issue 14)
    assert s.method_values() == {} and s.training_kwargs()["method"] == api.AUTO_METHOD
    assert s.length_unit == "minutes" and s.length == api.DEFAULT_SECONDS / 60
    for o in api.TRAIN_OPTIONS:
        if o.name not in st.LENGTH_NAMES:
            assert s.options[o.name] == o.default, o.name
    assert s.options["features"] is None and s.options["depth"] is None  # "auto": the method's network
    for name in api.method_names():
        values = s.method_values(name)
        for o in api.method_info(name).options:
            if o.type != "image" and o.name != "pairs":
                assert values[o.name] == o.default, (name, o.name)
    assert DenoiseSettings().options == {"tile": None, "halo": None, "device": "auto", "output": "auto",
                                         "scheduler": None}


def test_training_kwargs_by_default():
    s = TrainSettings()
    s.method = "n2v"
    kw = s.training_kwargs()
    assert kw["method"] == "n2v" and kw["time"] == api.DEFAULT_SECONDS
    assert kw["learning_rate"] == _default("learning_rate") and kw["device"] == "auto"
    assert "network" not in kw and "patch_size" not in kw and "batch_size" not in kw and "seed" not in kw
    assert not {"mask_fraction", "replacement", "radius"} & set(kw)  # the method's defaults: not passed
    s.set_length(200, "steps")
    assert s.training_kwargs()["steps"] == 200 and "time" not in s.training_kwargs()
    s.set_unit("epochs")
    assert s.training_kwargs()["epochs"] == st.LENGTH_UNITS["epochs"]
    s.set_option("patch_size", "16, 64, 64")
    s.set_option("batch_size", 8)
    s.set_method_option("mask_fraction", 0.05)
    kw = s.training_kwargs()
    assert kw["patch_size"] == (16, 64, 64) and kw["batch_size"] == 8 and kw["mask_fraction"] == 0.05
    s.set_option("patch_size", "big")
    with pytest.raises(OptionError, match="patch"):
        s.training_kwargs()


def test_network_size_is_auto_unless_set():
    """The bug: features equal to the U-Net's 16 were left out, so AP-BSN's pixel-shuffle net trained 32."""
    s = TrainSettings()
    s.method = "apbsn"
    s.set_method_option("stride_train", 3)
    assert "network" not in s.training_kwargs()
    s.set_option("features", 16)
    s.set_option("depth", 3)  # a U-Net setting: AP-BSN's networks have no depth
    assert s.training_kwargs()["network"] == {"features": 16}
    s.method = "n2v"
    assert s.training_kwargs()["network"] == {"features": 16, "depth": 3}


def test_apbsn_options_follow_the_design():
    s = TrainSettings()
    s.method = "apbsn"
    info = api.method_info("apbsn")
    assert st.chosen_design(info.options, s.method_values()) == "box"
    s.set_method_option("r3_passes", 1)
    assert "r3_passes" not in s.training_kwargs()  # a pixel-shuffle option, not that design
    s.set_method_option("stride_train", 2)
    assert st.chosen_design(info.options, s.method_values()) == "pd"
    kw = s.training_kwargs()
    assert kw["stride_train"] == 2 and kw["r3_passes"] == 1
    r3 = info.option("r3_passes")
    assert st.option_enabled(r3, "pd", s.method_values()) and not st.option_enabled(r3, "box", s.method_values())


def test_n2n_partner_maps_to_data_options():
    s = TrainSettings()
    s.method = "n2n"
    assert s.method_values()["pairs"] == "subsample"
    assert s.training_kwargs()["pairs"] == "subsample"
    s.set_method_option("along", "T")
    assert "along" not in s.training_kwargs()  # sub-sampling is not along an axis
    s.set_method_option("pairs", "adjacent")
    kw = s.training_kwargs()
    assert kw["pairs"] == "adjacent" and kw["along"] == "T" and "target" not in kw
    s.set_method_option("pairs", st.PARTNER_LAYER)
    with pytest.raises(N2xError, match="another layer"):
        s.training_kwargs()
    second = np.zeros((32, 32), np.float32)
    kw = s.training_kwargs({"target": second})
    assert kw["target"] is second and "pairs" not in kw and "along" not in kw


def test_persistence_round_trip(settings_dir):
    s = load_settings(TrainSettings)
    s.method = "n2n"
    s.set_length(500, "steps")
    s.set_option("batch_size", 12)
    s.set_option("patch_size", "48")
    s.set_method_option("pairs", st.PARTNER_LAYER)
    s.set_method_option("mask_fraction", 0.04, "n2v")
    path = st.settings_path("train")
    assert path.parent == settings_dir and path.exists()
    again = load_settings(TrainSettings)
    assert again.method == "n2n" and again.length_unit == "steps" and again.length == 500
    assert again.options["batch_size"] == 12 and again.options["patch_size"] == "48"
    assert again.method_values()["pairs"] == st.PARTNER_LAYER
    assert again.method_values("n2v")["mask_fraction"] == 0.04
    d = load_settings(DenoiseSettings)
    d.set_option("tile", "128")
    d.overwrite = True
    d2 = load_settings(DenoiseSettings)
    assert d2.value("tile") == 128 and d2.overwrite is False  # replacing files is never remembered


def test_stale_or_broken_files_are_ignored(settings_dir):
    s = TrainSettings()
    s.method = "n2v"
    s.set_option("batch_size", 7)
    path = save_settings(s)
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({**stored, "version": st.SETTINGS_VERSION + 1}))
    assert load_settings(TrainSettings, persist=False).options["batch_size"] is None
    path.write_text("{not json")
    assert load_settings(TrainSettings, persist=False).method == st.default_method()
    bad = {**stored, "settings": {**stored["settings"], "method": "no-such-method",
                                  "options": {"batch_size": -3, "learning_rate": 0.01, "unknown": 1}}}
    path.write_text(json.dumps(bad))
    loaded = load_settings(TrainSettings, persist=False)
    assert loaded.method == st.default_method()
    assert loaded.options["batch_size"] is None and loaded.options["learning_rate"] == 0.01
    assert "unknown" not in loaded.options


def test_settings_folder_defaults_to_the_user_config(monkeypatch):
    monkeypatch.delenv(st.SETTINGS_ENV)
    from platformdirs import user_config_dir

    assert st.settings_dir() == st.Path(user_config_dir("napari-n2x", appauthor=False))


def test_errors_are_worded_for_the_widgets():
    from n2x._napari.words import NAPARI_WORDS, error_text

    exc = OutputExistsError("out.tif exists", hint="choose another file name, or {overwrite} to replace it")
    assert error_text(exc) == "out.tif exists; choose another file name, or tick “Replace existing output” to replace it"
    assert {"overwrite", "tile", "dims", "batch_size", "device"} <= set(NAPARI_WORDS)
    assert error_text(ValueError("plain")) == "plain"
