"""How much the content of a time-lapse moves between neighbouring frames: whether to align frames before pairing.

Noise2Noise with neighbouring frames as partners (``pairs="adjacent"``) assumes the scene does not change between
them; where it moves by a pixel or more, moving structures blur, and frame-to-frame training (``pairs="f2f"``) with
its optical-flow alignment is the right pairing. :func:`frame_motion` measures the motion on a few sampled frame
pairs (TV-L1 flow of :mod:`n2x.data.flow`, on a central crop), so a probe can say which pairing to use.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from .axes import make_layout
from .flow import FlowSettings, estimate_flow, rescale_pair

#: median motion between neighbouring frames (px) above which frame-to-frame alignment pays off
MOTION_THRESHOLD_PX = 1.0


def frame_motion(image: Any, axes: str, n_pairs: int = 4, crop: int = 256,
                 settings: FlowSettings = FlowSettings()) -> float:
    """Median optical-flow magnitude in pixels between neighbouring frames along T.

    ``image`` has ``axes`` with a T axis of at least 2 frames (numpy, dask or zarr: only the sampled frames' central
    ``crop`` x ``crop`` pixels are read). ``n_pairs`` frame pairs (t, t + 1), spread evenly over T (channels
    averaged, middle Z plane when there are several), each flow's median magnitude, then the median over pairs.
    """
    layout = make_layout(image.shape, axes, 2)
    if "T" not in layout.axes or layout.shape[layout.axes.index("T")] < 2:
        raise InputError(f"frame motion needs a T axis with at least 2 frames, but the axes are {layout.axes!r} "
                         f"and the shape {tuple(layout.shape)}")
    n_frames = layout.shape[layout.axes.index("T")]
    centre = {a: layout.shape[layout.axes.index(a)] // 2 for a in layout.sample_axes if a != "T"}
    region = tuple(slice(max(0, (n - crop) // 2), max(0, (n - crop) // 2) + min(n, crop))
                   for n in layout.spatial_shape)
    starts = np.unique(np.linspace(0, n_frames - 2, min(n_pairs, n_frames - 1)).round().astype(int))
    medians = []
    for t in starts:
        frames = []
        for k in (t, t + 1):
            index = [centre.get(a, 0) for a in layout.sample_axes]
            index[layout.sample_axes.index("T")] = k
            s = int(np.ravel_multi_index(index, layout.sample_shape))
            frames.append(layout.read(image, s, region).mean(axis=0))
        a, b = rescale_pair(*frames)
        if settings.smoothing > 0:
            from scipy import ndimage as ndi

            a, b = ndi.gaussian_filter(a, settings.smoothing), ndi.gaussian_filter(b, settings.smoothing)
        flow = estimate_flow(a, b, settings)
        medians.append(float(np.median(np.sqrt((flow ** 2).sum(0)))))
    return float(np.median(medians))


def recommended_pairing(motion_px: float) -> str:
    """``"f2f"`` when frames move by more than :data:`MOTION_THRESHOLD_PX`, else ``"adjacent"``."""
    return "f2f" if motion_px > MOTION_THRESHOLD_PX else "adjacent"
