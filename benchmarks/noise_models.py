"""Noise models and the variance-stabilising transform (issue 14, part A), side by side in one run.

    python benchmarks/noise_models.py                       # probe fits, then training at 60 s per run
    python benchmarks/noise_models.py --budget 0            # probe fits only
    python benchmarks/noise_models.py --images camera --budget 30
    python benchmarks/noise_models.py --steps 100 --runs n2v/off,n2v/on     # equal steps (a loaded machine)

1. The probe's noise model on the dev images (PG: true gain 0.05, read variance 0.0004, black level 0; G25 and CORR:
   the kind only), on 100 x 100 crops, and on the real images of ../shared/data (no ground truth: kind, parameters,
   fit quality).
2. The effect of the transform: N2V and ``auto`` with ``vst`` off and on, on camera/coins/moon PG, ``budget``
   seconds (or ``--steps`` steps, fairer when other jobs share the CPU) of training each (the BENCHMARK.md protocol
   otherwise: realisation ``a``, PSNR against the clean image,
   data_range 1); NL-means of the same run for reference (sigma: the root mean variance of the probe's noise model
   over the image, as skimage's estimate_sigma needs PyWavelets, not installed here).
Run it alone on the machine where possible; results are appended to ``benchmarks/results/noise_models.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).parent))
import devset  # noqa: E402

from n2x import api  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data"
TRUE_PG = {"gain": 0.05, "read_variance": 0.02 ** 2}


def psnr(x: np.ndarray, clean: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((np.asarray(x, np.float64) - clean) ** 2)))


def probe_row(label: str, image: np.ndarray, axes: str) -> dict:
    t = time.perf_counter()
    report = api.probe_noise(image, axes)
    fit = report.noise_fits[0]
    model = fit.model
    return {"image": label, "kind": report.kind, "gain": model.gain, "read_variance": model.read_variance,
            "offset": model.offset, "r2": fit.r2, "rms_rel": fit.rms_relative, "gain_t": fit.gain_t,
            "spread": fit.spread, "recommended": report.recommended, "seconds": time.perf_counter() - t}


def probe_fits(images: list[str]) -> list[dict]:
    rows = []
    for name in images:
        clean = devset.clean_image(name)
        for kind in devset.NOISES:
            noisy = devset.add_noise(clean, kind, name)
            rows.append(probe_row(f"{name}/{kind}", noisy, "YX"))
            rows.append(probe_row(f"{name}/{kind} 100x100", noisy[200:300, 200:300], "YX"))
    for path, axes in (("nuclei2d_real.tif", "YX"), ("nuclei3d_real.tif", "ZYX")):
        if (REAL / path).exists():
            rows.append(probe_row(path, tifffile.imread(REAL / path).astype(np.float32), axes))
    print("\n| image | kind | gain | read var | black level | R^2 | rms rel | gain t | spread |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['image']} | {r['kind']} | {r['gain']:.4g} | {r['read_variance']:.3g} | {r['offset']:.3g} | "
              f"{r['r2']:.3f} | {r['rms_rel']:.1%} | {r['gain_t']:.1f} | {r['spread']:.2f} |")
    return rows


def training(images: list[str], budget: float, steps: int | None, runs: list[tuple[str, str]]) -> list[dict]:
    from skimage.restoration import denoise_nl_means

    length = {"steps": steps} if steps else {"time": budget}
    rows = []
    for name in images:
        clean = devset.clean_image(name)
        noisy = devset.add_noise(clean, "PG", name)
        report = api.probe_noise(noisy, "YX")
        sigma = float(np.sqrt(np.mean(report.noise_model.variance(noisy))))  # estimate_sigma needs PyWavelets
        nlm = denoise_nl_means(noisy, h=0.8 * sigma, sigma=sigma, fast_mode=True, patch_size=5, patch_distance=6)
        row = {"image": f"{name}/PG", "noisy": psnr(noisy, clean), "nlm": psnr(nlm, clean), "runs": {}}
        for method, vst in runs:
            model = api.train(noisy, "YX", method, seed=0, vst=vst, **length)
            t = time.perf_counter()
            out = api.denoise(model, noisy)
            row["runs"][f"{method}/vst {vst}"] = {
                "method": model.config["method_choice"]["method"], "vst": bool(model.config["noise"]["vst"]),
                "psnr": psnr(out, clean), "bias": float(np.mean(out) - np.mean(clean)),
                "steps": model.history["steps"], "train_s": model.history["train_seconds"],
                "predict_s": time.perf_counter() - t}
            print(name, method, vst, row["runs"][f"{method}/vst {vst}"], flush=True)
        rows.append(row)
    names = [f"{m}/vst {v}" for m, v in runs]
    print(f"\nPSNR (dB), {f'{steps} steps' if steps else f'{budget:g} s'} of training per run, PG noise, "
          "realisation a")
    print("| image | noisy | NL-means | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for r in rows:
        cells = [f"{r['runs'][n]['psnr']:.2f} ({r['runs'][n]['method']}, {r['runs'][n]['steps']} st)" for n in names]
        print(f"| {r['image']} | {r['noisy']:.2f} | {r['nlm']:.2f} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default=",".join(devset.IMAGES_2D))
    p.add_argument("--budget", type=float, default=60.0, help="training seconds per run (0: probe fits only)")
    p.add_argument("--steps", type=int, help="train each run for this many steps instead of --budget seconds")
    p.add_argument("--runs", default="n2v/off,n2v/on,auto/off,auto/auto", help="method/vst pairs")
    args = p.parse_args()
    torch.set_num_threads(2)
    images = args.images.split(",")
    result = {"probe": probe_fits(images), "true_pg": TRUE_PG, "budget": args.budget, "steps": args.steps}
    if args.budget > 0:
        runs = [tuple(r.split("/")) for r in args.runs.split(",")]
        result["training"] = training(images, args.budget, args.steps, runs)
    out = Path(__file__).parent / "results" / "noise_models.jsonl"
    out.parent.mkdir(exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
