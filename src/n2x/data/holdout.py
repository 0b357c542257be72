"""Held-out pixels: a validation split for methods whose prediction at a pixel never sees that pixel's value.

A blind-spot network trained on every pixel of one image can memorise the image's noise. Holding out a stripe of the
image for validation takes a whole patch width away from training, a third of a 100 x 100 image. A network blind to
its own pixel needs less: a pixel left out of the loss, though its neighbours still see it, is one the network was
never asked to reproduce, and its output there does not depend on the pixel's noise. The loss on those pixels is then
an unbiased criterion of what the network learnt, while every region of the image trains.

The held-out pixels are a fixed pseudo-random pattern of absolute coordinates (a hash, not a stored mask), so any
region of any sample, read at any time, gets the same pixels held out, and flips and rotations carry them with the
patch.
"""
from __future__ import annotations

from math import prod
from typing import Sequence

import numpy as np

from .patches import Source

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
#: pixels hashed at a time (:func:`held_out_pixels`)
_SLAB_PIXELS = 2 ** 20


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """Steele et al.'s SplitMix64 finaliser: a well-mixed 64-bit hash of ``z`` (uint64, wraps on overflow)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def held_out_pixels(sample: int, region: Sequence[slice], channels: int, fraction: float) -> np.ndarray:
    """``(channels, *region shape)`` float32: 1 at the pixels held out from the loss, 0 elsewhere; about
    ``fraction`` of them, chosen per sample, channel and absolute pixel position (``region``: slices with start and
    stop, in pixels along the spatial axes). Computed in slabs along the first axis, so a large region costs a few
    megabytes of work space, not several 64-bit copies of itself."""
    shape = tuple(r.stop - r.start for r in region)
    out = np.empty((channels,) + shape, np.float32)
    threshold = np.uint64(min(max(fraction, 0.0), 1.0) * 2.0 ** 53)
    rows = max(1, _SLAB_PIXELS // max(1, prod(shape[1:])))
    with np.errstate(over="ignore"):
        for c in range(channels):
            key = _splitmix64(np.uint64(sample) * np.uint64(1 << 16) + np.uint64(c))
            for lo in range(0, shape[0], rows):
                hi = min(shape[0], lo + rows)
                slab = (slice(region[0].start + lo, region[0].start + hi),) + tuple(region[1:])
                h = key
                for d, r in enumerate(slab):  # each axis's coordinates, shaped to broadcast over the slab
                    axis = np.arange(r.start, r.stop, dtype=np.uint64).reshape((-1,) + (1,) * (len(slab) - 1 - d))
                    h = _splitmix64(h ^ axis)
                out[c, lo:hi] = (h >> np.uint64(11)) < threshold
    return out


def with_held_out_pixels(source: Source, fraction: float) -> Source:
    """``source`` whose reads carry one more array, the :func:`held_out_pixels` of the region read (an aux block, so
    the sampler flips and rotates it with the patch and does not normalise it)."""
    if source.aux_channels:
        raise ValueError("held-out pixels replace the aux block; this source already has one")
    channels = source.layout.n_channels

    def read(s: int, region: tuple[slice, ...]) -> tuple[np.ndarray, ...]:
        return tuple(source.read(s, region)) + (held_out_pixels(s, region, channels, fraction),)

    return Source(source.layout, source.n_samples, read, source.n_stacks, source.name, aux_channels=channels,
                  holds_out_pixels=True)
