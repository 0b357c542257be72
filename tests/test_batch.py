"""Batch denoising (n2x.batch, ``n2x denoise MODEL INPUT... -o OUTDIR``): mixed folders, failures, resume, dask."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

import n2x
from n2x import batch
from n2x.batch import distributed
from n2x.cli.batch_view import BatchBars, summary_table
from n2x.errors import InputError, N2xError, OptionError
from n2x.io import ome_zarr
from n2x.io.images import N2X_TIFF_TAG, open_image, read_tiff_record


def rng_image(shape, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 6, shape[-2]), np.linspace(0, 6, shape[-1]), indexing="ij")
    clean = 0.5 + 0.4 * np.sin(yy) * np.cos(xx)
    return (clean + rng.normal(0, 0.1, shape)).astype(np.float32)


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "n2x.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    model = n2x.train(rng_image((96, 96)), "YX", steps=3, network={"features": 8}, patch_size=32, device="cpu",
                      seed=0)
    return model.save(tmp_path_factory.mktemp("model") / "model.n2x")


def write_ome_zarr(path, data, axes, scale):
    arr = ome_zarr.create_image(path, data.shape, axes, tuple(min(32, n) for n in data.shape), attrs={},
                                multiscales=ome_zarr.multiscales_metadata(
                                    axes, scale=scale, units={a: "micrometer" for a in scale}))
    arr[:] = data
    return path


@pytest.fixture
def mixed_folder(tmp_path):
    """2D and 3D TIFF (one in a sub-folder), an OME-Zarr, a corrupt TIFF and a 3-channel TIFF (wrong for the model)."""
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    a = (rng_image((64, 80), 1) * 1000).astype(np.uint16)
    tifffile.imwrite(d / "a.tif", a, imagej=True, resolution=(1 / 0.5, 1 / 0.5), metadata={"unit": "um"})
    b = rng_image((3, 48, 64), 2)
    tifffile.imwrite(d / "sub" / "b.tif", b, imagej=True, resolution=(1 / 0.2, 1 / 0.2),
                     metadata={"axes": "ZYX", "spacing": 1.5, "unit": "um"})
    c = rng_image((64, 64), 3)
    write_ome_zarr(d / "c.ome.zarr", c, "YX", {"Y": 0.3, "X": 0.3})
    (d / "corrupt.tif").write_bytes(b"II*\x00" + b"not a tiff" * 20)
    tifffile.imwrite(d / "rgb.tif", rng_image((3, 64, 64), 4), imagej=True, metadata={"axes": "CYX"})
    (d / "notes.txt").write_text("not an image, ignored in a folder")
    return d, {"a": a, "b": b, "c": c}


def test_expand_inputs_folders_globs_and_zarr(mixed_folder, tmp_path):
    d, _ = mixed_folder
    flat = [i.relative.as_posix() for i in batch.expand_inputs([d])]
    assert flat == ["a.tif", "c.ome.zarr", "corrupt.tif", "rgb.tif"]  # a zarr is one input, txt is ignored
    deep = [i.relative.as_posix() for i in batch.expand_inputs([d], recursive=True)]
    assert deep == ["a.tif", "c.ome.zarr", "corrupt.tif", "rgb.tif", "sub/b.tif"]
    pattern = [i.relative.as_posix() for i in batch.expand_inputs([f"{d}/**/*.tif", d / "a.tif"])]
    assert pattern == ["a.tif", "corrupt.tif", "rgb.tif", "sub/b.tif"]  # no duplicate of a.tif
    assert batch.output_stem(Path("x.ome.tif")) == "x" and batch.output_stem(Path("y.ome.zarr")) == "y"
    with pytest.raises(InputError, match="does not exist"):
        batch.expand_inputs([tmp_path / "missing.tif"])
    with pytest.raises(InputError, match="no file matches"):
        batch.expand_inputs([f"{d}/*.nd2"])
    assert not batch.is_batch_job([str(d / "a.tif")], "out.tif")
    assert not batch.is_batch_job([str(d / "c.ome.zarr")], "out.ome.zarr")
    assert batch.is_batch_job([str(d)], "out")
    assert batch.is_batch_job([f"{d}/*.tif"], "out")
    assert batch.is_batch_job([str(d / "a.tif")], "outdir")


def test_mixed_folder_through_the_cli(model_file, mixed_folder, tmp_path):
    d, data = mixed_folder
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    proc = cli("denoise", model_file, d, "--recursive", "-o", out, "--json", "--workers", "1", "--device", "cpu")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout)
    status = {Path(f["file"]).name: f for f in summary["files"]}
    assert {k: v["status"] for k, v in status.items()} == {
        "a.tif": "ok", "c.ome.zarr": "ok", "corrupt.tif": "failed", "rgb.tif": "failed", "b.tif": "ok"}
    assert "cannot be read" in status["corrupt.tif"]["reason"]
    assert "channel" in status["rgb.tif"]["reason"]
    assert summary["counts"] == {"ok": 3, "failed": 2}
    # the same summary is written next to the outputs
    written = json.loads((out / batch.SUMMARY_NAME).read_text())
    assert [f["status"] for f in written["files"]] == [f["status"] for f in summary["files"]]

    # good files denoised, as the in-memory prediction, with their metadata
    model = n2x.load_model(model_file, device="cpu")
    for name, axes, scale in (("a", "YX", {"X": 0.5, "Y": 0.5}), ("sub/b", "ZYX", {"X": 0.2, "Y": 0.2, "Z": 1.5}),
                              ("c", "YX", {"X": 0.3, "Y": 0.3})):
        info = open_image(out / f"{name}.tif")
        assert info.axes == axes and info.data.dtype == np.float32
        for k, v in scale.items():
            assert info.scale[k] == pytest.approx(v, rel=1e-4)
        expected = n2x.denoise(model, data[name.split("/")[-1]], axes)
        np.testing.assert_allclose(np.asarray(info.data), expected, rtol=1e-4, atol=1e-3)
    assert not (out / "corrupt.tif").exists() and not (out / "rgb.tif").exists()
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before  # inputs never modified

    # rerun: the finished files are skipped untouched; the table says so
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.tif")}
    proc = cli("denoise", model_file, d, "--recursive", "-o", out, "--workers", "1")
    assert proc.returncode == 1
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith(str(d))}
    assert "skipped" in lines[str(d / "a.tif")] and "failed" in lines[str(d / "corrupt.tif")]
    assert "3 skipped" in proc.stdout and "2 failed" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.tif")} == mtimes


# The killed run: the CLI's own main, with the third file made to hang in its first network call, so that the kill
# lands while that file is in progress whatever the machine's speed (no sleep decides it).
KILLED_RUN = r"""
import sys, time
from pathlib import Path
import n2x.batch.local as local
from n2x.cli import main

