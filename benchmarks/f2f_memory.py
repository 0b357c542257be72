"""Memory and set-up cost of frame-to-frame (F2F) training data: what the patch sampler holds, and its flows' cost.

Three cases, each in its own process (so that its peak RSS is its own):

- ``inmem``: the dev time-lapse (24 frames of 256 x 256, G25), default ``max_memory`` (2 GiB): held in memory;
- ``lazy``: the same stack with ``max_memory`` 32 MiB: sampled lazily, measured once the region cache is full;
- ``val``: a long stack made up on demand (200 frames of 1024 x 1024, 2 px per frame), ``max_memory`` 64 MiB: the
  set-up before training (first regions, 60 validation patches from 20 held-out pairs).

Prints one JSON line per case: bytes held (regions, validation patches), peak RSS of building the sampler over the
process's RSS before it, seconds of set-up and of alignment, pixels aligned. Usage::

    python benchmarks/f2f_memory.py [inmem lazy val]
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BUDGETS = {"inmem": 2 * 2**30, "lazy": 32 * 2**20, "val": 64 * 2**20}


class LazyFrames:
    """A long time-lapse (TYX) made up on demand, as a lazily opened file would be (as in tests/test_f2f.py)."""

    def __init__(self, n_frames: int, size: int):
        from n2x.data.samples import clean_cells

        self.shape, self.dtype, self.ndim = (n_frames, size, size), np.dtype(np.float32), 3
        self.scene = clean_cells((size + 64, size + 64), seed=7)

    def __getitem__(self, index):
        t, ys, xs = index
        s = 2 * (t % 16)  # a window that moves 2 px per frame, back and forth
        noise = np.random.default_rng(t).normal(0, 0.1, self.shape[1:])
        return (self.scene[s:s + self.shape[1], s:s + self.shape[2]] + noise)[ys, xs].astype(np.float32)


def _rss(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def measure(case: str) -> dict:
    """Build the F2F sampler of ``case`` and report what it holds and cost."""
    import n2x.api
    from n2x.data.pairs import f2f_sources
    from n2x.data.patches import PatchSampler

    if case == "val":
        stack = LazyFrames(200, 1024)
    else:
        sys.path.insert(0, str(HERE))
        from devset import timelapse

        stack = timelapse("G25")[1]
    sources = f2f_sources([stack], [n2x.api.make_layout(stack.shape, "TYX", 2)])
    aligner = sources[0].aux_cache
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak RSS (VmHWM)
    base = _rss("VmRSS:")
    start = time.perf_counter()
    sampler = PatchSampler(sources, (64, 64), max_memory=BUDGETS[case], val_fraction=0.1, seed=0)
    setup = time.perf_counter() - start
    setup_pixels = aligner.pixels_computed
    try:
        if case == "lazy":  # until the background reader has filled the region cache
            while len(sampler._regions) < sampler.n_regions and time.perf_counter() - start < 600:
                sampler.batch(16)
                time.sleep(0.5)
        held = sampler.bytes_held()
    finally:
        sampler.close()
    return {"case": case, "max_memory": BUDGETS[case], "in_memory": sampler.in_memory,
            "regions": len(sampler._regions), "held_bytes": held, "setup_s": round(setup, 2),
            "setup_pixels_aligned": setup_pixels, "align_s": round(aligner.seconds, 2),
            "pixels_aligned": aligner.pixels_computed, "peak_rss_over_base": _rss("VmHWM:") - base}


def main() -> None:
    cases = sys.argv[1:] or list(BUDGETS)
    if len(cases) == 1:
        print(json.dumps(measure(cases[0])), flush=True)
        return
    for case in cases:  # one process per case
        subprocess.run([sys.executable, __file__, case], check=True)


if __name__ == "__main__":
    main()
