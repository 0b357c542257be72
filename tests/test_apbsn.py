"""AP-BSN (blind-box and pixel-shuffle designs): blind by construction, denoises spatially correlated noise where N2V
fails, tiles exactly."""
import numpy as np
import pytest
import torch

import n2x
from n2x.data.samples import clean_cells
from n2x.errors import N2xWarning
from n2x.methods.apbsn_designs import r3_mask
from n2x.methods.box_filter import (apply_box_filter, certain_autocovariance, fit_adaptive_box_filter, fit_box_filter,
                                   knot_weights)
from n2x.nets.pixel_shuffle import pixel_shuffle_down as pd_down, pixel_shuffle_up as pd_up
from n2x.nets.blindbox import BlindBoxNet
from n2x.nets.blindspot import BlindSpotNet
from conftest import psnr

SIGMA = 0.1
SMALL = dict(batch_size=8, seed=0, device="cpu", patch_size=60, network={"features": 16, "blocks": 2})
# Quality runs: a small network, few steps. The noise is a 3 x 3 box (correlation length 2), so stride 3 decorrelates
# it and keeps the sub-images of a 128 x 128 test image large enough to learn from in seconds.
QUICK = dict(SMALL, stride_train=3, sub_batch=32, learning_rate=4e-3)
# The blind-box design (the default when the probe measures the noise) on the same budget of seconds.
BOX = dict(batch_size=8, seed=0, device="cpu", patch_size=48, network={"features": 16})


