"""Optical flow between neighbouring frames, and where it can be trusted: the alignment of frame-to-frame training.

Frame-to-frame Noise2Noise (F2F, Ehret et al. 2019) warps the network's prediction of one frame onto its neighbour
and compares it with the neighbour's noisy pixels. This module estimates the flow from the noisy frames and masks the
pixels where the warp is wrong:

- flow: TV-L1 (:func:`skimage.registration.optical_flow_tvl1`) on frames rescaled to about [0, 1] and smoothed by a
  Gaussian of ``smoothing`` px. On the dev time-lapse (camera, 3-10 px per frame) it is 3x more accurate than
  iterative Lucas-Kanade (median end-point error 0.12 vs 0.25-0.43 px) for 1.6x its time; see docs/methods.md;
- mask: forward/backward consistency (Sundaram et al. 2010), warping residual of the smoothed frames above a
  multiple of their noise, and samples that land outside the frame.

Flows are computed lazily (:class:`Aligner`), once for each region of a frame pair that the patch sampler reads (its
in-memory copy of a stack that fits, its random regions of one read lazily, its validation patches), on the region
grown by a margin so that the flow is right up to the region's edge. Nothing is cached here: a block is held once, in
the sampler's regions, so the flows count within its ``max_memory`` and a long, large time-lapse never holds all of
them. (A cache of flow tiles under the sampler's own cache of regions held them twice, and cost more than it saved:
a random region spans about 4 tiles, and a stack too large for the budget has flows too large for any share of it.)
Arrays are ``(channel, Y, X)``; flows are displacements in pixels, ``(dy, dx)``, on the grid of the reference frame:
``reference[p] ~ moving[p + flow[p]]``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
from scipy import ndimage as ndi

#: channels of an alignment block: for the target being the pair's 2nd frame, flow to the 1st (dy, dx) and its
#: validity; then the same for the target being the 1st frame
ALIGN_CHANNELS = 6
#: channel of the first (dy) component of each displacement in an alignment block (the sampler's augmentation
#: turns these as it turns the patch)
ALIGN_VECTORS = (0, 3)


@dataclass(frozen=True)
class FlowSettings:
    """How flows are estimated and trusted. Lengths in pixels, intensities in units of the frames' range."""

    smoothing: float = 1.5  # Gaussian sigma before the flow: the noise otherwise dominates the data term
    attachment: float = 5.0  # TV-L1 data weight: lower than skimage's 15, smoother flows from noisy frames
    consistency: tuple[float, float] = (0.01, 0.5)  # forward/backward check |f + b|^2 <= a (|f|^2 + |b|^2) + b
    residual: float = 4.0  # a warped pixel differs by more than this many noise sigmas: an occlusion or a mismatch
    margin: int = 32  # a region's flow is computed on it grown by this on every side (motion up to this is followed)
    # a larger region is aligned tile by tile: TV-L1 and the masks work in about 140 bytes per pixel aligned, so a
    # whole 2048 x 2048 frame would need 550 MiB at once, a tile of 1024 x 1024 with its margins 160 MiB
    tile: int = 1024

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def rescale_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both frames rescaled by their joint 0.5-99.5 percentiles (TV-L1's weights assume about [0, 1])."""
    lo, hi = np.percentile(np.concatenate([a.ravel(), b.ravel()]), [0.5, 99.5])
    scale = 1.0 / max(float(hi - lo), 1e-12)
    return ((a - lo) * scale).astype(np.float32), ((b - lo) * scale).astype(np.float32)


def noise_sigma(frame: np.ndarray) -> float:
    """Robust white-noise sigma of a 2D frame from its horizontal differences (median absolute deviation)."""
    d = np.diff(frame, axis=-1).ravel()
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2))


def estimate_flow(reference: np.ndarray, moving: np.ndarray, settings: FlowSettings = FlowSettings()) -> np.ndarray:
    """TV-L1 flow ``(2, Y, X)`` float32 from already rescaled and smoothed 2D frames."""
    from skimage.registration import optical_flow_tvl1

    return optical_flow_tvl1(reference, moving, attachment=settings.attachment).astype(np.float32)


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``image`` (Y, X) sampled at ``p + flow[p]`` (bilinear; edges held)."""
    grid = np.mgrid[0:image.shape[0], 0:image.shape[1]].astype(np.float32)
    return ndi.map_coordinates(image, grid + flow, order=1, mode="nearest")


def valid_mask(flow: np.ndarray, back: np.ndarray, reference: np.ndarray, moving: np.ndarray, sigma: float,
               settings: FlowSettings, inside: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Where warping ``moving`` by ``flow`` reproduces ``reference`` (bool, on the reference's grid).

    ``back`` is the flow from ``moving`` to ``reference``; ``sigma`` the noise of the (smoothed) frames; ``inside``
    optional per-axis ``(low, high)`` bounds the target position must stay within (the whole frame).
    """
    grid = np.mgrid[0:flow.shape[1], 0:flow.shape[2]].astype(np.float32)
    pos = grid + flow
    back_at = np.stack([ndi.map_coordinates(c, pos, order=1, mode="nearest") for c in back])
    a, b = settings.consistency
    consistent = ((flow + back_at) ** 2).sum(0) <= a * ((flow ** 2).sum(0) + (back_at ** 2).sum(0)) + b
    residual = np.abs(ndi.map_coordinates(moving, pos, order=1, mode="nearest") - reference)
    # the difference of two smoothed frames holds sqrt(2) times their noise
    matches = residual <= settings.residual * np.sqrt(2) * sigma
    lo, hi = inside if inside is not None else (np.zeros(2), np.array(flow.shape[1:]) - 1)
    within = np.ones(flow.shape[1:], bool)
    for d in range(2):
        within &= (pos[d] >= lo[d]) & (pos[d] <= hi[d])
    return consistent & matches & within


