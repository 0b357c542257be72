"""The napari widgets as a new user meets them, on a real viewer (Xvfb): dock layout, result layers, previews,
partial outputs, the noise report, dropped files and the data line."""
from __future__ import annotations

import re

import numpy as np
import pytest

import n2x
from n2x import api
from test_widgets import TIMEOUT, _choose, _messages, _tiny, _wait_idle, cells, models, notes, settings_dir  # noqa: F401


def _settle(qtbot, ms: int = 300) -> None:
    qtbot.wait(ms)


@pytest.mark.parametrize("size", [(1600, 1000), (1280, 800)])
def test_train_dock_fits_its_default_width(qtbot, make_napari_viewer, size):
    from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QScrollArea

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*size)
    viewer.add_image(np.zeros((64, 64), np.float32), name="nuclei 2D (real noise)")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-n2x", "Train")
    _settle(qtbot)
    scroll = widget.findChild(QScrollArea)
    body, viewport = scroll.widget(), scroll.viewport()
    assert body.minimumSizeHint().width() <= viewport.width() <= dock.width()
    assert body.minimumSizeHint().width() <= 280  # room to spare: napari has given 299-312 px on such screens
    for control in body.findChildren(QAbstractButton) + body.findChildren(QComboBox) + \
            body.findChildren(QAbstractSpinBox):
        if control.isVisible():
            right = control.mapTo(body, control.rect().topRight()).x()
            assert right <= viewport.width(), (type(control).__name__, right, viewport.width())
    assert widget.save_btn.width() >= widget.save_btn.minimumSizeHint().width()  # "Save model…", not "Save mode"
    # The loss plot's legend wraps instead of running off the right edge.
    widget.plot.resize(260, 170)
    for step in range(1, 40):
        widget.plot.add(step, 0.123456 / step, 0.234567 / step if step % 5 == 0 else None, 40)
    fm = widget.plot.fontMetrics()
    for row, x, _, text, dot in widget.plot._legend_layout(fm):
        assert x + (12 if dot else 18) + fm.horizontalAdvance(text) <= widget.plot.width()


