"""The Wiener filter after the posterior (:mod:`n2x.methods.pilot_wiener`): an exact transform and its adjoint,
the same result in strips, per plane and per pixel variance, a gain over its pilot on a known image, and ``bsn``
applying it within its tiles."""
import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import data

import n2x
from n2x.data.samples import noisy_sample
from n2x.nets.ensemble import members_of
from n2x.methods import pilot_wiener as pilot_wiener_module
from n2x.methods import posterior as posterior_module
from n2x.methods.pilot_wiener import block_dct, block_idct_add, dct_basis, pilot_wiener
from conftest import psnr


def _camera(sigma: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    clean = data.camera()[100:292, 150:342].astype(np.float32) / 255
    noisy = clean + np.random.default_rng(seed).normal(0, sigma, clean.shape).astype(np.float32)
    return clean, noisy


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, np.float32))[None, None]


def test_block_transform_is_orthonormal_and_its_adjoint_adds_the_blocks_back():
    basis = dct_basis(8)
    torch.testing.assert_close(basis @ basis.T, torch.eye(8), atol=1e-6, rtol=0)
    x = torch.randn(2, 1, 20, 17, dtype=torch.float32)
    coeff = block_dct(x, basis)
    assert coeff.shape == (2, 64, 13, 10)
    # the coefficients of the block at (3, 5) are the 2D DCT of that block
    torch.testing.assert_close(coeff[0, :, 3, 5].reshape(8, 8), basis @ x[0, 0, 3:11, 5:13] @ basis.T,
                               atol=1e-5, rtol=0)
    # back and added: each pixel times the number of blocks that hold it
    covered = torch.nn.functional.conv_transpose2d(torch.ones(1, 1, 13, 10), torch.ones(1, 1, 8, 8))
    torch.testing.assert_close(block_idct_add(coeff, basis), x * covered, atol=1e-4, rtol=0)


def test_a_sure_pilot_gives_the_noisy_image_and_a_flat_pilot_its_mean():
    """Weights near 1 where the pilot's coefficients dwarf the noise: the noisy image comes back. A flat pilot
    keeps each block's mean alone (weighed by 16 / (16 + 0.01): its DC coefficient is 8 x 0.5), and the blocks
    over a pixel average to a 15 x 15 triangular filter."""
    _, noisy = _camera(0.1)
    y = _t(noisy)
    torch.testing.assert_close(pilot_wiener(y, y * 1e4, torch.tensor(1e-4)), y, atol=1e-4, rtol=0)
    flat = pilot_wiener(y, torch.full_like(y, 0.5), torch.tensor(0.01))[0, 0].numpy()
    tent = np.convolve(np.ones(8), np.ones(8)) / 64
    expected = ndimage.convolve(noisy.astype(np.float64), np.outer(tent, tent)) * 16 / 16.01
    np.testing.assert_allclose(flat[8:-8, 8:-8], expected[8:-8, 8:-8], atol=1e-5)


