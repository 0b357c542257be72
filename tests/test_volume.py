"""Chunked, resumable denoising to OME-Zarr (n2x.denoise_volume) against the in-memory prediction."""
import json
import os
import time

import numpy as np
import pytest
import tifffile
import zarr

import n2x
from conftest import run_cli
from n2x.io.images import open_image
from n2x.io.ome_zarr import DONE_DIR

TINY = {"steps": 3, "network": {"features": 8}, "device": "cpu", "seed": 0, "batch_size": 4}
# 3D: one level of pooling keeps the halo (and the test) small.
TINY3D = {**TINY, "network": {"features": 8, "depth": 1}}


def rng_image(shape, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 6, shape[-2]), np.linspace(0, 6, shape[-1]), indexing="ij")
    clean = 0.5 + 0.4 * np.sin(yy) * np.cos(xx)
    return (clean + rng.normal(0, 0.1, shape)).astype(np.float32)


@pytest.fixture(scope="module")
def model2d():
    return n2x.train(rng_image((96, 96)), "YX", "n2v", patch_size=32, **TINY)


@pytest.fixture(scope="module")
def model3d():
    return n2x.train(rng_image((16, 48, 48)), "ZYX", "n2v", patch_size=(8, 32, 32), **TINY3D)


def read_out(path):
    return zarr.open_group(str(path), mode="r")["0"][:]


def attrs(path):
    return dict(zarr.open_group(str(path), mode="r").attrs)


def assert_close(a, b):
    assert a.shape == b.shape and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))


@pytest.mark.parametrize("chunks", [None, 64, (48, 100), 200])
def test_2d_equals_untiled_prediction(tmp_path, model2d, chunks):
    img = rng_image((150, 201), seed=1)
    out = n2x.denoise_volume(model2d, img, tmp_path / "out.ome.zarr", "YX", chunks=chunks)
    assert_close(read_out(out), model2d.predict(img, "YX"))
    assert attrs(out)["n2x"]["status"] == "complete"
    assert not (out / "0" / DONE_DIR).exists()


def test_time_series_2d_model_dask_input_and_small_tiles(tmp_path, model2d):
    import dask.array as da

    img = np.stack([rng_image((70, 90), seed=s) for s in range(3)])
    src = da.from_array(img, chunks=(2, 35, 45))
    out = n2x.denoise_volume(model2d, src, tmp_path / "t.ome.zarr", "TYX", chunks=(40, 36), tile=20)
    assert_close(read_out(out), model2d.predict(img, "TYX"))
    assert zarr.open_group(str(out))["0"].chunks == (1, 40, 36)


@pytest.mark.parametrize("chunks", [(8, 32, 32), (12, 40, 44)])
def test_3d_equals_untiled_prediction(tmp_path, model3d, chunks):
    vol = rng_image((12, 40, 44), seed=2)
    out = n2x.denoise_volume(model3d, vol, tmp_path / "v.ome.zarr", "ZYX", chunks=chunks)
    assert_close(read_out(out), model3d.predict(vol, "ZYX"))


