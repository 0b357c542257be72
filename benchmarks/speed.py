"""Speed benchmark of BENCHMARK.md, side by side in one run.

Training: patches per second of n2x's training loop (sampling, masking, augmentation, validation included) next to a
bare forward + backward loop of the same network on random tensors of the same batch shape.
Inference: MPix/s of ``n2x.denoise`` (tiled, default tiling) on a 2048 x 2048 image and on the 32 x 256 x 256 volume,
next to one bare forward pass of the same (inference-optimised) network over a large in-memory tile.

    python benchmarks/speed.py                 # both
    python benchmarks/speed.py --what train --seconds 30
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import devset  # noqa: E402

import n2x  # noqa: E402
from n2x.nets import memory_format  # noqa: E402


def bare_training(model: n2x.Model, batch: int, patch: tuple[int, ...], seconds: float,
                  dtype: torch.dtype | None = None) -> float:
    """Patches/s of forward + backward + Adam on random tensors (the ceiling for this network); ``dtype``: autocast
    (mixed precision) dtype, None for float32."""
    net = model.method.build_network(model.config["network"]).train()
    fmt = memory_format(len(patch))
    net.to(memory_format=fmt)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x = torch.randn((batch, 1) + patch).contiguous(memory_format=fmt)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = net(x).float().square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += 1
    return n * batch / (time.perf_counter() - t0)


def bare_inference(model: n2x.Model, shape: tuple[int, ...], repeats: int = 2) -> float:
    """MPix/s of one forward pass of the inference network over an in-memory tile of ``shape`` (spatial)."""
    net = model.inference_net()
    fmt = memory_format(len(shape))
    x = torch.randn((1, 1) + shape).contiguous(memory_format=fmt)
    with torch.inference_mode():
        net(x)
        t0 = time.perf_counter()
        for _ in range(repeats):
            net(x)
    return np.prod(shape) / 1e6 / ((time.perf_counter() - t0) / repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", default="train,infer")
    ap.add_argument("--method", default="n2v")
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds of each training measurement")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clean, a, _ = devset.condition("camera", "G25")
    if "train" in args.what:
        gen_model = n2x.train(a, "YX", args.method, steps=2, seed=0, device="cpu")
        batch = gen_model.config["training"]["batch_size"]
        patch = tuple(gen_model.config["patch_shape"])
        precision = gen_model.config["training"]["precision"]
        dtype = None if precision == "float32" else getattr(torch, precision)
        bare32 = bare_training(gen_model, batch, patch, args.seconds)
        bare = bare_training(gen_model, batch, patch, args.seconds, dtype) if dtype is not None else bare32
        m = n2x.train(a, "YX", args.method, time=args.seconds, seed=0, device="cpu")
        ours = m.history["patches_per_second"]
        print(f"training {args.method} ({m.config['network']}), batch {batch}, patch {patch}, {precision}:")
        print(f"  bare forward+backward loop, float32      {bare32:7.1f} patches/s")
        print(f"  bare forward+backward loop, {precision:<12} {bare:7.1f} patches/s")
        print(f"  n2x training loop                        {ours:7.1f} patches/s  ({100 * ours / bare:.0f}% of the "
              f"bare {precision} loop, {100 * ours / bare32:.0f}% of float32)")
    if "infer" in args.what:
        model = n2x.train(a, "YX", args.method, steps=2, seed=0, device="cpu")
        big = np.tile(a, (4, 4))  # 2048 x 2048
        t0 = time.perf_counter()
        n2x.denoise(model, big)
        tiled = big.size / 1e6 / (time.perf_counter() - t0)
        bare = bare_inference(model, (1024, 1024))
        print(f"inference 2D {args.method} 2048x2048: tiled {tiled:.2f} MPix/s; bare forward on 1024x1024 "
              f"{bare:.2f} MPix/s ({100 * tiled / bare:.0f}%)")
        vol = devset.add_noise(devset.clean_volume(), "PG", "volume")
        model3 = n2x.train(vol, "ZYX", args.method, steps=2, seed=0, device="cpu")
        t0 = time.perf_counter()
        n2x.denoise(model3, vol)
        tiled3 = vol.size / 1e6 / (time.perf_counter() - t0)
        bare3 = bare_inference(model3, (32, 256, 256))
        print(f"inference 3D {args.method} 32x256x256: tiled {tiled3:.3f} MPix/s; bare forward on the whole volume "
              f"{bare3:.3f} MPix/s ({100 * tiled3 / bare3:.0f}%)")


if __name__ == "__main__":
    main()
