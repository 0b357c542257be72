"""Methods declare themselves: every option is declared data (type, default, range, help), the api rejects what a
method does not declare, model files restore what training settled, and the shared helpers do what they say."""
import inspect
import io
import re
import sys
import tokenize
from pathlib import Path

import numpy as np
import pytest
import torch

import n2x
from n2x.api import TRAIN_OPTIONS
from n2x.errors import InputError, N2xWarning, OptionError
from n2x.methods import get_method, method_from_config, method_info, method_names, register_method, unregister_method
from n2x.methods.registry import _ENTRIES, _load
from n2x.nets.dihedral import TRANSFORMS, dihedral, dihedral_mean

KW = dict(steps=1, patch_size=32, batch_size=2, device="cpu", network={"features": 8})
SRC = Path(n2x.__file__).parent


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)


# -- declarations ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", method_names())
def test_declaration_is_complete(name):
    info = method_info(name)
    assert info.label and info.description and info.description.endswith(".")
    names = [o.name for o in info.options]
    assert len(names) == len(set(names)), names
    # a method option must not shadow a training option: the CLI and the widgets show both side by side
    assert not set(names) & {o.name for o in TRAIN_OPTIONS}
    for opt in info.options:
        assert opt.help and opt.title, opt
        assert opt.parse(opt.default, name) == opt.default, opt  # the default passes its own check
        assert opt.design in (None, "box", "pd"), opt
        if not opt.data:
            assert "default" in opt.help, opt  # help texts state the default
        for choice in opt.choices:
            assert opt.parse(choice, name) == choice, opt


def test_labels_and_variant_defaults():
    assert [method_info(n).label for n in ("n2v", "n2v2", "n2n", "apbsn")] == [
        "Noise2Void (N2V)", "N2V2", "Noise2Noise (N2N)", "AP-BSN"]
    assert method_info("n2v").option("replacement").default == "neighbour"
    assert method_info("n2v2").option("replacement").default == "median"
    assert "median" in method_info("n2v2").option("replacement").help.split("default")[-1]
    n2n = method_info("n2n")
    assert {o.name for o in n2n.options if o.data} == {"target", "pairs", "along"}
    assert n2n.option("target").type == "image" and n2n.option("along").choices == ("T", "Z")
    ap = method_info("apbsn")
    assert {o.name for o in ap.options if o.design == "box"} >= {"blind", "ensemble", "residual_filter"}
    assert {o.name for o in ap.options if o.design == "pd"} >= {"stride_train", "stride_infer", "r3_passes"}


@pytest.mark.parametrize("name", method_names())
def test_defaults_live_in_the_declaration(name):
    """The constructor takes no option it does not declare and repeats no default: built without options, a method
    holds the declared defaults."""
    cls = _load(name)
    sig = inspect.signature(cls.__init__)
    assert not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    info = method_info(name)
    for opt in info.options:
        if not opt.data:
            assert sig.parameters[opt.name].default is None, opt.name
    params = get_method(name).params
    for opt in info.options:
        if not opt.data and opt.name != "design":  # AP-BSN's design "auto" is settled (None: the probe decides)
            assert params[opt.name] == opt.default, opt.name


# -- the api rejects what is not declared ---------------------------------------------------------------------------
def test_unknown_option_is_an_error(image):
    with pytest.raises(OptionError, match="method 'n2v' has no option 'strength'"):
        n2x.train(image, "YX", "n2v", strength=3, **KW)
    with pytest.raises(OptionError, match="has no option 'blind'"):  # another method's option
        n2x.train(image, "YX", "n2v2", blind=2, **KW)


def test_mistyped_option_suggests_the_name(image):
    with pytest.raises(OptionError, match="did you mean 'mask_fraction'"):
        n2x.train(image, "YX", "n2v", mask_fracton=0.05, **KW)
    with pytest.raises(OptionError, match="did you mean 'stride_train'"):
        n2x.train(image, "YX", "apbsn", stride_trian=3, **KW)


@pytest.mark.parametrize("method,options,message", [
    ("n2v", dict(mask_fraction=0.5), "mask_fraction must be between"),
    ("n2v", dict(radius=0), "radius must be between"),
    ("n2n", dict(pairs="subsample", gamma=-1), "gamma must be between"),
    ("apbsn", dict(stride_infer=40), "stride_infer must be between"),
    ("apbsn", dict(ensemble=3), "ensemble must be one of"),
    ("n2n", dict(pairs="subsample", loss="l3"), "loss must be one of"),
    ("n2n", dict(pairs="adjacent", along="Q"), "along must be one of"),
])
def test_out_of_range_is_an_error(image, method, options, message):
    with pytest.raises(OptionError, match=message):
        n2x.train(image, "YX", method, **options, **KW)


