"""``n2x demo``, ``n2x probe`` and ``n2x info``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import api
from .progress import progress_bar


def add_tool_parsers(sub: Any) -> None:
    p = sub.add_parser("demo", help="train and denoise the built-in sample and report the PSNR gain")
    p.add_argument("--method", default="n2v")
    p.add_argument("--time", default="60s", help="training time (default 60s)")
    p.add_argument("--steps", type=int, help="train for this many steps instead of a time")
    p.add_argument("--device", default="auto")
    p.add_argument("-o", "--output", help="folder to write the sample, its denoised version and the model into")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("probe", help="measure the noise of an image, fit its noise model and recommend a method")
    p.add_argument("image", help="image file: TIFF, OME-TIFF, zarr, OME-Zarr")
    p.add_argument("--axes", help="axes of the image, e.g. YX, ZYX, TYX, CYX (default: from the file)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("info", help="show what a model file holds")
    p.add_argument("model")
    p.set_defaults(func=cmd_info)


def cmd_demo(args: argparse.Namespace) -> int:
    """Train on the built-in synthetic sample, denoise it, report the PSNR gain against its clean image."""
    noisy, clean, axes = api.noisy_sample("2d", "pg", seed=0)
    seconds = api.parse_duration(args.time) if args.steps is None else None
    total = float(args.steps) if args.steps is not None else seconds

    def psnr(x: np.ndarray) -> float:
        return float(10 * np.log10(1.0 / np.mean((x - clean) ** 2)))

    bar = progress_bar(total, f"train {args.method} on the built-in sample", args.quiet,
                       unit=" steps" if args.steps is not None else "s")
    model = api.train(noisy, axes, args.method, time=seconds, steps=args.steps, seed=0, device=args.device,
                      callback=lambda pr: (setattr(bar, "n", min(total, pr.fraction * total)), bar.refresh()))
    bar.close()
    denoised = api.denoise(model, noisy)
    before, after = psnr(noisy), psnr(denoised)
    print(f"sample: synthetic cells 256x256 with Poisson-Gaussian noise, method {args.method}, "
          f"{model.history['steps']} steps")
    print(f"PSNR noisy    {before:6.2f} dB")
    print(f"PSNR denoised {after:6.2f} dB  (gain {after - before:+.2f} dB)")
    if args.output:
        outdir = Path(args.output)
        api.write_tiff(outdir / "sample_noisy.tif", noisy, axes, overwrite=True)
        api.write_tiff(outdir / "sample_denoised.tif", denoised, axes, overwrite=True)
        api.save_model(model, outdir / "sample_model.n2x", overwrite=True)
        print(f"wrote {outdir}/sample_noisy.tif, sample_denoised.tif, sample_model.n2x")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """Measure an image's noise level, correlation and noise model; print the method ``--method auto`` trains."""
    info = api.open_image(args.image)
    axes = args.axes.upper() if args.axes else info.axes
    report = api.probe_noise(info.data, axes)
    choice = api.choose_method(info.data, axes, api.AUTO_METHOD, report=report)
    if args.json:
        print(json.dumps({**report.to_dict(), "auto": choice.to_config()}, indent=2))
    else:
        print(report.summary())
        print(choice.reason)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    model = api.load_model(args.model, device="cpu")
    c = model.config
    method = dict(c["method"])
    if method.get("box_filter"):  # 25-169 weights per filter: their size and centre say enough here
        filters = method["box_filter"]
        filters = filters if isinstance(filters[0][0], list) else [filters]  # one filter, or one per knot
        k = len(filters[0])
        centres = ", ".join(f"{f[k // 2][k // 2]:.3f}" for f in filters)
        method["box_filter"] = (f"{len(filters)} x {k} x {k}, centre weight{'s' if len(filters) > 1 else ''} "
                                f"{centres}")
    summary = {"method": method, "network": c["network"], "axes": c["axes"], "spatial": c["spatial"],
               "channels": c["channels"], "n_channels": c["n_channels"], "patch_shape": c["patch_shape"],
               "normalization": c["normalization"], "noise": c.get("noise"), "method_choice": c.get("method_choice"),
               "package_version": c.get("package_version"),
               "steps": model.history.get("steps"), "best_val_loss": model.history.get("best_val_loss"),
               "precision": c.get("training", {}).get("precision", "float32"),
               "halo": model.halo}
    print(json.dumps(summary, indent=2))
    return 0
