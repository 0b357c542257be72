"""Noise2Void and N2V2 denoise known synthetic data; the building blocks do what they say."""
import time

import numpy as np
import pytest
import torch

import n2x
from n2x.methods.n2v import masked_input, stratified_mask_coords
from conftest import psnr


@pytest.mark.parametrize("method", ["n2v", "n2v2"])
def test_n2v_raises_psnr_and_is_not_identity(cells2d, method):
    noisy, clean = cells2d
    model = n2x.train(noisy, "YX", method, steps=120, batch_size=16, patch_size=64, seed=1, device="cpu",
                      network={"features": 16})
    out = n2x.denoise(model, noisy)
    assert out.dtype == np.float32 and out.shape == noisy.shape
    gain = psnr(out, clean) - psnr(noisy, clean)
    # Measured +5.5 to +6.5 dB (sigma 0.1 Gaussian); the margin leaves room for platform differences.
    assert gain > 3.0, gain
    # An identity network would return the noise: the output must differ from the input by about the noise.
    assert np.std(out - noisy) > 0.06


def test_mask_coords_fraction_and_spread():
    g = torch.Generator().manual_seed(0)
    coords = stratified_mask_coords((4, 64, 64), 0.02, g)
    per_patch = np.bincount(coords[:, 0].numpy(), minlength=4)
    assert np.all(np.abs(per_patch / 64**2 - 0.02) < 0.005)
    assert coords[:, 1:].min() >= 0 and coords[:, 1:].max() < 64


@pytest.mark.parametrize("replacement", ["neighbour", "mean", "median", "random"])
def test_masking_replaces_only_masked_pixels(replacement):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    coords = stratified_mask_coords((2, 16, 16), 0.05, g)
    y = masked_input(x, coords, replacement, 2, g)
    changed = (y != x).any(dim=1)
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[coords[:, 0], coords[:, 1], coords[:, 2]] = True
    assert not changed[~mask].any()
    assert changed[mask].float().mean() > 0.9  # a replacement equal to the original is possible but rare


def test_median_replacement_value():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5)
    coords = torch.tensor([[0, 2, 2]])
    y = masked_input(x, coords, "median", 1, g)
    # 3x3 neighbourhood of the centre without the centre: 6 7 8 11 13 16 17 18 -> torch median picks the lower, 11
    assert float(y[0, 0, 2, 2]) == 11.0
    y = masked_input(x, coords, "mean", 1, g)
    assert float(y[0, 0, 2, 2]) == pytest.approx(12.0)


def test_n2v_3d_trains_and_predicts():
    from n2x.data.samples import noisy_sample

    noisy, clean, axes = noisy_sample("3d", "gaussian", seed=2)
    noisy, clean = noisy[:16, :64, :64], clean[:16, :64, :64]
    model = n2x.train(noisy, axes, "n2v", steps=40, patch_size=(8, 32, 32), batch_size=4, seed=0, device="cpu",
                      network={"features": 8})
    assert model.spatial == "ZYX"
    out = n2x.denoise(model, noisy)
    assert out.shape == noisy.shape
    assert psnr(out, clean) > psnr(noisy, clean) + 1.0


def test_seeded_training_is_reproducible(cells2d):
    noisy, _ = cells2d
    kw = dict(steps=5, patch_size=32, batch_size=4, seed=7, device="cpu", network={"features": 8})
    a = n2x.train(noisy, "YX", **kw)
    b = n2x.train(noisy, "YX", **kw)
    for (k, va), vb in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert torch.equal(va, vb), k


def test_progress_stop_and_preview(cells2d):
    noisy, _ = cells2d
    calls = []
    gen = n2x.train_iter(noisy, "YX", time="60s", patch_size=32, batch_size=4, seed=0, device="cpu",
                         network={"features": 8}, should_stop=lambda: len(calls) >= 3,
                         preview=noisy[:64, :64], preview_every=0.0)
    reports = []
    while True:
        try:
            pr = next(gen)
        except StopIteration as done:
            model = done.value
            break
        calls.append(pr)
        reports.append(pr)
    assert reports[-1].done and reports[-1].stopped
    assert model.history["stopped"] is True
    assert any(r.preview is not None and r.preview.shape == (1, 64, 64) for r in reports)
    assert all(r.step >= 1 for r in reports)
    assert model.history["steps"] < 200  # stopped long before 60 s


