"""The all-pixel blind-spot method (``bsn``) against N2V, NL-means and BM3D/BM4D (true noise), side by side in one run.

    python benchmarks/bsn_quality.py                                   # every condition, 180 s per method
    python benchmarks/bsn_quality.py --seconds 60 --conditions camera/G25,coins/PG,crop-camera/G25,volume/PG
    python benchmarks/bsn_quality.py --steps 300 --threads 1 --methods bsn:trunk=unet,bsn:trunk=dilated,n2v
    python benchmarks/bsn_quality.py --cost --threads 1               # microseconds per pixel per step per trunk

Conditions are ``image/noise``: ``camera``, ``coins``, ``moon`` (the dev set of shared/BENCHMARK.md),
``crop-camera`` (its 100 x 100 crop at rows 180-280, columns 200-300: the small-image regime), ``volume`` (the 3D
dev volume, baseline BM4D); noises ``G25`` and ``PG``. Outside the dev set: any grey ``skimage.data`` image
(``cell``, ``brick``, ``microaneurysms``: 102 x 102, ``crop-cell``...) and noise ``G<s>`` (sigma ``s / 255``) or
``PG<p>`` (``p`` photons at intensity 1, read noise 0.02), e.g. ``cell/G15,cell/PG5,brick/PG10``. Every method
trains through the api as a user would (``n2x.train(noisy, axes, method, time=seconds)``: the api's
variance-stabilising transform applies where the probe finds Poisson-Gaussian noise), on realisation ``a``, and
predicts ``a``. PSNR/SSIM with ``data_range=1``. The table is printed and each row appended as a JSON line to
``--out``.

A method is ``name`` or ``name:option=value:...`` (options of :func:`n2x.train`, values as JSON or text), e.g.
``bsn:trunk=dilated``, ``bsn:learning_rate=0.01`` or ``bsn:network.features=24`` (a network override).
``--steps N`` trains every method for the same number of steps instead of ``--seconds`` (fair on a shared CPU,
where wall time is not). ``--cost`` times one training step (forward and backward, one batch of 4 patches of
64 x 64) of each trunk of ``bsn`` and of N2V's U-Net, interleaved, and prints microseconds per pixel per step.
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
    parser.add_argument("--steps", type=int, default=None, help="train every method this many steps (not --seconds)")
    parser.add_argument("--cost", action="store_true", help="only time a training step of each trunk")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bsn_quality.jsonl"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.cost:
        print(step_cost())
        return
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
            name, options = parse_method(key)
            length = {"steps": args.steps} if args.steps else {"time": args.seconds}
            r = quality.train_and_score(a, "YX" if a.ndim == 2 else "ZYX", name, clean, seed=args.seed, **length,
                                        **options)
            rows.append({"condition": cond, "method": key, "budget_s": args.seconds, "budget_steps": args.steps, **r})
            print(_line(rows[-1]), flush=True)
        with out.open("a") as f:
            for row in rows:
                if row["condition"] == cond:
                    f.write(json.dumps({**row, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    print()
    print(_table(rows, args.methods.split(","), args.baselines.split(",")))


def parse_method(spec: str) -> tuple[str, dict]:
    """``"bsn:trunk=dilated:learning_rate=0.01"`` -> ``("bsn", {"trunk": "dilated", "learning_rate": 0.01})``;
    ``network.KEY=VALUE`` goes into the ``network`` overrides (``bsn:network.features=24``)."""
    name, *items = spec.split(":")
    options = quality.parse_options(items)
    for key in [k for k in options if k.startswith("network.")]:
        options.setdefault("network", {})[key[len("network."):]] = options.pop(key)
    return name, options


def step_cost(repeats: int = 8) -> str:
    """Microseconds per pixel of one training step (forward + backward, float32, a batch of 4 patches of 64 x 64)
    of each in-plane trunk of ``bsn`` and of N2V's U-Net, timed interleaved; the median of ``repeats``."""
    from n2x.nets import build_network
    from n2x.methods import get_method

    nets = {f"bsn trunk={t}": get_method("bsn", trunk=t) for t in ("unet", "dilated")}
    nets = {k: m.build_network(m.network_config(2, 1)) for k, m in nets.items()}
    nets["n2v U-Net"] = build_network(**get_method("n2v").network_config(2, 1))
    x = torch.randn(4, 1, 64, 64)
    times: dict[str, list[float]] = {k: [] for k in nets}
    for _ in range(repeats + 1):  # the first round warms up
        for key, net in nets.items():
            t0 = time.perf_counter()
            net(x).float().sum().backward()
            times[key].append(time.perf_counter() - t0)
    lines = ["| network | us per pixel per step |", "|---|---|"]
    for key, t in times.items():
        lines.append(f"| {key} | {1e6 * float(np.median(t[1:])) / x.numel():.2f} |")
    return "\n".join(lines)


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
