"""Controls generated from option declarations (:class:`n2x.api.Option`): one control per option, bound both ways to
a settings dict.

int -> spin box, float -> double spin box, str with choices -> combo box, str or shape -> text field, bool -> check
box, image -> layer combo. An option that may be "auto" (``auto``, or a default of None) gets an "auto" special
value; ``help`` is the tooltip, ``title`` the row label, ``unit`` the suffix; ``advanced`` options go to a second
form that the widget puts in its collapsible "Advanced" section. A type without a control raises ``TypeError``:
a method that declares one must not get a panel that silently leaves it out.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QLineEdit, QSpinBox, QWidget)

from n2x import api

INT_LIMIT = 2**31 - 1  # QSpinBox holds a C int
#: Text of the "auto" special value, for options whose None means something more specific.
SPECIAL_TEXT = {"seed": "random"}


class OptionControl:
    """One option's Qt control: :meth:`value` reads it as the setting's value, :meth:`set_value` shows one, and
    :meth:`on_change` calls back with the new value when the user changes it."""

    def __init__(self, option: api.Option, widget: QWidget, get: Callable[[], Any], put: Callable[[Any], None],
                 signal: Any):
        self.option, self.widget, self._get, self._put, self._signal = option, widget, get, put, signal

    def value(self) -> Any:
        return self._get()

    def set_value(self, value: Any) -> None:
        """Show ``value`` without reporting it back as a user change."""
        if value == self._get():
            return
        self.widget.blockSignals(True)
        try:
            self._put(value)
        finally:
            self.widget.blockSignals(False)

    def on_change(self, callback: Callable[[Any], None]) -> None:
        self._signal.connect(lambda *_: callback(self._get()))


def _auto_value(o: api.Option) -> Any:
    """What "auto" stands for in the settings: None ("decided by the method") or the text "auto"."""
    return None if o.default is None else api.AUTO


def _can_be_auto(o: api.Option) -> bool:
    return o.auto or o.default is None


def _number_box(o: api.Option) -> OptionControl:
    is_int = o.type == "int"
    box: QSpinBox | QDoubleSpinBox = QSpinBox() if is_int else QDoubleSpinBox()
    lo, hi = o.range if o.range is not None else (0, INT_LIMIT if is_int else 1e9)
    scale = 2.0**30 if o.unit == "bytes" else 1.0  # bytes are shown in GiB
    lo, hi = lo / scale, hi / scale
    if is_int:
        lo, hi = max(int(lo), -INT_LIMIT + 1), min(int(hi), INT_LIMIT)
    else:
        typical = abs(o.default / scale) if isinstance(o.default, (int, float)) and o.default else max(abs(hi), 1)
        box.setDecimals(max(1, min(8, 2 - math.floor(math.log10(typical)))))
        box.setSingleStep(10 ** math.floor(math.log10(typical)) / (2 if typical >= 1 else 1))
    auto = _can_be_auto(o)
    step = 1 if is_int else box.singleStep()
    low = lo - step if auto else lo  # the value below the range stands for "auto"
    box.setRange(low, hi)
    if auto:
        box.setSpecialValueText(SPECIAL_TEXT.get(o.name, api.AUTO))
    suffix = " GiB" if o.unit == "bytes" else f" {o.unit}" if o.unit else ""
    box.setSuffix(suffix)

    def get() -> Any:
        v = box.value()
        if auto and v <= low:
            return _auto_value(o)
        return int(v) if is_int else float(v) * scale

    def put(value: Any) -> None:
        if value is None or value == api.AUTO:
            box.setValue(low)
        else:
            box.setValue(int(value) if is_int else float(value) / scale)

    return OptionControl(o, box, get, put, box.valueChanged)


def _combo(o: api.Option, items: list[tuple[str, Any]]) -> OptionControl:
    combo = QComboBox()
    for text, data in items:
        combo.addItem(text, data)

    def put(value: Any) -> None:
        i = next((k for k in range(combo.count()) if combo.itemData(k) == value), -1)
        if i >= 0:
            combo.setCurrentIndex(i)

    return OptionControl(o, combo, combo.currentData, put, combo.currentIndexChanged)


def _text(o: api.Option) -> OptionControl:
    edit = QLineEdit()
    if _can_be_auto(o):
        edit.setPlaceholderText(api.AUTO)

    def get() -> Any:
        text = edit.text().strip()
        return None if not text or text.lower() == api.AUTO else text

    def put(value: Any) -> None:
        if value is None or value == api.AUTO:
            edit.setText("")
        elif isinstance(value, (list, tuple)):
            edit.setText(", ".join(map(str, value)))
        else:
            edit.setText(str(value))

    return OptionControl(o, edit, get, put, edit.textChanged)


def make_control(o: api.Option, choice_text: Mapping[Any, str] | None = None,
                 image_control: Callable[[api.Option], OptionControl] | None = None) -> OptionControl:
    """The control for option ``o``; ``choice_text`` words choices, ``image_control`` makes a layer chooser."""
    words = choice_text or {}
    if o.choices and o.type in ("str", "int"):
        items = [(words.get(c, str(c)), c) for c in o.choices]
        if _can_be_auto(o) and o.default not in o.choices:
            items.insert(0, (words.get(None, api.AUTO), _auto_value(o)))
        control = _combo(o, items)
    elif o.type in ("int", "float"):
        control = _number_box(o)
    elif o.type in ("str", "shape"):
        control = _text(o)
    elif o.type == "bool":
        check = QCheckBox(o.title)
        control = OptionControl(o, check, check.isChecked, lambda v: check.setChecked(bool(v)), check.toggled)
    elif o.type == "image":
        if image_control is None:
            raise TypeError(f"option {o.name!r} is an image; this panel has no layers to offer")
        control = image_control(o)
    else:
        raise TypeError(f"option {o.name!r} has type {o.type!r}, which the napari widgets cannot show")
    control.widget.setToolTip(o.help[:1].upper() + o.help[1:] if o.help else "")
    control.set_value(o.default)
    return control


class OptionPanel:
    """The controls of a list of options, in two forms: :attr:`basic` (shown in place) and :attr:`advanced` (for
    the widget's collapsible section). ``overrides`` maps an option name to a function making its control (the
    device combo); ``words`` maps option name -> choice -> text. ``on_change(name, value)`` reports user changes.
    """

    def __init__(self, options: Iterable[api.Option], on_change: Callable[[str, Any], None], *,
                 overrides: Mapping[str, Callable[[api.Option], OptionControl]] | None = None,
                 words: Mapping[str, Mapping[Any, str]] | None = None,
                 image_control: Callable[[api.Option], OptionControl] | None = None):
        self.options = tuple(options)
        self.controls: dict[str, OptionControl] = {}
        self.basic, self.advanced = QWidget(), QWidget()
        forms = {False: QFormLayout(self.basic), True: QFormLayout(self.advanced)}
        for form in forms.values():
            form.setContentsMargins(0, 0, 0, 0)
        for o in self.options:
            make = (overrides or {}).get(o.name)
            control = make(o) if make is not None else make_control(o, (words or {}).get(o.name), image_control)
            if o.type != "image":  # a layer is chosen each session, read when training starts: not a setting
                control.on_change(lambda value, name=o.name: on_change(name, value))
            self.controls[o.name] = control
            if o.type == "bool":
                forms[o.advanced].addRow(control.widget)
            else:
                forms[o.advanced].addRow(o.title, control.widget)
        self.basic.setVisible(forms[False].rowCount() > 0)
        self.advanced.setVisible(forms[True].rowCount() > 0)

    def show_values(self, values: Mapping[str, Any]) -> None:
        """Show the settings' values in the controls (an image option keeps its layer)."""
        for name, control in self.controls.items():
            if control.option.type != "image" and name in values:
                control.set_value(values[name])

    def set_row_state(self, name: str, enabled: bool, visible: bool = True) -> None:
        """Enable or grey out (and show or hide) the row of option ``name``."""
        control = self.controls[name]
        control.widget.setEnabled(enabled)
        form = (self.advanced if control.option.advanced else self.basic).layout()
        form.setRowVisible(control.widget, visible)

    def set_visible(self, visible: bool) -> None:
        """Show or hide both forms (an empty one stays hidden)."""
        for part in (self.basic, self.advanced):
            part.setVisible(visible and part.layout().rowCount() > 0)
