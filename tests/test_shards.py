"""Sharded OME-Zarr output (zarr format 3, ``shards=True`` / ``--shards``): fewer files, the same pixels as an
unsharded output, whole shards written by one work unit, resume, pyramid levels, and an independent validator."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

import n2x
from n2x.data.axes import Layout
from n2x.errors import OptionError
from n2x.inference import volume_plan
from conftest import TINY, noisy_waves as noisy


@pytest.fixture(scope="module")
def model2d():
    return n2x.train(noisy((96, 96)), "YX", "n2v", patch_size=32, **TINY)


@pytest.fixture()
def small_shards(monkeypatch):
    # Shards of at most 2 planes x 32 x 64 px here (the default 64 MiB would make the whole test volume one shard).
    monkeypatch.setattr(volume_plan, "SHARD_BYTES", 2 * 32 * 64 * 4)


def stack():
    return np.stack([noisy((64, 96), seed=s) for s in range(5)])


def files_of(array_dir: Path) -> list[Path]:
    return [p for p in array_dir.rglob("*") if p.is_file() and p.name != "zarr.json" and ".n2x-done" not in p.parts]


def test_shard_plan_grows_samples_and_planes_within_both_limits():
    lay = Layout("ZYX", (40, 1000, 1000), "YX", "Z", "")
    plan = volume_plan.plan_shard(lay, (256, 256), halo=16, window_bytes=1e12, shard_bytes=4 * 512 * 512 * 4)
    assert plan.samples * plan.spatial[0] * plan.spatial[1] * 4 <= 4 * 512 * 512 * 4
    assert plan.samples > 1 and plan.spatial == (512, 512)
    tight = volume_plan.plan_shard(lay, (256, 256), halo=16, window_bytes=2 * 300 * 300 * 4 * 2,
                                   shard_bytes=1e12)
    # The input window (raw and normalised copies, with halo) bounds it too: here two chunks' worth of planes.
    assert tight.samples * np.prod([s + 32 for s in tight.spatial]) * 4 * 2 <= 2 * 300 * 300 * 4 * 2
    assert tight.spatial == (256, 256) and tight.samples == 2
    # Never beyond the data: a small image is one shard.
    one = volume_plan.plan_shard(Layout("YX", (100, 120), "YX", "", ""), (64, 64), halo=8, window_bytes=1e12,
                                 shard_bytes=1e12)
    assert one == volume_plan.ShardPlan((128, 128), 1)


def test_sharded_output_equals_unsharded_with_fewer_files_and_validates(tmp_path, model2d, small_shards):
    from ome_zarr_models.v05.image import Image

    img = stack()
    plain = n2x.denoise_volume(model2d, img, tmp_path / "plain.ome.zarr", "ZYX", chunks=32, ngff_version="0.5",
                               pyramid_levels=2)
    sharded = n2x.denoise_volume(model2d, img, tmp_path / "sharded.ome.zarr", "ZYX", chunks=32, shards=True,
                                 pyramid_levels=2)
    a, b = zarr.open_group(str(plain), mode="r"), zarr.open_group(str(sharded), mode="r")
    for level in ("0", "1"):  # float32 rounding aside: a shard's tiles are batched differently
        np.testing.assert_allclose(a[level][:], b[level][:], rtol=1e-5, atol=1e-6)
    arr = b["0"]
    assert arr.metadata.zarr_format == 3 and arr.chunks == (1, 32, 32) and arr.shards == (2, 32, 64)
    assert b["1"].shards == (1, 32, 64)  # a pyramid block: one plane's shard
    # 5 planes x 2 x 3 chunks = 30 chunk files unsharded; (2 + 2 + 1 planes) x 2 x 2 shards of 32 x 64 px sharded.
    assert len(files_of(Path(plain) / "0")) == 30
    assert len(files_of(Path(sharded) / "0")) == 12
    assert b.attrs["n2x"]["status"] == "complete"
    Image.from_zarr(zarr.open_group(str(sharded), mode="r"))  # raises if the NGFF 0.5 metadata is invalid


def test_interrupted_sharded_run_resumes_to_the_same_result(tmp_path, model2d, small_shards):
    img = stack()
    ref = n2x.denoise_volume(model2d, img, tmp_path / "ref.ome.zarr", "ZYX", chunks=32, shards=True)
    out = tmp_path / "out.ome.zarr"
    calls = {"n": 0}

    def stop_after_some():
        calls["n"] += 1
        return calls["n"] > 3

    n2x.denoise_volume(model2d, img, out, "ZYX", chunks=32, shards=True, should_stop=stop_after_some)
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["n2x"]["status"] == "running"
    done = sorted(p.name for p in (out / "0" / ".n2x-done").iterdir())
    # Records are per plane and shard column (5 planes x 2 x 2); stopped part way, after whole shards.
    assert 0 < len(done) < 20 and len(done) % 2 == 0
    seen = []
    last = n2x.denoise_volume(model2d, img, out, "ZYX", chunks=32, shards=True,
                              progress=lambda d, t: seen.append((d, t)))
    assert seen[0][0] == len(done) and seen[-1] == (20, 20)
    np.testing.assert_array_equal(zarr.open_array(str(last / "0"), mode="r")[:],
                                  zarr.open_array(str(ref / "0"), mode="r")[:])


def test_shards_need_an_ngff_05_zarr_output(tmp_path, model2d):
    img = stack()
    with pytest.raises(OptionError, match="zarr format 3"):
        n2x.denoise_volume(model2d, img, tmp_path / "out.tif", "ZYX", shards=True)
    with pytest.raises(OptionError, match="zarr format 3"):
        n2x.denoise_volume(model2d, img, tmp_path / "out.ome.zarr", "ZYX", shards=True, ngff_version="0.4")


def test_cli_shards_flag_writes_a_sharded_ngff_05_output(tmp_path, model2d):
    model_path = tmp_path / "m.n2x"
    model2d.save(model_path)
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, (stack() * 1000).astype(np.uint16), metadata={"axes": "ZYX"})
    out = tmp_path / "out.ome.zarr"
    run = subprocess.run([sys.executable, "-m", "n2x.cli", "denoise", str(model_path), str(src), "-o", str(out),
                          "--shards", "--chunks", "32", "-q"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    meta = json.loads((out / "0" / "zarr.json").read_text())
    assert any(c["name"] == "sharding_indexed" for c in meta["codecs"])
    assert json.loads((out / "zarr.json").read_text())["attributes"]["ome"]["version"] == "0.5"
