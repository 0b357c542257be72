"""The napari front door: Train and Denoise dock widgets on a real viewer (Xvfb), the manifest and the reader."""
from __future__ import annotations

import numpy as np
import pytest

import n2x
from n2x import api

TIMEOUT = 60_000  # ms; generous for 2 shared CPU cores


@pytest.fixture(autouse=True)
def settings_dir(tmp_path, monkeypatch):
    """Each test starts from the default settings and never touches the user's saved ones."""
    folder = tmp_path / "n2x-settings"
    monkeypatch.setenv("N2X_SETTINGS_DIR", str(folder))
    return folder


@pytest.fixture
def notes():
    """Messages of the napari notifications shown during the test."""
    from napari.utils.notifications import notification_manager

    got: list = []

    def keep(n):
        got.append(n)

    notification_manager.notification_ready.connect(keep)
    yield got
    notification_manager.notification_ready.disconnect(keep)


@pytest.fixture
def models():
    from n2x._napari.state import MODELS

    MODELS.clear()
    yield MODELS
    MODELS.clear()


@pytest.fixture
def cells():
    from n2x.data.samples import noisy_sample

    noisy, _, _ = noisy_sample("2d", "gaussian", seed=1)
    return noisy[:96, :96].copy()


def _messages(notes) -> str:
    return "\n".join(str(n.message) for n in notes)


def _tiny(widget, steps: int = 8, preview: bool = False, denoise: bool = True) -> None:
    """A tiny, quick configuration through the widget's own controls (Advanced section included)."""
    widget.set_length(steps, "steps")
    widget.control("patch_size").setText("32")
    widget.control("batch_size").setValue(4)
    widget.control("features").setValue(8)
    widget.control("seed").setValue(0)
    _choose(widget.control("device"), "cpu")
    widget.control("preview").setChecked(preview)
    widget.control("preview_every").setValue(0.5)
    widget.control("denoise_after").setChecked(denoise)


def _choose(combo, data) -> None:
    """Pick the item of ``combo`` whose data is ``data``, as a user would."""
    index = combo.findData(data)
    assert index >= 0, f"{data!r} is not offered"
    combo.setCurrentIndex(index)


@pytest.fixture
def train_widget(make_napari_viewer, cells):
    from n2x._napari.train_widget import TrainWidget

    viewer = make_napari_viewer()
    layer = viewer.add_image(cells, name="cells", scale=(0.5, 0.25), translate=(10.0, -4.0))
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Train")
    yield viewer, layer, widget
    widget._stop.set()


def _denoise_widget_on_path(make_napari_viewer, models, cells, path):
    """``(viewer, Denoise widget, model)``: a tiny trained model listed, the widget set to denoise ``path`` (a file
    or a folder)."""
    from n2x._napari.denoise_widget import DenoiseWidget

    model = n2x.train(cells, "YX", "n2v", steps=3, patch_size=32, batch_size=4, seed=0, device="cpu",
                      network={"features": 8})
    models.add(model, name="tiny")
    viewer = make_napari_viewer()
    widget = DenoiseWidget(viewer)
    widget.from_path.setChecked(True)
    widget.path_edit.setText(str(path))
    widget._source_changed()
    return viewer, widget, model


def _denoised(viewer, source: str):
    """The result layer denoised from ``source``: named "<source> · <model>", marked as a result in its metadata."""
    found = [layer for layer in viewer.layers if (layer.metadata or {}).get("n2x_role") == "denoised"
             and layer.name.startswith(f"{source} · ")]
    assert len(found) <= 1, [layer.name for layer in found]
    return found[0] if found else None


def _wait_idle(qtbot, widget, timeout=TIMEOUT):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def test_manifest_and_samples():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest("napari-n2x")
    assert {w.display_name for w in mf.contributions.widgets} == {"Train", "Denoise"}
    keys = {s.key for s in mf.contributions.sample_data}
    assert {"noisy-cells-2d", "noisy-cells-3d", "nuclei-2d-real", "nuclei-3d-real"} <= keys
    from n2x._napari import sample_data

    (data2d, meta2d, kind), = sample_data.real_nuclei_2d()
    assert kind == "image" and data2d.shape == (512, 512) and meta2d["metadata"]["n2x_axes"] == "YX"
    (data3d, meta3d, _), = sample_data.real_nuclei_3d()
    assert data3d.ndim == 3 and meta3d["metadata"]["n2x_axes"] == "ZYX"


