"""Options declared as data, errors worded for each front door, and the project's own set-up commands."""
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

import n2x
from n2x import api
from n2x.errors import N2xError, OptionError, OutputExistsError
from n2x.options import Option, parse_options, parse_shape

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_option_parse_converts_and_checks():
    lr = Option("learning_rate", "float", 4e-3, "peak learning rate", range=(1e-6, 1.0))
    assert lr.parse("0.01") == 0.01
    with pytest.raises(OptionError, match="learning_rate must be between"):
        lr.parse(5)
    with pytest.raises(OptionError, match="learning_rate must be a number"):
        lr.parse("fast")
    dims = Option("dims", "int", None, "2D or 3D", choices=(2, 3), auto=True)
    assert dims.parse("3") == 3 and dims.parse("auto") is None
    with pytest.raises(OptionError, match="dims must be one of 2, 3"):
        dims.parse(4)
    blind = Option("blind", "int", "auto", "box radius", auto=True, range=(0, 16))
    assert blind.parse("AUTO") == "auto" and blind.parse(2) == 2
    assert parse_shape("16, 64,64") == (16, 64, 64) and parse_shape(["32"]) == 32 and parse_shape("auto") is None
    with pytest.raises(OptionError, match="positive"):
        parse_shape("0 64")


def test_unknown_option_suggests_the_near_name():
    declared = [Option("mask_fraction", "float", 0.02, "share"), Option("replacement", "str", None, "how")]
    with pytest.raises(OptionError, match=r"did you mean 'mask_fraction'\?.*mask_fraction, replacement"):
        parse_options(declared, {"mask_fractoin": 0.1}, "method 'n2v'")


def test_training_options_are_checked_before_any_work(cells2d):
    noisy, _ = cells2d
    with pytest.raises(OptionError, match="precision must be one of"):
        n2x.train(noisy, "YX", steps=1, precision="half")
    with pytest.raises(OptionError, match="channels must be one of"):
        n2x.train(noisy, "YX", steps=1, channels="both")
    with pytest.raises(OptionError, match="has no option 'maks_fraction'"):
        n2x.train(noisy, "YX", "n2v", steps=1, maks_fraction=0.1)
    with pytest.raises(OptionError, match="unknown method"):
        n2x.train(noisy, "YX", "n2w", steps=1)


def test_every_training_option_is_declared_completely():
    names = [o.name for o in api.TRAIN_OPTIONS]
    assert len(names) == len(set(names))
    for opt in api.TRAIN_OPTIONS:
        assert opt.help, opt.name
        assert opt.parse(opt.default) == opt.default or opt.default is None, opt.name


def test_hints_are_worded_per_front_door():
    exc = OutputExistsError("out.tif exists", hint="choose another output, or {overwrite} to replace it")
    assert str(exc) == "out.tif exists; choose another output, or pass overwrite=True to replace it"
    assert exc.options == ["overwrite"]
    cli = exc.render({"overwrite": "pass --overwrite"})
    assert cli.endswith("or pass --overwrite to replace it")
    napari = exc.render(lambda name: {"overwrite": "tick “Replace existing output”"}.get(name))
    assert "tick “Replace existing output”" in napari
    assert str(N2xError("plain")) == "plain"


def test_cli_words_hints_as_flags(tmp_path):
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, np.random.default_rng(0).random((64, 64), dtype=np.float32))
    model = tmp_path / "m.n2x"
    model.write_text("an existing file that is not ours to replace")
    proc = run_cli("train", img, "-o", model, "--steps", "1", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"n2x: error: {model} exists; choose another name, or pass --overwrite to replace it"
    assert model.read_text().startswith("an existing file")


def test_cli_usage_errors_are_one_line(tmp_path):
    proc = run_cli("train", "x.tif", check=False)  # -o missing
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "-o/--output" in proc.stderr


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in ci.splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert commands, ci
    for line in commands:
        assert line.replace(" -q ", " ").replace(" -q", "") in readme.replace(" -q ", " ").replace(" -q", ""), line
    assert not re.search(r"^sudo ", readme, re.M)  # root-only machines have no sudo


def test_cli_prints_engine_warnings(tmp_path):
    # Textured everywhere, no flat area: AP-BSN cannot tell the noise level from the texture and warns that its box
    # filter is off (see test_apbsn); the command line shows that warning as one line on stderr and goes on.
    from test_apbsn import SIGMA, _box3, _smooth_scene

    clean = _smooth_scene(7)
    noisy = (clean + SIGMA * _box3(np.random.default_rng(1).normal(size=clean.shape))).astype(np.float32)
    img = tmp_path / "textured.tif"
    tifffile.imwrite(img, noisy)
    proc = run_cli("train", img, "--method", "apbsn", "--steps", "2", "--patch", "48", "--batch", "8",
                   "--device", "cpu", "--seed", "0", "-o", tmp_path / "m.n2x", "-q")
    warned = [line for line in proc.stderr.splitlines() if line.startswith("n2x: warning: ")]
    assert len(warned) == 1 and "box filter" in warned[0], proc.stderr
    assert "Traceback" not in proc.stderr and (tmp_path / "m.n2x").exists()


def test_every_api_name_resolves():
    # The api loads its names on first use (a fast start): each public name must map to a module that defines it.
    from n2x.api import _WHERE

    assert set(_WHERE) == set(api.__all__)
    for name in api.__all__:
        assert getattr(api, name) is not None, name
    for name in n2x.__all__:
        assert getattr(n2x, name) is not None, name
