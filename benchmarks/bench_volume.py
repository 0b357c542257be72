"""Out-of-core benchmark of BENCHMARK.md: denoise uint16 zarr volumes larger than memory into OME-Zarr.

What it does, side by side in one run:

1. creates a uint16 zarr volume (``--size 2``: 256 x 2048 x 2048 = 2 GiB, ``--size 8``: 1024 x 2048 x 2048 = 8 GiB),
   chunks of 16 x 512 x 512, generated slab by slab (smooth structures plus Gaussian noise), never whole in memory;
2. trains a 2D N2V model (default network) for ``--train-steps`` steps on one plane;
3. in a child process under ``/usr/bin/time -v``: the untiled in-memory prediction (``Model.predict``) of
   ``--ref-planes`` planes that fit in memory: MPix/s and peak RSS;
4. in a child process under ``/usr/bin/time -v``: ``n2x.denoise_volume`` of the whole volume to OME-Zarr, stopped
   after ``--time-limit`` seconds or ``--max-chunks`` chunks (the output is still created at full size: memory is
   what one chunk needs, whatever the volume). The parent also samples the RSS of the child's whole process tree.

5. ``--workers 2``: instead of 3-4, the same volume run twice over the same ``--max-chunks`` chunks, in one
   process (torch threads = the cores) and on a dask LocalCluster of 2 worker processes of 1 thread each
   (:mod:`n2x.batch.volume_cluster`): MPix/s of both, the peak RSS of every worker process (psutil sampling of the
   child's process tree) and the bytes that pass through the scheduler per chunk (the pickled task messages and
   results, and the result sizes the scheduler holds). ``--sizes 2 8`` repeats the cluster run on each volume size
   (only the first ``--max-planes`` planes are generated; an 8 GiB input is deleted afterwards unless ``--keep``).

Examples::

    python benchmarks/bench_volume.py --size 2 --time-limit 180          # a few minutes, partial 2 GiB run
    python benchmarks/bench_volume.py --size 8 --time-limit 180          # same, 8 GiB volume
    python benchmarks/bench_volume.py --size 8                            # the full 8 GiB run (hours on 2 cores)
    python benchmarks/bench_volume.py --workers 2 --sizes 2 8 --max-chunks 12 --max-planes 32

Throughput and memory are reported; run one benchmark at a time (the machines are shared).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

SIZES = {2: (256, 2048, 2048), 8: (1024, 2048, 2048)}
IN_CHUNKS = (16, 512, 512)


def make_volume(path: Path, shape: tuple[int, int, int], planes: int | None = None) -> None:
    """A uint16 zarr volume of ``shape`` written one slab of ``IN_CHUNKS[0]`` planes at a time.

    ``planes`` limits the planes actually generated (the rest read as 0): a partial run needs only those.
    """
    import zarr

    if (path / "zarr.json").exists() or (path / ".zarray").exists():
        arr = zarr.open_array(str(path), mode="r")
        if tuple(arr.shape) == shape and arr.attrs.get("generated_planes", 0) >= (planes or shape[0]):
            return
    arr = zarr.create_array(str(path), shape=shape, chunks=IN_CHUNKS, dtype="uint16", fill_value=0,
                            overwrite=True, dimension_names=["z", "y", "x"])
    todo = min(shape[0], planes or shape[0])
    yy, xx = np.meshgrid(np.arange(shape[1], dtype=np.float32), np.arange(shape[2], dtype=np.float32),
                         indexing="ij")
    t0 = time.perf_counter()
    for z0 in range(0, todo, IN_CHUNKS[0]):
        z1 = min(z0 + IN_CHUNKS[0], shape[0])
        rng = np.random.default_rng(z0)
        slab = np.empty((z1 - z0,) + shape[1:], np.uint16)
        for i, z in enumerate(range(z0, z1)):
            clean = 300 + 200 * np.sin(yy / 37.0 + z / 11.0) * np.cos(xx / 53.0 - z / 17.0)
            noisy = clean + rng.standard_normal(shape[1:], dtype=np.float32) * 40
            slab[i] = np.clip(noisy, 0, 65535).astype(np.uint16)
        arr[z0:z1] = slab
        print(f"  generated planes {z1}/{todo} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    arr.attrs["generated_planes"] = todo


def train_model(volume: Path, path: Path, steps: int, dims: int = 2) -> None:
    import torch
    import zarr

    import n2x

    # Always a fresh model: one left by an earlier run may have another network than today's default.
    torch.set_num_threads(2)
    if dims == 3:
        block = zarr.open_array(str(volume), mode="r")[:32, :256, :256]
        model = n2x.train(block, "ZYX", "n2v", steps=steps, patch_size=(16, 64, 64), batch_size=4, seed=0,
                          device="cpu")
    else:
        plane = zarr.open_array(str(volume), mode="r")[0, :512, :512]
        model = n2x.train(plane, "YX", "n2v", steps=steps, patch_size=64, batch_size=16, seed=0, device="cpu")
    model.save(path)


# -- child processes -------------------------------------------------------------------------------------------------
def child_reference(args: argparse.Namespace) -> None:
    """Untiled in-memory prediction of the first ``ref_planes`` planes (read into memory first)."""
    import torch
    import zarr

    import n2x

    torch.set_num_threads(2)
    model = n2x.load_model(args.model, device="cpu")
    data = zarr.open_array(str(args.input), mode="r")[: args.ref_planes]
    model.predict(data[:1, :256, :256], "ZYX")  # warm-up
    t0 = time.perf_counter()
    model.predict(data, "ZYX")
    dt = time.perf_counter() - t0
    print("RESULT " + json.dumps({"pixels": int(data.size), "seconds": dt, "mpix_s": data.size / 1e6 / dt}))


def child_volume(args: argparse.Namespace) -> None:
    """``denoise_volume`` of the whole volume, stopped by time or chunk count."""
    import torch

    import n2x

    torch.set_num_threads(2)
    model = n2x.load_model(args.model, device="cpu")
    t_start = time.perf_counter()
    deadline = t_start + args.time_limit if args.time_limit else None
    gen = n2x.iter_denoise_volume(
        model, str(args.input), args.output, "ZYX", overwrite=True,
        should_stop=lambda: deadline is not None and time.perf_counter() > deadline)
    t_setup = time.perf_counter() - t_start
    first = last = None
    t_first = t_last = None
    for pr in gen:
        if first is None:
            first, t_first = pr, time.perf_counter()
        last, t_last = pr, time.perf_counter()
        if args.max_chunks and pr.done - pr.skipped >= args.max_chunks:
            # Stop between chunks exactly like a user's stop request.
            deadline = 0.0
    import zarr

    out = zarr.open_array(str(Path(args.output) / "0"), mode="r")
    chunk_px = int(np.prod(out.chunks))
    done = last.done - last.skipped
    dt = t_last - t_first
    print("RESULT " + json.dumps({
        "chunks_done": done, "chunks_total": last.total, "chunk_shape": list(out.chunks), "tile": list(last.tile),
        "pixels": done * chunk_px, "seconds": dt, "setup_seconds": t_setup,
        "mpix_s": done * chunk_px / 1e6 / max(dt, 1e-9), "output_shape": list(out.shape)}))


def child_cluster(args: argparse.Namespace) -> None:
    """The volume on a LocalCluster of ``args.n_workers`` processes of 1 thread each, or in this process with all
    cores (``args.n_workers`` 0), stopped after ``max_chunks`` chunks; throughput and scheduler traffic."""
    import logging
    import pickle

    import torch

    import n2x

    model = n2x.load_model(args.model, device="cpu")
    client = cluster = None
    task_bytes: list[int] = []
    if args.n_workers:
        from distributed import Client, Future, LocalCluster

        cluster = LocalCluster(n_workers=args.n_workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
        submit = client.submit

        def measured_submit(fn, *a, **kw):  # what the client sends the scheduler for each task
            task_bytes.append(len(pickle.dumps((fn.__module__, fn.__name__,
                                                [x.key if isinstance(x, Future) else x for x in a]))))
            return submit(fn, *a, **kw)

        client.submit = measured_submit
    else:
        torch.set_num_threads(os.cpu_count() or 1)
    stop = [False]
    t0 = time.perf_counter()
    first = last = None
    t_first = t_last = None
    for pr in n2x.iter_denoise_volume(model, str(args.input), args.output, "ZYX", overwrite=True, client=client,
                                      should_stop=lambda: stop[0]):
        if first is None:
            first, t_first = pr, time.perf_counter()
        last, t_last = pr, time.perf_counter()
        if pr.done - pr.skipped >= args.max_chunks:
            stop[0] = True
    import zarr

    out = zarr.open_array(str(Path(args.output) / "0"), mode="r")
    chunk_px = int(np.prod(out.chunks))
    done = last.done - last.skipped
    result_bytes = len(pickle.dumps([(0,) * len(out.shape)]))  # a task's result: the recorded chunk indices
    blob = len(Path(args.model).read_bytes())
    print("RESULT " + json.dumps({
        "workers": args.n_workers, "chunks_done": done, "chunks_total": last.total, "chunk_shape": list(out.chunks),
        "seconds": t_last - t_first, "setup_seconds": t_first - t0,
        "mpix_s": done * chunk_px / 1e6 / max(t_last - t_first, 1e-9),
        "task_bytes_mean": float(np.mean(task_bytes)) if task_bytes else 0, "tasks": len(task_bytes),
        "result_bytes": result_bytes, "model_bytes_once_per_worker": blob if args.n_workers else 0}))
    if client is not None:
        client.close()
        cluster.close()


def run_measured(cmd: list[str]) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v`` while sampling the RSS of its process tree; its RESULT plus memory."""
    import psutil

    full = ["/usr/bin/time", "-v"] + cmd if os.path.exists("/usr/bin/time") else cmd
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"tree": 0}
    per_process: dict[int, list] = {}  # pid -> [peak RSS, is a worker process]
    stop = threading.Event()

    def sample() -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
                rss = 0
                for p in procs:
                    if not p.is_running():
                        continue
                    r = p.memory_info().rss
                    rss += r
                    if p.pid not in per_process:
                        per_process[p.pid] = [0, "spawn_main" in " ".join(p.cmdline())]
                    per_process[p.pid][0] = max(per_process[p.pid][0], r)
                peak["tree"] = max(peak["tree"], rss)
            except psutil.Error:
                pass
            stop.wait(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out}\n{err[-4000:]}")
    result = json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT ")))
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    result["peak_rss_gib_time_v"] = int(m.group(1)) / 2**20 if m else None
    result["peak_rss_gib_tree_sampled"] = peak["tree"] / 2**30
    workers = [v[0] for v in per_process.values() if v[1]]
    result["peak_rss_gib_per_worker"] = [w / 2**30 for w in sorted(workers)]
    result["peak_rss_gib_main_sampled"] = max([v[0] for v in per_process.values() if not v[1]] or [0]) / 2**30
    return result


