"""What a trained network is calibrated on: regions predicted as inference predicts them, so that the prior mean's
offset is measured where it matters (each pixel with its whole receptive field), not on training patches."""
import numpy as np
import torch

import n2x
from n2x.api._calibration import context_windows, predict_in_context
from n2x.data.axes import make_layout
from n2x.data.patches import PatchSampler, single_source
from n2x.methods import get_method
from n2x.methods.bsn import measure_mean_offset
from n2x.nets.shifted_bsn import ShiftedBSN

CPU = torch.device("cpu")


def _sampler(image: np.ndarray, patch: int, max_memory: float = 2e9) -> PatchSampler:
    return PatchSampler([single_source(image, make_layout(image.shape, "YX"))], (patch, patch),
                        max_memory=max_memory, val_fraction=0.0, seed=0)


def test_a_whole_image_is_one_window_and_lazy_regions_keep_their_cores_away_from_their_edges():
    rng = np.random.default_rng(0)
    small = rng.random((100, 120)).astype(np.float32)
    windows = context_windows(_sampler(small, 32), halo=16)
    assert len(windows) == 1
    window, core = windows[0]
    assert window.shape == (1, 100, 120) and core == (slice(0, 100), slice(0, 120))

    large = rng.random((700, 700)).astype(np.float32)
    sampler = _sampler(large, 32, max_memory=4e5)  # read lazily, in regions of 128 x 128
    assert not sampler.in_memory
    windows = context_windows(sampler, halo=16, pixels=10_000)
    counted = 0
    for window, core in windows:
        for s, n in zip(core, window.shape[1:]):
            assert s.start == 16 and n - s.stop == 16, "each core pixel has its whole receptive field in the window"
        counted += np.prod([s.stop - s.start for s in core])
    assert counted >= 10_000 and len(windows) == 2  # a core of at most 96 x 96 per region of 128 x 128
    assert context_windows(sampler, halo=64) == [], "a region too small for a core gives none"


def _whole_image_residual(method, net, image: np.ndarray) -> float:
    with torch.no_grad():
        mu = method.blind_prediction(net.eval(), torch.from_numpy(image[None, None]))
    return float((image - mu[0, 0].numpy()).mean())


def test_the_offset_is_measured_on_the_prediction_as_inference_makes_it():
    """A network's output near zero-padded edges differs from its output inside an image: the offset measured on
    small patches leaves one on the whole image, the offset measured in context does not."""
    method = get_method("bsn", ensemble=2)
    torch.manual_seed(0)
    net = ShiftedBSN(features=8, dilations=(1, 2)).eval()
    with torch.no_grad():
        net.set_noise_var(torch.tensor([0.25]))
    rng = np.random.default_rng(1)
    image = (1.0 + 0.5 * rng.standard_normal((96, 96))).astype(np.float32)
    patches = np.stack([image[y:y + 16, x:x + 16] for y in range(0, 96, 16) for x in range(0, 96, 16)])[:, None]
    measure_mean_offset(net, patches, CPU, fold_channels=False)
    left = _whole_image_residual(method, net, image)
    assert abs(left) > 1e-3, "the patches' offset is not the whole image's (else this test shows nothing)"

    windows = [(image[None], (slice(None), slice(None)))]
    method.calibrate(net, None, [1.0], CPU, False,
                     in_context=lambda m: predict_in_context(method, m, windows, device=CPU, fold_channels=False,
                                                             halo=method.halo(m), multiple=method.multiple(m)))
    assert abs(_whole_image_residual(method, net, image)) < 1e-5
    assert method.params["mean_offset"] == [round(float(net.mean_offset[0]), 6)]


def test_a_trained_model_has_no_offset_on_the_image_it_denoises():
    rng = np.random.default_rng(2)
    clean = np.clip(0.3 + 0.4 * np.add.outer(np.sin(np.arange(120) / 9), np.cos(np.arange(140) / 13)) / 2, 0, 1)
    noisy = (clean + rng.normal(0, 0.1, clean.shape)).astype(np.float32)
    model = n2x.train(noisy, "YX", "bsn", steps=60, seed=0, device="cpu")
    normed = model.normalization.apply(noisy[None], channel_axis=0)[0].astype(np.float32)
    for net in getattr(model.net, "members", [model.net]):
        assert abs(_whole_image_residual(model.method, net, normed)) < 1e-4  # patches left 2e-3
