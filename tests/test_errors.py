"""Bad inputs get typed errors whose messages say what is wrong and what to do."""
import numpy as np
import pytest

import n2x

KW = dict(steps=1, patch_size=32, batch_size=2, device="cpu", network={"features": 8})


def test_nan_and_inf(cells2d):
    noisy, _ = cells2d
    for bad in (np.nan, np.inf):
        img = noisy.copy()
        img[5, 5] = bad
        with pytest.raises(n2x.InputError, match="NaN or infinite"):
            n2x.train(img, "YX", **KW)


def test_nan_at_inference(trained_n2v, cells2d):
    img = cells2d[0][:64, :64].copy()
    img[3, 3] = np.nan
    with pytest.raises(n2x.InputError, match="NaN"):
        n2x.denoise(trained_n2v, img)


def test_axes_errors(cells2d):
    noisy, _ = cells2d
    stack = np.stack([noisy] * 3)
    with pytest.raises(n2x.AxesError, match="axes must be given"):
        n2x.train(stack, None, **KW)
    with pytest.raises(n2x.AxesError, match="name 2 dimensions"):
        n2x.train(stack, "YX", **KW)
    with pytest.raises(n2x.AxesError, match="unknown letter"):
        n2x.train(stack, "QYX", **KW)
    with pytest.raises(n2x.AxesError, match="repeat"):
        n2x.train(stack, "YYX", **KW)
    with pytest.raises(n2x.AxesError, match="Y and X"):
        n2x.train(stack, "TZY", **KW)


def test_rgb_needs_channel_axis(cells2d):
    rgb = (np.stack([cells2d[0]] * 3, -1) * 200).clip(0, 255).astype(np.uint8)
    with pytest.raises(n2x.AxesError, match="C axis"):
        n2x.train(rgb, "YX", **KW)
    model = n2x.train(rgb, "YXC", **KW)
    assert n2x.denoise(model, rgb).shape == rgb.shape


def test_small_empty_bool():
    with pytest.raises(n2x.InputError, match="smaller than the training patch"):
        n2x.train(np.random.rand(20, 200).astype(np.float32), "YX", **KW)
    with pytest.raises(n2x.InputError, match="too small"):
        n2x.train(np.random.rand(3, 200).astype(np.float32), "YX", steps=1, device="cpu")
    with pytest.raises(n2x.InputError, match="empty"):
        n2x.train(np.zeros((0, 64), np.float32), "YX", **KW)
    with pytest.raises(n2x.InputError, match="boolean"):
        n2x.train(np.zeros((64, 64), bool), "YX", **KW)
    with pytest.raises(n2x.InputError, match="complex"):
        n2x.train(np.zeros((64, 64), np.complex64), "YX", **KW)


def test_bad_options(cells2d):
    noisy, _ = cells2d
    with pytest.raises(n2x.N2xError, match="unknown method"):
        n2x.train(noisy, "YX", "n3v", **KW)
    with pytest.raises(n2x.N2xError, match="replacement"):
        n2x.train(noisy, "YX", "n2v", replacement="magic", **KW)
    with pytest.raises(n2x.N2xError, match="duration"):
        n2x.train(noisy, "YX", time="soon", patch_size=32, device="cpu")
    with pytest.raises(n2x.N2xError, match="only one of"):
        n2x.train(noisy, "YX", time="1s", steps=3, device="cpu")
