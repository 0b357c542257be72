"""The Train widget's method chooser and each method's option panel, generated from the methods' declarations.

The combo lists "Auto (from the noise)" first, then :func:`n2x.api.method_names` (filled when the widget is created,
so a method registered at run time with :func:`n2x.api.register_method` is there), labelled and described by
:func:`n2x.api.method_info`. Each method's
options (:attr:`n2x.api.MethodInfo.options`) become an :class:`~.option_panel.OptionPanel` bound to
:class:`~.settings.TrainSettings`; options of a design (AP-BSN's ``"box"``/``"pd"``) are enabled only when that design
is chosen, and N2N's partner (another layer, or pairs formed inside the image) drives its ``target``/``pairs``/
``along`` data options.
"""
from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QVBoxLayout, QWidget

from n2x import api
from n2x.errors import N2xError

from ._common import hint_label, layer_control, layer_data
from .option_panel import OptionControl, OptionPanel
from .settings import (PARTNER_LAYER, TrainSettings, chosen_design, has_partner, method_info, method_names,
                       option_enabled)

PARTNER_WORDS = {PARTNER_LAYER: "another layer", "adjacent": "adjacent frames / planes",
                 "even-odd": "even / odd frames", "subsample": "sub-sampling one image",
                 "f2f": "neighbouring frames, motion compensated"}
CHOICE_WORDS = {"replacement": {None: "auto (the method's)"}, "loss": {"l2": "L2 (zero-mean noise)",
                                                                      "l1": "L1 (median-preserving, outliers)"}}


def _partner_control(option: api.Option) -> OptionControl:
    """N2N's partner combo: another layer (its image option) or one of its ``pairs``."""
    combo = QComboBox()
    for choice in (PARTNER_LAYER, *map(str, option.choices)):
        combo.addItem(PARTNER_WORDS.get(choice, choice), choice)
    combo.setToolTip("Where the second, independent noisy view of each patch comes from. " + option.help)

    def put(value: Any) -> None:
        i = combo.findData(value)
        if i >= 0:
            combo.setCurrentIndex(i)

    return OptionControl(option, combo, combo.currentData, put, combo.currentIndexChanged)


class MethodSection:
    """The method combo, its description line and every method's panel (:attr:`basic` forms go under the combo,
    :attr:`advanced` ones into the widget's Advanced section)."""

    def __init__(self, viewer: Any, settings: TrainSettings):
        self.settings = settings
        self.combo = QComboBox()
        self.combo.setToolTip("The denoising method; each assumes something about the noise (see the line below)")
        self.help = hint_label()
        self.basic, self.advanced = QWidget(), QWidget()
        for part in (self.basic, self.advanced):
            QVBoxLayout(part).setContentsMargins(0, 0, 0, 0)
        self.panels: dict[str, OptionPanel] = {}
        self.infos: dict[str, api.MethodInfo] = {}
        for name in method_names():
            info = self.infos[name] = method_info(name)
            self.combo.addItem(info.label, name)
            self.combo.setItemData(self.combo.count() - 1, info.description or info.label,
                                   Qt.ItemDataRole.ToolTipRole)
            overrides = {"pairs": _partner_control} if has_partner(info.options) else {}
            panel = OptionPanel(info.options, lambda key, value, method=name: self._changed(method, key, value),
                                overrides=overrides, words=CHOICE_WORDS, image_control=layer_control(viewer))
            panel.show_values(settings.method_values(name))
            self.panels[name] = panel
            self.basic.layout().addWidget(panel.basic)
            self.advanced.layout().addWidget(panel.advanced)
        self.combo.currentIndexChanged.connect(lambda _i: setattr(self.settings, "method", self.combo.currentData()))
        settings.events.method.connect(lambda _m: self.refresh())
        settings.events.method_options.connect(lambda _v: self.refresh())
        self.refresh()

    @property
    def info(self) -> api.MethodInfo:
        return self.infos[self.settings.method]

    def _changed(self, method: str, name: str, value: Any) -> None:
        self.settings.set_method_option(name, value, method)

    def control(self, name: str) -> OptionControl | None:
        """The current method's control of option ``name``, or None."""
        panel = self.panels.get(self.settings.method)  # None for a method registered after the widget was made
        return panel.controls.get(name) if panel is not None else None

    def images(self, exclude: Any = None) -> dict[str, Any]:
        """The arrays of the current method's image options that apply (N2N's partner layer); N2xError when the
        chosen layer is the one trained on (``exclude``)."""
        if self.settings.method not in self.panels:
            return {}
        values = self.settings.method_values()
        partner = has_partner(self.info.options)
        design = chosen_design(self.info.options, values)
        out = {}
        for name, control in self.panels[self.settings.method].controls.items():
            option = control.option
            if option.type != "image" or not option_enabled(option, design, values, partner):
                continue
            layer = control.value()
            if layer is not None and layer is exclude:
                raise N2xError(f"the {option.title.lower()} is the image being trained on",
                               hint="choose a second image layer of the same scene, or another partner")
            if layer is not None:
                out[name] = layer_data(layer)
        return out

    def refresh(self) -> None:
        """Follow the settings: the chosen method's panel and description, which options apply."""
        method = self.settings.method
        i = self.combo.findData(method)
        if i >= 0 and i != self.combo.currentIndex():
            self.combo.blockSignals(True)
            self.combo.setCurrentIndex(i)
            self.combo.blockSignals(False)
        info = self.infos.get(method)
        self.help.setText(info.description if info is not None else "")
        for name, panel in self.panels.items():
            panel.set_visible(name == method)
        if info is None:
            return
        panel = self.panels[method]
        values = self.settings.method_values()
        panel.show_values(values)
        partner = has_partner(info.options)
        design = chosen_design(info.options, values)
        for o in info.options:
            applies = option_enabled(o, design, values, partner)
            if partner and (o.type == "image" or o.name == "along"):
                panel.set_row_state(o.name, True, visible=applies)  # a partner's own rows: shown when chosen
            else:
                panel.set_row_state(o.name, applies)

