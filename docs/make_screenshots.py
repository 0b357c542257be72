"""Retake the user guide's screenshots (docs/images/) on a real napari viewer at napari's default dock width.

Run under a virtual display, e.g.::

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py [--seconds 60]

It opens the real nuclei sample, trains N2V2 from the Train widget (live preview and loss plot), lets it denoise the
image, opens the Denoise widget (it joins Train as a tab) and writes:

- ``train-widget.png``: the window while training (1600 x 1000);
- ``before-after.png``: the input and the result side by side (grid mode, same contrast);
- ``denoise-widget.png``: the window with the Denoise tab in front;
- ``docks-1600x1000.png``, ``docks-1280x800.png``: Train in front of its Denoise tab at both screen sizes.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "images"


def wait(app, seconds: float, until=lambda: False) -> None:
    """Turn the event loop for ``seconds`` or until ``until()``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and not until():
        app.processEvents()
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="training time (default 60 s)")
    args = parser.parse_args()
    os.environ.setdefault("N2X_SETTINGS_DIR", tempfile.mkdtemp(prefix="n2x-shots-"))  # default settings

    import napari
    from qtpy.QtWidgets import QApplication

    from n2x._napari.sample_data import real_nuclei_2d

    viewer = napari.Viewer(title="napari-n2x")
    window = viewer.window._qt_window
    window.resize(1600, 1000)
    app = QApplication.instance()
    (data, kwargs, _), = real_nuclei_2d()
    source = viewer.add_image(data, **kwargs)
    train_dock, train = viewer.window.add_plugin_dock_widget("napari-n2x", "Train")
    wait(app, 1.0)
    train.set_length(args.seconds, "seconds")
    train.control("features").setValue(16)
    train.control("batch_size").setValue(8)
    train.control("preview_every").setValue(2.0)
    assert train.train()
    # Mid-training: the loss plot has validation points and the preview shows the model's output.
    wait(app, args.seconds * 3, lambda: len(train.plot.val_losses) >= 4 and train.preview_layer is not None
         and not train.preview_layer.metadata.get("n2x_preview", "").startswith("input"))
    window.grab().save(str(OUT / "train-widget.png"))
    wait(app, args.seconds * 5, lambda: not train.busy)
    result = viewer.layers[-1]

    # Before and after, side by side, same contrast limits.
    result.contrast_limits = source.contrast_limits
    viewer.grid.enabled = True
    viewer.grid.shape = (1, 2)
    viewer.reset_view()  # both images whole, not the middle of each
    wait(app, 1.0)
    viewer.screenshot(str(OUT / "before-after.png"), canvas_only=True, flash=False)
    viewer.grid.enabled = False

    denoise_dock, denoise = viewer.window.add_plugin_dock_widget("napari-n2x", "Denoise")
    wait(app, 1.0)
    window.grab().save(str(OUT / "denoise-widget.png"))
    train_dock.raise_()
    for size in ((1600, 1000), (1280, 800)):
        window.resize(*size)
        wait(app, 1.0)
        window.grab().save(str(OUT / f"docks-{size[0]}x{size[1]}.png"))
    print("wrote", ", ".join(sorted(p.name for p in OUT.glob("*.png"))))
    viewer.close()


if __name__ == "__main__":
    main()
