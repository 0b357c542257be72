"""The ``n2x`` command: train, denoise, probe, demo, info.

A thin front door over :mod:`n2x.api`: it parses arguments, opens files, shows progress with tqdm and turns every
:class:`~n2x.errors.N2xError` into one line on stderr with a non-zero exit code.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ._version import __version__
from .errors import N2xError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="n2v", help="n2v, n2v2, n2n or apbsn (default n2v)")
    p.add_argument("--axes", help="axes of the image, e.g. YX, ZYX, TYX, CYX (default: from the file)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--time", help="training time, e.g. 90s, 3m, 1h (default 3m)")
    length.add_argument("--steps", type=int, help="number of training steps")
    length.add_argument("--epochs", type=float, help="passes over the training pixels")
    p.add_argument("--patch", type=int, nargs="+", help="patch size, one value or one per spatial axis (default 32 "
                   "in 2D, 16 x 64 x 64 in 3D, 120 for apbsn)")
    p.add_argument("--batch", type=int, help="patches per step (default: 64 patches of 32 x 32 in 2D, 16 in 3D; "
                   "with another patch size, as many as hold the same number of pixels)")
    p.add_argument("--lr", type=float, default=4e-3, help="peak learning rate (default 4e-3)")
    p.add_argument("--channels", choices=("independent", "joint"), default="independent")
    p.add_argument("--dims", type=int, choices=(2, 3), help="2D or 3D network (default: 3D when there is a Z axis)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--precision", default="auto", metavar="{auto,float32,bfloat16}",
                   help="mixed precision in training (default auto: bfloat16 on CUDA and on CPUs with hardware "
                        "bfloat16, float32 elsewhere)")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-memory", type=float, default=2.0, help="GiB of patches kept in memory (default 2)")
    n2v = p.add_argument_group("Noise2Void")
    n2v.add_argument("--mask-fraction", type=float, help="share of pixels masked per patch (default 0.02)")
    n2v.add_argument("--replacement", choices=("neighbour", "mean", "median", "random"),
                     help="how masked pixels are replaced (default neighbour; median for n2v2)")
    n2n = p.add_argument_group("Noise2Noise")
    n2n.add_argument("--target", help="second noisy acquisition of the same scene (same shape)")
    n2n.add_argument("--pairs", choices=("adjacent", "even-odd", "subsample"),
                     help="form pairs inside the image: adjacent planes/frames, even/odd frames, or sub-sampling")
    n2n.add_argument("--along", help="axis along which pairs are formed (T or Z)")
    n2n.add_argument("--loss", choices=("l2", "l1"), help="Noise2Noise loss (default l2)")
    ap = p.add_argument_group("AP-BSN")
    ap.add_argument("--blind", type=_stride, help="blind-box design (the default): radius in pixels of the box hidden "
                    "from each output, at least the noise's correlation length (default auto: the noise probe's)")
    ap.add_argument("--ensemble", type=int, choices=(1, 2, 4, 8),
                    help="blind-box design: flips/rotations averaged when denoising (default 8)")
    ap.add_argument("--stride-train", type=_stride, help="choose the pixel-shuffle design with this stride in training "
                    "(auto: one more than the correlation length that the noise probe measures)")
    ap.add_argument("--stride-infer", type=int, help="pixel-shuffle design: stride at inference (default 2)")
    ap.add_argument("--r3-passes", type=int, help="pixel-shuffle design: R3 refinement passes (0 disables; default 8)")


def _stride(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'auto', not {text!r}") from None


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    names = {"mask_fraction": "mask_fraction", "replacement": "replacement", "loss": "loss",
             "stride_train": "stride_train", "stride_infer": "stride_infer", "r3_passes": "r3_passes",
             "blind": "blind", "ensemble": "ensemble"}
    options = {k: getattr(args, a) for a, k in names.items() if getattr(args, a, None) is not None}
    if "stride_train" in options:  # also "--stride-train auto": the pixel-shuffle design, its stride from the probe
        options["design"] = "pd"
    return options


def _open(path: str, axes: str | None):
    from .io.images import open_image

    info = open_image(path)
    if axes:
        info.axes = axes.upper()
    return info


def _progress_bar(total: float, desc: str, quiet: bool, unit: str = "s"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, leave=True, dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}{unit} [{elapsed}<{remaining}{postfix}]")


def cmd_train(args: argparse.Namespace) -> int:
    from . import api
    from .durations import parse_duration

    from .batch import input_paths

    infos = [_open(str(p), args.axes) for p in input_paths(args.images, recursive=args.recursive)]
    axes = infos[0].axes
    if any(i.axes != axes for i in infos):
        raise N2xError("the training images have different axes; give --axes or train on matching files")
    target = _open(args.target, args.axes).data if args.target else None
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise N2xError(f"{out} exists; choose another name or pass --overwrite")
    seconds = parse_duration(args.time) if args.time else None
    if args.steps is None and args.epochs is None and seconds is None:
        seconds = api.DEFAULT_SECONDS
    total = args.steps if args.steps is not None else (seconds if seconds is not None else 1.0)
    unit = " steps" if args.steps is not None else ("s" if seconds is not None else "")
    patch = args.patch[0] if args.patch and len(args.patch) == 1 else args.patch
    gen = api.train_iter([i.data for i in infos], axes, args.method, time=seconds, steps=args.steps,
                         epochs=args.epochs, patch_size=patch, batch_size=args.batch, learning_rate=args.lr,
                         channels=args.channels, dims=args.dims, device=args.device, seed=args.seed,
                         precision=args.precision, max_memory=args.max_memory * 2**30, target=target,
                         pairs=args.pairs, along=args.along, **_method_options(args))
    bar = _progress_bar(100.0 if args.epochs is not None else total, f"train {args.method}", args.quiet, unit)
    model = None
    try:
        while True:
            try:
                pr = next(gen)
            except StopIteration as done:
                model = done.value
                break
            if args.steps is not None:
                bar.n = pr.step
            elif seconds is not None:
                bar.n = min(seconds, pr.fraction * seconds)
            else:
                bar.n = 100 * pr.fraction
            post = {"step": pr.step, "loss": f"{pr.loss:.4f}"}
            if pr.best_val_loss is not None:
                post["val"] = f"{pr.best_val_loss:.4f}"
            bar.set_postfix(post, refresh=False)
            bar.refresh()
    except KeyboardInterrupt:
        bar.close()
        print("n2x: interrupted; nothing was saved", file=sys.stderr)
        return EXIT_INTERRUPTED
    bar.close()
    model.save(out)
    h = model.history
    if not args.quiet:
        print(f"saved {out}: {h['steps']} steps in {h['train_seconds']:.0f} s "
              f"({h['patches_per_second']:.0f} patches/s), best validation loss {h['best_val_loss']:.4g} "
              f"at step {h['best_step']}")
    return 0


def cmd_denoise(args: argparse.Namespace) -> int:
    """Denoise one image into an OME-Zarr (``.zarr``: chunk by chunk, any size, resumable) or a TIFF."""
    from . import api
    from .batch import is_batch_job
    from .inference.volume import iter_denoise_volume

    if is_batch_job(args.inputs, args.output):
        return cmd_denoise_batch(args)
    if len(args.inputs) != 1:
        raise N2xError("denoise takes one image with -o FILE (folders and several inputs come with batch mode)")
    out = Path(args.output)
    if out.resolve() == Path(args.inputs[0]).resolve():
        raise N2xError("the output would overwrite the input; choose another output path")
    model = api.load_model(args.model, device=args.device)
    from .io.images import open_image

    info = open_image(args.inputs[0], level=args.level)
    info.axes = args.axes.upper() if args.axes else info.axes
    tile = args.tile[0] if args.tile and len(args.tile) == 1 else args.tile
    chunks = args.chunks[0] if args.chunks and len(args.chunks) == 1 else args.chunks
    gen = iter_denoise_volume(model, info, out, info.axes, tile=tile, batch_size=args.batch, level=args.level,
                              overwrite=args.overwrite, chunks=chunks, ngff_version=args.ngff)
    bar = _progress_bar(0, "denoise", args.quiet, unit=" chunks")
    t0 = time.perf_counter()
    pr = None
    try:
        while True:
            try:
                pr = next(gen)
            except StopIteration:
                break
            bar.total = pr.total
            bar.n = pr.done
            if pr.skipped:
                bar.set_postfix({"resumed": pr.skipped}, refresh=False)
            bar.refresh()
    except KeyboardInterrupt:
        gen.close()  # the chunks computed so far are written and recorded before the generator ends
        bar.close()
        if out.suffix.lower() not in (".tif", ".tiff"):
            print(f"n2x: interrupted; {out} keeps the chunks written so far; run the same command again to resume",
                  file=sys.stderr)
        else:
            print("n2x: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    bar.close()
    if not args.quiet and pr is not None:
        n_px = 1
        for n in info.data.shape:
            n_px *= int(n)
        share = (pr.done - pr.skipped) / max(pr.total, 1)
        mpix = n_px * share / 1e6 / max(time.perf_counter() - t0, 1e-9)
        resumed = f", {pr.skipped} chunk(s) resumed from an earlier run" if pr.skipped else ""
        print(f"wrote {out} ({'x'.join(map(str, info.data.shape))} {info.axes or model.config.get('axes')}, "
              f"float32; {mpix:.2f} MPix/s{resumed})")
    return 0


def cmd_denoise_batch(args: argparse.Namespace) -> int:
    """Denoise files, globs and folders into the folder ``-o`` (see :mod:`n2x.batch`); exit 1 if some failed."""
    from .batch import TqdmReporter, run_batch

    tile = args.tile[0] if args.tile and len(args.tile) == 1 else args.tile
    chunks = args.chunks[0] if args.chunks and len(args.chunks) == 1 else args.chunks
    bars = TqdmReporter(disable=args.quiet or args.dry_run)
    try:
        summary = run_batch(args.model, args.inputs, args.output, recursive=args.recursive, fmt=args.format,
                            overwrite=args.overwrite, dry_run=args.dry_run, scheduler=args.scheduler,
                            workers=args.workers, axes=args.axes, level=args.level, tile=tile,
                            batch_size=args.batch, chunks=chunks, ngff_version=args.ngff, device=args.device,
                            on_event=bars)
    except KeyboardInterrupt:
        bars.close()
        print(f"n2x: interrupted; finished files are recorded in {Path(args.output) / 'n2x-summary.json'}; "
              "run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    bars.close()
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    elif not args.quiet:
        print(summary.table())
        if summary.summary_path is not None:
            print(f"summary: {summary.summary_path}")
    else:
        for r in summary.failed:
            print(f"n2x: {r.file}: failed: {r.reason}", file=sys.stderr)
    return summary.exit_code


def cmd_demo(args: argparse.Namespace) -> int:
    """Train on the built-in synthetic sample, denoise it, report the PSNR gain against its clean image."""
    import numpy as np

    from . import api
    from .data.samples import noisy_sample
    from .durations import parse_duration

    noisy, clean, axes = noisy_sample("2d", "pg", seed=0)
    seconds = parse_duration(args.time) if args.steps is None else None
    total = float(args.steps) if args.steps is not None else seconds

    def psnr(x: np.ndarray) -> float:
        return float(10 * np.log10(1.0 / np.mean((x - clean) ** 2)))

    bar = _progress_bar(total, f"train {args.method} on the built-in sample", args.quiet,
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
        from .io.images import write_tiff

        outdir = Path(args.output)
        write_tiff(outdir / "sample_noisy.tif", noisy, axes, overwrite=True)
        write_tiff(outdir / "sample_denoised.tif", denoised, axes, overwrite=True)
        model.save(outdir / "sample_model.n2x")
        print(f"wrote {outdir}/sample_noisy.tif, sample_denoised.tif, sample_model.n2x")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """Measure an image's noise level and correlation and print the recommended method."""
    from . import api

    info = _open(args.image, args.axes)
    report = api.probe_noise(info.data, info.axes)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary())
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from . import api

    model = api.load_model(args.model, device="cpu")
    c = model.config
    method = dict(c["method"])
    if method.get("box_filter"):  # 25-169 weights: their size and centre say enough here
        k = len(method["box_filter"])
        method["box_filter"] = f"{k} x {k}, centre weight {method['box_filter'][k // 2][k // 2]:.3f}"
    summary = {"method": method, "network": c["network"], "axes": c["axes"], "spatial": c["spatial"],
               "channels": c["channels"], "n_channels": c["n_channels"], "patch_shape": c["patch_shape"],
               "normalization": c["normalization"], "package_version": c.get("package_version"),
               "steps": model.history.get("steps"), "best_val_loss": model.history.get("best_val_loss"),
               "precision": c.get("training", {}).get("precision", "float32"),
               "halo": model.halo}
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="n2x", description="Self-supervised denoising of microscopy images.")
    parser.add_argument("--version", action="version", version=f"napari-n2x {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a denoiser on noisy images")
    p.add_argument("images", nargs="+", help="noisy image file(s), glob patterns or folders: TIFF, OME-TIFF, "
                   "zarr, OME-Zarr (one model is trained on patches drawn from all of them)")
    p.add_argument("--recursive", action="store_true", help="look for images in sub-folders of folder inputs too")
    p.add_argument("-o", "--output", required=True, help="model file to write (.n2x)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    p.add_argument("-q", "--quiet", action="store_true")
    _add_train_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("denoise", help="denoise images with a trained model")
    p.add_argument("model", help="model file (.n2x)")
    p.add_argument("inputs", nargs="+", help="image file(s), glob patterns or folders (TIFF, OME-TIFF, zarr, "
                   "OME-Zarr); several, a folder or a pattern mean batch mode into the folder -o")
    p.add_argument("-o", "--output", required=True,
                   help="output: .ome.zarr / .zarr (OME-Zarr, any size, resumable) or .tif / .tiff for one input; "
                   "a folder in batch mode")
    batch = p.add_argument_group("batch mode (several inputs, folders, patterns; -o a folder)")
    batch.add_argument("--recursive", action="store_true", help="look for images in sub-folders of folder inputs")
    batch.add_argument("--format", choices=("auto", "tiff", "zarr"), default="auto",
                       help="output format per file: auto (OME-Zarr above 256 MiB of float32 result, else TIFF)")
    batch.add_argument("--dry-run", action="store_true", help="list what would be done, write nothing")
    batch.add_argument("--scheduler", metavar="ADDRESS",
                       help="address of an existing dask scheduler (e.g. tcp://head:8786) to run the files on")
    batch.add_argument("--workers", type=int, help="local worker processes (default: sized to the machine, one per "
                       "GPU; 1 runs in this process)")
    batch.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--axes", help="axes of the input (default: from the file, else the model's)")
    p.add_argument("--tile", type=int, nargs="+", help="core tile size (one value or one per spatial axis; "
                   "default from the model and the free memory)")
    p.add_argument("--batch", type=int, help="tiles per network call (default from the free memory)")
    p.add_argument("--chunks", type=int, nargs="+", help="spatial chunk size of an OME-Zarr output "
                   "(default two tiles per axis)")
    p.add_argument("--level", type=int, default=0, help="resolution level of a multi-scale input (default 0)")
    p.add_argument("--ngff", choices=("0.4", "0.5"), default="0.4",
                   help="OME-NGFF version of a zarr output: 0.4 (zarr v2, default) or 0.5 (zarr v3)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (without it an unfinished OME-Zarr of the same job resumes)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_denoise)

    p = sub.add_parser("demo", help="train and denoise the built-in sample and report the PSNR gain")
    p.add_argument("--method", default="n2v")
    p.add_argument("--time", default="60s", help="training time (default 60s)")
    p.add_argument("--steps", type=int, help="train for this many steps instead of a time")
    p.add_argument("--device", default="auto")
    p.add_argument("-o", "--output", help="folder to write the sample, its denoised version and the model into")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("probe", help="measure the noise of an image and recommend a method (n2v or apbsn)")
    p.add_argument("image", help="image file: TIFF, OME-TIFF, zarr, OME-Zarr")
    p.add_argument("--axes", help="axes of the image, e.g. YX, ZYX, TYX, CYX (default: from the file)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("info", help="show what a model file holds")
    p.add_argument("model")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except N2xError as exc:
        print(f"n2x: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("n2x: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        print("n2x: error: out of memory; use a smaller --tile or --batch, or --max-memory", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"n2x: error: {exc.strerror or exc} ({exc.filename or ''})", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