def test_train_n2v_live_then_denoise_layer(qtbot, train_widget, models, tmp_path):
    """Train from the widget; the event loop keeps turning; loss plot, preview, denoised layer, saved model.

    Deterministic on any machine: training is long (a million steps) and is stopped only once the event loop has
    ticked while it ran and the preview has appeared (the engine previews at its first report); a preview layer is
    caught when it is inserted, not by polling."""
    from qtpy.QtCore import QTimer

    viewer, layer, widget = train_widget
    assert widget.axes_edit.text() == "YX"
    widget.set_method("n2v")
    _tiny(widget, steps=10**6, preview=True)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(widget.running))
    timer.start(10)
    previews = []

    def inserted(event):
        if event.value.name == "cells [n2x preview]":
            previews.append(event.value)

    viewer.layers.events.inserted.connect(inserted)
    assert widget.train()
    assert widget.running and not widget.controls.isEnabled() and widget.train_btn.text() == "Stop"
    qtbot.waitUntil(lambda: sum(ticks) >= 5 and bool(previews) and bool(widget.plot.steps), timeout=TIMEOUT)
    np.testing.assert_allclose(previews[0].scale, layer.scale)  # the preview sits on the input, same geometry
    widget.stop()
    _wait_idle(qtbot, widget)
    timer.stop()
    assert sum(ticks) >= 5, "the Qt event loop must keep running while training"
    assert previews, "a live preview layer appears during training"
    assert widget.plot.steps and widget.plot.val_losses
    out = _denoised(viewer, "cells")
    assert out.data.shape == layer.data.shape and out.data.dtype == np.float32
    np.testing.assert_allclose(out.scale, layer.scale)
    np.testing.assert_allclose(out.translate, layer.translate)
    assert viewer.layers.index(out) == viewer.layers.index(layer) + 1
    assert "cells [n2x preview]" not in [lay.name for lay in viewer.layers]  # superseded by the result
    assert widget.model is not None and models.latest().model is widget.model
    assert widget.train_btn.text() == "Train" and widget.train_btn.isEnabled() and widget.controls.isEnabled()
    saved = widget.save_model(tmp_path / "cells")
    assert saved.name == "cells.n2x" and saved.exists()
    assert n2x.load_model(saved, device="cpu").config["spatial"] == "YX"


def test_stop_keeps_best_model(qtbot, train_widget, models):
    viewer, layer, widget = train_widget
    _tiny(widget, denoise=False)
    widget.set_length(5, "minutes")
    assert widget.train()
    qtbot.waitUntil(lambda: len(widget.plot.steps) >= 2, timeout=TIMEOUT)
    widget.stop()
    assert widget.train_btn.text() == "Stopping…"
    _wait_idle(qtbot, widget, timeout=30_000)
    assert widget.model is not None
    assert widget.model.history["stopped"] is True
    assert widget.model.history["steps"] < 5000
    assert models.latest().model is widget.model
    assert widget.train_btn.text() == "Train" and widget.save_btn.isEnabled()


@pytest.mark.parametrize("method", ["n2v2", "n2n", "apbsn"])
def test_train_other_methods(qtbot, train_widget, models, method):
    viewer, layer, widget = train_widget
    widget.set_method(method)
    _tiny(widget, steps=3, denoise=False)
    if method == "n2n":
        _choose(widget.control("pairs"), "subsample")
    if method == "apbsn":
        widget.control("stride_train").setValue(2)  # small image: a larger stride leaves tiny sub-images
        widget.control("r3_passes").setValue(1)
    assert widget.train()
    _wait_idle(qtbot, widget)
    assert widget.model is not None, widget.status.text()
    assert widget.model.method_name == method


