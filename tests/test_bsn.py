"""The all-pixel blind-spot method (``bsn``): blind by construction in 2D and 3D, learns from every pixel so it beats
N2V of the same number of steps, holds on a small image, and its model file round-trips."""
import numpy as np
import pytest
import torch

import n2x
from n2x.data.samples import clean_cells, noisy_sample
from n2x.methods import get_method
from n2x.data.axes import make_layout
from n2x.methods.bsn import INPUT_NOISE_SMALL, MIN_PASSES_TO_MEMORISE, measure_mean_offset, robust_noise_line
from n2x.nets.shifted_bsn import ShiftedBSN
from conftest import psnr

# The same short run for both methods: same steps, patch and batch (the method defaults are for 180 s runs).
RUN = dict(steps=100, patch_size=32, batch_size=8, seed=0, device="cpu")


# Sizes that are not multiples of the U-Net's pooling factor (8), and points at the centre, a corner, an edge and
# next to the padded end: zero padding and the shifted poolings must keep every one of them blind.
@pytest.mark.parametrize("trunk", ["unet", "dilated"])
@pytest.mark.parametrize("ndim,shape", [(2, (37, 41)), (3, (9, 33, 29))])
def test_network_output_ignores_its_own_pixel(ndim, shape, trunk):
    torch.manual_seed(0)
    net = ShiftedBSN(ndim=ndim, features=16, dilations=(1, 2), z_context=2, trunk=trunk, depth=3)
    x = torch.randn((1, 1) + shape, requires_grad=True)
    out = net(x)
    assert out.shape == (1, 2) + shape
    points = [tuple(s // 2 for s in shape), (0,) * len(shape), tuple(s - 1 for s in shape),
              tuple(s // 2 for s in shape[:-1]) + (shape[-1] - 2,)]
    for point in points:
        for ch in (0, 1):  # the prior mean and the prior variance
            (grad,) = torch.autograd.grad(out[(0, ch) + point], x, retain_graph=True)
            g = grad[0, 0].abs()
            assert g[point] == 0, (point, ch)
            assert (g > 0).sum() > (40 if point == points[0] else 0)  # it does see the neighbourhood
            if ndim == 3 and point == points[0]:  # and, in 3D, the voxels right above and below
                z, y, xx = point
                assert g[z - 1, y, xx] > 0 and g[z + 1, y, xx] > 0
            # the four nearest neighbours in the plane are seen (the four half-planes join at the pixel)
            if point == points[0]:
                *lead, y, xx = point
                for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    assert g[(*lead, y + dy, xx + dx)] > 0, (dy, dx)
            nz = torch.nonzero(g > 0)
            assert int((nz - torch.tensor(point)).abs().max()) <= net.receptive_radius()


def test_unet_trunk_sees_far_and_pads_to_its_pooling_factor():
    """The U-Net trunk's receptive field spans the whole 64 x 64 patch (the dilated one: 20 px), and a tile that is
    a multiple of 8 gives the same values as the same pixels inside a larger, zero-padded one."""
    torch.manual_seed(0)
    net = ShiftedBSN(features=8, trunk="unet", depth=3).eval()
    assert net.multiple == 8
    x = torch.randn(1, 1, 64, 64, requires_grad=True)
    (grad,) = torch.autograd.grad(net(x)[0, 0, 32, 32], x)
    assert int((grad[0, 0] != 0).sum()) == 64 * 64 - 1
    with torch.no_grad():
        small = net(x[..., :61, :59])
        padded = net(torch.nn.functional.pad(x[..., :61, :59], (0, 5, 0, 3)))
    torch.testing.assert_close(small, padded[..., :61, :59])


def test_posterior_mean_weighs_the_pixel_by_the_prior_variance():
    method = get_method("bsn", ensemble=1)
    net = ShiftedBSN(features=4, dilations=(1,))
    with torch.no_grad():
        net.set_noise_var(torch.tensor([0.25]))
    x = torch.randn(1, 1, 16, 16)
    mu, prior_var, noise_var = method._prior_and_noise(net, x)
    out = method.posterior_mean(net, x)
    w = prior_var / (prior_var + 0.25)
    assert torch.allclose(out, w * x + (1 - w) * mu, atol=1e-5)
    assert float(noise_var.flatten()[0]) == pytest.approx(0.25, rel=1e-5)


def test_training_fits_the_mean_by_squared_error_and_the_variance_by_likelihood():
    method = get_method("bsn", ensemble=1)
    torch.manual_seed(0)
    net = ShiftedBSN(features=4, dilations=(1,)).train()
    with torch.no_grad():
        net.set_noise_var(torch.tensor([0.25]))
        for p in net.parameters():  # weights far from their start, so that the prior variance varies by pixel
            p.normal_(0.0, 0.5)
    outputs = []

    def keep(module, args, out):
        if out.requires_grad:
            out.retain_grad()
        outputs.append(out)

    net.register_forward_hook(keep)
    y = torch.randn(2, 1, 16, 16)
    loss = method.loss(net, (y,), torch.Generator())
    loss.backward()
    out = outputs[0]
    with torch.no_grad():
        mu, prior_var, _ = method._prior_and_noise(net.eval(), y)
    var = prior_var + 0.25
    # the loss's value is the likelihood's
    assert float(loss.detach()) == pytest.approx(float((0.5 * (torch.log(var) + (y - mu) ** 2 / var)).mean()), rel=1e-4)
    # the mean's gradient is the squared error's, the same weight at every pixel (the likelihood's would be 1 / var)
    n = y.numel()
    torch.testing.assert_close(out.grad[:, :1], (mu - y) / 0.25 / n, rtol=1e-3, atol=1e-7)
    assert float(var.max() / var.min()) > 1.5, "the prior variance varies, so the two gradients differ"
    # the variance's gradient is the likelihood's: d/dv of 0.5 (log v + r^2 / v), through the softplus
    raw = out[:, 1:].detach()
    want = 0.5 * (1 / var - (y - mu) ** 2 / var ** 2) * torch.sigmoid(raw) / n
    torch.testing.assert_close(out.grad[:, 1:], want, rtol=1e-3, atol=1e-7)


def test_the_offset_training_leaves_in_the_prior_mean_is_measured_and_removed(tmp_path):
    method = get_method("bsn", ensemble=1)
    torch.manual_seed(0)
    net = ShiftedBSN(features=4, dilations=(1,)).eval()
    with torch.no_grad():
        net.set_noise_var(torch.tensor([0.25]))
    y = (0.5 + torch.randn(16, 1, 24, 24)).numpy()
    measure_mean_offset(net, y, torch.device("cpu"), fold_channels=False)
    with torch.no_grad():
        mu0 = method._prior_and_noise(net, torch.from_numpy(y))[0]
        assert abs(float((torch.from_numpy(y) - mu0).mean())) < 1e-5
        net.head[-1].bias[0] += 0.3  # the offset a late step leaves
        assert float((method._prior_and_noise(net, torch.from_numpy(y))[0] - mu0).mean()) > 0.1
    measure_mean_offset(net, y, torch.device("cpu"), fold_channels=False)
    with torch.no_grad():
        torch.testing.assert_close(method._prior_and_noise(net, torch.from_numpy(y))[0], mu0, atol=1e-4, rtol=0)
    # stored with the weights; a file without it loads with no offset
    state = net.state_dict()
    back = ShiftedBSN(features=4, dilations=(1,))
    back.load_state_dict(state)
    assert torch.equal(back.mean_offset, net.mean_offset)
    assert torch.equal(back.offset_values, net.offset_values)
    old = {k: v for k, v in state.items() if k not in ("mean_offset", "offset_knots", "offset_values")}
    back.load_state_dict(old)
    assert float(back.mean_offset.abs().sum()) == 0.0 and float(back.offset_values.abs().sum()) == 0.0


def test_photon_noise_line_is_measured_and_floored():
    """Poisson noise (30 photons at 1) and read noise (sigma 0.02) on a smooth image: the fitted line gives the
    noise variance within 10% across the intensities, and the posterior's noise variance follows the prior mean down
    to its floor. A model file from before photon noise (no gain, no floor) loads as one variance."""
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    clean = 0.1 + 0.8 * (0.7 * xx + 0.3 * (0.5 + 0.5 * np.sin(8 * yy)))  # 0.1 to 0.9
    rng = np.random.default_rng(0)
    noisy = (rng.poisson(clean * 30) / 30 + rng.normal(0, 0.02, clean.shape)).astype(np.float32)
    var0, gain, floor = robust_noise_line(torch.from_numpy(noisy)[None, None])
    for signal in (0.3, 0.5, 0.85):
        assert float(var0 + gain * signal) == pytest.approx(signal / 30 + 0.02 ** 2, rel=0.1)
    # 4.5 photons: the median of a few discrete counts reads 5-11% low (6 draws)
    assert float(var0 + gain * 0.15) == pytest.approx(0.15 / 30 + 0.02 ** 2, rel=0.15)
    assert 0 < float(floor) < float(var0 + gain * 0.15)
    net = ShiftedBSN(features=4, dilations=(1,))
    net.set_noise_var(torch.tensor([0.1]), torch.tensor([0.5]), torch.tensor([0.05]))
    with torch.no_grad():
        net.shortcut.weight.mul_(8.0)  # a prior mean that spans the floor and above
        mu, _, noise_var = get_method("bsn")._prior_and_noise(net, torch.randn(1, 1, 16, 16))
    assert float(mu.min()) < -0.1 and float(mu.max()) > 0
    assert torch.allclose(noise_var, torch.clamp(0.1 + 0.5 * mu, min=0.05), atol=1e-6)
    old = {k: v for k, v in net.state_dict().items() if k not in ("noise_gain", "noise_floor")}
    fresh = ShiftedBSN(features=4, dilations=(1,))
    fresh.load_state_dict(old, strict=True)
    assert float(fresh.noise_gain[0]) == 0 and float(fresh.noise_floor[0]) == pytest.approx(0.1)


def _pair(noise: str, seed: int):
    noisy, clean, _ = noisy_sample("2d", noise, seed=seed)
    return noisy[:128, :128], clean[:128, :128]


# the margin over N2V at 100 steps. Poisson-Gaussian: +0.23 dB with the photon noise in the posterior (the U-Net
# trunk; +0.53 with the variance-stabilising transform it replaced, which lost 2.5 dB to it at 5 photons on cell)
@pytest.mark.parametrize("noise,margin", [("gaussian", 0.3), ("pg", 0.1)])
def test_learns_more_than_n2v_in_the_same_steps(noise, margin):
    noisy, clean = _pair(noise, 5)
    bsn = n2x.train(noisy, "YX", "bsn", ensemble=2, trunk="unet", **RUN)  # `auto` would pick dilated at 128 px
    assert bsn.config["network"]["trunk"] == "unet"
    n2v = n2x.train(noisy, "YX", "n2v", **RUN)
    p_noisy, p_n2v = psnr(noisy, clean), psnr(n2v.predict(noisy, "YX"), clean)
    p_bsn = psnr(bsn.predict(noisy, "YX"), clean)
    # 100 steps: +3.8 dB over the noisy image with the leaky head (Gaussian; +4.4 with the ReLU head it had before,
    # which 180 s runs lose nothing by changing: docs/methods.md, "Training stability")
    assert p_bsn > p_noisy + 3.5
    # with the dilated trunk (before the photon posterior): +1.4 dB (Gaussian), +0.8 dB (PG with the transform)
    assert p_bsn > p_n2v + margin, (p_noisy, p_bsn, p_n2v)
    assert bsn.config["method"].get("noise_model") == ("photon" if noise == "pg" else None)
    sigma = bsn.config["method"]["noise_sigma"]  # measured on the first batch, normalised units
    norm = bsn.config["normalization"]
    if noise == "gaussian" and not norm.get("vst"):
        assert sigma[0] == pytest.approx(0.1 / norm["scale"][0], rel=0.1)


def test_small_image_does_not_collapse():
    """100 x 100 pixels, over 100 passes over the image: the held-out pixels keep the weights from before
    memorising, and every region of the image trains."""
    clean = clean_cells((100, 100), seed=11)
    noisy = (clean + np.random.default_rng(2).normal(0, 0.1, clean.shape)).astype(np.float32)
    model = n2x.train(noisy, "YX", "bsn", steps=200, batch_size=8, seed=0, device="cpu", ensemble=2)
    assert model.config["patch_shape"] == [32, 32]  # a third of the image
    assert model.config["network"]["trunk"] == "dilated"  # `auto`: the U-Net would see mostly padding
    assert model.config["training"]["val_independent"]
    n2v = n2x.train(noisy, "YX", "n2v", steps=200, batch_size=8, seed=0, device="cpu")
    p_noisy, p_bsn = psnr(noisy, clean), psnr(model.predict(noisy, "YX"), clean)
    p_n2v = psnr(n2v.predict(noisy, "YX"), clean)
    assert p_bsn > p_noisy + 4
    assert p_bsn > p_n2v - 1.0, (p_noisy, p_bsn, p_n2v)


def test_input_noise_is_fresh_in_training_and_absent_in_validation():
    """With ``input_noise`` the network sees in training the image plus noise of up to that many noise standard
    deviations, each patch its own amount, a new draw at every step, and in validation the image itself."""
    method = get_method("bsn", input_noise=1.0)
    net = ShiftedBSN(features=4, dilations=(1,))
    net.set_noise_var(torch.tensor([0.25]))
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    y = torch.randn(64, 1, 32, 32)
    generator = torch.Generator().manual_seed(0)
    for mode in (net.train, net.train, net.eval):
        mode()
        method.loss(net, (y,), generator)
    first, second, validation = (x - y for x in seen)
    amounts = first.flatten(1).std(1) / 0.5  # in noise sigmas: sqrt(0.25)
    assert float(amounts.max()) < 1.1 and float(amounts.min()) < 0.2
    assert float(amounts.mean()) == pytest.approx(0.5, abs=0.1)  # uniform from 0 to 1
    assert not torch.equal(first, second)
    assert torch.equal(validation, torch.zeros_like(y))


def test_input_noise_auto_is_on_for_a_small_2d_image_only():
    """``auto`` adds input noise where a network memorises within the budget, a 2D image under 192 px, unless
    the noise is photon noise."""
    for shape, axes, ndim, expected in (((100, 100), "YX", 2, INPUT_NOISE_SMALL), ((512, 512), "YX", 2, 0.0),
                                        ((20, 100, 100), "ZYX", 3, 0.0)):
        method = get_method("bsn")
        assert method.params["input_noise"] is None  # auto
        method.prepare([np.zeros(shape, np.float32)], [make_layout(shape, axes)])
        assert method.input_noise_for(ndim) == expected, shape
        # with input noise the networks share the budget and wait before rewinding; without, neither
        assert method.members_share_budget == (expected > 0), shape
        assert method.min_passes_to_memorise == (MIN_PASSES_TO_MEMORISE if expected > 0 else 0.0), shape
        method.params["noise_model"] = "photon"  # as the api sets it where vst "auto" finds photon noise
        assert method.input_noise_for(ndim) == 0.0, shape
        assert not method.members_share_budget and method.min_passes_to_memorise == 0.0, shape
    assert get_method("bsn", input_noise="0").input_noise_for(2) == 0.0  # the user's value wins, off included
    noisy, _, _ = noisy_sample("2d", "gaussian", seed=1)
    model = n2x.train(noisy[:96, :96], "YX", "bsn", steps=20, seed=0, device="cpu", ensemble=1)
    assert model.config["method"]["input_noise"] == INPUT_NOISE_SMALL  # the model file says what auto chose


def test_3d_denoises_and_round_trips(tmp_path):
    noisy, clean, axes = noisy_sample("3d", "gaussian", seed=4)
    noisy, clean = noisy[:16, :64, :64], clean[:16, :64, :64]
    model = n2x.train(noisy, axes, "bsn", steps=40, patch_size=(8, 32, 32), batch_size=2, seed=0, device="cpu",
                      ensemble=1)
    assert model.config["network"]["ndim"] == 3
    assert model.config["network"]["trunk"] == "dilated"  # `auto` in 3D (the U-Net's 3D blindness: above)
    out = model.predict(noisy, axes)
    assert out.shape == noisy.shape
    assert psnr(out, clean) > psnr(noisy, clean) + 3
    path = n2x.save_model(model, tmp_path / "bsn3d")
    again = n2x.load_model(path).predict(noisy, axes)
    np.testing.assert_allclose(again, out, atol=1e-5)


def test_unet_trunk_tiles_match_the_whole_image():
    """An image that is no multiple of the pooling factor, denoised whole and in 64 px tiles (halo from the
    receptive radius, windows on the pooling grid): the same values."""
    noisy, _, _ = noisy_sample("2d", "gaussian", seed=3)
    noisy = noisy[:150, :130]
    model = n2x.train(noisy, "YX", "bsn", trunk="unet", steps=2, patch_size=64, batch_size=2, seed=0, device="cpu",
                      ensemble=1)
    assert model.config["network"]["trunk"] == "unet" and model.multiple == 8
    whole = model.predict(noisy, "YX")
    tiled = model.predict(noisy, "YX", tile=64)
    assert whole.shape == noisy.shape
    np.testing.assert_allclose(tiled, whole, atol=1e-4)


def test_noise_variance_is_measured_on_a_sample_before_training():
    """The fixed noise variance comes from about 2^18 pixels of training patches (not the first batch), and drawing
    them leaves the training's random stream as it was."""
    from n2x.data.axes import make_layout
    from n2x.data.patches import PatchSampler, single_source

    clean = clean_cells((256, 256), seed=3)
    noisy = (clean + np.random.default_rng(4).normal(0, 0.1, clean.shape)).astype(np.float32)
    layout = make_layout(noisy.shape, "YX")
    twins = [PatchSampler([single_source(noisy, layout)], (32, 32), seed=0) for _ in range(2)]
    sample = twins[0].sample(8)[0]
    assert sample.shape == (8, 1, 32, 32) and np.array_equal(sample, twins[1].sample(8)[0])
    assert np.array_equal(twins[0].batch(4)[0], twins[1].batch(4)[0])  # sample() drew from its own stream
    model = n2x.train(noisy, "YX", "bsn", steps=1, batch_size=1, patch_size=32, seed=0, device="cpu",
                      network={"features": 8})
    norm = model.config["normalization"]
    assert "vst" not in norm
    # one 32 x 32 patch would scatter by about 5%; the sample reads the image's noise within 3%
    assert model.config["method"]["noise_sigma"][0] * norm["scale"][0] == pytest.approx(0.1, rel=0.03)