def test_denoise_joins_train_as_tabs(qtbot, make_napari_viewer, models, tmp_path, trained_n2v):  # noqa: F811
    """Opening Denoise (from the menu or by dropping a .n2x file) must not squash Train: they share the area as
    tabs, each with the whole height."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    window = viewer.window._qt_window
    train_dock, train = viewer.window.add_plugin_dock_widget("napari-n2x", "Train")
    _settle(qtbot)
    model_file = api.save_model(trained_n2v, tmp_path / "m.n2x")
    viewer.open(str(model_file), plugin="napari-n2x")  # a dropped model opens the Denoise widget
    qtbot.waitUntil(lambda: any(d.windowTitle().startswith("Denoise") for d in window.tabifiedDockWidgets(train_dock)),
                    timeout=5_000)
    denoise_dock = window.tabifiedDockWidgets(train_dock)[0]
    assert not denoise_dock.visibleRegion().isEmpty()  # the new one is in front
    train_dock.raise_()
    _settle(qtbot)
    assert train_dock.height() >= 500 and train.plot.isVisible() and train.progress.isVisible()
    assert train.train_btn.isVisible()


def test_results_are_newest_on_top_selected_and_named_by_model(qtbot, make_napari_viewer, models, cells):  # noqa: F811
    from n2x._napari.denoise_widget import DenoiseWidget

    model = n2x.train(cells, "YX", "n2v", steps=2, patch_size=32, batch_size=4, seed=0, device="cpu",
                      network={"features": 8})
    models.add(model, name="N2V 10:00:00 · cells", tag="N2V 10:00:00")
    viewer = make_napari_viewer()
    source = viewer.add_image(cells, name="nuclei 2D (real noise)")
    viewer.add_image(cells * 0, name="another")
    widget = DenoiseWidget(viewer)
    widget.layer_combo.set_layer(source)
    names = []
    for tag in ("N2V 10:00:00", "N2V 10:05:00"):
        if tag != "N2V 10:00:00":  # a second model of the same layer, trained later
            second = n2x.train(cells, "YX", "n2v", steps=2, patch_size=32, batch_size=4, seed=1, device="cpu",
                               network={"features": 8})
            models.add(second, name=f"{tag} · cells", tag=tag)
            widget.layer_combo.set_layer(source)
        assert widget.run() is not None
        qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
        top = viewer.layers[-1]
        assert viewer.layers.selection.active is top  # the newest result: on top and selected
        assert top.name == f"nuclei 2D (real noise) · {tag}"
        meta = top.metadata["n2x_result"]
        assert meta["model"] == f"{tag} · cells" and meta["status"] == "complete" and "N2V" in meta["model_description"]
        assert meta["source"] == "nuclei 2D (real noise)" and meta["created"]
        names.append(top.name)
    assert [layer.name for layer in viewer.layers][-2:] == names
    # The model combo keeps the time, the only difference between two models of one layer, in view.
    combo = widget.model_combo
    assert combo.currentText().startswith("N2V 10:05:00")
    assert combo.fontMetrics().horizontalAdvance("N2V 10:05:00") < combo.width() - 20


def test_preview_shows_the_input_until_the_first_validation(qtbot, make_napari_viewer, models):  # noqa: F811
    """No flat dark square: until the model has validated, the preview is the input itself, dimmed and marked; with
    "denoise at the end" off the preview goes when training ends. The model is listed with its method and time."""
    from n2x._napari.train_widget import TrainWidget

    viewer = make_napari_viewer()
    data = np.random.default_rng(0).random((96, 96)).astype(np.float32)
    layer = viewer.add_image(data, name="cells")
    widget = TrainWidget(viewer)
    _tiny(widget, steps=10**6, preview=True, denoise=False)
    previews = []
    viewer.layers.events.inserted.connect(
        lambda e: previews.append(e.value) if e.value.name == "cells [n2x preview]" else None)
    assert widget.train()
    qtbot.waitUntil(lambda: bool(previews), timeout=TIMEOUT)
    preview = previews[0]
    np.testing.assert_array_equal(np.asarray(preview.data), data)  # the input, not an untrained network's output
    assert preview.metadata["n2x_preview"].startswith("input") and preview.opacity == 0.5
    widget.stop()
    _wait_idle(qtbot, widget)
    assert preview not in viewer.layers  # nothing supersedes it, so it is removed
    # the widget's default method is auto, which picks the all-pixel blind-spot method for this white noise
    assert re.fullmatch(r"Blind-spot, all pixels \d\d:\d\d:\d\d · cells", models.latest().name), models.latest().name
    assert models.latest().tag == models.latest().name.split(" · ")[0]


def test_cancelled_zarr_run_is_partial_in_name_and_display(qtbot, make_napari_viewer, models, tmp_path):  # noqa: F811
    from n2x._napari.denoise_job import DenoiseJob

    vol = np.random.default_rng(0).random((16, 64, 64)).astype(np.float32)
    model = n2x.train(vol, "ZYX", steps=2, dims=2, patch_size=32, batch_size=2, device="cpu", network={"features": 4})
    viewer = make_napari_viewer()
    layer = viewer.add_image(vol, name="vol16", scale=(2.0, 0.5, 0.5))
    out = tmp_path / "vol16.ome.zarr"
    job = DenoiseJob(viewer, model, layer=layer, axes="ZYX", tile=32, output="zarr", save_to=out,
                     on_progress=lambda done, total, unit: job.cancel())  # cancel at the first chunk
    job.start()
    qtbot.waitUntil(lambda: not job.running, timeout=TIMEOUT)
    result = viewer.layers[-1]
    meta = result.metadata["n2x_result"]
    assert meta["status"] == "partial" and 0 < meta["chunks_written"] < meta["chunks_total"]
    assert result.name == (f"vol16 · N2V (partial {meta['chunks_written']}/{meta['chunks_total']} chunks)")
    shown = np.asarray(result.data)
    assert np.isnan(shown).any() and np.isfinite(shown).any()  # unwritten chunks absent (transparent), not black
    assert not np.isnan(np.asarray(api.open_image(out).data)).any()  # the file itself keeps its fill value 0
    (reopened,) = viewer.open(str(out), plugin="napari-n2x")
    assert "(partial " in reopened.name and np.isnan(np.asarray(reopened.data)).any()


def test_noise_check_shows_a_one_line_verdict_and_figures_on_demand(qtbot, make_napari_viewer):
    from n2x._napari.train_widget import TrainWidget

    viewer = make_napari_viewer()
    noisy, _, _ = api.cells_sample("2d", seed=0)
    viewer.add_image(noisy, name="cells")
    widget = TrainWidget(viewer)
    widget.noise.check()
    qtbot.waitUntil(lambda: widget.noise.report is not None, timeout=TIMEOUT)
    text = widget.noise.label.text()
    assert "\n" not in text and "Blind-spot, all pixels" in text and "σ" in text
    assert widget.noise.details.isHidden()
    widget.noise.figures_btn.click()
    assert not widget.noise.details.isHidden() and "lag" in widget.noise.details.text()


def test_broken_model_file_gives_one_clear_notification(qtbot, make_napari_viewer, notes, tmp_path):  # noqa: F811
    viewer = make_napari_viewer()
    bad = tmp_path / "broken.n2x"
    bad.write_bytes(b"PK\x03\x04 not really a model")
    assert viewer.open(str(bad), plugin="napari-n2x") == []  # no reader error, no traceback button
    errors = [n for n in notes if n.severity == "error"]
    assert len(errors) == 1 and str(errors[0].message).startswith("n2x: ") and "broken.n2x" in str(errors[0].message)


def test_n2x_ome_zarr_opens_with_its_scale_without_a_reader_choice(make_napari_viewer, tmp_path):
    from napari.settings import get_settings

    from n2x._napari.denoise_widget import DenoiseWidget
    from n2x._napari.reader import OME_ZARR_PATTERN

    img = np.random.default_rng(0).random((4, 48, 40)).astype(np.float32)
    model = n2x.train(img, "ZYX", steps=1, dims=2, patch_size=32, batch_size=2, device="cpu", network={"features": 4})
    out = n2x.denoise_volume(model, img, tmp_path / "out.ome.zarr", "ZYX", scale={"Z": 2.0, "Y": 0.5, "X": 0.5})
    plugins = get_settings().plugins
    before = dict(plugins.extension2reader)
    try:
        plugins.extension2reader = {k: v for k, v in before.items() if k != OME_ZARR_PATTERN}
        viewer = make_napari_viewer()
        DenoiseWidget(viewer)  # any n2x widget: n2x becomes the reader for OME-Zarr unless the user chose one
        # plugin=None is what a drop on the viewer does (a script's viewer.open defaults to napari's own reader):
        # napari takes the preferred reader, and asks "napari builtins or n2x?" only without one.
        (layer,) = viewer.open(str(out), plugin=None)
        np.testing.assert_allclose(layer.scale, [2.0, 0.5, 0.5])
        plugins.extension2reader = {**before, OME_ZARR_PATTERN: "napari"}  # the user's own choice is kept
        DenoiseWidget(viewer)
        assert plugins.extension2reader[OME_ZARR_PATTERN] == "napari"
    finally:
        plugins.extension2reader = before


def test_data_line_noise_check_and_file_name_follow_the_engine(qtbot, make_napari_viewer, notes, monkeypatch):  # noqa: F811
    from n2x._napari.train_widget import TrainWidget

    viewer = make_napari_viewer()
    good = viewer.add_image(np.random.default_rng(0).random((64, 64)).astype(np.float32), name="nuclei 2D (real noise)")
    nan = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    nan[3, 3] = np.nan
    viewer.add_image(nan, name="with nan")
    viewer.add_image(np.random.default_rng(0).random((5, 5)).astype(np.float32), name="five")
    viewer.add_image(np.random.default_rng(0).random((12, 12)).astype(np.float32), name="twelve")
    viewer.add_image(np.full((64, 64), 7.0, np.float32), name="flat")
    widget = TrainWidget(viewer)

    def line(name):
        widget.layer_combo.set_layer(viewer.layers[name])
        return widget.data_info.text(), "#5fbf6f" in widget.data_info.styleSheet()

    assert line("nuclei 2D (real noise)")[1]
    for name, word in (("with nan", "NaN"), ("five", "too small"), ("twelve", "too small"), ("flat", "constant")):
        text, green = line(name)
        assert not green and word in text, (name, text)
    # Check noise refuses exactly what Train refuses, with the engine's message.
    for name in ("five", "twelve"):
        widget.layer_combo.set_layer(viewer.layers[name])
        widget.noise.check()
        assert widget.train() is False
    msgs = [str(n.message) for n in notes]
    assert len([m for m in msgs if f"at least {api.MIN_TRAIN_SIZE} pixels" in m]) == 4
    # The default model file name: no spaces or brackets.
    from qtpy.QtWidgets import QFileDialog

    seen = []
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (seen.append(a[2]), ("", ""))[1])
    widget.model, widget._train_layer = object(), good
    widget.model = type("M", (), {"method_name": "n2v2"})()
    widget._browse_save()
    assert seen == ["nuclei_2D_real_noise_n2v2.n2x"]


def test_synthetic_cells_sample_shows_cells():
    """napari's "noisy cells 2D" sample: separate round cells with a brighter nucleus (the blobs-and-filaments image
    of the benchmarks is unchanged)."""
    from scipy import ndimage

    from n2x._napari import sample_data

    (noisy, meta, _), = sample_data.noisy_cells_2d()
    _, clean, _ = api.cells_sample("2d", seed=0)
    assert noisy.shape == (256, 256) and meta["name"] == "noisy cells 2D"
    labels, n = ndimage.label(clean > 0.15)
    assert n >= 15
    sizes = ndimage.sum(np.ones_like(clean), labels, range(1, n + 1))
    boxes = ndimage.find_objects(labels)
    roundness = [size / (np.pi / 4 * (b[0].stop - b[0].start) * (b[1].stop - b[1].start)) for size, b in
                 zip(sizes, boxes)]
    assert np.median(roundness) > 0.8  # discs fill their bounding ellipse; filaments would not
    centre_vs_rim = [clean[labels == k].max() / np.median(clean[labels == k]) for k in range(1, n + 1)]
    assert np.median(centre_vs_rim) > 1.5  # a nucleus brighter than the cytoplasm
    np.testing.assert_array_equal(api.noisy_sample("2d", "pg", seed=0)[0], api.noisy_sample("2d", "pg", seed=0)[0])
