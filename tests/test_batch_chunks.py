"""A batch on a dask LocalCluster of 2 worker processes spreads the chunks of its large files (OME-Zarr outputs) over
the workers as tasks, queued with the whole-file tasks of small files: the outputs equal single-process
``denoise_volume``, and one file whose chunks fail is reported failed while the others complete."""
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

import n2x
from n2x import batch
from n2x.batch import distributed
from conftest import TINY, noisy_waves as noisy


def levels(path):
    group = zarr.open_group(str(path), mode="r")
    return [group[str(k)][:] for k in range(len(dict(group.attrs)["multiscales"][0]["datasets"]))]


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    cl = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cl)
    yield cl, client
    client.close()
    cl.close()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    model = n2x.train(noisy((96, 96)), "YX", "n2v", patch_size=32, **TINY)
    return model.save(tmp_path_factory.mktemp("m") / "m.n2x")


def chunk_tasks_by_file(stream, kind="chunk"):
    """``{plan index: [worker of each task]}`` of the batch's tasks of ``kind`` that ran (keys
    ``n2x-KIND-INDEX-...``)."""
    out = {}
    for task in stream:
        key = str(task["key"])
        if key.startswith(f"n2x-{kind}-"):
            out.setdefault(int(key.split("-")[2]), []).append(task["worker"])
    return out


def test_batch_spreads_chunks_of_each_large_file(tmp_path, cluster, model_file):
    from distributed import get_task_stream

    cl, client = cluster
    d = tmp_path / "data"
    d.mkdir()
    tifffile.imwrite(d / "a.tif", noisy((96, 128), 1))  # 2 x 3 chunks of 48 px
    tifffile.imwrite(d / "b.tif", noisy((3, 96, 96), 2), imagej=True, metadata={"axes": "ZYX"})  # 3 x 2 x 2
    tifffile.imwrite(d / "c.tif", noisy((48, 48), 3))  # below the threshold: a TIFF output, one whole-file task
    seen = []
    with get_task_stream(client) as ts:
        summary = batch.run_batch(model_file, [d], tmp_path / "out", scheduler=cl.scheduler_address, device="cpu",
                                  chunks=48, pyramid_levels=2, zarr_threshold=20_000, on_event=seen.append)
    assert summary.exit_code == 0, summary.results
    assert [(Path(r.output).name, r.status, r.chunks) for r in summary.results] == [
        ("a.ome.zarr", "ok", 6), ("b.ome.zarr", "ok", 12), ("c.tif", "ok", 1)]
    model = n2x.load_model(model_file, device="cpu")
    for name, axes in (("a", "YX"), ("b", "ZYX")):
        here = n2x.denoise_volume(model, d / f"{name}.tif", tmp_path / "here" / f"{name}.ome.zarr", axes, chunks=48,
                                  pyramid_levels=2)
        there = tmp_path / "out" / f"{name}.ome.zarr"
        assert dict(zarr.open_group(str(there), mode="r").attrs)["n2x"]["status"] == "complete"
        for x, y in zip(levels(there), levels(here), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5 * float(np.abs(y).max()))
    assert not list((tmp_path / "out").glob(".*n2x-lock"))  # the client released the outputs' locks
    np.testing.assert_allclose(tifffile.imread(tmp_path / "out" / "c.tif"),
                               n2x.denoise(model, noisy((48, 48), 3), "YX"), rtol=1e-5, atol=1e-5)
    # What ran where: one task per work unit of each large file, over both workers; the small file as one task.
    chunks = chunk_tasks_by_file(ts.data)
    assert {i: len(w) for i, w in chunks.items()} == {0: 6, 1: 12}
    assert max(len(set(w)) for w in chunks.values()) == 2  # both workers computed chunks of one file
    assert {i: len(w) for i, w in chunk_tasks_by_file(ts.data, "file").items()} == {2: 1}
    assert set(chunk_tasks_by_file(ts.data, "level")) == {0, 1}  # pyramid blocks filled on the workers
    # The model went once to each worker, and each loaded it once.
    assert set(client.run(lambda: len(distributed._MODEL_CACHE)).values()) == {1}
    # Progress: per-file chunk counts, then one "done" per file.
    last = {}
    for ev in seen:
        if ev.kind == "chunks":
            last[ev.index] = (ev.done, ev.total)
    assert last[0] == (6, 6) and last[1] == (12, 12)
    assert sorted(ev.index for ev in seen if ev.kind == "done") == [0, 1, 2]


def test_file_whose_chunks_fail_is_reported_and_the_others_complete(tmp_path, cluster, model_file):
    cl, _ = cluster
    d = tmp_path / "data"
    d.mkdir()
    bad = noisy((96, 128), 4)
    bad[70, 100] = np.nan  # inside one work unit only, far from the corner the planner samples
    tifffile.imwrite(d / "a_bad.tif", bad)
    tifffile.imwrite(d / "b_good.tif", noisy((96, 128), 5))
    summary = batch.run_batch(model_file, [d], tmp_path / "out", scheduler=cl.scheduler_address, device="cpu",
                              chunks=48, fmt="zarr", pyramid_levels=1)
    failed, good = summary.results
    assert summary.exit_code == 1
    assert failed.status == "failed" and "NaN" in failed.reason, failed
    assert good.status == "ok" and good.chunks == 6
    assert dict(zarr.open_group(str(tmp_path / "out" / "b_good.ome.zarr"), mode="r").attrs)["n2x"]["status"] \
        == "complete"
    # The failed output is left resumable: its lock released, its other chunks recorded, not marked complete.
    out_bad = tmp_path / "out" / "a_bad.ome.zarr"
    assert dict(zarr.open_group(str(out_bad), mode="r").attrs)["n2x"]["status"] != "complete"
    assert not list((tmp_path / "out").glob(".*n2x-lock"))
    again = batch.run_batch(model_file, [d], tmp_path / "out", scheduler=cl.scheduler_address, device="cpu",
                            chunks=48, fmt="zarr", pyramid_levels=1, dry_run=True)
    assert [r.status for r in again.results] == ["resume", "skip"]


def test_interrupted_batch_lets_go_of_its_outputs_and_resumes(tmp_path, cluster, model_file):
    cl, client = cluster
    d = tmp_path / "data"
    d.mkdir()
    for i in range(2):
        tifffile.imwrite(d / f"{i}.tif", noisy((96, 128), 6 + i))
    kw = {"scheduler": cl.scheduler_address, "device": "cpu", "chunks": 48, "fmt": "zarr", "pyramid_levels": 1}

    def ctrl_c(ev):
        if ev.kind == "chunks" and ev.done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batch.run_batch(model_file, [d], tmp_path / "out", on_event=ctrl_c, **kw)
    assert not list((tmp_path / "out").glob(".*n2x-lock"))  # both outputs free for the rerun
    deadline = time.monotonic() + 10
    while client.processing() and any(client.processing().values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(client.processing().values())  # the batch's tasks were cancelled, not left running
    again = batch.run_batch(model_file, [d], tmp_path / "out", **kw)
    assert [r.status for r in again.results] == ["ok", "ok"]
    assert again.results[0].resumed_chunks >= 1  # the chunks recorded before the interrupt are not computed again