def test_channels_joint_and_independent(cells2d):
    noisy, clean = cells2d
    stack = np.stack([noisy, noisy * 100 + 50])  # CYX, very different intensity ranges
    for mode in ("independent", "joint"):
        model = n2x.train(stack, "CYX", steps=30, patch_size=32, batch_size=8, seed=0, device="cpu",
                          network={"features": 8}, channels=mode)
        out = n2x.denoise(model, stack)
        assert out.shape == stack.shape
        # each channel comes back in its own units
        assert abs(out[1].mean() - stack[1].mean()) < 5
        assert abs(out[0].mean() - stack[0].mean()) < 0.05


def test_integer_input_returns_float_in_input_units(real2d_path):
    import tifffile

    img = tifffile.imread(real2d_path)[:128, :128]
    assert img.dtype == np.uint16
    model = n2x.train(img, "YX", steps=10, patch_size=32, batch_size=4, seed=0, device="cpu",
                      network={"features": 8})
    out = n2x.denoise(model, img)
    assert out.dtype == np.float32
    assert abs(float(out.mean()) - float(img.mean())) < 0.1 * float(img.std()) + 1


def test_lazy_training_memory_is_bounded(cells2d):
    import dask.array as da

    from n2x.data.axes import make_layout
    from n2x.data.patches import PatchSampler, single_source

    noisy, _ = cells2d
    big = da.from_array(np.tile(noisy, (40, 1, 1)), chunks=(1, 128, 128))  # 40 x 256 x 256 float32 = 10 MB
    layout = make_layout(big.shape, "TYX")
    src = single_source(big, layout)
    largest_read = []
    inner = src.read
    src.read = lambda s, r: (largest_read.append(inner(s, r)[0].nbytes) or inner(s, r))
    sampler = PatchSampler([src], (32, 32), max_memory=1e6, seed=0)
    try:
        assert not sampler.in_memory
        cached = sum(b.nbytes for blocks in sampler._regions for b in blocks)
        assert cached <= 1e6
        for _ in range(20):
            assert sampler.batch(8)[0].shape == (8, 1, 32, 32)
        assert max(largest_read) <= 128 * 128 * 4  # one region at a time, never the array
        # one network's training closes the sampler; the next network's batches start the reader again
        sampler.close()
        reads = len(largest_read)
        deadline = time.monotonic() + 10
        while len(largest_read) == reads and time.monotonic() < deadline:
            assert sampler.batch(8)[0].shape == (8, 1, 32, 32)
            time.sleep(0.01)
        assert len(largest_read) > reads and sampler._thread.is_alive()
    finally:
        sampler.close()
    # and the public entry point trains from the lazy array
    model = n2x.train(big, "TYX", steps=3, patch_size=32, batch_size=4, seed=0, device="cpu",
                      network={"features": 8}, max_memory=1e6)
    assert model.history["steps"] == 3


def test_tiled_prediction_equals_untiled_with_and_without_tta(trained_n2v, cells2d):
    noisy = cells2d[0][:200, :184]
    for tta in (False, True):
        whole = trained_n2v.predict(noisy, "YX", tile=256, tta=tta)
        tiled = trained_n2v.predict(noisy, "YX", tile=(64, 48), tta=tta)
        np.testing.assert_allclose(tiled, whole, atol=1e-4)
    assert not np.allclose(trained_n2v.predict(noisy, "YX", tta=True), trained_n2v.predict(noisy, "YX"))


def test_precision_choice_and_bfloat16_training(cells2d):
    from n2x.device import autocast_dtype, cpu_has_native_bf16
    from n2x.errors import N2xError

    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is None  # predictions stay float32 on a CPU
    assert autocast_dtype(cpu, training=True, precision="float32") is None
    assert autocast_dtype(cpu, training=True) == (torch.bfloat16 if cpu_has_native_bf16() else None)
    assert autocast_dtype(cpu, training=True, ndim=3) is None  # 3D bfloat16 training on the CPU gave NaN
    with pytest.raises(N2xError, match="precision must be one of"):
        n2x.train(cells2d[0], "YX", steps=1, device="cpu", precision="half")
    noisy, clean = cells2d
    model = n2x.train(noisy, "YX", steps=100, batch_size=16, patch_size=32, seed=0, device="cpu",
                      network={"features": 16}, precision="bfloat16")
    assert model.config["training"]["precision"] == "bfloat16"
    assert model.history["precision"] == "bfloat16"
    out = n2x.denoise(model, noisy)
    assert out.dtype == np.float32
    # Measured +3.6 dB (float32 with the same settings: +3.9 dB).
    assert psnr(out, clean) > psnr(noisy, clean) + 2.5