def test_apbsn_blind_box_by_default(qtbot, train_widget, models):
    viewer, layer, widget = train_widget
    widget.set_method("apbsn")
    _tiny(widget, steps=3, denoise=False)
    widget.control("depth").setValue(3)  # a U-Net setting: not passed to AP-BSN's network
    stride_train = widget.control("stride_train")
    assert stride_train.value() == stride_train.minimum()  # "auto"
    assert not widget.control("r3_passes").isEnabled() and not widget.control("stride_infer").isEnabled()
    assert widget.train()
    _wait_idle(qtbot, widget)
    assert widget.model is not None, widget.status.text()
    assert widget.model.config["method"]["design"] == "box"
    assert widget.model.config["network"]["name"] == "blindbox"
    stride_train.setValue(3)  # a number: the pixel-shuffle design and its inference options
    assert widget.control("r3_passes").isEnabled() and widget.control("stride_infer").isEnabled()


def test_n2n_partner_layer(qtbot, train_widget, models):
    viewer, layer, widget = train_widget
    rng = np.random.default_rng(0)
    viewer.add_image(layer.data + rng.normal(0, 0.05, layer.data.shape).astype(np.float32), name="second")
    widget.layer_combo.set_layer(layer)
    widget.set_method("n2n")
    _choose(widget.control("pairs"), "layer")
    widget.control("target").set_layer(viewer.layers["second"])
    _tiny(widget, steps=3, denoise=False)
    assert widget.train()
    _wait_idle(qtbot, widget)
    assert widget.model is not None and widget.model.method_name == "n2n"


def test_bad_layers_are_refused_with_a_notification(qtbot, train_widget, notes):
    viewer, layer, widget = train_widget
    labels = viewer.add_labels(np.zeros((64, 64), np.uint8), name="masks")
    assert labels not in widget.layer_combo.layers()  # only image layers are offered
    viewer.add_image(np.zeros((64, 64), bool), name="mask as image")
    widget.layer_combo.set_layer(viewer.layers["mask as image"])
    assert widget.train() is False
    assert "boolean" in _messages(notes)
    viewer.add_image(np.ones((8, 8), np.float32), name="tiny")
    widget.layer_combo.set_layer(viewer.layers["tiny"])
    assert widget.train() is False
    assert "too small" in _messages(notes)
    widget.layer_combo.set_layer(layer)
    widget.axes_edit.setText("ZYX")
    assert widget.train() is False
    assert "axes" in _messages(notes).lower()
    assert not widget.busy and widget.train_btn.isEnabled()


def test_error_in_worker_ends_with_notification(qtbot, train_widget, notes, monkeypatch):
    """A RuntimeError (torch's out-of-memory type) inside the worker: notification, usable widget, no hang."""
    viewer, layer, widget = train_widget

    def broken(*args, **kwargs):
        yield from ()
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(api, "train_iter", broken)
    _tiny(widget, denoise=False)
    assert widget.train()
    _wait_idle(qtbot, widget, timeout=20_000)
    text = _messages(notes)
    assert "out of memory" in text and "batch size" in text
    assert widget.train_btn.text() == "Train" and widget.train_btn.isEnabled() and widget.controls.isEnabled()
    assert widget.progress.format() == "failed"
    monkeypatch.undo()
    _tiny(widget, steps=2, denoise=False)
    assert widget.train()  # usable again
    _wait_idle(qtbot, widget)
    assert widget.model is not None


def test_preview_region_follows_the_current_slice(make_napari_viewer):
    from n2x._napari.preview import PreviewRegion
    from n2x.api import make_layout

    viewer = make_napari_viewer()
    data = np.arange(5 * 40 * 300, dtype=np.float32).reshape(5, 40, 300)
    layer = viewer.add_image(data, name="movie", scale=(1, 2, 2), translate=(0, 10, 20))
    viewer.dims.set_current_step(0, 3)
    region = PreviewRegion(layer, make_layout(data.shape, "TYX"))
    region.update(viewer)
    block = region.read()
    assert block.shape == (1, 40, 256)
    index = region.used
    assert index[0] == slice(3, 4)
    np.testing.assert_array_equal(block[0], data[3][index[1], index[2]])
    arr, offsets = region.place(block, index)
    assert arr.shape == (1, 40, 256) and offsets[0] == 3


