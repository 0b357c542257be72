"""A method added the way the architecture promises — one class declaring its options plus one registration — shows
up in ``n2x train --help`` and in the Train widget with its generated options panel, and trains through the api."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import n2x
from n2x import api
from n2x.cli import main
from n2x.errors import OptionError
from n2x.methods.base import Method
from n2x.options import Option

from conftest import psnr

NAME = "maskedmean"


class MaskedMean(Method):
    """Noise2Self-style blind-spot training: masked pixels are replaced by the mean of their neighbours (the pixel
    itself excluded, so its noise cannot leak into the input), and the loss is taken on the masked pixels."""

    name = NAME
    label = "Masked mean (test)"
    description = "A blind-spot method registered at run time by the test suite."
    options = (
        Option("mask_fraction", "float", 0.05, "share of pixels masked per patch", range=(0.001, 0.5)),
        Option("kernel", "int", 3, "width in pixels of the neighbourhood whose mean replaces a masked pixel",
               choices=(3, 5)),
    )

    def __init__(self, mask_fraction: float | None = None, kernel: int | None = None):
        super().__init__(**self.settled(NAME, mask_fraction=mask_fraction, kernel=kernel))

    def loss(self, net: torch.nn.Module, patches: tuple[torch.Tensor, ...], generator: torch.Generator) -> torch.Tensor:
        x = patches[0]
        if x.ndim != 4:
            raise OptionError("this test method trains 2D networks only")
        k = self.params["kernel"]
        ring = torch.ones(1, 1, k, k, dtype=x.dtype, device=x.device)
        ring[0, 0, k // 2, k // 2] = 0
        flat = x.reshape(-1, 1, *x.shape[2:])
        mean = F.conv2d(F.pad(flat, [k // 2] * 4, mode="reflect"), ring / (k * k - 1)).reshape(x.shape)
        mask = (torch.rand(x.shape, generator=generator) < self.params["mask_fraction"]).to(x.device)
        out = net(torch.where(mask, mean, x))
        return ((out.float() - x.float()) ** 2)[mask].mean()


@pytest.fixture
def extra_method():
    api.register_method(NAME, MaskedMean)
    yield api.method_info(NAME)
    api.unregister_method(NAME)


def test_declared_and_listed(extra_method):
    assert NAME in api.method_names()
    assert extra_method.label == "Masked mean (test)"
    assert [o.name for o in extra_method.options] == ["mask_fraction", "kernel"]


def test_in_train_help(extra_method, capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"Masked mean (test) (--method {NAME})" in text
    assert "--kernel {3,5}" in text and "width in pixels of the neighbourhood" in text and "(default 3)" in text


def test_trains_through_the_api(extra_method, cells2d, tmp_path):
    noisy, clean = cells2d
    with pytest.raises(OptionError, match="kernel must be one of 3, 5"):
        n2x.train(noisy, "YX", NAME, steps=1, kernel=4)
    with pytest.raises(OptionError, match="did you mean 'kernel'"):
        n2x.train(noisy, "YX", NAME, steps=1, kernal=5)
    model = n2x.train(noisy, "YX", NAME, steps=150, patch_size=32, batch_size=16, seed=0, device="cpu",
                      precision="float32", network={"features": 8}, kernel=5)
    assert model.config["method"] == {"name": NAME, "mask_fraction": 0.05, "kernel": 5}
    denoised = n2x.denoise(model, noisy)
    assert psnr(denoised, clean) > psnr(noisy, clean) + 3.0
    again = n2x.load_model(n2x.save_model(model, tmp_path / "extra.n2x"), device="cpu")
    np.testing.assert_allclose(n2x.denoise(again, noisy), denoised, atol=1e-5)


def test_in_the_train_widget(extra_method, make_napari_viewer, qtbot, cells2d, monkeypatch, tmp_path):
    monkeypatch.setenv("N2X_SETTINGS_DIR", str(tmp_path / "settings"))
    from n2x._napari.train_widget import TrainWidget

    viewer = make_napari_viewer()
    viewer.add_image(cells2d[0][:96, :96], name="cells")
    widget = TrainWidget(viewer)
    combo = widget.methods.combo
    labels = [combo.itemText(i) for i in range(combo.count())]
    assert "Masked mean (test)" in labels
    widget.set_method(NAME)
    kernel = widget.control("kernel")
    assert kernel is not None and kernel.isEnabled() and kernel.isVisibleTo(widget)
    assert "width in pixels" in kernel.toolTip().lower()
    kernel.setCurrentIndex(kernel.findData(5))
    widget.set_length(3, "steps")
    widget.control("patch_size").setText("32")
    widget.control("batch_size").setValue(4)
    widget.control("features").setValue(8)
    combo_device = widget.control("device")
    combo_device.setCurrentIndex(combo_device.findData("cpu"))
    widget.control("preview").setChecked(False)
    widget.control("denoise_after").setChecked(False)
    kw = widget.training_kwargs()
    assert kw["method"] == NAME and kw["kernel"] == 5
    assert widget.train()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert widget.model is not None and widget.model.method_name == NAME
    assert widget.model.config["method"]["kernel"] == 5
    widget._stop.set()
