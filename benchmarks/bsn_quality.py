"""The all-pixel blind-spot method (``bsn``) against N2V, NL-means and BM3D/BM4D (true sigma), side by side in one run.

    python benchmarks/bsn_quality.py                                   # every condition, 180 s per method
    python benchmarks/bsn_quality.py --seconds 60 --conditions camera/G25,coins/PG,crop-camera/G25,volume/PG

Conditions are ``image/noise``: ``camera``, ``coins``, ``moon`` (the dev set of shared/BENCHMARK.md),
``crop-camera`` (its 100 x 100 crop at rows 180-280, columns 200-300: the small-image regime), ``volume`` (the 3D
dev volume, baseline BM4D); noises ``G25`` and ``PG``. Every method trains through the api as a user would
(``n2x.train(noisy, axes, method, time=seconds)``: the api's variance-stabilising transform applies where the probe
finds Poisson-Gaussian noise), on realisation ``a``, and predicts ``a``. PSNR/SSIM with ``data_range=1``. The table
is printed and each row appended as a JSON line to ``--out``.
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
import quality  # noqa: E402

quality.METHODS.setdefault("bsn", lambda a, b: ("bsn", {}))

CROP = (slice(180, 280), slice(200, 300))
DEFAULT_CONDITIONS = [f"{i}/{n}" for i in ("camera", "coins", "moon", "crop-camera", "volume") for n in ("G25", "PG")
                      if not (i == "volume" and n == "G25")]


def load(condition: str) -> tuple[np.ndarray, np.ndarray, str]:
    """``(clean, noisy a, noise kind)`` of ``image/noise``."""
    image, kind = condition.split("/")
    if image.startswith("crop-"):
        clean, a, _ = devset.condition(image[len("crop-"):], kind)
        return clean[CROP].copy(), a[CROP].copy(), kind
    clean, a, _ = devset.condition(image, kind)
    return clean, a, kind


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="training budget per method and condition (s)")
    parser.add_argument("--conditions", default=",".join(DEFAULT_CONDITIONS))
    parser.add_argument("--methods", default="bsn,n2v")
    parser.add_argument("--baselines", default="noisy,nlm,bm3d")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bsn_quality.jsonl"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for cond in args.conditions.split(","):
        clean, a, kind = load(cond)
        for key in args.baselines.split(","):
            r = quality.run_baseline(key, clean, a, kind)
            rows.append({"condition": cond, "method": "bm4d" if key == "bm3d" and a.ndim == 3 else key, **r})
            print(_line(rows[-1]), flush=True)
        for key in args.methods.split(","):
            r = quality.run_method(key, clean, a, a, args.seconds, args.seed, {})
            rows.append({"condition": cond, "method": key, "budget_s": args.seconds, **r})
            print(_line(rows[-1]), flush=True)
        with out.open("a") as f:
            for row in rows:
                if row["condition"] == cond:
                    f.write(json.dumps({**row, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    print()
    print(_table(rows, args.methods.split(","), args.baselines.split(",")))


def _line(r: dict) -> str:
    extra = f" steps {r['steps']} (best {r['best_step']}) train {r['train_s']:.0f} s" if "steps" in r else ""
    return f"{r['condition']:16s} {r['method']:6s} PSNR {r['psnr']:6.2f} SSIM {r['ssim']:.3f}{extra}"


def _table(rows: list[dict], methods: list[str], baselines: list[str]) -> str:
    """Markdown: one row per condition, PSNR (dB) per method, then N2V's steps and the method's steps."""
    cols = [("bm4d/bm3d" if b == "bm3d" else b) for b in baselines] + methods
    lines = ["| condition | " + " | ".join(cols) + " | steps (" + ", ".join(methods) + ") |",
             "|---" * (len(cols) + 2) + "|"]
    for cond in dict.fromkeys(r["condition"] for r in rows):
        by = {r["method"]: r for r in rows if r["condition"] == cond}
        by.setdefault("bm3d", by.get("bm4d"))
        cells = [f"{by[k]['psnr']:.2f}" if by.get(k) else "" for k in baselines + methods]
        steps = ", ".join(str(by[m]["steps"]) for m in methods if by.get(m))
        lines.append(f"| {cond} | " + " | ".join(cells) + f" | {steps} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
