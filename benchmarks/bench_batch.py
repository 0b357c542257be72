"""Batch throughput: files per minute and MPix/s of ``n2x.batch.run_batch`` with 1 and 2 workers, next to a plain
sequential loop over ``n2x.denoise`` + ``tifffile.imwrite`` on the same files, in one run on one machine.

    python benchmarks/bench_batch.py                       # 20 files of 1024 x 1024 uint16, workers 1 and 2
    python benchmarks/bench_batch.py --size 512 --files 10 # smaller, for a busy machine
    python benchmarks/bench_batch.py --split --files 2 --size 2048 --chunks 512   # chunk tasks vs one task per file

The files are generated deterministically (smooth structure plus Poisson-Gaussian noise, uint16). The model is the
default N2V network trained for a few steps only: throughput does not depend on how well it is trained. Times are
wall-clock for the whole job, including (for 2 workers) starting the local dask cluster and its worker processes,
whose fixed cost is also measured on its own and printed. ``--json PATH`` appends the figures as one JSON line.

``--split``: the files are written as OME-Zarr (``fmt="zarr"``) on one local cluster of ``--workers`` (default 2)
workers, each pinned to its share of the cores (so n2x gives it one torch thread per core, as ``workers=N`` does),
once with each file split into chunk-group tasks queued together (``chunk_tasks=True``, the default) and once with
one task per file (``chunk_tasks=False``, the scheduling before); the two modes alternate ``--repeats`` times, so
that both see the same load on a shared machine. Times exclude starting the cluster. Besides MPix/s, the share of
the run's span the workers spent computing n2x tasks (from dask's task stream) shows idle workers, a figure that
other jobs on a shared machine do not distort. The outputs of the two modes are compared.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import tifffile


def make_files(folder: Path, n: int, size: int) -> list[Path]:
    """``n`` noisy uint16 images of ``size`` x ``size`` pixels (seeded, so every run sees the same data)."""
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.meshgrid(np.linspace(0, 12, size), np.linspace(0, 12, size), indexing="ij")
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        clean = 200 + 150 * (np.sin(yy + i) * np.cos(xx - i)) ** 2
        noisy = rng.poisson(clean) + rng.normal(0, 5, clean.shape)
        p = folder / f"img_{i:03d}.tif"
        tifffile.imwrite(p, np.clip(noisy, 0, 65535).astype(np.uint16), imagej=True,
                         resolution=(1 / 0.1, 1 / 0.1), metadata={"unit": "um"})
        paths.append(p)
    return paths


def cluster_startup_seconds(n_workers: int) -> float:
    """Seconds to start and stop a local cluster of ``n_workers`` processes (the fixed cost of a distributed run)."""
    import logging

    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        # Importing torch and n2x on the workers is part of the cost a real run pays.
        client.run(lambda: __import__("n2x.batch"))
    return time.perf_counter() - t0


def pin_worker(cores: set[int]) -> int:
    """Run on a worker (``client.run``): restrict all its threads, and those it starts later, to ``cores``, so
    that n2x gives it one torch thread per core, as ``workers=N`` does on this machine. Returns the core count."""
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), cores)
    return len(cores)


def occupancy(stream: list[dict], workers: int) -> tuple[float, float]:
    """``(busy fraction, span in seconds)`` of the n2x tasks in a dask task stream: the seconds workers spent
    computing, over ``workers`` times the span from the first task's start to the last task's end."""
    spans = [(ss["start"], ss["stop"]) for t in stream if str(t["key"]).startswith("n2x-")
             for ss in t["startstops"] if ss["action"] == "compute"]
    if not spans:
        return 0.0, 0.0
    span = max(b for _, b in spans) - min(a for a, _ in spans)
    return sum(b - a for a, b in spans) / (workers * span), span


def split_comparison(args: argparse.Namespace, data: Path, model_path: Path, root: Path,
                     row: Callable[[str, float, str], None]) -> None:
    """Chunk tasks vs one task per file for a batch of large files with OME-Zarr outputs (see the module doc)."""
    import logging

    import zarr
    from distributed import Client, LocalCluster, get_task_stream

    from n2x.batch import run_batch
    from n2x.cli.batch_view import summary_table

    workers = max(args.workers)  # the largest count asked for (default 2)
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // workers)
    with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        for k, address in enumerate(sorted(client.scheduler_info()["workers"])):
            mine = set(cores[(k * share) % len(cores):(k * share) % len(cores) + share])
            client.run(pin_worker, mine, workers=[address])
        client.run(lambda: __import__("n2x.batch.volume_cluster"))  # torch and n2x imported before the timing
        for rep in range(args.repeats):
            for split in (True, False):
                out = root / f"split_{split}_{rep}"
                with get_task_stream(client) as ts:
                    t0 = time.perf_counter()
                    summary = run_batch(model_path, [data], out, scheduler=cluster.scheduler_address, fmt="zarr",
                                        device="cpu", chunks=args.chunks, chunk_tasks=split)
                    seconds = time.perf_counter() - t0
                assert summary.exit_code == 0, summary_table(summary)
                busy, _ = occupancy(ts.data, workers)
                chunks = sum(r.chunks or 0 for r in summary.results)
                row(f"{'chunk tasks' if split else 'one task per file'}, {workers} workers", seconds,
                    f"run {rep + 1}; {chunks} chunks; workers busy {100 * busy:.0f}% of the run's span")
    a = zarr.open_group(str(root / "split_True_0" / "img_000.ome.zarr"), mode="r")["0"][:]
    b = zarr.open_group(str(root / "split_False_0" / "img_000.ome.zarr"), mode="r")["0"][:]
    print(f"max |diff| chunk tasks vs one task per file: {float(np.abs(a - b).max()):.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--size", type=int, default=1024, help="image side in pixels (default 1024)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--keep", help="folder to keep the data and outputs in (default: a temporary folder)")
    ap.add_argument("--json", help="append the results as one JSON line to this file")
    ap.add_argument("--split", action="store_true",
                    help="OME-Zarr outputs on a cluster: chunk tasks vs one task per file (see the module doc)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the --split comparison (default 1)")
    ap.add_argument("--chunks", type=int, help="--split: output chunk side in pixels (default: the engine's, from "
                    "the memory budget; a 2048 px image is then a single chunk)")
    args = ap.parse_args()

    import torch

    import n2x
    from n2x.batch import run_batch
    from n2x.cli.batch_view import summary_table

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="n2x-bench-batch-"))
    try:
        data = root / "data"
        files = make_files(data, args.files, args.size)
        mpix = args.files * args.size * args.size / 1e6
        model = n2x.train(tifffile.imread(files[0]), "YX", "n2v", steps=3, patch_size=64, device="cpu", seed=0)
        model_path = model.save(root / "model.n2x")
        rows = []

        def row(name: str, seconds: float, note: str = "") -> None:
            rows.append({"mode": name, "seconds": round(seconds, 2), "files_per_min": round(60 * args.files / seconds, 1),
                         "mpix_per_s": round(mpix / seconds, 3), "note": note})
            r = rows[-1]
            print(f"{name:<28} {seconds:8.1f} s  {r['files_per_min']:7.1f} files/min  {r['mpix_per_s']:7.3f} MPix/s"
                  f"  {note}", flush=True)

        print(f"{args.files} files of {args.size} x {args.size} uint16 ({mpix:.1f} MPix), default N2V network, "
              f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
        if args.split:
            split_comparison(args, data, model_path, root, row)
            if args.json:
                with open(args.json, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"benchmark": "batch-split", "files": args.files, "size": args.size,
                                        "machine": platform.node(), "cores": os.cpu_count(), "rows": rows}) + "\n")
            return
        # 1. the plain loop a user would write
        seq_out = root / "sequential"
        seq_out.mkdir()
        loaded = n2x.load_model(model_path, device="cpu")
        t0 = time.perf_counter()
        for p in files:
            tifffile.imwrite(seq_out / p.name, n2x.denoise(loaded, tifffile.imread(p), "YX"))
        row("sequential n2x.denoise loop", time.perf_counter() - t0)
        reference = tifffile.imread(seq_out / files[-1].name)

        # 2. the batch engine
        for w in args.workers:
            out = root / f"batch_{w}"
            t0 = time.perf_counter()
            summary = run_batch(model_path, [data], out, workers=w, device="cpu")
            seconds = time.perf_counter() - t0
            assert summary.exit_code == 0, summary_table(summary)
            diff = float(np.abs(tifffile.imread(out / files[-1].name) - reference).max())
            row(f"n2x batch, {w} worker(s)", seconds,
                ("in process" if w == 1 else "local dask cluster") + f"; max |diff| vs loop {diff:.1e}")
        startup = {w: round(cluster_startup_seconds(w), 2) for w in args.workers if w > 1}
        for w, s in startup.items():
            print(f"(local cluster of {w} workers: {s:.1f} s to start, import n2x on the workers and stop)")
        if args.json:
            with open(args.json, "a", encoding="utf-8") as f:
                f.write(json.dumps({"benchmark": "batch", "files": args.files, "size": args.size,
                                    "machine": platform.node(), "cores": os.cpu_count(), "rows": rows,
                                    "cluster_startup_s": startup}) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