def test_time_and_channels_3d_joint(tmp_path):
    vol = np.stack([np.stack([rng_image((8, 36, 40), seed=10 * t + c) for c in range(2)]) for t in range(2)])
    model = n2x.train(vol, "TCZYX", "n2v", patch_size=(8, 32, 32), channels="joint", **TINY3D)
    # The input's axes order is not NGFF's: the output is written T, C, Z, Y, X.
    src = np.moveaxis(vol, 1, 2)  # TZCYX, as ImageJ orders hyperstacks
    out = n2x.denoise_volume(model, src, tmp_path / "tc.ome.zarr", "TZCYX", chunks=(8, 20, 24))
    assert_close(read_out(out), model.predict(vol, "TCZYX"))
    ms = attrs(out)["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["t", "c", "z", "y", "x"]
    assert [a.get("type") for a in ms["axes"]] == ["time", "channel", "space", "space", "space"]


def test_channels_independent_2d_to_tiff(tmp_path):
    img = np.stack([rng_image((64, 72), seed=c) for c in range(2)])
    model = n2x.train(img, "CYX", "n2v", patch_size=32, **TINY)
    out = n2x.denoise_volume(model, img, tmp_path / "c.tif", "CYX", chunks=32)
    assert_close(tifffile.imread(out), model.predict(img, "CYX"))


@pytest.mark.parametrize("options", [dict(stride_train=3, r3_passes=2, network={"features": 8, "blocks": 2}),
                                     dict(blind=2, network={"features": 8})], ids=["pixel-shuffle", "blind-box"])
def test_apbsn_equals_untiled_prediction(tmp_path, options):
    img = rng_image((64, 72), seed=4)
    model = n2x.train(img, "YX", "apbsn", patch_size=40, **{**TINY, "steps": 1, "batch_size": 2, **options})
    for chunks in (None, (40, 30)):
        out = n2x.denoise_volume(model, img, tmp_path / f"a{chunks}.ome.zarr", "YX", chunks=chunks)
        assert_close(read_out(out), model.predict(img, "YX"))


def chunk_files(path):
    root = path / "0"
    return {os.path.relpath(os.path.join(d, f), root): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(root) for f in files
            if not f.startswith(".") and DONE_DIR not in d}


def test_interrupted_run_resumes_without_rewriting(tmp_path, model2d):
    img = np.stack([rng_image((100, 90), seed=s) for s in range(3)])
    dest = tmp_path / "r.ome.zarr"
    calls = {"n": 0}

    def stop_after_4():
        calls["n"] += 1
        return calls["n"] > 4

    gen = n2x.iter_denoise_volume(model2d, img, dest, "ZYX", chunks=48, should_stop=stop_after_4)
    # The output exists with its full shape and metadata before the first chunk is computed.
    assert zarr.open_group(str(dest), mode="r")["0"].shape == img.shape
    assert attrs(dest)["n2x"]["status"] == "running"
    progress = list(gen)
    assert progress[-1].done == 4 and progress[-1].total == 3 * 3 * 2
    assert attrs(dest)["n2x"]["status"] == "running"
    assert len(os.listdir(dest / "0" / DONE_DIR)) == 4
    before = chunk_files(dest)
    assert len(before) == 4
    time.sleep(0.05)
    seen = []
    out = n2x.denoise_volume(model2d, img, dest, "ZYX", progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (4, 18) and seen[-1] == (18, 18)
    after = chunk_files(dest)
    assert all(after[k] == v for k, v in before.items())  # no finished chunk written again
    assert len(after) == 18
    assert_close(read_out(out), model2d.predict(img, "ZYX"))
    assert attrs(dest)["n2x"]["status"] == "complete"
    # Running it once more finds it complete and computes nothing.
    again = list(n2x.iter_denoise_volume(model2d, img, dest, "ZYX"))
    assert again[-1].skipped == again[-1].total == 18 and chunk_files(dest) == after


def test_crash_mid_run_keeps_only_written_chunks(tmp_path, model2d):
    img = rng_image((100, 100), seed=5)
    dest = tmp_path / "crash.ome.zarr"
    calls = {"n": 0}
    original = model2d.predict_tiles

    def failing(tiles, positions):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return original(tiles, positions)

    model2d.predict_tiles = failing
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            n2x.denoise_volume(model2d, img, dest, "YX", chunks=32, tile=32, batch_size=1)
    finally:
        del model2d.predict_tiles
    assert len(os.listdir(dest / "0" / DONE_DIR)) == 2
    gen = n2x.iter_denoise_volume(model2d, img, dest, "YX", tile=32)
    first = next(gen)
    assert first.skipped == 2 and first.total == 16
    list(gen)
    assert_close(read_out(dest), model2d.predict(img, "YX"))


def test_out_of_memory_halves_the_tile(tmp_path, model2d):
    import torch

    img = rng_image((256, 256), seed=6)  # interior tiles: windows of core + 2 halos
    original = model2d.predict_tiles
    sizes = []

    def small_device(tiles, positions):
        sizes.append(tiles.shape[-1])
        if tiles.shape[-1] > 32 + 2 * model2d.halo:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(tiles, positions)

    model2d.predict_tiles = small_device
    try:
        gen = n2x.iter_denoise_volume(model2d, img, tmp_path / "oom.ome.zarr", "YX", chunks=128, tile=64)
        progress = list(gen)
    finally:
        del model2d.predict_tiles
    assert progress[-1].tile == (32, 32) and progress[-1].complete
    assert_close(read_out(tmp_path / "oom.ome.zarr"), model2d.predict(img, "YX"))


def test_tiff_to_ome_zarr_keeps_metadata(tmp_path, model2d):
    img = (rng_image((5, 64, 72), seed=7) * 1000).astype(np.uint16)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, img, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"axes": "ZYX", "spacing": 1.5, "unit": "micron"})
    before = src.read_bytes()
    out = n2x.denoise_volume(model2d, str(src), tmp_path / "o.ome.zarr")
    assert src.read_bytes() == before
    import ome_zarr_models

    ome_zarr_models.open_ome_zarr(zarr.open_group(str(out), mode="r"))
    ms = attrs(out)["multiscales"][0]
    assert [(a["name"], a["type"], a.get("unit")) for a in ms["axes"]] == [
        ("z", "space", "micrometer"), ("y", "space", "micrometer"), ("x", "space", "micrometer")]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == pytest.approx([1.5, 0.25, 0.25])
    prov = attrs(out)["n2x"]["provenance"]
    assert prov["method"] == "n2v" and prov["version"] == n2x.__version__ and prov["weights_sha256"]
    assert_close(read_out(out), model2d.predict(img, "ZYX"))