def test_denoise_widget_layer_file_and_model_file(qtbot, make_napari_viewer, models, notes, tmp_path, cells):
    from n2x._napari.denoise_widget import DenoiseWidget
    from n2x._napari.reader import get_reader

    model = n2x.train(cells, "YX", "n2v", steps=3, patch_size=32, batch_size=4, seed=0, device="cpu",
                      network={"features": 8})
    path = model.save(tmp_path / "m.n2x")
    viewer = make_napari_viewer()
    layer = viewer.add_image(cells, name="cells", scale=(2.0, 2.0))
    widget = DenoiseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Denoise")
    assert widget.model_entry() is None
    assert widget.run() is None and "choose a model" in _messages(notes)

    # A model file, loaded from the widget.
    entry = widget.load_model(path)
    assert entry is not None and widget.model_entry() is entry
    assert "halo" in widget.halo_label.text()
    job = widget.run()
    assert job is not None and widget.run_btn.text() == "Cancel"
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
    out = _denoised(viewer, "cells")
    np.testing.assert_allclose(out.scale, layer.scale)
    np.testing.assert_allclose(out.data, n2x.denoise(model, cells), rtol=1e-4, atol=1e-4)
    assert widget.progress.format() == "done" and widget.run_btn.text() == "Denoise"

    # Not a model file: a notification, nothing listed.
    bad = tmp_path / "bad.n2x"
    bad.write_bytes(b"not a model")
    assert widget.load_model(bad) is None
    assert "bad.n2x" in _messages(notes)

    # The reader: a .n2x file opened in napari lists the model and adds no layer.
    assert get_reader(str(tmp_path / "x.tif")) is None
    reader = get_reader(str(path))
    assert reader is not None and reader(str(path)) == [(None,)]
    assert models.get("m.n2x") is not None

    # A model that does not fit the input (3 channels vs 1) is refused before any thread starts.
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="rgb", rgb=True)
    widget.layer_combo.set_layer(viewer.layers["rgb"])
    assert widget.run() is None and "channel" in _messages(notes)


def test_denoise_widget_file_to_ome_zarr(qtbot, make_napari_viewer, models, tmp_path, cells):
    """A file input goes through the chunked engine into an OME-Zarr that the new layer shows."""
    import tifffile

    src = tmp_path / "in.tif"
    tifffile.imwrite(src, cells)
    viewer, widget, model = _denoise_widget_on_path(make_napari_viewer, models, cells, src)
    assert widget.axes_edit.text() == "YX"
    widget.save_edit.setText(str(tmp_path / "out.ome.zarr"))
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
    out = _denoised(viewer, "in")
    np.testing.assert_allclose(np.asarray(out.data), n2x.denoise(model, cells), rtol=1e-3, atol=1e-3)
    assert (tmp_path / "out.ome.zarr").exists()
    np.testing.assert_array_equal(tifffile.imread(src), cells)  # the input file is untouched


def test_ome_zarr_output_opens_with_its_scale_and_origin(make_napari_viewer, tmp_path):
    import tifffile

    img = np.random.default_rng(0).random((4, 48, 40)).astype(np.float32)
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, img, imagej=True, resolution=(1 / 0.5, 1 / 0.5), metadata={"axes": "ZYX", "spacing": 2.0})
    model = n2x.train(img, "ZYX", steps=2, dims=2, patch_size=32, batch_size=2, device="cpu", network={"features": 4})
    out = n2x.denoise_volume(model, str(src), tmp_path / "out.ome.zarr")

    from n2x._napari.reader import get_ome_zarr_reader

    assert get_ome_zarr_reader(str(src)) is None
    viewer = make_napari_viewer()
    layers = viewer.open(str(out), plugin="napari-n2x")
    assert len(layers) == 1
    layer = layers[0]
    np.testing.assert_allclose(layer.scale, [2.0, 0.5, 0.5])
    np.testing.assert_allclose(np.asarray(layer.data), model.predict(img, "ZYX"), rtol=1e-4, atol=1e-4)


