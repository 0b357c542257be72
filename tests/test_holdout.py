"""Held-out pixels (``n2x.data.holdout``): the validation split of the all-pixel blind-spot method. The same pixels
are held out whatever region is read, the mask turns with its patch, every region trains, and the loss keeps the two
sets of pixels apart."""
import numpy as np
import pytest
import torch

from n2x.data.axes import make_layout
from n2x.data.holdout import held_out_pixels, with_held_out_pixels
from n2x.data.patches import PatchSampler, single_source
from n2x.methods import get_method
from n2x.methods.bsn import prior_and_noise
from n2x.nets.shifted_bsn import ShiftedBSN


def test_held_out_pixels_are_a_fixed_pattern_of_absolute_positions():
    whole = held_out_pixels(0, (slice(0, 200), slice(0, 300)), 2, 0.1)
    assert whole.shape == (2, 200, 300) and set(np.unique(whole)) == {0.0, 1.0}
    assert whole.mean() == pytest.approx(0.1, abs=0.01)
    part = held_out_pixels(0, (slice(50, 90), slice(120, 170)), 2, 0.1)
    np.testing.assert_array_equal(part, whole[:, 50:90, 120:170])  # a region read later: the same pixels
    assert 0.05 < np.mean(whole[0] != whole[1]) < 0.3  # channels and samples draw their own pixels
    assert 0.05 < np.mean(held_out_pixels(1, (slice(0, 200), slice(0, 300)), 1, 0.1)[0] != whole[0]) < 0.3
    assert held_out_pixels(0, (slice(0, 4), slice(0, 8), slice(0, 8)), 1, 0.25).shape == (1, 4, 8, 8)


def test_sampler_trains_on_every_region_and_turns_the_mask_with_the_patch():
    """The image is its own mask, so any flip or rotation that missed the mask would show as a mismatch."""
    mask = held_out_pixels(0, (slice(0, 100), slice(0, 100)), 1, 0.1)[0]
    layout = make_layout(mask.shape, "YX")
    source = with_held_out_pixels(single_source(mask, layout), 0.1)
    sampler = PatchSampler([source], (32, 32), seed=0)
    assert sampler.holds_out_pixels and sampler.val_independent
    assert sampler.splits[0].train_region == (slice(0, 100), slice(0, 100))  # no stripe
    image, held = sampler.batch(16)
    assert held.shape == image.shape == (16, 1, 32, 32)
    np.testing.assert_array_equal(image > 0, held == 1)  # normalised: a value above the mean is a held-out pixel
    val_image, val_held = sampler.val_patches
    assert len(val_image) == 9  # 32 px patches tiling the whole 100 x 100 image
    np.testing.assert_array_equal(val_image > 0, val_held == 1)
    plain = PatchSampler([single_source(mask, layout)], (32, 32), seed=0)
    assert not plain.holds_out_pixels and plain.splits[0].val_region is not None  # the stripe, as before


def test_blind_spot_loss_trains_and_validates_on_separate_pixels():
    """Training averages the likelihood over the pixels not held out, validation over the held-out ones."""
    torch.manual_seed(0)
    method = get_method("bsn", trunk="dilated")
    net = ShiftedBSN(ndim=2, in_channels=1, features=8, trunk="dilated", dilations=[1, 2])
    net.set_noise_var(torch.tensor([0.01]))
    y = torch.randn(2, 1, 32, 32) * 0.1
    held = torch.from_numpy(held_out_pixels(0, (slice(0, 32), slice(0, 32)), 1, 0.1)).expand(2, 1, 32, 32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        mu, prior_var, noise_var = prior_and_noise(net, y)
        var = prior_var + noise_var
        nll = 0.5 * (torch.log(var) + (y - mu) ** 2 / var)
        net.train()
        train = float(method.loss(net, (y, held), gen))
        net.eval()
        val = float(method.loss(net, (y, held), gen))
        whole = float(method.loss(net, (y,), gen))
    assert train == pytest.approx(float(nll[~held.bool()].mean()), rel=1e-5)
    assert val == pytest.approx(float(nll[held.bool()].mean()), rel=1e-5)
    assert whole == pytest.approx(float(nll.mean()), rel=1e-5)
    assert abs(train - val) > 1e-4  # two different sets of pixels
