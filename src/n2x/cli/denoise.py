"""``n2x denoise``: one image into an OME-Zarr or TIFF, or files, globs and folders into a folder (batch mode)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .. import api
from ..errors import N2xError
from .progress import EXIT_INTERRUPTED, progress_bar


def add_denoise_parser(sub: Any) -> None:
    sub.add_parser("denoise", help="denoise images with a trained model", fill=_fill_denoise)


def _fill_denoise(p: argparse.ArgumentParser) -> None:
    """``n2x denoise``'s arguments (added when the command is used or its help shown)."""
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
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="address of an existing dask scheduler (e.g. tcp://head:8786) to run on: the chunks of one "
                   "volume, or the files of a batch")
    p.add_argument("--workers", type=int, help="local dask worker processes (one volume: default 1, in this process; "
                   "batch: default sized to the machine, one per GPU; 1 runs in this process)")
    p.add_argument("--max-memory", metavar="SIZE", help="memory per process or worker, e.g. 1.5G (default 1.5G on a "
                   "CPU, the free device memory on a GPU): tile and chunk sizes follow it")
    p.add_argument("--pyramid", dest="pyramid_levels", type=int, metavar="LEVELS",
                   help="resolution levels of an OME-Zarr output (default: 2x down to about 256 px; 1: none)")
    batch.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--axes", help="axes of the input (default: from the file, else the model's)")
    p.add_argument("--tile", type=int, nargs="+", help="core tile size (one value or one per spatial axis; "
                   "default from the model and the free memory)")
    p.add_argument("--batch", dest="batch_size", type=int, help="tiles per network call (default from the free memory)")
    p.add_argument("--chunks", type=int, nargs="+", help="spatial chunk size of an OME-Zarr output "
                   "(default two tiles per axis)")
    p.add_argument("--level", type=int, default=0, help="resolution level of a multi-scale input (default 0)")
    p.add_argument("--ngff", dest="ngff_version", choices=("0.4", "0.5"), default=None,
                   help="OME-NGFF version of a zarr output: 0.4 (zarr v2, default) or 0.5 (zarr v3; the default "
                   "with --shards)")
    p.add_argument("--shards", action="store_true",
                   help="sharded OME-Zarr (NGFF 0.5): each file holds many chunks, up to 64 MiB within the memory "
                   "budget, for file systems that suffer from many small files")
    p.add_argument("--device", default="auto", help=f"{', '.join(api.DEVICE_CHOICES)} (or cuda:N)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (without it an unfinished OME-Zarr of the same job resumes)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_denoise)


def _one_or_all(values: list[int] | None) -> int | list[int] | None:
    return values[0] if values and len(values) == 1 else values


def cmd_denoise(args: argparse.Namespace) -> int:
    """Denoise one image into an OME-Zarr (``.zarr``: chunk by chunk, any size, resumable) or a TIFF."""
    if api.is_batch_job(args.inputs, args.output):
        return cmd_denoise_batch(args)
    out = Path(args.output)
    if out.resolve() == Path(args.inputs[0]).resolve():
        raise N2xError("the output would overwrite the input", hint="choose another output path")
    model = api.load_model(args.model, device=args.device)
    info = api.open_image(args.inputs[0], level=args.level)
    info.axes, note = api.input_axes(info.axes, info.data.shape, model.config.get("axes"), args.axes,
                                     info.axes_named)
    if note:  # always, like a warning: it says how the file was read
        print(f"n2x: {note}", file=sys.stderr)
    gen = api.iter_denoise_volume(model, info, out, info.axes, tile=_one_or_all(args.tile),
                                  batch_size=args.batch_size, level=args.level, overwrite=args.overwrite,
                                  chunks=_one_or_all(args.chunks), ngff_version=args.ngff_version,
                                  scheduler=args.scheduler, workers=args.workers, max_memory=args.max_memory,
                                  pyramid_levels=args.pyramid_levels, shards=args.shards, device=args.device)
    bar = progress_bar(0, "denoise", args.quiet, unit=" chunks")
    t0 = time.perf_counter()
    pr = None
    try:
        for pr in gen:
            bar.total, bar.n = pr.total, pr.done
            if pr.skipped:
                bar.set_postfix({"resumed": pr.skipped}, refresh=False)
            bar.refresh()
    except KeyboardInterrupt:
        gen.close()  # the chunks computed so far are written and recorded before the generator ends
        bar.close()
        if api.is_zarr_path(out):
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
    """Denoise files, globs and folders into the folder ``-o``; exit 1 if some failed."""
    from .batch_view import BatchBars, summary_table

    words = args.words
    bars = BatchBars(disable=args.quiet or args.dry_run, words=words)
    try:
        summary = api.denoise_files(args.model, args.inputs, args.output, recursive=args.recursive,
                                    fmt=args.format, overwrite=args.overwrite, dry_run=args.dry_run,
                                    scheduler=args.scheduler, workers=args.workers, axes=args.axes, level=args.level,
                                    tile=_one_or_all(args.tile), batch_size=args.batch_size,
                                    chunks=_one_or_all(args.chunks), ngff_version=args.ngff_version,
                                    device=args.device, max_memory=args.max_memory, shards=args.shards,
                                    pyramid_levels=args.pyramid_levels, on_event=bars)
    except KeyboardInterrupt:
        bars.close()
        print(f"n2x: interrupted; finished files are recorded in {Path(args.output) / 'n2x-summary.json'}; "
              "run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    bars.close()
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    elif not args.quiet:
        print(summary_table(summary, words))
        if summary.summary_path is not None:
            print(f"summary: {summary.summary_path}")
    else:
        for r in summary.failed:
            print(f"n2x: {r.file}: failed: {r.explain(words)}", file=sys.stderr)
    return summary.exit_code