def test_engine_warnings_in_a_worker_become_notifications(qtbot, notes):
    """An N2xWarning raised inside a worker (AP-BSN turning its filter off, say) reaches the user."""
    import warnings

    from n2x._napari.workers import start_worker
    from n2x.errors import N2xWarning

    def body():
        yield 1
        warnings.warn("the box filter is turned off", N2xWarning)
        yield 2

    done = []
    worker = start_worker(body, doing="testing", on_error=lambda exc: done.append(exc),
                          on_finish=lambda: done.append("finished"))
    qtbot.waitUntil(lambda: "finished" in done, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: "box filter is turned off" in _messages(notes), timeout=5_000)
    assert worker is not None and done == ["finished"]


def test_option_panel_refuses_an_unknown_type(qtbot):
    from dataclasses import dataclass

    from n2x._napari.option_panel import make_control

    @dataclass
    class Strange:  # a declaration from a newer engine, with a type this panel does not know
        name: str = "matrix"
        type: str = "matrix"
        default: object = None
        help: str = ""
        choices: tuple = ()
        title: str = "Matrix"

    with pytest.raises(TypeError, match="matrix"):
        make_control(Strange())


def test_train_widget_is_bound_to_its_settings(qtbot, train_widget, settings_dir):
    """Control -> setting, setting -> control, and the choices come back in the next session's widget."""
    from n2x._napari.settings import TrainSettings, load_settings
    from n2x._napari.train_widget import TrainWidget

    viewer, layer, widget = train_widget
    widget.set_method("n2v")
    assert widget.methods.combo.currentData() == "n2v"
    widget.control("batch_size").setValue(6)
    assert widget.settings.options["batch_size"] == 6
    widget.settings.set_method_option("mask_fraction", 0.05)
    assert widget.control("mask_fraction").value() == pytest.approx(0.05)
    widget.set_length(40, "steps")
    assert widget.length_unit.currentText() == "steps" and widget.length_spin.value() == 40
    assert widget.control("features").specialValueText() == "auto"  # the method's network unless set
    assert "network" not in widget.training_kwargs()
    patch_help = next(o.help for o in api.TRAIN_OPTIONS if o.name == "patch_size")
    assert widget.control("patch_size").toolTip()[1:] == patch_help[1:]  # the declaration's, not a copy
    saved = load_settings(TrainSettings, persist=False)
    assert saved.method == "n2v" and saved.options["batch_size"] == 6 and saved.length == 40
    again = TrainWidget(viewer)
    assert again.methods.combo.currentData() == "n2v" and again.control("batch_size").value() == 6
    assert again.control("mask_fraction").value() == pytest.approx(0.05)
    labels = [again.methods.combo.itemText(i) for i in range(again.methods.combo.count())]
    assert labels == ["Auto (from the noise)"] + [api.method_info(name).label for name in api.method_names()]


def test_denoise_widget_folder_uses_the_planner(qtbot, make_napari_viewer, models, tmp_path, cells):
    """A folder goes through the CLI's planner: <stem>.tif in the output folder, one layer per image."""
    import tifffile

    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", cells)
    tifffile.imwrite(folder / "b.tif", cells[::-1].copy())
    viewer, widget, model = _denoise_widget_on_path(make_napari_viewer, models, cells, folder)
    out = tmp_path / "out"
    widget.save_edit.setText(str(out))
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
    assert widget.progress.format() == "done"
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".tif") == ["a.tif", "b.tif"]
    np.testing.assert_allclose(np.asarray(_denoised(viewer, "a").data), n2x.denoise(model, cells),
                               rtol=1e-3, atol=1e-3)
    assert _denoised(viewer, "b") is not None