def test_ome_tiff_physical_sizes(tmp_path, model2d):
    img = rng_image((3, 48, 40), seed=8)
    src = tmp_path / "in.ome.tif"
    tifffile.imwrite(src, img, metadata={"axes": "TYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.2,
                                         "TimeIncrement": 2.5, "TimeIncrementUnit": "s"})
    info = open_image(src)
    assert info.axes == "TYX" and info.scale == pytest.approx({"X": 0.1, "Y": 0.2, "T": 2.5})
    out = n2x.denoise_volume(model2d, str(src), tmp_path / "o.ome.zarr")
    ms = attrs(out)["multiscales"][0]
    assert [a.get("unit") for a in ms["axes"]] == ["second", "micrometer", "micrometer"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == pytest.approx([2.5, 0.2, 0.1])


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_to_ome_zarr_keeps_metadata_and_level(tmp_path, model2d, version):
    from n2x.io import ome_zarr

    full = rng_image((2, 80, 96), seed=9)
    src = tmp_path / "in.ome.zarr"
    ms = ome_zarr.multiscales_metadata("TYX", scale={"T": 3.0, "Y": 0.5, "X": 0.5},
                                       translation={"Y": 10.0, "X": -4.0}, units={"T": "s", "Y": "µm", "X": "µm"},
                                       version=version)
    arr = ome_zarr.create_image(src, full.shape, "TYX", (1, 40, 48), attrs={}, multiscales=ms, version=version)
    arr[:] = full
    # A second, 2x downsampled level with its own scale.
    group = zarr.open_group(str(src), mode="r+")
    low = group.create_array("1", shape=(2, 40, 48), chunks=(1, 40, 48), dtype="f4")
    low[:] = full[:, ::2, ::2]
    meta = dict(group.attrs)
    m = (meta["multiscales"] if version == "0.4" else meta["ome"]["multiscales"])[0]
    m["datasets"].append({"path": "1", "coordinateTransformations": [
        {"type": "scale", "scale": [3.0, 1.0, 1.0]}, {"type": "translation", "translation": [0.0, 10.25, -3.75]}]})
    group.attrs.update(meta)

    import ome_zarr_models

    for level, scale, translation in ((0, [3.0, 0.5, 0.5], [0.0, 10.0, -4.0]), (1, [3.0, 1.0, 1.0],
                                                                               [0.0, 10.25, -3.75])):
        out = n2x.denoise_volume(model2d, str(src), tmp_path / f"o{level}.ome.zarr", level=level,
                                 ngff_version=version)
        model = ome_zarr_models.open_ome_zarr(zarr.open_group(str(out), mode="r"))
        assert type(model).__module__.startswith(f"ome_zarr_models.v0{version[-1]}")
        a = attrs(out)
        msout = (a["multiscales"] if version == "0.4" else a["ome"]["multiscales"])[0]
        tr = msout["datasets"][0]["coordinateTransformations"]
        assert tr[0]["scale"] == pytest.approx(scale) and tr[1]["translation"] == pytest.approx(translation)
        assert [ax.get("unit") for ax in msout["axes"]] == ["second", "micrometer", "micrometer"]
        info = open_image(out)
        assert info.axes == "TYX" and info.scale == pytest.approx(dict(zip("TYX", scale)))
        expect = full if level == 0 else full[:, ::2, ::2]
        assert_close(read_out(out), model2d.predict(expect, "TYX"))


def test_existing_output_of_another_job_is_refused(tmp_path, model2d, model3d):
    img = rng_image((64, 64), seed=11)
    dest = tmp_path / "x.ome.zarr"
    n2x.denoise_volume(model2d, img, dest, "YX")
    other = n2x.train(img, "YX", "n2v", patch_size=32, **{**TINY, "seed": 1})
    with pytest.raises(n2x.OutputExistsError, match="another model.*overwrite"):
        n2x.denoise_volume(other, img, dest, "YX")
    with pytest.raises(n2x.OutputExistsError, match="another input"):
        n2x.denoise_volume(model2d, img + 1, dest, "YX")
    n2x.denoise_volume(other, img, dest, "YX", overwrite=True)
    assert_close(read_out(dest), other.predict(img, "YX"))
    # A folder that is not ours is refused, and never deleted, even with overwrite, when it is not a zarr.
    folder = tmp_path / "data.zarr"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    with pytest.raises(n2x.OutputExistsError, match="not an n2x result"):
        n2x.denoise_volume(model2d, img, folder, "YX")
    with pytest.raises(n2x.OutputExistsError, match="not removed"):
        n2x.denoise_volume(model2d, img, folder, "YX", overwrite=True)
    assert (folder / "precious.txt").read_text() == "keep me"
    with pytest.raises(n2x.N2xError, match="must end in"):
        n2x.denoise_volume(model2d, img, tmp_path / "out.png", "YX")


def test_napari_builtin_reader_opens_output(tmp_path, model2d):
    from napari_builtins.io import read_zarr_dataset

    img = rng_image((3, 64, 64), seed=12)
    dest = tmp_path / "n.ome.zarr"
    gen = n2x.iter_denoise_volume(model2d, img, dest, "ZYX")
    image, shape = read_zarr_dataset(str(dest))  # while it is still empty
    assert shape == img.shape
    list(gen)
    image, shape = read_zarr_dataset(str(dest))
    data = image[0] if isinstance(image, list) else image
    assert_close(np.asarray(data), model2d.predict(img, "ZYX"))


def test_cli_denoise_to_ome_zarr_and_resume(tmp_path, model2d, real2d_path):
    img = tifffile.imread(real2d_path)[:160, :144]
    src = tmp_path / "nuclei.tif"
    tifffile.imwrite(src, img, imagej=True, resolution=(1 / 0.3, 1 / 0.3), metadata={"axes": "YX", "unit": "um"})
    model_file = model2d.save(tmp_path / "m.n2x")
    dest = tmp_path / "out.ome.zarr"
    # A stopped run: the output folder holds the first chunks only; the same command resumes it.
    gen = n2x.iter_denoise_volume(str(model_file), str(src), dest, chunks=64, should_stop=iter([0, 0, 1]).__next__)
    list(gen)
    assert len(os.listdir(dest / "0" / DONE_DIR)) == 2
    proc = run_cli("denoise", model_file, src, "-o", dest, "--tile", "32", "--batch", "2")
    assert "2 chunk(s) resumed" in proc.stdout
    assert_close(read_out(dest), n2x.load_model(model_file, device="cpu").predict(img, "YX"))
    ms = attrs(dest)["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == pytest.approx([0.3, 0.3])
    assert attrs(dest)["n2x"]["provenance"]["model_file_sha256"]
    # Another model into the same output: refused with a message, not a traceback.
    other = n2x.train(img.astype(np.float32), "YX", "n2v", patch_size=32, **{**TINY, "seed": 2})
    other_file = other.save(tmp_path / "other.n2x")
    proc = run_cli("denoise", other_file, src, "-o", dest, check=False)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads(json.dumps(attrs(dest)["n2x"]))["status"] == "complete"


def test_memory_budget_bounds_tiles_and_chunks_of_a_3d_model():
    """The default 3D network (32 features) on the 2 GiB benchmark volume: tiles and chunks follow the budget of one
    CPU worker (default 1.5 GiB), and a smaller --max-memory gives smaller ones."""
    from math import prod

    from n2x.inference.memory_budget import CPU_WORKER_MEMORY, memory_budget_for
    from n2x.inference.volume_plan import _tile_bytes, plan_volume

    vol = rng_image((16, 40, 48))
    model = n2x.train(vol, "ZYX", "n2v", patch_size=(8, 32, 32), **{**TINY, "steps": 1, "network": {}})
    layout = model.layout_for((256, 2048, 2048), "ZYX")
    split = memory_budget_for(model.device)
    assert split.total == CPU_WORKER_MEMORY
    plan = plan_volume(model, layout)
    feats = model.config["network"].get("features", 32)
    assert _tile_bytes(plan.tile, plan.halo, 1, feats) <= split.activations
    assert prod(c + 2 * plan.halo for c in plan.chunk) * 4 <= split.chunk_bytes
    small = plan_volume(model, layout, max_memory=0.8 * 2**30)
    assert prod(small.tile) < prod(plan.tile)
    with pytest.raises(n2x.errors.OptionError, match="not a size"):
        n2x.denoise_volume(model, vol, "x.ome.zarr", "ZYX", max_memory="lots")


def test_a_second_job_on_the_same_output_is_refused_while_the_first_runs(tmp_path, model2d):
    """Two jobs writing one output at once would interleave chunks and records: the second is refused with who
    holds it, until the first ends; a run dropped before it started and a killed process's lock free the output."""
    import gc
    import json
    import socket
    import subprocess
    import sys

    img = rng_image((4, 64, 64))
    dest = tmp_path / "out.ome.zarr"
    first = n2x.iter_denoise_volume(model2d, img, dest, "ZYX", chunks=32)
    next(first)
    with pytest.raises(n2x.OutputExistsError, match=f"another n2x job is writing .*process {os.getpid()}"):
        n2x.iter_denoise_volume(model2d, img, dest, "ZYX", chunks=32)
    for _ in first:
        pass
    assert attrs(dest)["n2x"]["status"] == "complete"
    assert not list(tmp_path.glob(".*n2x-lock"))
    list(n2x.iter_denoise_volume(model2d, img, dest, "ZYX", chunks=32))  # free again: the finished output is kept

    other = tmp_path / "other.ome.zarr"
    dropped = n2x.iter_denoise_volume(model2d, img, other, "ZYX")
    assert (tmp_path / ".other.ome.zarr.n2x-lock").exists()
    del dropped
    gc.collect()
    assert not (tmp_path / ".other.ome.zarr.n2x-lock").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".other.ome.zarr.n2x-lock").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": int(dead.stdout), "started": "earlier"}))
    list(n2x.iter_denoise_volume(model2d, img, other, "ZYX"))  # the killed job's lock is taken over
    np.testing.assert_allclose(read_out(other), read_out(dest), atol=1e-5)
