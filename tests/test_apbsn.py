"""AP-BSN: blind by construction, denoises spatially correlated noise where N2V fails, tiles exactly."""
import numpy as np
import pytest
import torch

import n2x
from n2x.data.samples import clean_cells
from n2x.methods.apbsn import pd_down, pd_up, r3_mask
from n2x.nets.blindspot import BlindSpotNet
from conftest import psnr

SIGMA = 0.1
SMALL = dict(batch_size=8, seed=0, device="cpu", patch_size=60, network={"features": 16, "blocks": 2})
# Quality runs: a small network, few steps. The noise is a 3 x 3 box (correlation length 2), so stride 3 decorrelates
# it and keeps the sub-images of a 128 x 128 test image large enough to learn from in seconds.
QUICK = dict(SMALL, stride_train=3, sub_batch=32, learning_rate=4e-3)


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


def test_beats_n2v_on_correlated_noise(correlated):
    noisy, clean = correlated
    ap = n2x.train(noisy, "YX", "apbsn", steps=80, **QUICK)
    out = n2x.denoise(ap, noisy)
    nv = n2x.train(noisy, "YX", "n2v", steps=80, batch_size=8, seed=0, device="cpu", patch_size=64,
                   learning_rate=4e-3, network={"features": 16})
    base, p_ap, p_nv = psnr(noisy, clean), psnr(out, clean), psnr(n2x.denoise(nv, noisy), clean)
    # Measured: AP-BSN +4.8 dB.
    assert p_ap - base > 2.5, (base, p_ap, p_nv)
    assert p_ap - p_nv > 1.0, (base, p_ap, p_nv)


def test_improves_white_noise():
    clean = _smooth_scene(8)
    noisy = (clean + np.random.default_rng(2).normal(0, SIGMA, clean.shape)).astype(np.float32)
    model = n2x.train(noisy, "YX", "apbsn", steps=60, **QUICK)
    gain = psnr(n2x.denoise(model, noisy), clean) - psnr(noisy, clean)
    # Measured +8.6 dB after 80 steps on a sibling image.
    assert gain > 3.0, gain


def test_round_trip_tiling_and_options(correlated, tmp_path):
    noisy, _ = correlated
    model = n2x.train(noisy, "YX", "apbsn", steps=3, stride_train=4, stride_infer=3, r3_passes=2, **SMALL)
    path = model.save(tmp_path / "ap.n2x")
    back = n2x.load_model(path)
    assert back.config["method"]["stride_train"] == 4 and back.config["method"]["stride_infer"] == 3
    assert back.config["method"]["r3_passes"] == 2 and back.multiple == 3
    whole = back.predict(noisy, tile=256)
    tiled = back.predict(noisy, tile=24)  # many small tiles, each with the full halo
    np.testing.assert_allclose(tiled, whole, atol=1e-4)
    np.testing.assert_allclose(model.predict(noisy, tile=256), whole, atol=1e-5)


def test_stacks_run_plane_by_plane_and_multichannel(correlated):
    noisy, _ = correlated
    stack = np.stack([noisy[:64, :64], noisy[64:, 64:]])
    model = n2x.train(stack, "ZYX", "apbsn", steps=2, r3_passes=1, **SMALL)
    assert model.spatial == "YX"  # AP-BSN is 2D: Z planes are samples
    assert n2x.denoise(model, stack).shape == stack.shape
    with pytest.raises(n2x.N2xError, match="2D"):
        n2x.train(stack, "ZYX", "apbsn", steps=1, dims=3, **SMALL)
    rgb = np.stack([noisy, noisy * 2], axis=-1)
    joint = n2x.train(rgb, "YXC", "apbsn", steps=2, channels="joint", r3_passes=1, **SMALL)
    assert joint.config["network"]["in_channels"] == 2
    assert n2x.denoise(joint, rgb).shape == rgb.shape


def test_bad_options_are_clear():
    img = np.zeros((64, 64), np.float32)
    with pytest.raises(n2x.N2xError, match="r3_passes"):
        n2x.train(img, "YX", "apbsn", steps=1, r3_passes=-1)
    with pytest.raises(n2x.N2xError, match="stride_train"):
        n2x.train(img, "YX", "apbsn", steps=1, stride_train=0)


def test_auto_stride_follows_the_noise_probe(correlated, tmp_path):
    noisy, clean = correlated
    white = (clean + np.random.default_rng(3).normal(0, SIGMA, clean.shape)).astype(np.float32)
    options = {k: v for k, v in SMALL.items()}
    corr_model = n2x.train(noisy, "YX", "apbsn", steps=1, r3_passes=1, **options)
    white_model = n2x.train(white, "YX", "apbsn", steps=1, r3_passes=1, **options)
    # The 3 x 3 box noise is correlated over 2 pixels: stride 3 is the smallest that decorrelates it.
    assert corr_model.config["method"]["stride_train"] == 3
    assert corr_model.config["method"]["stride_probe"]["correlation_length"] == 2
    assert white_model.config["method"]["stride_train"] == 2
    back = n2x.load_model(corr_model.save(tmp_path / "auto.n2x"))
    assert back.config["method"]["stride_train"] == 3
    np.testing.assert_allclose(back.predict(noisy), corr_model.predict(noisy), atol=1e-5)