def align_pair(first: np.ndarray, second: np.ndarray, settings: FlowSettings = FlowSettings(),
               inside: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The alignment block ``(6, Y, X)`` float32 of two frames ``(C, Y, X)`` (channels averaged for the flow).

    Channels: flow from ``second`` to ``first`` (dy, dx) and its validity (0/1) on ``second``'s grid, then the flow
    from ``first`` to ``second`` and its validity on ``first``'s grid. ``inside``: bounds of the whole frame in this
    block's pixel coordinates (a tile's block may follow motion into its margin, not past the frame).
    """
    a, b = rescale_pair(np.mean(first, axis=0), np.mean(second, axis=0))
    sigma = 0.5 * (noise_sigma(a) + noise_sigma(b))
    if settings.smoothing > 0:  # a 2D Gaussian of sigma s divides white noise by 2 sqrt(pi) s
        sigma /= max(1.0, 2 * np.sqrt(np.pi) * settings.smoothing)
    if settings.smoothing > 0:
        a, b = ndi.gaussian_filter(a, settings.smoothing), ndi.gaussian_filter(b, settings.smoothing)
    ab, ba = estimate_flow(a, b, settings), estimate_flow(b, a, settings)
    return np.concatenate([ba, valid_mask(ba, ab, b, a, sigma, settings, inside)[None],
                           ab, valid_mask(ab, ba, a, b, sigma, settings, inside)[None]]).astype(np.float32)


class Aligner:
    """Alignment blocks of frame pairs, computed on demand for the regions read, and what they cost.

    ``read_pair(pair, region)`` must return the two frames ``(C, Y, X)`` of frame pair ``pair`` over a 2D ``region``
    (slices); ``frame_shape`` is ``(Y, X)``. Keeps no block (the reader holds it); its counters are thread-safe (the
    patch sampler reads in a background thread).
    """

    def __init__(self, read_pair: Callable[[int, tuple[slice, slice]], tuple[np.ndarray, np.ndarray]],
                 frame_shape: tuple[int, int], settings: FlowSettings = FlowSettings()):
        self.read_pair = read_pair
        self.frame_shape = tuple(int(n) for n in frame_shape)
        self.settings = settings
        self._lock = threading.Lock()
        self.regions_computed = 0
        self.pixels_computed = 0  # aligned pixels, margins included (the flow's cost grows with them)
        self.seconds = 0.0  # spent computing alignments (the flow's cost)

    def region(self, pair: int, region: tuple[slice, ...]) -> np.ndarray:
        """The alignment block ``(6, *region shape)`` float32 of frame pair ``pair`` over ``region``, computed on the
        region grown by the margin (within the frame), by tiles of at most ``settings.tile`` pixels a side."""
        (y0, y1, _), (x0, x1, _) = (r.indices(n) for r, n in zip(region, self.frame_shape))
        out = np.empty((ALIGN_CHANNELS, y1 - y0, x1 - x0), np.float32)
        t = self.settings.tile
        for ty in range(y0, y1, t):
            for tx in range(x0, x1, t):
                ye, xe = min(y1, ty + t), min(x1, tx + t)
                out[:, ty - y0:ye - y0, tx - x0:xe - x0] = self._align(pair, ty, ye, tx, xe)
        with self._lock:
            self.regions_computed += 1
        return out

    def _align(self, pair: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The alignment block of ``[y0:y1, x0:x1]``, computed on that grown by the margin (within the frame)."""
        m = self.settings.margin
        (ny, nx) = self.frame_shape
        gy0, gx0, gy1, gx1 = max(0, y0 - m), max(0, x0 - m), min(ny, y1 + m), min(nx, x1 + m)
        start = time.perf_counter()
        first, second = self.read_pair(pair, (slice(gy0, gy1), slice(gx0, gx1)))
        inside = (np.array([-gy0, -gx0], np.float32), np.array([ny - 1 - gy0, nx - 1 - gx0], np.float32))
        block = align_pair(first, second, self.settings, inside)
        with self._lock:
            self.seconds += time.perf_counter() - start
            self.pixels_computed += (gy1 - gy0) * (gx1 - gx0)
        return block[:, y0 - gy0:y1 - gy0, x0 - gx0:x1 - gx0]