def test_strips_planes_and_per_pixel_variance_give_the_same_result(monkeypatch):
    _, noisy = _camera(0.1)
    y = _t(noisy)
    pilot = _t(ndimage.gaussian_filter(noisy, 1.0))
    whole = pilot_wiener(y, pilot, torch.tensor(0.01), strip_rows=None)
    torch.testing.assert_close(pilot_wiener(y, pilot, torch.tensor(0.01), strip_rows=5), whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(pilot_wiener(y, pilot, torch.full_like(y, 0.01)), whole, atol=1e-5, rtol=0)
    volume = pilot_wiener(torch.cat([y, y.flip(-1)], 1)[:, None],
                          torch.cat([pilot, pilot.flip(-1)], 1)[:, None], torch.tensor(0.01))
    assert volume.shape == (1, 1, 2) + y.shape[-2:]
    torch.testing.assert_close(volume[0, 0, 1], whole[0, 0].flip(-1), atol=1e-5, rtol=0)
    monkeypatch.setattr(pilot_wiener_module, "STRIP_BLOCKS", 64 * (192 - 7))  # one plane at a time
    one_by_one = pilot_wiener(torch.cat([y, y.flip(-1)], 1)[:, None],
                              torch.cat([pilot, pilot.flip(-1)], 1)[:, None], torch.tensor(0.01))
    torch.testing.assert_close(one_by_one, volume, atol=1e-5, rtol=0)
    assert torch.equal(pilot_wiener(y[..., :6], pilot[..., :6], torch.tensor(0.01)), pilot[..., :6])


def test_cubes_transform_exactly_and_give_the_same_result_in_strips(monkeypatch):
    """Cubes (a volume denoised by a 3D network): the 3D DCT of each block, its adjoint, the same filter whole and
    in strips of single positions, and as many planes as the tile has where it has fewer than the block."""
    basis = dct_basis(4)
    x = torch.randn(1, 1, 10, 12, 11, dtype=torch.float32)
    coeff = block_dct(x, basis, basis)
    assert coeff.shape == (1, 4, 7, 16, 9, 8)  # Z coefficients, Z positions, plane coefficients, plane positions
    expected = torch.einsum("ai,bj,ck,ijk->abc", basis, basis, basis, x[0, 0, 2:6, 3:7, 1:5])
    torch.testing.assert_close(coeff[0, :, 2, :, 3, 1].reshape(4, 4, 4), expected, atol=1e-5, rtol=0)
    covered = torch.nn.functional.conv_transpose3d(torch.ones(1, 1, 7, 9, 8), torch.ones(1, 1, 4, 4, 4))
    torch.testing.assert_close(block_idct_add(coeff, basis, basis), x * covered, atol=1e-4, rtol=0)

    _, noisy = _camera(0.1)
    y = _t(np.stack([noisy[i:i + 40, :40] for i in range(10)]))  # (1, 1, 10, 40, 40), planes shifted by a row
    pilot = _t(ndimage.gaussian_filter(y[0, 0].numpy(), 1.0))
    whole = pilot_wiener(y, pilot, torch.tensor(0.01), strip_rows=None, dims=3)
    monkeypatch.setattr(pilot_wiener_module, "STRIP_BLOCKS", 40)  # 5 cube positions: one row cut in pieces
    torch.testing.assert_close(pilot_wiener(y, pilot, torch.tensor(0.01), dims=3), whole, atol=1e-5, rtol=0)
    monkeypatch.undo()
    one_plane = pilot_wiener(y[:, :, :1], pilot[:, :, :1], torch.tensor(0.01), dims=3)  # a 1 x 8 x 8 block
    torch.testing.assert_close(one_plane, pilot_wiener(y[:, :, :1], pilot[:, :, :1], torch.tensor(0.01)),
                               atol=1e-5, rtol=0)


def test_cubes_gain_over_squares_in_a_volume():
    """A volume whose planes change slowly: a 3D pilot holds what the neighbouring planes tell, and cubes keep it
    where squares, one plane at a time, would take it from that plane's noise alone."""
    plane = data.camera()[100:228, 150:278].astype(np.float32) / 255
    clean = np.stack([np.roll(plane, i // 2, axis=1) for i in range(16)])
    noisy = clean + np.random.default_rng(2).normal(0, 0.1, clean.shape).astype(np.float32)
    pilot = ndimage.gaussian_filter(noisy, (2.0, 1.0, 1.0))
    cubes = pilot_wiener(_t(noisy), _t(pilot), torch.tensor(0.01), dims=3)[0, 0].numpy()
    squares = pilot_wiener(_t(noisy), _t(pilot), torch.tensor(0.01))[0, 0].numpy()
    # measured: pilot 25.0 dB, squares 27.0, cubes 27.4
    assert psnr(cubes, clean) > max(psnr(squares, clean) + 0.25, psnr(pilot, clean) + 1.5), (
        psnr(noisy, clean), psnr(pilot, clean), psnr(squares, clean), psnr(cubes, clean))


@pytest.mark.parametrize("sigma", [0.05, 0.1])
def test_it_gains_over_its_pilot_on_a_known_image(sigma):
    """A pilot that smooths (a Gaussian filter of the noisy image): the Wiener estimate takes the detail back from
    the noisy image where the pilot's power says it is there."""
    clean, noisy = _camera(sigma, seed=1)
    pilot = ndimage.gaussian_filter(noisy, 1.0)
    out = pilot_wiener(_t(noisy), _t(pilot), torch.tensor(sigma ** 2))[0, 0].numpy()
    assert psnr(out, clean) > psnr(pilot, clean) + 0.5, (psnr(noisy, clean), psnr(pilot, clean), psnr(out, clean))


def test_bsn_filters_within_its_tiles_and_can_be_turned_off():
    noisy, clean, _ = noisy_sample("2d", "gaussian", seed=3)
    noisy, clean = noisy[:150, :130], clean[:150, :130]
    model = n2x.train(noisy, "YX", "bsn", trunk="unet", steps=60, patch_size=64, batch_size=4, seed=0,
                      device="cpu", ensemble=1)
    assert model.config["method"]["wiener_block"] == 8  # the default, stored with the model
    halo, whole = model.halo, model.predict(noisy, "YX")
    np.testing.assert_allclose(model.predict(noisy, "YX", tile=64), whole, atol=1e-4)  # the halo holds the blocks
    model.method.params["wiener_block"] = 0
    radius = members_of(model.net)[0].receptive_radius()
    assert model.halo >= radius and halo >= radius + 7 and halo % 8 == 0  # + the block's 7 px, on the grid
    posterior = model.predict(noisy, "YX")
    assert psnr(whole, clean) > psnr(posterior, clean) + 0.1, (psnr(noisy, clean), psnr(posterior, clean))
    assert n2x.train(noisy, "YX", "bsn", steps=1, seed=0, device="cpu", wiener_block=0).method.params[
        "wiener_block"] == 0


def test_bsn_leaves_the_filter_out_in_2d_under_photon_noise_in_its_posterior():
    """Where a 2D posterior holds photon noise (a variance line in the signal), the filter lost (moon/PG -0.27 dB):
    the prediction is the posterior itself, with the narrower halo."""
    noisy, _, _ = noisy_sample("2d", "pg", seed=5)
    model = n2x.train(noisy[:96, :96], "YX", "bsn", steps=5, seed=0, device="cpu", ensemble=1)
    assert model.config["method"]["noise_model"] == "photon" and model.config["method"]["wiener_block"] == 8
    assert model.method.wiener_block_used(2) == 0
    with_rule = model.predict(noisy[:96, :96], "YX")
    model.method.params["wiener_block"] = 0
    np.testing.assert_array_equal(model.predict(noisy[:96, :96], "YX"), with_rule)


def test_bsn_filters_a_volume_in_cubes_within_its_tiles_also_under_photon_noise(monkeypatch):
    noisy, _, _ = noisy_sample("3d", "pg", seed=4)
    model = n2x.train(noisy, "ZYX", "bsn", steps=3, patch_size=32, batch_size=2, seed=0, device="cpu", ensemble=1)
    noisy = noisy[:, :72, :72]
    assert model.config["method"]["noise_model"] == "photon" and model.method.wiener_block_used(3) == 8
    dims = []

    def recording(*args, **kwargs):
        dims.append(kwargs["dims"])
        return pilot_wiener(*args, **kwargs)

    monkeypatch.setattr(posterior_module, "pilot_wiener", recording)
    whole = model.predict(noisy, "ZYX")
    assert dims and set(dims) == {3}
    np.testing.assert_allclose(model.predict(noisy, "ZYX", tile=(32, 40, 40)), whole, atol=1e-4)
