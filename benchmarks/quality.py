"""Quality benchmark of BENCHMARK.md: every method x image x noise against the noisy input, NL-means and BM3D.

    python benchmarks/quality.py --methods n2v --images camera,coins --noises G25,PG --budget 180
    python benchmarks/quality.py --methods apbsn,n2v --noises CORR --baselines nlm,bm3d

Training is timed by wall clock (``time=budget``: data preparation and prediction are not counted); prediction is of
realisation ``a``; PSNR/SSIM with ``data_range=1`` on the float32 prediction. Run on a quiet machine, one process.
Results are printed as a table and appended as JSON lines to ``benchmarks/results/quality.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import devset  # noqa: E402

import n2x  # noqa: E402

# method -> (method name, extra train arguments given the pair (a, b))
METHODS = {
    "n2v": lambda a, b: ("n2v", {}),
    "n2v2": lambda a, b: ("n2v2", {}),
    "n2n": lambda a, b: ("n2n", {"target": b}),
    "n2n-single": lambda a, b: ("n2n", {"pairs": "subsample"}),
    "apbsn": lambda a, b: ("apbsn", {}),
}


def metrics(pred: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    return (float(peak_signal_noise_ratio(clean, pred, data_range=1)),
            float(structural_similarity(clean, pred, data_range=1)))


def train_and_score(noisy: np.ndarray, axes: str, method: str, clean: np.ndarray, **train_options) -> dict:
    """Train ``method`` on ``noisy`` (CPU), denoise ``noisy`` with it, and score against ``clean``: PSNR, SSIM,
    training and set-up seconds, steps, prediction seconds, patches per second and the step kept."""
    t0 = time.perf_counter()
    model = n2x.train(noisy, axes, method, device="cpu", **train_options)
    t_total = time.perf_counter() - t0
    t1 = time.perf_counter()
    pred = n2x.denoise(model, noisy)
    t_pred = time.perf_counter() - t1
    p, s = metrics(pred, clean)
    h = model.history
    return {"psnr": p, "ssim": s, "train_s": h["train_seconds"], "setup_s": t_total - h["train_seconds"],
            "steps": h["steps"], "pred_s": t_pred, "patches_per_s": h["patches_per_second"],
            "best_step": h["best_step"]}


def run_method(key: str, clean, a, b, budget: float, seed: int, options: dict) -> dict:
    method, extra = METHODS[key](a, b)
    return train_and_score(a, "YX" if a.ndim == 2 else "ZYX", method, clean, time=budget, seed=seed, **extra,
                           **options)


def run_baseline(key: str, clean, a, kind: str) -> dict:
    t0 = time.perf_counter()
    if key == "noisy":
        pred = a
    elif key == "nlm":
        from skimage.restoration import denoise_nl_means, estimate_sigma

        sigma = float(estimate_sigma(a))
        pred = denoise_nl_means(a, h=0.8 * sigma, sigma=sigma, fast_mode=True, patch_size=5, patch_distance=6)
    elif key == "bm3d":
        import bm3d
        import bm4d

        if not hasattr(np, "trapz"):  # bm4d 4.2 calls np.trapz, which numpy 2 renamed (used with a noise PSD)
            np.trapz = np.trapezoid
        # the true noise: its spectrum for correlated noise, its sigma for white noise
        truth = devset.noise_psd(kind, a.shape) if kind == "CORR" else devset.noise_sigma(kind, clean)
        pred = bm4d.bm4d(a, sigma_psd=truth) if a.ndim == 3 else bm3d.bm3d(a, sigma_psd=truth)
    else:
        raise ValueError(key)
    p, s = metrics(np.asarray(pred, np.float32), clean)
    return {"psnr": p, "ssim": s, "pred_s": time.perf_counter() - t0}


def parse_options(items: list[str]) -> dict:
    out = {}
    for it in items:
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="n2v")
    ap.add_argument("--images", default="camera,coins,moon")
    ap.add_argument("--noises", default="G25,PG,CORR")
    ap.add_argument("--baselines", default="noisy,nlm,bm3d", help="comma list of noisy, nlm, bm3d ('' for none)")
    ap.add_argument("--budget", type=float, default=180.0, help="training seconds per image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--opt", action="append", default=[], help="extra train option key=json, e.g. network='{\"features\":16}'")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    options = parse_options(args.opt)
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    rows = []
    header = f"{'image':8} {'noise':5} {'method':12} {'PSNR':>6} {'SSIM':>6} {'train s':>8} {'steps':>6} {'pred s':>7}"
    print(header, flush=True)
    for image in args.images.split(","):
        for kind in args.noises.split(","):
            clean, a, b = devset.condition(image, kind)
            todo = [("base", k) for k in args.baselines.split(",") if k] + \
                   [("method", k) for k in args.methods.split(",") if k]
            for what, key in todo:
                r = run_baseline(key, clean, a, kind) if what == "base" else \
                    run_method(key, clean, a, b, args.budget, args.seed, options)
                r.update(image=image, noise=kind, method=key, budget=args.budget, tag=args.tag,
                         options={k: v for k, v in options.items()}, host=os.uname().nodename)
                rows.append(r)
                print(f"{image:8} {kind:5} {key:12} {r['psnr']:6.2f} {r['ssim']:6.3f} "
                      f"{r.get('train_s', 0):8.1f} {r.get('steps', 0):6d} {r['pred_s']:7.2f}", flush=True)
                with open(out_dir / "quality.jsonl", "a") as f:
                    f.write(json.dumps(r, default=str) + "\n")


if __name__ == "__main__":
    main()
