"""One volume's chunks as tasks on a dask LocalCluster of 2 worker processes: the output equals the single-process
output, a killed worker loses nothing, an interrupted client resumes without rewriting a recorded chunk."""
import os
import signal

import numpy as np
import pytest
import tifffile
import zarr

import n2x
from conftest import TINY, noisy_waves as noisy, run_cli


def levels(path):
    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    multiscales = attrs.get("multiscales") or attrs["ome"]["multiscales"]  # NGFF 0.4 or 0.5
    return [group[str(k)][:] for k in range(len(multiscales[0]["datasets"]))]


def assert_same_output(a, b):
    la, lb = levels(a), levels(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5 * float(np.abs(y).max()))


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    cl = Client(cluster)
    yield cl
    cl.close()
    cluster.close()


@pytest.fixture(scope="module")
def model2d(tmp_path_factory):
    model = n2x.train(noisy((96, 96)), "YX", "n2v", patch_size=32, **TINY)
    model.save(tmp_path_factory.mktemp("m") / "m2d.n2x")
    return model


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A 2D-model input: a Z stack of 4 planes of 96 x 128 px in a zarr chunked one plane per chunk."""
    path = tmp_path_factory.mktemp("in") / "stack.zarr"
    arr = zarr.create_array(str(path), shape=(4, 96, 128), chunks=(1, 48, 64), dtype="float32")
    arr[:] = np.stack([noisy((96, 128), seed=s) for s in range(4)])
    return path


@pytest.fixture(scope="module")
def here(tmp_path_factory, model2d, stack):
    """The single-process output of the stack, which every cluster run must equal."""
    return n2x.denoise_volume(model2d, stack, tmp_path_factory.mktemp("ref") / "here.ome.zarr", "ZYX", chunks=48,
                              pyramid_levels=2)


def test_2d_model_on_stack_equals_single_process(tmp_path, client, model2d, stack, here):
    seen = []
    there = n2x.denoise_volume(model2d, stack, tmp_path / "there.ome.zarr", "ZYX", chunks=48, pyramid_levels=2,
                               client=client, progress=lambda done, total: seen.append((done, total)))
    assert_same_output(there, here)
    assert seen[-1] == (24, 24) and len(seen) > 10  # progress per finished work unit
    assert dict(zarr.open_group(str(there), mode="r").attrs)["n2x"]["status"] == "complete"


def test_sharded_output_on_the_cluster_equals_single_process(tmp_path, client, model2d, stack, here, monkeypatch):
    from n2x.inference import volume_plan

    monkeypatch.setattr(volume_plan, "SHARD_BYTES", 2 * 48 * 128 * 4)  # shards of 2 planes x 48 x 96 px
    there = n2x.denoise_volume(model2d, stack, tmp_path / "there.ome.zarr", "ZYX", chunks=48, pyramid_levels=2,
                               client=client, shards=True)
    assert_same_output(there, here)
    group = zarr.open_group(str(there), mode="r")
    assert group["0"].shards == (2, 48, 96) and group["1"].shards == (1, 48, 96)
    # Each of the 8 shards was written whole by one task: 8 files where the 48 px chunks alone would be 24.
    assert len([p for p in (there / "0" / "c").rglob("*") if p.is_file()]) == 8


def test_3d_model_equals_single_process(tmp_path, client):
    vol = noisy((12, 40, 44), seed=2)
    model = n2x.train(vol, "ZYX", "n2v", patch_size=(8, 32, 32), **{**TINY, "network": {"features": 8, "depth": 1}})
    src = tmp_path / "vol.tif"
    tifffile.imwrite(src, vol)
    here = n2x.denoise_volume(model, src, tmp_path / "here.ome.zarr", "ZYX", chunks=(8, 16, 16), pyramid_levels=2)
    there = n2x.denoise_volume(model, src, tmp_path / "there.ome.zarr", "ZYX", chunks=(8, 16, 16),
                               pyramid_levels=2, client=client)
    assert_same_output(there, here)


def test_an_array_in_memory_is_refused_on_a_cluster(tmp_path, client, model2d):
    with pytest.raises(n2x.errors.OptionError, match="file path"):
        n2x.denoise_volume(model2d, noisy((64, 64)), tmp_path / "x.ome.zarr", "YX", client=client)
    assert not (tmp_path / "x.ome.zarr").exists()  # refused before anything is written


def test_two_models_shipped_at_once_stay_apart(tmp_path, client):
    from n2x.batch.distributed import ship_model

    first, second = tmp_path / "a.n2x", tmp_path / "b.n2x"
    first.write_bytes(b"first model")
    second.write_bytes(b"second model")
    blobs = [ship_model(client, first), ship_model(client, second)]
    assert [client.submit(lambda blob: blob["data"], b, pure=False).result() for b in blobs] == [
        b"first model", b"second model"]


def test_interrupted_client_resumes_without_rewriting_a_recorded_chunk(tmp_path, client, model2d, stack, here):
    dest = tmp_path / "r.ome.zarr"
    gen = n2x.iter_denoise_volume(model2d, stack, dest, "ZYX", chunks=48, pyramid_levels=2, client=client)
    for progress in gen:
        if progress.done >= 6:
            break
    gen.close()  # what Ctrl-C does in `n2x denoise`: the client goes away mid-run
    done_dir = dest / "0" / ".n2x-done"
    recorded = {p.name: (dest / "0" / p.name.replace(".", "/")).stat().st_mtime_ns for p in done_dir.iterdir()}
    assert 6 <= len(recorded) < 24

    reports = list(n2x.iter_denoise_volume(model2d, stack, dest, "ZYX", chunks=48, pyramid_levels=2, client=client))
    assert reports[0].skipped >= len(recorded) and reports[-1].complete
    for key, mtime in recorded.items():  # a chunk recorded before the interruption is never written again
        assert (dest / "0" / key.replace(".", "/")).stat().st_mtime_ns == mtime
    assert_same_output(dest, here)


def test_cli_workers_2_denoises_one_volume(tmp_path, model2d, stack, here):
    out = tmp_path / "cli.ome.zarr"
    proc = run_cli("denoise", model2d.path, stack, "-o", out, "--axes", "ZYX", "--chunks", "48", "--workers", "2",
                   "--max-memory", "1G", "--pyramid", "2")
    assert "wrote" in proc.stdout
    assert_same_output(out, here)


def test_worker_killed_mid_run_still_completes_identically(tmp_path, client, model2d, stack, here):
    dest = tmp_path / "k.ome.zarr"
    killed = False
    for progress in n2x.iter_denoise_volume(model2d, stack, dest, "ZYX", chunks=48, pyramid_levels=2, client=client):
        if not killed and progress.done - progress.skipped >= 2:
            pid = sorted(client.run(os.getpid).values())[0]
            os.kill(pid, signal.SIGKILL)  # the worker process dies at once, with its tasks in flight
            killed = True
    assert killed and progress.complete
    assert_same_output(dest, here)


def test_denoise_job_on_a_scheduler_reports_chunks_and_fills_the_layer(qtbot, make_napari_viewer, client, model2d,
                                                                      stack, here):
    from n2x._napari.denoise_job import DenoiseJob

    viewer = make_napari_viewer()
    seen = []
    out = stack.parent / "job.ome.zarr"
    job = DenoiseJob(viewer, model2d, path=stack, axes="ZYX", output="zarr", save_to=out,
                     scheduler=client.scheduler.address, on_progress=lambda d, t, unit: seen.append((d, t, unit)))
    job.start()
    qtbot.waitUntil(lambda: not job.running, timeout=120_000)
    assert seen and seen[-1][0] == seen[-1][1] and seen[-1][2] == "chunks"
    result = viewer.layers[-1]
    expected = levels(here)[0]
    np.testing.assert_allclose(np.asarray(result.data), expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))
