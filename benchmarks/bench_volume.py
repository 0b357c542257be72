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

Examples::

    python benchmarks/bench_volume.py --size 2 --time-limit 180          # a few minutes, partial 2 GiB run
    python benchmarks/bench_volume.py --size 8 --time-limit 180          # same, 8 GiB volume
    python benchmarks/bench_volume.py --size 8                            # the full 8 GiB run (hours on 2 cores)

Throughput and memory are reported; run one benchmark at a time (the machines are shared).
"""
from __future__ import annotations

import argparse
import json
import os
import re
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


def train_model(volume: Path, path: Path, steps: int) -> None:
    import torch
    import zarr

    import n2x

    # Always a fresh model: one left by an earlier run may have another network than today's default.
    torch.set_num_threads(2)
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


def run_measured(cmd: list[str]) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v`` while sampling the RSS of its process tree; its RESULT plus memory."""
    import psutil

    full = ["/usr/bin/time", "-v"] + cmd if os.path.exists("/usr/bin/time") else cmd
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"tree": 0}
    stop = threading.Event()

    def sample() -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
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
    return result


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
    p.add_argument("--child", choices=("reference", "volume"), help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "reference":
        return child_reference(args)
    if args.child == "volume":
        return child_volume(args)

    shape = SIZES[args.size]
    args.workdir.mkdir(parents=True, exist_ok=True)
    volume = args.workdir / f"volume_{args.size}gib.zarr"
    model = args.workdir / "n2v_2d.n2x"
    output = args.workdir / f"volume_{args.size}gib_denoised.ome.zarr"
    print(f"input {volume} {shape} uint16 ({np.prod(shape) * 2 / 2**30:.1f} GiB)", file=sys.stderr)
    make_volume(volume, shape, args.max_planes or None)
    train_model(volume, model, args.train_steps)
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