def _box3(white):
    out = sum(np.roll(np.roll(white, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    return out / out.std()


def _smooth_scene(seed):
    """Synthetic cells blurred to a scale that pixel-shuffle sub-images still resolve (AP-BSN's regime)."""
    from n2x.data.samples import _blur

    clean = _blur(clean_cells((128, 128), seed=seed), 2.0)
    return ((clean - clean.min()) / (clean.max() - clean.min()) * 0.9 + 0.05).astype(np.float32)


@pytest.fixture(scope="module")
def correlated():
    clean = _smooth_scene(7)
    noisy = clean + SIGMA * _box3(np.random.default_rng(1).normal(size=clean.shape))
    return noisy.astype(np.float32), clean


def test_network_is_blind_at_the_centre():
    torch.manual_seed(0)  # an unlucky random init can leave ReLUs dead and hide the neighbourhood from the gradient
    net = BlindSpotNet(features=8, blocks=2)
    x = torch.randn(1, 1, 33, 33, requires_grad=True)
    net(x)[0, 0, 16, 16].backward()
    g = x.grad[0, 0].abs()
    assert g[16, 16] == 0
    assert (g > 0).sum() > 100  # it does see the neighbourhood
    r = net.receptive_radius()
    nz = torch.nonzero(g > 0)
    assert int((nz - 16).abs().max()) <= r


@pytest.mark.parametrize("blind,shape", [(0, (33, 33)), (2, (33, 33)), (2, (33, 45))])
def test_blind_box_network_hides_exactly_the_box(blind, shape):
    torch.manual_seed(0)
    net = BlindBoxNet(features=8, blind=blind)
    x = torch.randn(1, 1, *shape, requires_grad=True)
    y = net(x)
    assert y.shape == x.shape
    y[0, 0, 16, 16].backward()
    g = x.grad[0, 0].abs()
    box = g[16 - blind:17 + blind, 16 - blind:17 + blind]
    assert float(box.max()) == 0
    # every pixel just outside the box is seen (the four half-planes cover all sides)
    ring = torch.cat([g[15 - blind, 15 - blind:18 + blind], g[17 + blind, 15 - blind:18 + blind],
                      g[15 - blind:18 + blind, 15 - blind], g[15 - blind:18 + blind, 17 + blind]])
    assert bool((ring > 0).all())
    nz = torch.nonzero(g > 0)
    assert int((nz - 16).abs().max()) <= net.receptive_radius()


def test_box_filter_is_the_wiener_gain_without_the_clean_image():
    rng = np.random.default_rng(0)
    signal = rng.normal(0, 2.0, (64, 1, 32, 32))  # variance 4 the blind prediction missed entirely
    noise = rng.normal(0, 1.0, signal.shape)  # variance 1, known from the probe
    w = fit_box_filter(torch.from_numpy(signal + noise), np.array([[1.0]]))
    assert abs(float(w[0, 0]) - 4 / 5) < 0.02  # var(s) / (var(s) + var(n)), as if the clean image were known
    # A prediction that already equals the clean image: the noisy pixels can only add noise back.
    w = fit_box_filter(torch.from_numpy(noise), np.array([[1.0]]))
    assert abs(float(w[0, 0])) < 0.02


def test_box_filter_follows_the_noise_share_per_pixel():
    rng = np.random.default_rng(0)
    signal = rng.normal(0, 2.0, (64, 1, 32, 32))
    signal[..., 16:] = 0  # the right half: the prediction is exact there, its residual is noise only
    noise = rng.normal(0, 1.0, signal.shape)
    share = torch.ones(signal.shape, dtype=torch.float64)  # the noise's share of the residual variance
    share[..., :16] = 1 / 5
    residual = torch.from_numpy(signal + noise)
    kernels, knots = fit_adaptive_box_filter(residual, share, np.array([[1.0]]))
    assert knots == [0.2, 1.0]
    # the Wiener gain of each half, without the clean image: 4 / 5 at the left, 0 at the right
    assert abs(float(kernels[0, 0, 0]) - 0.8) < 0.03 and abs(float(kernels[1, 0, 0])) < 0.03
    prediction = torch.zeros_like(residual)
    clean = torch.from_numpy(signal)
    one = apply_box_filter(residual, prediction, fit_box_filter(residual, np.array([[1.0]])))
    per_pixel = apply_box_filter(residual, prediction, kernels, share, knots)
    # one filter for both halves (0.4) errs on each: the per-pixel filter halves the error
    assert float(((per_pixel - clean) ** 2).mean()) < 0.6 * float(((one - clean) ** 2).mean())
    weights = knot_weights(torch.tensor([0.0, 0.2, 0.6, 1.0, 1.5]), torch.tensor([0.2, 1.0]))
    np.testing.assert_allclose(weights.T.numpy(), [[1, 0], [1, 0], [0.5, 0.5], [0, 1], [0, 1]], atol=1e-6)


def test_noise_autocovariance_from_the_surest_residuals():
    rng = np.random.default_rng(3)
    noise = np.stack([_box3(rng.normal(size=(64, 64))) for _ in range(16)])[:, None]  # variance 1, 3 x 3 box
    missed = np.zeros_like(noise)
    missed[..., :, 32:] = 3 * rng.normal(size=(16, 1, 64, 32))  # detail the prediction missed: the right half
    variance = np.where(missed != 0, 10.0, 1.0)  # what the network predicts there
    cov = certain_autocovariance(torch.from_numpy(noise + missed), torch.from_numpy(variance), 2)
    # the box kernel's autocovariance: (3 - |dy|)(3 - |dx|) / 9 within 2 pixels
    true = np.outer([1, 2, 3, 2, 1], [1, 2, 3, 2, 1]) / 9
    np.testing.assert_allclose(cov, true, atol=0.06)
    # the whole residual would read the missed detail as noise
    everywhere = certain_autocovariance(torch.from_numpy(noise + missed), torch.ones_like(torch.from_numpy(noise)), 2)
    assert everywhere[2, 2] > 3


def test_pixel_shuffle_round_trip():
    x = torch.arange(2 * 3 * 10 * 20, dtype=torch.float32).reshape(2, 3, 10, 20)
    sub = pd_down(x, 5)
    assert sub.shape == (50, 3, 2, 4)
    assert torch.equal(sub[1 * 25 + 2 * 5 + 3, 0], x[1, 0, 2::5, 3::5])
    assert torch.equal(pd_up(sub, 5), x)


def test_r3_mask_depends_on_global_position_only():
    whole = r3_mask(torch.tensor([[0, 0]]), (64, 64), 3, 0.16)
    part = r3_mask(torch.tensor([[20, 36]]), (16, 16), 3, 0.16)
    assert torch.equal(whole[0, 0, 20:36, 36:52], part[0, 0])
    assert abs(float(whole.float().mean()) - 0.16) < 0.03
    assert not torch.equal(whole, r3_mask(torch.tensor([[0, 0]]), (64, 64), 4, 0.16))


@pytest.fixture(scope="module")
def n2v_on_correlated(correlated):
    noisy, clean = correlated
    nv = n2x.train(noisy, "YX", "n2v", steps=80, batch_size=8, seed=0, device="cpu", patch_size=64,
                   learning_rate=4e-3, network={"features": 16})
    return psnr(n2x.denoise(nv, noisy), clean)


@pytest.mark.parametrize("design,options,steps", [("pd", QUICK, 80), ("box", BOX, 80)])
def test_beats_n2v_on_correlated_noise(correlated, n2v_on_correlated, design, options, steps):
    noisy, clean = correlated
    ap = n2x.train(noisy, "YX", "apbsn", steps=steps, **options)
    assert ap.config["method"]["design"] == design
    base, p_ap, p_nv = psnr(noisy, clean), psnr(n2x.denoise(ap, noisy), clean), n2v_on_correlated
    # Measured: pixel-shuffle +4.8 dB, blind box +3.6 dB (no box filter on this textured image).
    assert p_ap - base > 2.5, (base, p_ap, p_nv)
    assert p_ap - p_nv > 1.0, (base, p_ap, p_nv)


@pytest.fixture(scope="module")
def camera_corr():
    """A crop of scikit-image's camera with the dev set's CORR noise: flat areas, where the probe measures the noise
    level exactly enough for the box filter."""
    from skimage import data

    clean = data.camera()[64:320, 128:384].astype(np.float32) / 255
    return (clean + 25 / 255 * _box3(np.random.default_rng(1).normal(size=clean.shape))).astype(np.float32), clean


def test_box_filter_puts_back_detail(camera_corr):
    noisy, clean = camera_corr
    model = n2x.train(noisy, "YX", "apbsn", steps=80, **BOX)
    p = model.method.params
    knots = p["box_knots"]
    assert np.asarray(p["box_filter"]).shape == (len(knots), 5, 5) and len(knots) > 1  # a filter per knot
    assert knots == sorted(knots) and 0 <= knots[0] and knots[-1] <= 1 and p["box_noise_var"] > 0
    per_pixel = psnr(n2x.denoise(model, noisy), clean)
    p["box_filter"] = None
    without = psnr(n2x.denoise(model, noisy), clean)
    # After 80 steps the surest residuals still read the noise 1.45 times the probe's variance: the probe's stays.
    assert p["noise_covariance_from"] == "probe"
    # Measured: 23.45 dB with the filters, 21.25 without (noisy 20.17).
    assert per_pixel - without > 0.5, (per_pixel, without)


def test_a_network_without_a_variance_gets_one_filter(camera_corr, tmp_path):
    # model files from before the variance: the network gives the means only, and the box has one filter
    noisy, clean = camera_corr
    model = n2x.train(noisy, "YX", "apbsn", steps=20, **{**BOX, "network": {"features": 16, "variance": False}})
    assert model.config["network"]["variance"] is False
    assert np.asarray(model.config["method"]["box_filter"]).shape == (5, 5)
    assert "box_knots" not in model.config["method"]
    back = n2x.load_model(model.save(tmp_path / "one.n2x"))
    np.testing.assert_allclose(back.predict(noisy), model.predict(noisy), atol=1e-5)
    assert psnr(back.predict(noisy), clean) - psnr(noisy, clean) > 1.0  # measured +3.15 dB


def test_no_box_filter_where_the_probe_cannot_trust_the_noise_level(correlated):
    # Synthetic cells everywhere, no flat area: the probe reads part of the texture as noise. A filter fitted with that
    # level would subtract detail (-3 dB measured), so there is none, and a warning says why.
    noisy, _ = correlated
    with pytest.warns(N2xWarning, match="box filter"):  # a front door shows these to the user
        model = n2x.train(noisy, "YX", "apbsn", steps=2, **BOX)
    assert "box_filter" not in model.config["method"]


@pytest.mark.parametrize("design,options", [("pd", QUICK), ("box", BOX)])
def test_improves_white_noise(design, options):
    clean = _smooth_scene(8)
    noisy = (clean + np.random.default_rng(2).normal(0, SIGMA, clean.shape)).astype(np.float32)
    model = n2x.train(noisy, "YX", "apbsn", steps=60, **options)
    assert model.config["method"]["design"] == design
    if design == "box":
        assert model.config["method"]["blind"] == 0  # white noise: a one-pixel blind spot
    gain = psnr(n2x.denoise(model, noisy), clean) - psnr(noisy, clean)
    # Measured: pixel-shuffle +8.6 dB after 80 steps on a sibling image, blind box (one-pixel spot and its filter) +8.3 dB.
    assert gain > 3.0, gain


def test_round_trip_tiling_and_options(correlated, tmp_path):
    noisy, clean = correlated
    model = n2x.train(noisy, "YX", "apbsn", steps=3, stride_train=4, stride_infer=3, r3_passes=2, **SMALL)
    path = model.save(tmp_path / "ap.n2x")
    back = n2x.load_model(path)
    assert back.config["method"]["stride_train"] == 4 and back.config["method"]["stride_infer"] == 3
    assert back.config["method"]["r3_passes"] == 2 and back.multiple == 3
    whole = back.predict(noisy, tile=256)
    tiled = back.predict(noisy, tile=24)  # many small tiles, each with the full halo
    np.testing.assert_allclose(tiled, whole, atol=1e-4)
    np.testing.assert_allclose(model.predict(noisy, tile=256), whole, atol=1e-5)
    # A pass-through prediction would tile exactly too: it must denoise (measured +2.4 dB after 3 steps, the blind
    # spot's shortcut starts as the mean of the neighbours).
    assert psnr(whole, clean) - psnr(noisy, clean) > 1.0


def test_blind_box_round_trip_and_tiling(camera_corr, tmp_path):
    noisy, clean = camera_corr
    img = noisy[:96, :130]  # not square: the rotated branches and the flipped ensemble change the tile's shape
    model = n2x.train(img, "YX", "apbsn", steps=3, blind=3, ensemble=4, **BOX)
    back = n2x.load_model(model.save(tmp_path / "box.n2x"))
    assert back.config["method"]["design"] == "box" and back.config["method"]["blind"] == 3
    # fitted after training, saved: a 7 x 7 filter per knot of the noise share
    assert np.asarray(back.config["method"]["box_filter"]).shape[-2:] == (7, 7)
    assert back.config["network"]["name"] == "blindbox" and back.multiple == 1
    whole = back.predict(img, tile=256)
    np.testing.assert_allclose(back.predict(img, tile=20), whole, atol=1e-4)
    np.testing.assert_allclose(model.predict(img, tile=256), whole, atol=1e-5)
    # and it denoises, which a pass-through (that would tile exactly too) does not: measured +2.6 dB after 3 steps
    assert psnr(whole, clean[:96, :130]) - psnr(img, clean[:96, :130]) > 1.0


def test_stacks_run_plane_by_plane_and_multichannel(correlated):
    noisy, _ = correlated
    stack = np.stack([noisy[:64, :64], noisy[64:, 64:]])
    model = n2x.train(stack, "ZYX", "apbsn", steps=2, r3_passes=1, **SMALL, stride_train=3)
    assert model.spatial == "YX"  # AP-BSN is 2D: Z planes are samples
    out = n2x.denoise(model, stack)
    assert out.shape == stack.shape
    assert np.std(out - stack) > 0.5 * SIGMA  # each plane is denoised, not passed through (measured 0.98 sigma)
    with pytest.raises(n2x.N2xError, match="2D"):
        n2x.train(stack, "ZYX", "apbsn", steps=1, dims=3, **SMALL)
    rgb = np.stack([noisy, noisy * 2], axis=-1)
    joint = n2x.train(rgb, "YXC", "apbsn", steps=2, channels="joint", r3_passes=1, **SMALL, stride_train=3)
    assert joint.config["network"]["in_channels"] == 2
    assert n2x.denoise(joint, rgb).shape == rgb.shape
    box = n2x.train(rgb, "YXC", "apbsn", steps=2, channels="joint", **BOX)
    assert box.config["network"]["in_channels"] == 2 and box.config["method"]["design"] == "box"
    assert n2x.denoise(box, rgb).shape == rgb.shape


def test_bad_options_are_clear():
    img = np.zeros((64, 64), np.float32)
    with pytest.raises(n2x.N2xError, match="r3_passes"):
        n2x.train(img, "YX", "apbsn", steps=1, r3_passes=-1)
    with pytest.raises(n2x.N2xError, match="stride_train"):
        n2x.train(img, "YX", "apbsn", steps=1, stride_train=0)
    with pytest.raises(n2x.N2xError, match="not both"):
        n2x.train(img, "YX", "apbsn", steps=1, stride_train=3, blind=2)
    with pytest.raises(n2x.N2xError, match="ensemble"):
        n2x.train(img, "YX", "apbsn", steps=1, ensemble=3)
    with pytest.raises(n2x.N2xError, match="design"):
        n2x.train(img, "YX", "apbsn", steps=1, design="big")


def test_auto_settings_follow_the_noise_probe(correlated, tmp_path):
    noisy, clean = correlated
    white = (clean + np.random.default_rng(3).normal(0, SIGMA, clean.shape)).astype(np.float32)
    # The 3 x 3 box noise is correlated over 2 pixels: a 5 x 5 blind box, or stride 3 for pixel-shuffle.
    box = n2x.train(noisy, "YX", "apbsn", steps=1, **BOX)
    assert box.config["method"]["design"] == "box" and box.config["method"]["blind"] == 2
    assert box.config["method"]["noise_probe"]["correlation_length"] == 2
    assert box.config["network"]["blind"] == 2
    pd = n2x.train(noisy, "YX", "apbsn", steps=1, design="pd", r3_passes=1, **SMALL)
    assert pd.config["method"]["stride_train"] == 3
    white_pd = n2x.train(white, "YX", "apbsn", steps=1, design="pd", r3_passes=1, **SMALL)
    assert white_pd.config["method"]["stride_train"] == 2
    back = n2x.load_model(pd.save(tmp_path / "auto.n2x"))
    assert back.config["method"]["stride_train"] == 3
    np.testing.assert_allclose(back.predict(noisy), pd.predict(noisy), atol=1e-5)


def test_model_files_without_a_design_are_pixel_shuffle():
    from n2x.methods.registry import method_from_config

    old = method_from_config(dict(name="apbsn", stride_train=3, stride_infer=2, r3_passes=8, r3_fraction=0.16,
                                  loss="l2", sub_batch=16, seed=0))  # a model file written before the blind box
    assert old.design == "pd"