def compare_workers(args: argparse.Namespace, me_base: list[str]) -> None:
    """Single process vs a LocalCluster of ``args.workers`` x 1 thread, then the cluster on each ``--sizes``."""
    rows = []
    for size in args.sizes:
        shape = SIZES[size]
        volume = args.workdir / f"volume_{size}gib.zarr"
        output = args.workdir / f"volume_{size}gib_cluster.ome.zarr"
        make_volume(volume, shape, args.max_planes or None)
        me = me_base + ["--input", str(volume), "--output", str(output), "--max-chunks", str(args.max_chunks)]
        modes = (0, args.workers) if size == args.sizes[0] else (args.workers,)
        for n in modes:
            res = run_measured(me + ["--child", "cluster", "--n-workers", str(n)])
            rows.append((size, res))
            print(json.dumps({"size_gib": size, **res}), file=sys.stderr, flush=True)
        if size != args.sizes[0] and not args.keep:
            shutil.rmtree(volume, ignore_errors=True)
        shutil.rmtree(output, ignore_errors=True)
    print(f"\n{args.dims}D N2V (default U-Net), {args.max_chunks} chunks per run, CPU cores {os.cpu_count()}")
    print(f"{'volume':>7} {'run':<26} {'chunks':>7} {'MPix/s':>7} {'peak RSS/worker GiB':>20} "
          f"{'main GiB':>9} {'B/task':>7} {'B/result':>8}")
    for size, r in rows:
        run = "1 process, all cores" if not r["workers"] else f"{r['workers']} workers x 1 thread"
        per = ", ".join(f"{g:.2f}" for g in r["peak_rss_gib_per_worker"]) or "-"
        print(f"{size:>5} G {run:<26} {r['chunks_done']:>7} {r['mpix_s']:7.3f} {per:>20} "
              f"{r['peak_rss_gib_main_sampled']:9.2f} {r['task_bytes_mean']:7.0f} {r['result_bytes']:8d}")
    base = next(r for s, r in rows if not r["workers"])
    clus = next(r for s, r in rows if r["workers"])
    print(f"cluster overhead vs 1 process: {100 * (1 - clus['mpix_s'] / base['mpix_s']):.1f} % "
          f"(model {clus['model_bytes_once_per_worker']} B scattered once per worker)")
    print(json.dumps({"rows": [{"size_gib": s, **r} for s, r in rows]}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, choices=sorted(SIZES), default=2, help="volume size in GiB (2 or 8)")
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "n2x-bench-volume")
    p.add_argument("--time-limit", type=float, default=0, help="stop the volume run after this many seconds")
    p.add_argument("--max-chunks", type=int, default=0, help="stop the volume run after this many chunks")
    p.add_argument("--max-planes", type=int, default=0,
                   help="generate only the first planes of the input (the rest reads as 0); for partial runs")
    p.add_argument("--train-steps", type=int, default=30)
    p.add_argument("--ref-planes", type=int, default=2, help="planes predicted in memory for the reference")
    p.add_argument("--workers", type=int, default=0, help="compare 1 process with a LocalCluster of this many "
                   "workers x 1 thread over --max-chunks chunks (see the module doc)")
    p.add_argument("--sizes", type=int, nargs="+", choices=sorted(SIZES), default=[2],
                   help="with --workers: the volume sizes (GiB) to run the cluster on")
    p.add_argument("--keep", action="store_true", help="with --workers: keep the 8 GiB input")
    p.add_argument("--dims", type=int, choices=(2, 3), default=2,
                   help="with --workers: a 2D (default) or 3D N2V model (default U-Net)")
    p.add_argument("--n-workers", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--child", choices=("reference", "volume", "cluster"), help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "reference":
        return child_reference(args)
    if args.child == "volume":
        return child_volume(args)
    if args.child == "cluster":
        return child_cluster(args)

    shape = SIZES[args.size]
    args.workdir.mkdir(parents=True, exist_ok=True)
    volume = args.workdir / f"volume_{args.size}gib.zarr"
    model = args.workdir / f"n2v_{args.dims}d.n2x"
    output = args.workdir / f"volume_{args.size}gib_denoised.ome.zarr"
    print(f"input {volume} {shape} uint16 ({np.prod(shape) * 2 / 2**30:.1f} GiB)", file=sys.stderr)
    make_volume(volume, shape, args.max_planes or None)
    train_model(volume, model, args.train_steps, args.dims)
    if args.workers:
        return compare_workers(args, [sys.executable, os.path.abspath(__file__), "--model", str(model)])
    me = [sys.executable, os.path.abspath(__file__), "--model", str(model), "--input", str(volume),
          "--output", str(output)]
    ref = run_measured(me + ["--child", "reference", "--ref-planes", str(args.ref_planes)])
    vol = run_measured(me + ["--child", "volume", "--time-limit", str(args.time_limit),
                             "--max-chunks", str(args.max_chunks)])
    print(f"\nout of core, {args.size} GiB volume {shape}, 2D N2V (default U-Net), CPU threads 2")
    print(f"{'run':<40} {'MPix/s':>8} {'peak RSS (time -v)':>19} {'peak RSS tree':>14}")
    print(f"{'in-memory Model.predict, ' + str(args.ref_planes) + ' planes':<40} {ref['mpix_s']:8.3f} "
          f"{ref['peak_rss_gib_time_v']:16.2f} GiB {ref['peak_rss_gib_tree_sampled']:10.2f} GiB")
    print(f"{'denoise_volume -> OME-Zarr, ' + str(vol['chunks_done']) + '/' + str(vol['chunks_total']) + ' chunks':<40} "
          f"{vol['mpix_s']:8.3f} {vol['peak_rss_gib_time_v']:16.2f} GiB {vol['peak_rss_gib_tree_sampled']:10.2f} GiB")
    print(f"volume/in-memory throughput: {vol['mpix_s'] / ref['mpix_s']:.2f}; chunks {vol['chunk_shape']}, "
          f"tile {vol['tile']}, setup {vol['setup_seconds']:.1f} s")
    print(json.dumps({"size_gib": args.size, "shape": shape, "reference": ref, "volume": vol}))


if __name__ == "__main__":
    main()
