"""Time-lapse benchmark of BENCHMARK.md: N2V per frame, N2N with adjacent frames and frame-to-frame N2N (F2F).

    python benchmarks/timelapse.py --budget 180
    python benchmarks/timelapse.py --budget 60 --conditions moving/G25,static/G25 --methods f2f,adjacent
    python benchmarks/timelapse.py --steps 300    # equal steps instead of equal time: for a machine under load

The dev time-lapse (devset.timelapse: 24 frames of 256 x 256 from camera(), moving 5-10 px and turning 0.4 degree
per frame, or its static twin), noise independent per frame. Every method trains on the noisy stack alone (TYX) for
``budget`` seconds of wall clock (data preparation, which includes F2F's optical flows, is not counted but reported),
then denoises the whole stack. PSNR/SSIM with ``data_range=1`` against the clean frames (SSIM: mean over frames).
The flow's cost is measured on its own: seconds per frame pair (both directions and the masks), and the share of
the training budget that the flows of all 23 pairs take. Results are printed and appended as JSON lines to
``benchmarks/results/timelapse.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import devset  # noqa: E402
from quality import metrics, train_and_score  # noqa: E402

from n2x.data.flow import align_pair  # noqa: E402

METHODS = {
    "n2v": ("n2v", {}),
    "adjacent": ("n2n", {"pairs": "adjacent", "along": "T"}),
    "f2f": ("n2n", {"pairs": "f2f", "along": "T"}),
}
CONDITIONS = ("moving/G25", "moving/PG", "static/G25")


def run_method(key: str, clean: np.ndarray, noisy: np.ndarray, budget: float, seed: int,
               steps: int | None = None) -> dict:
    method, extra = METHODS[key]
    length = {"steps": steps} if steps else {"time": budget}
    return train_and_score(noisy, "TYX", method, clean, seed=seed, **length, **extra)


def flow_cost(noisy: np.ndarray, n_pairs: int = 4) -> float:
    """Seconds per frame pair of the alignment (two TV-L1 flows and both masks), median over ``n_pairs`` pairs."""
    times = []
    for t in np.linspace(0, len(noisy) - 2, n_pairs).round().astype(int):
        t0 = time.perf_counter()
        align_pair(noisy[t][None], noisy[t + 1][None])
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=180.0, help="training seconds per method and condition")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--conditions", default=",".join(CONDITIONS), help="moving/G25, moving/PG, static/G25, ...")
    ap.add_argument("--steps", type=int, default=None,
                    help="train every method this many steps instead of --budget seconds (a loaded, shared machine "
                         "makes equal time unequal work)")
    ap.add_argument("--image", default="camera",
                    help="skimage.data image the frames are cut from: camera (the dev set) or e.g. cell (outside it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    out = Path(__file__).parent / "results" / "timelapse.jsonl"
    out.parent.mkdir(exist_ok=True)
    for cond in args.conditions.split(","):
        motion, kind = cond.split("/")
        clean, noisy = devset.timelapse(kind, moving=motion == "moving", image=args.image)
        per_pair = flow_cost(noisy)
        n_pairs = len(noisy) - 1
        rows.append({"condition": cond, "method": "noisy", "psnr": metrics(noisy, clean)[0],
                     "ssim": metrics(noisy, clean)[1]})
        rows[-1].update(flow_s_per_pair=per_pair, flow_share=per_pair * n_pairs / args.budget)
        print(f"{cond}: noisy {rows[-1]['psnr']:.2f} dB; flow {per_pair:.2f} s per pair, {n_pairs} pairs = "
              f"{100 * rows[-1]['flow_share']:.0f}% of a {args.budget:.0f} s budget", flush=True)
        for key in args.methods.split(","):
            res = {"condition": cond, "image": args.image, "method": key, "budget": None if args.steps else args.budget,
                   **run_method(key, clean, noisy, args.budget, args.seed, args.steps)}
            rows.append(res)
            print(f"  {key:9s} {res['psnr']:6.2f} dB  SSIM {res['ssim']:.3f}  steps {res['steps']:5d}  "
                  f"train {res['train_s']:.0f} s  setup {res['setup_s']:.1f} s  predict {res['pred_s']:.1f} s",
                  flush=True)
            with out.open("a") as f:
                f.write(json.dumps(res) + "\n")
    print("\n| condition | " + " | ".join(["noisy"] + args.methods.split(",")) + " |")
    print("|---" * (2 + len(args.methods.split(","))) + "|")
    for cond in args.conditions.split(","):
        cells = [f"{r['psnr']:.2f}" for r in rows if r["condition"] == cond]
        print(f"| {cond} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
