"""Frame-to-frame Noise2Noise (``pairs="f2f"``): optical-flow alignment of the neighbouring frames of a time-lapse."""
import time
import tracemalloc

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

import n2x
from n2x.data.flow import Aligner, FlowSettings, align_pair
from n2x.data.motion import frame_motion, recommended_pairing
from n2x.data.pairs import f2f_sources
from n2x.data.patches import FIRST_AUX_REGIONS, PatchSampler
from n2x.data.samples import clean_cells
from n2x.errors import InputError
from n2x.methods.n2n import warp_prediction
from conftest import psnr, run_cli

SMALL = dict(batch_size=8, seed=0, device="cpu", network={"features": 8}, precision="float32")
SIGMA = 0.1


def moving_frames(n: int = 10, size: int = 64, step=(2.5, 3.5), turn: float = 1.0, seed: int = 0) -> np.ndarray:
    """``(n, size, size)`` clean frames (TYX): a window that moves by ``step`` px and turns ``turn`` degrees per
    frame over a larger clean image (cubic interpolation)."""
    scene = clean_cells((256, 256), seed=seed).astype(np.float64)
    frames = []
    for t in range(n):
        a = np.deg2rad(turn * t)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        centre = np.array([60.0, 60.0]) + t * np.asarray(step)  # window centre in the scene, px
        offset = centre - rot @ np.array([(size - 1) / 2] * 2)
        frames.append(ndi.affine_transform(scene, rot, offset=offset, output_shape=(size, size), order=3))
    return np.clip(np.stack(frames), 0, 1).astype(np.float32)


