"""Noise2Noise: every pairing mode denoises known synthetic data; wrong pairs give clear errors."""
import numpy as np
import pytest
import torch

import n2x
from n2x.data.samples import clean_cells
from n2x.errors import InputError, N2xError, OptionError
from n2x.methods.n2n import _cells, neighbour_subsample
from conftest import psnr

SMALL = dict(batch_size=8, seed=0, device="cpu", network={"features": 16})


def _noisy(clean, seed, sigma=0.1):
    return (clean + np.random.default_rng(seed).normal(0, sigma, clean.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def scene():
    return clean_cells((128, 128), seed=5)


def test_two_arrays(scene):
    a, b = _noisy(scene, 1), _noisy(scene, 2)
    model = n2x.train(a, "YX", "n2n", target=b, steps=80, patch_size=64, **SMALL)
    assert model.config["method"]["pairing"] == "target"
    out = n2x.denoise(model, a)
    gain = psnr(out, scene) - psnr(a, scene)
    assert gain > 4.0, gain


@pytest.mark.parametrize("pairs", ["adjacent", "even-odd"])
def test_pairs_along_time(scene, pairs):
    stack = np.stack([_noisy(scene, 10 + t) for t in range(4)])  # TYX: repeated frames of a still scene
    model = n2x.train(stack, "TYX", "n2n", pairs=pairs, along="T", steps=80, patch_size=64, **SMALL)
    assert model.config["method"]["pairing"] == pairs and model.config["method"]["along"] == "T"
    out = n2x.denoise(model, stack)
    assert out.shape == stack.shape
    gain = psnr(out[0], scene) - psnr(stack[0], scene)
    assert gain > 4.0, gain


def test_adjacent_planes_of_a_3d_stack():
    clean = clean_cells((16, 96, 96), seed=2)
    noisy = _noisy(clean, 3)
    model = n2x.train(noisy, "ZYX", "n2n", pairs="adjacent", along="Z", steps=60, patch_size=48, **SMALL)
    assert model.spatial == "YX"  # planes are partners, so the network is 2D
    out = n2x.denoise(model, noisy)
    assert out.shape == noisy.shape
    gain = psnr(out, clean) - psnr(noisy, clean)
    assert gain > 2.0, gain


def test_pairs_along_time_with_a_3d_network():
    clean = clean_cells((8, 48, 48), seed=4)
    stack = np.stack([_noisy(clean, 20 + t) for t in range(3)])  # TZYX
    model = n2x.train(stack, "TZYX", "n2n", pairs="adjacent", along="T", steps=4, patch_size=(8, 32, 32),
                      **SMALL)
    assert model.spatial == "ZYX"


def test_subsample_single_image(scene):
    a = _noisy(scene, 1)
    model = n2x.train(a, "YX", "n2n", pairs="subsample", steps=100, patch_size=64, **SMALL)
    assert model.config["method"]["pairing"] == "subsample"
    out = n2x.denoise(model, a)
    gain = psnr(out, scene) - psnr(a, scene)
    assert gain > 3.0, gain


def test_subsample_pairs_are_neighbours():
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    x = torch.stack([yy, xx])[None]  # channels hold each pixel's own coordinates
    g1, g2, _, _ = neighbour_subsample(x, g)
    d = (g1 - g2).abs().sum(1)  # city-block distance between the two picks of each cell
    assert g1.shape == (1, 2, 4, 4) and torch.all(d == 1)
    assert torch.all(g1[0, 0] // 2 == torch.arange(4.0)[:, None])  # both from the cell itself
    vol = torch.arange(64.0).reshape(1, 1, 4, 4, 4)
    assert _cells(vol).shape == (1, 1, 2, 2, 2, 8)
    v1, v2, _, _ = neighbour_subsample(vol, g)
    diffs = (v1 - v2).abs().unique().tolist()
    assert set(diffs) <= {1.0, 4.0, 16.0}  # one step along X, Y or Z


def test_l1_loss_and_round_trip(scene, tmp_path):
    a, b = _noisy(scene, 1), _noisy(scene, 2)
    model = n2x.train(a, "YX", "n2n", target=b, loss="l1", steps=5, patch_size=32, **SMALL)
    path = model.save(tmp_path / "n2n.n2x")
    back = n2x.load_model(path)
    assert back.config["method"]["loss"] == "l1" and back.method_name == "n2n"
    np.testing.assert_allclose(back.predict(a), model.predict(a), atol=1e-5)


def test_clear_errors(scene):
    a = _noisy(scene, 1)
    with pytest.raises(InputError, match="target"):  # a hint worded per front door: target / --target
        n2x.train(a, "YX", "n2n", steps=1)
    with pytest.raises(InputError, match="same shape"):
        n2x.train(a, "YX", "n2n", target=a[:64], steps=1)
    with pytest.raises(InputError, match="along"):
        n2x.train(np.stack([a, a]), "TYX", "n2n", pairs="adjacent", steps=1)
    with pytest.raises(InputError, match="at least 2 frames"):
        n2x.train(a[None], "TYX", "n2n", pairs="adjacent", along="T", steps=1)
    with pytest.raises(InputError, match="T axis"):
        n2x.train(np.stack([a] * 8), "ZYX", "n2n", pairs="adjacent", along="T", steps=1)
    with pytest.raises(InputError, match="2D; leave dims unset or set it to 2"):
        n2x.train(np.stack([a] * 8), "ZYX", "n2n", pairs="adjacent", along="Z", dims=3, steps=1)
    with pytest.raises(OptionError, match="pairs must be one of"):  # checked by its declaration
        n2x.train(a, "YX", "n2n", pairs="random", steps=1)
    with pytest.raises(InputError, match="not both"):
        n2x.train(a, "YX", "n2n", target=a, pairs="subsample", steps=1)
    with pytest.raises(N2xError, match="has no option 'target'"):
        n2x.train(a, "YX", "n2v", target=a, steps=1)


def test_n2n_network_is_residual_and_n2v_is_not(scene):
    from n2x.nets import build_network

    net = build_network("unet", ndim=2, in_channels=1, out_channels=1, depth=2, features=8, residual=True).eval()
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.zero_()
        x = torch.randn(2, 1, 32, 32)
        assert torch.equal(net(x), x)  # the identity path: the layers learn only the correction
    a, b = _noisy(scene, 1), _noisy(scene, 2)
    n2n = n2x.train(a, "YX", "n2n", target=b, steps=2, patch_size=32, **SMALL)
    n2v = n2x.train(a, "YX", "n2v", steps=2, patch_size=32, **SMALL)
    assert n2n.config["network"]["residual"] is True
    # Noise2Void's masked pixel holds a neighbour's value: an identity path would pass the noise through.
    assert not n2v.config["network"].get("residual", False)
    # Sub-sampling keeps the plain U-Net: under the Neighbor2Neighbor loss the identity scores about as well as a
    # denoiser, and training from it stalls.
    sub = n2x.train(a, "YX", "n2n", pairs="subsample", steps=2, patch_size=32, **SMALL)
    assert sub.config["network"]["residual"] is False