@pytest.mark.parametrize("method,options,message", [
    ("n2v", dict(mask_fraction="lots"), "mask_fraction must be a number"),
    ("n2v", dict(radius=1.5), "radius must be a whole number"),
    ("apbsn", dict(stride_train="big"), "stride_train must be a whole number or 'auto'"),
    ("apbsn", dict(residual_filter="maybe"), "residual_filter must be true or false"),
    ("n2n", dict(target=[[1, 2], [3, 4]]), "target must be an image"),
])
def test_wrong_type_is_an_error(image, method, options, message):
    with pytest.raises(OptionError, match=message):
        n2x.train(image, "YX", method, **options, **KW)


def test_text_values_are_converted():
    """What a command line or a text field gives is read as the declared type."""
    assert get_method("n2v", mask_fraction="0.05", radius="3").params == {
        "mask_fraction": 0.05, "replacement": "neighbour", "radius": 3, "variant": "n2v"}
    assert get_method("apbsn", stride_train="3", residual_filter="no").params["stride_train"] == 3
    assert method_info("n2n").option("along").parse("z") == "Z"


def test_a_method_built_directly_is_checked_too():
    from n2x.methods.n2v import N2V

    with pytest.raises(OptionError, match="mask_fraction"):
        N2V(mask_fraction=2.0)


def test_import_error_of_a_method_module_is_not_hidden(tmp_path, monkeypatch, image):
    pkg = tmp_path / "brokenmethods"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mine.py").write_text("import a_module_that_does_not_exist_n2x\n\nclass Mine:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    register_method("broken", "brokenmethods.mine:Mine")
    try:
        assert "broken" in method_names()
        with pytest.raises(ModuleNotFoundError, match="a_module_that_does_not_exist_n2x"):
            method_info("broken")
        with pytest.raises(ModuleNotFoundError):
            n2x.train(image, "YX", "broken", **KW)
    finally:
        unregister_method("broken")
        sys.modules.pop("brokenmethods.mine", None)
    assert "broken" not in _ENTRIES


# -- AP-BSN's design ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options,design", [
    ({}, None),  # the noise probe decides in training
    (dict(stride_train=3), "pd"),
    (dict(stride_train="auto"), "pd"),  # given, even as auto: the pixel-shuffle design, its stride from the probe
    (dict(stride_train="AUTO"), "pd"),
    (dict(blind=2), "box"),
    (dict(blind="auto"), None),
    (dict(design="pd"), "pd"),
    (dict(design="box", ensemble=2), "box"),
    (dict(design="box", blind=1), "box"),
])
def test_apbsn_design_is_inferred_from_the_options(options, design):
    assert get_method("apbsn", **options).params["design"] == design


@pytest.mark.parametrize("options,message", [
    (dict(stride_train=3, blind=2), "not both"),
    (dict(stride_train="auto", blind=2), "not both"),
    (dict(design="box", stride_train=3), "stride_train belongs to the pixel-shuffle design"),
    (dict(design="pd", blind=2), "blind belongs to the blind-box design"),
])
def test_apbsn_contradictory_designs(options, message):
    with pytest.raises(OptionError, match=message) as info:
        get_method("apbsn", **options)
    assert set(info.value.options) <= {"stride_train", "blind", "design"}  # hints name the engine's options


def test_apbsn_explicit_auto_stride_trains_pixel_shuffle_with_the_probes_stride():
    from test_apbsn import SIGMA, SMALL, _box3, _smooth_scene

    clean = _smooth_scene(7)
    noisy = (clean + SIGMA * _box3(np.random.default_rng(1).normal(size=clean.shape))).astype(np.float32)
    model = n2x.train(noisy, "YX", "apbsn", steps=1, stride_train="auto", r3_passes=1, **SMALL)
    assert model.config["method"]["design"] == "pd" and model.config["network"]["name"] == "blindspot"
    assert model.config["method"]["stride_train"] == 3  # correlation length 2, plus one


def test_apbsn_warnings_are_n2x_warnings():
    flat = np.zeros((64, 64), np.float32)
    with pytest.warns(N2xWarning, match="noise probe could not measure"):
        model = n2x.train(flat, "YX", "apbsn", steps=1, batch_size=2, patch_size=60, device="cpu",
                          network={"features": 8, "blocks": 1})
    assert model.config["method"]["design"] == "pd" and model.config["method"]["stride_train"] == 5


