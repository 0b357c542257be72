"""The resolution pyramid of an OME-Zarr output: levels equal a downsampling of level 0, the metadata validates with
independent readers (ome-zarr-models, ome-zarr), and a partial output opens in napari as multiscale."""
import numpy as np
import pytest
import zarr

import n2x
from n2x.io.pyramid import PyramidGrid, pyramid_factors
from conftest import TINY, noisy_waves as noisy


def mean2(a, axes):
    """Independent reference: mean over 2-pixel windows along ``axes`` (even lengths only)."""
    for ax in axes:
        shape = a.shape[:ax] + (a.shape[ax] // 2, 2) + a.shape[ax + 1:]
        a = a.reshape(shape).mean(axis=ax + 1)
    return a


@pytest.fixture(scope="module")
def model2d():
    return n2x.train(noisy((96, 96)), "YX", "n2v", patch_size=32, **TINY)


def test_default_levels_stop_near_256_px_and_z_follows_isotropy():
    assert pyramid_factors("YX", (2048, 2048)) == [(1, 1), (2, 2), (4, 4), (8, 8)]
    assert pyramid_factors("YX", (200, 300)) == [(1, 1), (2, 2)]
    assert pyramid_factors("YX", (256, 256)) == [(1, 1)]
    # Isotropic voxels: Z halves with Y and X; 4x coarser Z: it waits until Y/X have caught up.
    assert pyramid_factors("ZYX", (64, 1024, 1024)) == [(1, 1, 1), (2, 2, 2), (4, 4, 4)]
    assert pyramid_factors("ZYX", (64, 1024, 1024), {"Z": 4.0, "Y": 1.0, "X": 1.0}) == [
        (1, 1, 1), (1, 2, 2), (1, 4, 4)]


def test_block_by_block_equals_whole_level_with_odd_edges():
    rng = np.random.default_rng(3)
    level0 = rng.normal(size=(2, 45, 37)).astype(np.float32)
    grid = PyramidGrid("TYX", "YX", level0.shape, (1, 8, 8), [(1, 1), (2, 2), (4, 4)])
    levels = [level0, np.zeros(grid.shapes[1], np.float32), np.zeros(grid.shapes[2], np.float32)]
    for k in (1, 2):
        for block in grid.blocks(k):
            levels[k][grid.region(k, block)] = grid.compute_block(levels, k, block)
    assert grid.shapes[1] == (2, 23, 19) and grid.shapes[2] == (2, 12, 10)
    # Inner pixels: plain 2x2 means; the odd last row/column: the mean of the pixels that exist.
    np.testing.assert_allclose(levels[1][:, :22, :18], mean2(level0[:, :44, :36], (1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(levels[1][:, 22, :18], mean2(level0[:, 44, :36], (1,)), rtol=1e-5, atol=1e-6)


def test_levels_equal_downsampled_level0_and_metadata_validates(tmp_path, model2d):
    img = np.stack([noisy((96, 160), seed=s) for s in range(2)])
    out = n2x.denoise_volume(model2d, img, tmp_path / "p.ome.zarr", "TYX", chunks=32, pyramid_levels=3,
                             scale={"Y": 0.5, "X": 0.5})
    group = zarr.open_group(str(out), mode="r")
    levels = [group[str(k)][:] for k in range(3)]
    np.testing.assert_allclose(levels[1], mean2(levels[0], (1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(levels[2], mean2(levels[1], (1, 2)), rtol=1e-5, atol=1e-6)
    ms = dict(group.attrs)["multiscales"][0]
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == [
        [1.0, 0.5, 0.5], [1.0, 1.0, 1.0], [1.0, 2.0, 2.0]]
    assert dict(group.attrs)["n2x"]["status"] == "complete"
    assert not any((out / str(k) / ".n2x-done").exists() for k in range(3))

    from ome_zarr_models.v04 import Image

    Image.from_zarr(zarr.open_group(str(out), mode="r"))  # raises when the metadata is not valid NGFF 0.4
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(out)))()))
    assert [tuple(d.shape) for d in node.data] == [(2, 96, 160), (2, 48, 80), (2, 24, 40)]


def test_3d_pyramid_halves_z_for_isotropic_voxels(tmp_path):
    vol = noisy((16, 40, 48), seed=4)
    model = n2x.train(vol, "ZYX", "n2v", patch_size=(8, 32, 32), **{**TINY, "network": {"features": 8, "depth": 1}})
    out = n2x.denoise_volume(model, vol, tmp_path / "v.ome.zarr", "ZYX", chunks=(8, 16, 16), pyramid_levels=2)
    group = zarr.open_group(str(out), mode="r")
    assert group["1"].shape == (8, 20, 24)
    np.testing.assert_allclose(group["1"][:], mean2(group["0"][:], (0, 1, 2)), rtol=1e-5, atol=1e-6)


def test_resumed_run_completes_the_pyramid_and_partial_output_opens_as_multiscale(tmp_path, model2d,
                                                                                   make_napari_viewer):
    img = noisy((128, 128), seed=5)
    dest = tmp_path / "r.ome.zarr"
    def stop():  # after the first two rows of level-0 chunks: level 1's first row can be filled
        done = dest / "0" / ".n2x-done"
        return done.exists() and len(list(done.iterdir())) >= 8

    gen = n2x.iter_denoise_volume(model2d, img, dest, "YX", chunks=32, pyramid_levels=3, should_stop=stop)
    for _ in gen:
        pass
    group = zarr.open_group(str(dest), mode="r")
    assert dict(group.attrs)["n2x"]["status"] == "running"
    level1_done = set((dest / "1" / ".n2x-done").iterdir())
    assert level1_done  # the first blocks of level 1 were filled as their level-0 chunks were recorded

    from n2x._napari.reader import read_ome_zarr

    [(data, kwargs, kind)] = read_ome_zarr(str(dest))
    assert kwargs["multiscale"] and len(data) == 3 and "partial" in kwargs["name"]
    viewer = make_napari_viewer()
    layer = viewer.add_image(data, **{k: v for k, v in kwargs.items() if k != "multiscale"}, multiscale=True)
    assert layer.multiscale and np.isnan(np.asarray(data[1])).any()  # unwritten blocks: NaN, drawn transparent

    n2x.denoise_volume(model2d, img, dest, "YX", chunks=32, pyramid_levels=3)
    levels = [group[str(k)][:] for k in range(3)]
    np.testing.assert_allclose(levels[2], mean2(mean2(levels[0], (0, 1)), (0, 1)), rtol=1e-5, atol=1e-6)
    assert dict(zarr.open_group(str(dest), mode="r").attrs)["n2x"]["status"] == "complete"


def test_denoise_widget_job_shows_a_multiscale_layer_while_filling(qtbot, make_napari_viewer, model2d, tmp_path):
    from n2x._napari.denoise_job import DenoiseJob

    viewer = make_napari_viewer()
    layer = viewer.add_image(noisy((320, 320), seed=6), name="big")
    seen = []

    def on_progress(done, total, unit):
        result = viewer.layers[-1]
        if result is not layer:
            seen.append((result.multiscale, done, total))

    job = DenoiseJob(viewer, model2d, layer=layer, axes="YX", tile=64, output="zarr", save_to=tmp_path / "big.ome.zarr",
                     on_progress=on_progress)
    job.start()
    qtbot.waitUntil(lambda: not job.running, timeout=120_000)
    result = viewer.layers[-1]
    assert result.multiscale and len(result.data) == 2  # 320 px: one level of 160 px below
    assert any(ms and done < total for ms, done, total in seen)  # multiscale already while it was filling
    np.testing.assert_allclose(np.asarray(result.data[1]), mean2(np.asarray(result.data[0]), (0, 1)),
                               rtol=1e-5, atol=1e-6)