def add_noise(clean: np.ndarray, seed: int) -> np.ndarray:
    return (clean + np.random.default_rng(seed).normal(0, SIGMA, clean.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def moving():
    clean = moving_frames()
    return clean, add_noise(clean, 1)


def _train_both(noisy: np.ndarray, steps: int) -> dict:
    return {pairs: n2x.train(noisy, "TYX", "n2n", pairs=pairs, along="T", steps=steps, patch_size=32, **SMALL)
            for pairs in ("f2f", "adjacent")}


def test_f2f_denoises_moving_frames_and_beats_adjacent(moving):
    clean, noisy = moving
    models = _train_both(noisy, 60)
    scores = {k: psnr(n2x.denoise(m, noisy), clean) for k, m in models.items()}
    gain = scores["f2f"] - psnr(noisy, clean)
    assert gain > 1.2, scores  # 60 steps of a small network (2.0 dB; 2.9 dB after 100 steps)
    # unaligned partners teach the average of two different scenes: moving structures blur (-5 dB here)
    assert scores["f2f"] > scores["adjacent"] + 3.0, scores
    cfg = models["f2f"].config["method"]
    assert cfg["pairing"] == "f2f" and cfg["along"] == "T" and cfg["flow"]["smoothing"] == 1.5


def test_f2f_matches_adjacent_on_a_static_timelapse():
    clean = np.repeat(moving_frames(1), 10, axis=0)
    noisy = add_noise(clean, 2)
    models = _train_both(noisy, 60)
    scores = {k: psnr(n2x.denoise(m, noisy), clean) for k, m in models.items()}
    assert scores["f2f"] - psnr(noisy, clean) > 2.0, scores
    # the flows are near zero and the masks near full: the same training as adjacent frames (3.7 vs 3.9 dB with 48 x 48 patches)
    assert scores["f2f"] > scores["adjacent"] - 0.5, scores


def test_flow_follows_known_motion_and_mask_excludes_what_appears():
    clean = moving_frames(2, size=96, step=(3.0, -4.0), turn=0.0)
    second = clean[1].copy()
    second[30:50, 40:60] = 1.0  # a bright square that appears in the second frame only
    first, second = add_noise(clean[0], 3), add_noise(second, 4)
    block = align_pair(first[None], second[None])
    flow_to_first, valid_second, flow_to_second, valid_first = block[0:2], block[2] > 0, block[3:5], block[5] > 0
    # the content of the second frame is at p + (3, -4) in the first (the window moved by (3, -4))
    inner = (slice(10, -10), slice(10, -10))
    assert abs(np.median(flow_to_first[0][inner]) - 3.0) < 0.3 and abs(np.median(flow_to_first[1][inner]) + 4.0) < 0.3
    assert abs(np.median(flow_to_second[0][inner]) + 3.0) < 0.3
    square = np.zeros_like(valid_second)
    square[32:48, 42:58] = True
    assert valid_second[square].mean() < 0.1  # not in the first frame: excluded from the loss
    assert valid_second[~ndi.binary_dilation(square, iterations=6)][inner[0].start:].mean() > 0.85
    # samples that leave the frame are excluded: the window moved by (3, -4), so the first frame's top rows and
    # right-hand columns are no longer in the second
    assert valid_first[:2].mean() < 0.2 and valid_first[:, -3:].mean() < 0.2


def test_sampler_turns_flows_with_augmented_patches():
    clean = moving_frames(4, size=96, step=(2.0, 3.0), turn=2.0)
    noisy = add_noise(clean, 5)
    sources = f2f_sources([noisy], [n2x.api.make_layout(noisy.shape, "TYX", 2)])
    sampler = PatchSampler(sources, (48, 48), val_fraction=0, seed=1)
    sigma = SIGMA / sampler.norm.scale[0]  # the noise in normalised units
    x, y, align = (torch.from_numpy(b) for b in sampler.batch(32))  # random flips and 90-degree turns
    warped, inside = warp_prediction(x, align[:, 0:2])
    weight = inside * align[:, 2:3]
    aligned = float(((warped - y) ** 2 * weight).sum() / weight.sum())
    unaligned = float(((x - y) ** 2 * weight).sum() / weight.sum())
    # noise alone gives 2 sigma^2 plus the interpolation's smoothing; a flow turned the wrong way gives far more
    assert aligned < 2 * sigma ** 2 * 1.1 and unaligned > 3 * aligned, (aligned, unaligned, 2 * sigma ** 2)


class LazyFrames:
    """A long time-lapse (TYX) made up on demand, as a lazily opened file would be: counts the pixels it serves."""

    def __init__(self, n_frames: int, size: int):
        self.shape, self.dtype, self.ndim = (n_frames, size, size), np.dtype(np.float32), 3
        self.scene = clean_cells((size + 64, size + 64), seed=7)
        self.pixels_read = 0

    def __getitem__(self, index):
        t, ys, xs = index
        s = 2 * (t % 16)  # a window that moves 2 px per frame, back and forth
        rng = np.random.default_rng(t)
        frame = self.scene[s:s + self.shape[1], s:s + self.shape[2]] + rng.normal(0, SIGMA, self.shape[1:])
        out = frame[ys, xs].astype(np.float32)
        self.pixels_read += out.size
        return out


def test_flow_memory_stays_within_the_budget_on_a_lazy_long_stack():
    stack = LazyFrames(2000, 256)
    sources = f2f_sources([stack], [n2x.api.make_layout(stack.shape, "TYX", 2)], FlowSettings(margin=16))
    aligner: Aligner = sources[0].aux_cache
    aligned = []  # the regions whose flows were computed
    region = aligner.region
    aligner.region = lambda pair, r: aligned.append((pair, r)) or region(pair, r)
    budget = 8 * 2**20  # every flow of this stack would take 3 GB
    sampler = PatchSampler(sources, (32, 32), max_memory=budget, val_fraction=0.1, n_val_patches=8, seed=0)
    try:
        assert not sampler.in_memory
        # training starts from a few regions (each costs a flow); the background reader adds the rest
        assert len(sampler._regions) == FIRST_AUX_REGIONS < sampler.n_regions
        deadline = time.monotonic() + 120
        while True:
            x, y, align = sampler.batch(8)
            assert align.shape == (8, 6, 32, 32) and np.isfinite(align).all()
            if len(sampler._regions) == sampler.n_regions or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(sampler._regions) == sampler.n_regions
        held = sampler.bytes_held()
    finally:
        sampler.close()
    # regions and validation patches, with their flows (held there only), within the budget
    assert held <= budget, held
    # 8 validation patches from 8 held-out pairs: each aligned on its own (32 px and the margin), not by their frames
    val = [(pair, r) for pair, r in aligned if (r[0].stop - r[0].start, r[1].stop - r[1].start) == (32, 32)]
    assert len(val) == 8 and not {pair for pair, _ in val} & set(sampler.splits[0].train_samples)
    assert aligner.pixels_computed < 0.01 * np.prod(stack.shape)
    assert stack.pixels_read < 0.05 * np.prod(stack.shape)  # only the regions drawn were read


def test_in_memory_stack_holds_its_alignment_once(moving):
    from skimage.registration import optical_flow_tvl1  # noqa: F401  (imported before memory is traced)

    _, noisy = moving  # 10 frames of 64 x 64: 9 pairs, a validation stripe of 32 px
    sources = f2f_sources([noisy], [n2x.api.make_layout(noisy.shape, "TYX", 2)])
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        sampler = PatchSampler(sources, (32, 32), max_memory=2**26, val_fraction=0.1, seed=0)
        allocated = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert sampler.in_memory
    train_pixels = len(sampler.splits[0].train_samples) * 32 * 64
    val_pixels = len(sampler.val_patches[0]) * 32 * 32
    per_pixel = 4 * (1 + 1 + 6)  # float32 input, target and alignment block
    assert sampler.bytes_held() == (train_pixels + val_pixels) * per_pixel
    # what stays allocated is the sampler's copy (1.07 x with its small objects): the flows are not held a second
    # time (keeping every block the aligner computed, as a cache of them did, gives 1.43 x)
    assert allocated < 1.2 * sampler.bytes_held(), (allocated, sampler.bytes_held())
    # each pair's training region and its validation stripe are aligned once each (the stripe then cut into patches)
    assert sources[0].aux_cache.regions_computed == 2 * len(sampler.splits[0].train_samples)


def test_frame_motion_says_when_frames_move(moving):
    clean, noisy = moving
    motion = frame_motion(noisy, "TYX")
    assert 3.5 < motion < 5.0, motion  # |(2.5, 3.5)| = 4.3 px per frame, plus a turn of 1 degree
    assert recommended_pairing(motion) == "f2f"
    still = add_noise(np.repeat(clean[:1], 6, axis=0), 6)
    assert frame_motion(still, "TYX") < 0.5 and recommended_pairing(frame_motion(still, "TYX")) == "adjacent"
    with pytest.raises(InputError, match="T axis"):
        frame_motion(noisy[0], "YX")


def test_f2f_patch_follows_the_frames_motion():
    from n2x.data.axes import make_layout
    from n2x.methods.n2n import N2N, f2f_patch_side

    # The smallest side for which the motion pushes at most a quarter of a patch out of it (a multiple of 16).
    assert [f2f_patch_side(d) for d in (0.1, 3.0, 7.0, 40.0, None)] == [32, 32, 64, 128, 64]
    # 5 x 5 px per frame (7 px), as the dev time-lapse: 64 x 64 patches, 16 per batch (the pixels of 64 x 32 x 32)
    fast = add_noise(moving_frames(6, size=96, step=(5.0, 5.0), turn=0.0), 4)
    static = add_noise(np.repeat(moving_frames(1), 6, axis=0), 5)
    sides = {}
    for name, stack in (("moving", fast), ("static", static)):
        method = N2N()
        method.prepare([stack], [make_layout(stack.shape, "TYX", 2)])
        sides[name] = method.training_defaults(2, pairs="f2f", along="T")
    assert sides == {"moving": ((64, 64), 16), "static": ((32, 32), 64)}


def test_model_file_records_f2f_and_predicts_single_frames(moving, tmp_path):
    clean, noisy = moving
    model = n2x.train(noisy[:4], "TYX", "n2n", pairs="f2f", steps=3, patch_size=32, **SMALL)  # along T implied
    back = n2x.load_model(model.save(tmp_path / "f2f.n2x"))
    flow = back.config["method"]["flow"]
    assert back.config["method"]["pairing"] == "f2f" and flow["attachment"] == 5.0 and flow["warp"] == "bicubic"
    frame = n2x.denoise(back, noisy[2], axes="YX")  # one frame, no flow needed
    np.testing.assert_allclose(frame, n2x.denoise(model, noisy[:4])[2], atol=1e-4)


def test_f2f_errors(moving):
    _, noisy = moving
    with pytest.raises(InputError, match="along T"):
        n2x.train(noisy, "TYX", "n2n", pairs="f2f", along="Z", steps=1)
    with pytest.raises(InputError, match="must be 2D"):
        n2x.train(noisy[:, None].repeat(4, 1), "TZYX", "n2n", pairs="f2f", dims=3, steps=1)
    with pytest.raises(InputError, match="T axis"):
        n2x.train(noisy, "ZYX", "n2n", pairs="f2f", steps=1)


def test_cli_trains_f2f_on_a_tiff(moving, tmp_path):
    import tifffile

    _, noisy = moving
    src = tmp_path / "movie.tif"
    tifffile.imwrite(src, noisy[:6])
    model = tmp_path / "f2f.n2x"
    run_cli("train", src, "--method", "n2n", "--pairs", "f2f", "--along", "T", "--axes", "TYX", "--steps", "4",
            "--patch", "32", "--batch", "4", "--device", "cpu", "-o", model, "-q")
    assert n2x.load_model(model).config["method"]["pairing"] == "f2f"


def test_probe_reports_frame_motion_and_the_pairing(moving):
    clean, noisy = moving
    report = n2x.api.probe_noise(noisy, "TYX")
    assert 3.5 < report.motion < 5.0 and "use pairs f2f along T" in report.summary()
    still = add_noise(np.repeat(clean[:1], 6, axis=0), 7)
    assert "use pairs adjacent along T" in n2x.api.probe_noise(still, "TYX").summary()
    assert n2x.api.probe_noise(noisy[0], "YX").motion is None