def test_errors_name_options_not_flags():
    """Messages of the methods and networks are worded for every front door: no command-line flags, no ``name=``
    keyword syntax; what to do is a hint with ``{option}`` placeholders."""
    offenders = []
    for folder in ("methods", "nets"):
        for path in sorted((SRC / folder).glob("*.py")):
            for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
                if tok.type == tokenize.STRING and re.search(r"(?<![\w-])--[a-z]", tok.string):
                    offenders.append(f"{path.name}:{tok.start[0]}: {tok.string[:60]}")
    assert not offenders, offenders


def test_hints_are_worded_by_the_front_door(image):
    stack = np.stack([image] * 4)
    with pytest.raises(InputError) as info:
        n2x.train(stack, "ZYX", "n2n", pairs="adjacent", along="Z", dims=3, **KW)
    assert info.value.options == ["dims", "along"]
    assert "--dims" in info.value.render(lambda name: "--" + name.replace("_", "-"))
    with pytest.raises(InputError) as info:
        n2x.train(image, "YX", "n2n", **KW)
    assert set(info.value.options) == {"target", "pairs", "along"}


# -- model files ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [
    dict(name="n2v", mask_fraction=0.02, replacement="neighbour", radius=2, variant="n2v"),
    dict(name="n2v2", mask_fraction=0.02, replacement="median", radius=2, variant="n2v2"),
    dict(name="n2n", loss="l1", swap=True, gamma=1.0, pairing="adjacent", along="T"),
    # the blind box as training leaves it: probe report and fitted filter
    dict(name="apbsn", design="box", blind=1, ensemble=4, residual_filter=True, stride_train="auto", stride_infer=2,
         r3_passes=8, r3_fraction=0.16, loss="l2", sub_batch=16, seed=0, noise_probe={"correlation_length": 1},
         box_filter=[[0.0, 0.1, 0.0], [0.1, 0.5, 0.1], [0.0, 0.1, 0.0]]),
    dict(name="apbsn", design="pd", blind="auto", ensemble=8, residual_filter=True, stride_train=3, stride_infer=2,
         r3_passes=8, r3_fraction=0.16, loss="l2", sub_batch=16, seed=0, noise_probe={"correlation_length": 2}),
    # written before the blind box existed: no design, blind, ensemble or filter
    dict(name="apbsn", stride_train=4, stride_infer=2, r3_passes=8, r3_fraction=0.16, loss="l1", sub_batch=16,
         seed=0),
])
def test_model_file_parameters_are_restored(config):
    method = method_from_config(dict(config))
    stored = {k: v for k, v in config.items() if k != "name"}
    assert {k: method.params[k] for k in stored} == stored
    if config["name"] == "apbsn":
        assert method.design == config.get("design", "pd")


def test_model_file_with_an_unknown_parameter_does_not_load():
    with pytest.raises(TypeError):
        method_from_config(dict(name="n2v", mask_fraction=0.02, frobnicate=1))


# -- shared helpers ---------------------------------------------------------------------------------------------------
def test_dihedral_transforms_are_the_eight_and_invert():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    seen = set()
    for t in TRANSFORMS:
        y = dihedral(x, t)
        assert torch.equal(dihedral(y, t, inverse=True), x)
        seen.add(tuple(y[0, 0].flatten().tolist()))
    assert len(seen) == 8
    # an equivariant function comes back unchanged; one that is not (a shift) is averaged over the 8 transforms
    assert torch.equal(dihedral_mean(lambda t: 2 * t, x), 2 * x)
    assert torch.equal(dihedral_mean(lambda t: t + 1, x[..., :4], 2), x[..., :4] + 1)
    shifted = dihedral_mean(lambda t: torch.roll(t, 1, -1), x[..., :4, :4])
    assert not torch.equal(shifted, torch.roll(x[..., :4, :4], 1, -1))
    with pytest.raises(ValueError):
        dihedral_mean(lambda t: t, x, 9)


def test_tta_is_the_dihedral_mean(trained_n2v, cells2d):
    tile = cells2d[0][None, None, :64, :64]
    net = trained_n2v.inference_net()
    with torch.no_grad():
        expect = dihedral_mean(net, torch.from_numpy(np.ascontiguousarray(tile)), 8).numpy()
    np.testing.assert_allclose(trained_n2v.predict_tiles(tile, tta=True), expect, atol=1e-5)