marker = Path(sys.argv[1])
real = local.denoise_file

def gated(spec, model, report=None):
    if Path(spec["file"]).name == "f2.tif":
        def hang(tiles, positions=()):
            marker.touch()
            time.sleep(600)
        model.predict_tiles = hang
    return real(spec, model, report)

local.denoise_file = gated
sys.exit(main(sys.argv[2:]))
"""


def test_kill_and_rerun_finishes_without_redoing(model_file, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    tifffile.imwrite(d / "f0.tif", rng_image((48, 48), 0))
    for i in range(1, 4):
        tifffile.imwrite(d / f"f{i}.tif", rng_image((4, 64, 64), i), imagej=True, metadata={"axes": "ZYX"})
    out = tmp_path / "out"
    marker = tmp_path / "f2-in-progress"
    args = [sys.executable, "-c", KILLED_RUN, str(marker), "denoise", str(model_file), str(d), "-o", str(out),
            "--workers", "1", "-q", "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not marker.exists():
        time.sleep(0.02)
    if not marker.exists():
        proc.kill()
        pytest.fail(f"the run never reached f2 (exit {proc.wait()}): {proc.stderr.read()}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    finished = sorted(out.glob("*.tif"))
    assert finished and len(finished) < 4, "the run was not killed part-way"
    assert finished == [out / "f0.tif", out / "f1.tif"]  # f2 was in progress, f3 not started
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]  # a TIFF appears only complete
    assert all(read_tiff_record(p) is not None for p in finished)  # each carries its own fingerprint
    mtimes = {p.name: p.stat().st_mtime_ns for p in finished}

    rerun = cli("denoise", model_file, d, "-o", out, "--workers", "1", "--json", "--device", "cpu")
    assert rerun.returncode == 0, rerun.stderr
    status = {Path(f["file"]).name: f["status"] for f in json.loads(rerun.stdout)["files"]}
    assert sorted(out.glob("*.tif")) == [out / f"f{i}.tif" for i in range(4)]
    for name in mtimes:
        assert status[name] == "skipped"
        assert (out / name).stat().st_mtime_ns == mtimes[name]
    assert sum(s == "ok" for s in status.values()) == 4 - len(mtimes)


def test_partial_zarr_output_resumes_at_chunk_level(model_file, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    img = rng_image((12, 64, 64), 5)
    tifffile.imwrite(d / "stack.tif", img, imagej=True, metadata={"axes": "ZYX"})
    out = tmp_path / "out"
    # An earlier run that ended after its first chunks (what a kill leaves, recorded chunk by chunk): the generator
    # is closed at its first report of a written chunk. At most a few chunks are in flight then, whatever the
    # machine's speed, and closing writes and records them without marking the output complete.
    gen = n2x.iter_denoise_volume(str(model_file), d / "stack.tif", out / "stack.ome.zarr", device="cpu")
    for pr in gen:
        if pr.done > pr.skipped:
            gen.close()
            break
    assert ome_zarr.n2x_attrs(ome_zarr.read_group_attrs(out / "stack.ome.zarr"))["status"] == "running"
    written = len(ome_zarr.ChunkLog(out / "stack.ome.zarr").done())
    assert 0 < written < 12
    dry = batch.run_batch(model_file, [d], out, fmt="zarr", dry_run=True, device="cpu")
    assert dry.results[0].status == "resume" and not (out / batch.SUMMARY_NAME).exists()
    summary = batch.run_batch(model_file, [d], out, fmt="zarr", workers=1, device="cpu")
    res = summary.results[0]
    assert res.status == "ok" and res.chunks == 12 and res.resumed_chunks == written
    expected = n2x.denoise(n2x.load_model(model_file, device="cpu"), img, "ZYX")
    got = zarr.open_group(str(out / "stack.ome.zarr"), mode="r")["0"][:]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    again = batch.run_batch(model_file, [d], out, fmt="zarr", workers=1, device="cpu")
    assert again.results[0].status == "skipped" and again.exit_code == 0


def test_local_cluster_with_two_workers_gives_identical_outputs(model_file, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    tifffile.imwrite(d / "p.tif", rng_image((64, 96), 6))
    tifffile.imwrite(d / "q.tif", rng_image((2, 64, 64), 7), imagej=True, metadata={"axes": "ZYX"})
    write_ome_zarr(d / "r.zarr", rng_image((80, 64), 8), "YX", {"Y": 0.1, "X": 0.1})
    # Each of the two workers runs torch with cores // 2 threads; the in-process run uses as many, because
    # oneDNN's float32 sums depend on the thread count (1 ulp), not on where or in which order files run.
    worker_threads = max(1, len(os.sched_getaffinity(0)) // 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(worker_threads)
    try:
        here = batch.run_batch(model_file, [d], tmp_path / "here", workers=1, fmt="auto", device="cpu")
    finally:
        torch.set_num_threads(threads)
    seen = []
    spread = batch.run_batch(model_file, [d], tmp_path / "spread", workers=2, fmt="auto", device="cpu",
                             on_event=seen.append)
    assert here.exit_code == 0 and spread.exit_code == 0 and spread.workers == 2
    assert [r.status for r in spread.results] == ["ok"] * 3
    for name in ("p.tif", "q.tif", "r.tif"):
        a = tifffile.imread(tmp_path / "here" / name)
        b = tifffile.imread(tmp_path / "spread" / name)
        assert a.dtype == np.float32 and np.array_equal(a, b)
    # chunk progress came back from the workers
    assert any(ev.kind == "chunks" and ev.done == ev.total for ev in seen)
    assert sum(ev.kind == "done" for ev in seen) == 3


def test_worker_loads_shipped_model_bytes(model_file, tmp_path):
    blob = distributed.model_blob(Path(model_file))
    blob["path"] = str(tmp_path / "not-on-this-node.n2x")  # the client's path is not visible on the worker
    distributed._MODEL_CACHE.clear()
    model = distributed.worker_model(blob, "cpu")
    assert model.weights_hash() == n2x.load_model(model_file, device="cpu").weights_hash()
    assert model.path.name == f"{blob['sha256']}.n2x"
    assert distributed.worker_model(blob, "cpu") is model  # loaded once per worker


def test_existing_output_of_another_job_is_refused(model_file, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    tifffile.imwrite(d / "x.tif", rng_image((64, 64), 9))
    out = tmp_path / "out"
    out.mkdir()
    tifffile.imwrite(out / "x.tif", np.zeros((4, 4), np.float32))  # someone else's file
    res = batch.run_batch(model_file, [d], out, workers=1, device="cpu")
    assert res.results[0].status == "failed" and "overwrite" in res.results[0].explain()
    assert "not an n2x result" in res.results[0].reason
    assert tifffile.imread(out / "x.tif").shape == (4, 4)
    res = batch.run_batch(model_file, [d], out, workers=1, device="cpu", overwrite=True)
    assert res.results[0].status == "ok" and tifffile.imread(out / "x.tif").shape == (64, 64)
    # Killed after the TIFF was renamed into place but before the summary recorded it: the TIFF carries its own
    # fingerprint, so the rerun recognises it as this job's with no record of it anywhere else.
    summary_file = out / batch.SUMMARY_NAME
    summary_file.unlink()
    mtime = (out / "x.tif").stat().st_mtime_ns
    res = batch.run_batch(model_file, [d], out, workers=1, device="cpu")
    assert res.results[0].status == "skipped" and (out / "x.tif").stat().st_mtime_ns == mtime
    written = json.loads(summary_file.read_text())
    assert "outputs" not in written and written["files"][0]["status"] == "skipped"  # a report, no ledger


def _one_tiff_folder(tmp_path, seed):
    """``(data folder holding x.tif, the image, the output folder)``."""
    d = tmp_path / "data"
    d.mkdir()
    img = rng_image((64, 64), seed)
    tifffile.imwrite(d / "x.tif", img)
    return d, img, tmp_path / "out"


def test_tiff_output_carries_its_fingerprint(model_file, tmp_path):
    d, img, out = _one_tiff_folder(tmp_path, 10)
    res = batch.run_batch(model_file, [d], out, workers=1, device="cpu")
    assert res.results[0].status == "ok"
    record = read_tiff_record(out / "x.tif")
    model = n2x.load_model(model_file, device="cpu")
    assert record["status"] == "complete"
    assert record["fingerprint"]["model"]["weights_sha256"] == model.weights_hash()
    assert record["fingerprint"]["input"]["path"] == str((d / "x.tif").resolve())
    assert record["provenance"]["method"] == model.method_name
    with tifffile.TiffFile(out / "x.tif") as tif:  # in the TIFF's own tags, next to its ImageJ metadata
        assert N2X_TIFF_TAG in tif.pages[0].tags and tif.is_imagej
    np.testing.assert_allclose(tifffile.imread(out / "x.tif"), n2x.denoise(model, img, "YX"), rtol=1e-4, atol=1e-3)
    # Nothing but the TIFF itself decides: the summary file gone, the rerun still skips it untouched.
    (out / batch.SUMMARY_NAME).unlink()
    mtime = (out / "x.tif").stat().st_mtime_ns
    plan = batch.plan_batch(model, batch.expand_inputs([d]), out)
    assert [i.action for i in plan] == ["skip"]
    again = batch.run_batch(model_file, [d], out, workers=1, device="cpu")
    assert again.results[0].status == "skipped" and again.exit_code == 0
    assert (out / "x.tif").stat().st_mtime_ns == mtime


def test_tiff_of_another_job_is_refused(model_file, tmp_path):
    d, img, out = _one_tiff_folder(tmp_path, 11)
    other = n2x.train(img, "YX", steps=2, network={"features": 8}, patch_size=32, device="cpu", seed=1)
    other_file = other.save(tmp_path / "other.n2x")
    assert batch.run_batch(other_file, [d], out, workers=1, device="cpu").results[0].status == "ok"
    before = (out / "x.tif").read_bytes()
    res = batch.run_batch(model_file, [d], out, workers=1, device="cpu")
    r = res.results[0]
    assert r.status == "failed" and res.exit_code == 1
    assert "another model" in r.reason and "overwrite" in r.explain()
    assert (out / "x.tif").read_bytes() == before
    # another input under the same output name: the fingerprint's input differs
    tifffile.imwrite(d / "x.tif", img + 1)
    res = batch.run_batch(other_file, [d], out, workers=1, device="cpu")
    assert res.results[0].status == "failed" and "another input" in res.results[0].reason
    assert (out / "x.tif").read_bytes() == before
    res = batch.run_batch(model_file, [d], out, workers=1, device="cpu", overwrite=True)
    assert res.results[0].status == "ok" and (out / "x.tif").read_bytes() != before


def test_output_format_rule():
    mib = 2**20
    assert batch.output_format(256 * mib) == "tiff"  # up to 256 MiB of float32 result: in memory, TIFF
    assert batch.output_format(256 * mib + 1) == "zarr"
    assert batch.output_format(10 * 2**30, "tiff") == "tiff" and batch.output_format(1, "zarr") == "zarr"
    assert batch.output_format(100, threshold=99) == "zarr"
    with pytest.raises(OptionError, match="unknown output format") as info:
        batch.output_format(1, "png")
    assert info.value.options == ["format"]  # a hint each front door words as its own control
    item = batch.BatchInput(Path("/data/sub/a.ome.tif"), Path("/data"))
    assert batch.output_path("/out", item, "tiff") == Path("/out/sub/a.tif")
    assert batch.output_path("/out", item, "zarr") == Path("/out/sub/a.ome.zarr")


def test_summary_table_and_bars(capsys):
    results = [batch.FileResult("/d/a.tif", "ok", 1.25, "/o/a.tif", "tiff"),
               batch.FileResult("/d/b.tif", "failed", 0.0, "/o/b.tif", "tiff", reason="cannot be read")]
    summary = batch.BatchSummary(results, Path("/o"), "m.n2x", seconds=2.0)
    table = summary_table(summary).splitlines()
    assert table[0].split() == ["file", "status", "seconds", "output", "reason"]
    assert table[2].split() == ["/d/a.tif", "ok", "1.2", "/o/a.tif"]
    assert table[3].endswith("cannot be read")
    assert table[-1] == "2 file(s) in 2.0 s: 1 failed, 1 ok"
    # a failure's hint is worded by the front door: flags on the command line, keywords in the summary file
    results.append(batch.FileResult("/d/c.tif", "failed", 0.0, "/o/c.tif", "tiff", reason="/o/c.tif exists",
                                    hint="choose another output, or {overwrite} to replace it"))
    assert summary_table(summary, {"overwrite": "pass --overwrite"}).splitlines()[4].endswith(
        "/o/c.tif exists; choose another output, or pass --overwrite to replace it")
    assert summary.to_dict()["files"][2]["reason"].endswith("or pass overwrite=True to replace it")
    results.pop()
    bars = BatchBars()
    bars(batch.BatchEvent("start", total=2, workers=1))
    bars(batch.BatchEvent("file", 0, "/d/a.tif"))
    bars(batch.BatchEvent("chunks", 0, "/d/a.tif", 1, 2, 1))
    bars(batch.BatchEvent("done", 0, "/d/a.tif", result=results[0]))
    bars(batch.BatchEvent("done", 1, "/d/b.tif", result=results[1]))
    assert bars.overall.n == 2 and not bars.bars
    bars.close()
    assert "n2x: /d/b.tif: failed: cannot be read" in capsys.readouterr().err


@pytest.mark.parametrize("case,message", [
    ("missing_model", "does not exist"),
    ("empty", "no TIFF or zarr images"),
    ("inside", "inside the input folder"),
    ("collision", "would both be written"),
])
def test_up_front_errors_are_one_line(model_file, tmp_path, case, message):
    d = tmp_path / "data"
    d.mkdir()
    model = tmp_path / "missing.n2x" if case == "missing_model" else model_file
    out = d / "denoised" if case == "inside" else tmp_path / "out"
    if case != "empty":
        tifffile.imwrite(d / "x.tif", rng_image((32, 32)))
    if case == "collision":
        write_ome_zarr(d / "x.ome.zarr", rng_image((32, 32)), "YX", {})
    proc = cli("denoise", model, d, "-o", out)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_no_permission_and_no_space_are_refused_up_front(model_file, tmp_path, monkeypatch):
    d = tmp_path / "data"
    d.mkdir()
    tifffile.imwrite(d / "x.tif", rng_image((64, 64)))
    out = tmp_path / "out"
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    with pytest.raises(N2xError, match="no permission"):
        batch.run_batch(model_file, [d], out)
    monkeypatch.setattr(os, "access", real_access)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(N2xError, match="not enough free disk space"):
        batch.run_batch(model_file, [d], out)
    assert not out.exists()
    # a dry run lists the job and writes nothing
    monkeypatch.undo()
    dry = batch.run_batch(model_file, [d], out, dry_run=True)
    assert [r.status for r in dry.results] == ["denoise"] and not out.exists()


def test_train_accepts_folders_and_globs(tmp_path):
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    tifffile.imwrite(d / "one.tif", rng_image((64, 64), 1))
    tifffile.imwrite(d / "sub" / "two.tif", rng_image((64, 64), 2))
    model = tmp_path / "m.n2x"
    proc = cli("train", d, "--recursive", "--axes", "YX", "--steps", "2", "--patch", "32", "--batch", "2",
               "--device", "cpu", "-q", "-o", model)
    assert proc.returncode == 0, proc.stderr
    shapes = n2x.load_model(model, device="cpu").config["training"]["data_shapes"]
    assert shapes == [[64, 64], [64, 64]]
    proc = cli("train", f"{d}/*.nd2", "--steps", "1", "-o", model, "--overwrite")
    assert proc.returncode == 2 and "no file matches" in proc.stderr
