"""The Train and Denoise widgets' settings: evented dataclasses, Qt-free, persisted between napari sessions.

The widgets bind their controls to these objects (a control's change sets a setting; a setting's change updates the
control), and :meth:`TrainSettings.training_kwargs` turns the settings into the arguments of
:func:`n2x.api.train_iter`, so what a run will do can be tested without a viewer. Every option is declared as data
(:class:`n2x.api.Option`): the common training options by the api (:data:`n2x.api.TRAIN_OPTIONS`), each method's by
the method (:func:`n2x.api.method_info`); only the options that exist in the widgets alone are declared here.

Persistence works like magicgui's ``persist=True``: the settings are saved as JSON in a per-user config folder
(``platformdirs.user_config_dir("napari-n2x")``, or ``$N2X_SETTINGS_DIR``) with a version key, so a file written by
an incompatible version is ignored. Methods, lengths and options are persisted; layer choices and paths are not.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

from psygnal import evented

from n2x import api
from n2x.errors import N2xError

# the option declarations, re-exported: the widgets and tests read them from here
from .option_sets import (COMMON_OPTIONS, DENOISE_OPTIONS, LENGTH_NAMES, LENGTH_UNITS, NETWORK_OPTIONS,  # noqa: F401
                          NO_UNET_METHODS, NOT_PERSISTED, PAIRS_ALONG, PARTNER_LAYER, method_info, method_names)

SETTINGS_VERSION = 1
SETTINGS_ENV = "N2X_SETTINGS_DIR"
APP_NAME = "napari-n2x"



def default_method() -> str:
    """Auto: the noise probe chooses."""
    return api.AUTO_METHOD


def option_defaults(options: Iterable[api.Option]) -> dict[str, Any]:
    """``{name: default}`` of the options a setting can hold (images are layers, chosen at run time)."""
    return {o.name: o.default for o in options if o.type != "image"}


def has_partner(options: Iterable[api.Option]) -> bool:
    """Whether a method pairs images the N2N way: an image data option and a ``pairs`` option."""
    options = list(options)
    return any(o.type == "image" and o.data for o in options) and any(o.name == "pairs" for o in options)


def partner_choices(options: Iterable[api.Option]) -> list[str]:
    """The partner combo's choices: another layer, then the method's ``pairs`` choices."""
    pairs = next((o for o in options if o.name == "pairs"), None)
    return [PARTNER_LAYER] + [str(c) for c in (pairs.choices if pairs is not None else ())]


def default_partner(options: Iterable[api.Option]) -> str:
    """The partner chosen until the user picks one: sub-sampling the image itself when the method offers it (it
    needs nothing else), else another layer."""
    choices = partner_choices(options)
    return "subsample" if "subsample" in choices else PARTNER_LAYER


def chosen_design(options: Iterable[api.Option], values: Mapping[str, Any]) -> str | None:
    """The design the values choose (AP-BSN's ``"box"`` or ``"pd"``); None for a method without designs.

    A ``design`` option chooses it directly; otherwise an option of a design that accepts "auto" (AP-BSN's training
    stride) chooses its design when given a value. When nothing chooses one, the method's default design is the
    first one its options name (AP-BSN declares its blind-box options first).
    """
    options = list(options)
    design = values.get("design")
    if any(o.name == "design" for o in options) and design not in (None, api.AUTO):
        return str(design)
    for o in options:
        if o.design is not None and o.auto and values.get(o.name) not in (None, api.AUTO):
            return o.design
    return next((o.design for o in options if o.design is not None), None)


def option_enabled(option: api.Option, design: str | None, values: Mapping[str, Any],
                   partner: bool = False) -> bool:
    """Whether ``option`` applies given the chosen ``design`` and the other values (greyed out otherwise)."""
    if partner and option.type == "image":
        return values.get("pairs") == PARTNER_LAYER
    if partner and option.name == "along":
        return values.get("pairs") in PAIRS_ALONG
    if option.design is None or option.auto:  # an "auto" option of a design is how that design is chosen
        return True
    return option.design == design


def method_kwargs(method: str, values: Mapping[str, Any], images: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The method's keyword arguments for :func:`n2x.api.train_iter` from its option ``values``.

    Options that do not apply (another design, or a partner not chosen), "auto" values and values equal to the
    declared default are left out (the engine applies its defaults: what is passed is what the user changed); an
    image option takes its array from ``images`` (the layers chosen in the widget). OptionError for a bad value.
    """
    info = method_info(method)
    images = images or {}
    partner = has_partner(info.options)
    design = chosen_design(info.options, values)
    owner = f"method {info.name!r}"
    kw: dict[str, Any] = {}
    for o in info.options:
        if not option_enabled(o, design, values, partner):
            continue
        if o.type == "image":
            data = images.get(o.name)
            if data is None and partner:
                raise N2xError(f"{info.label} with another layer needs a second image layer of the same scene",
                               hint="choose it as partner layer, or choose another partner")
            if data is not None:
                kw[o.name] = o.parse(data, owner)
            continue
        value = values.get(o.name, o.default)
        if partner and o.name == "pairs" and value == PARTNER_LAYER:
            continue
        value = o.parse(value, owner)
        if value is not None and value != o.default:
            kw[o.name] = value
    return kw


def _parsed_or_default(options: Iterable[api.Option], stored: Mapping[str, Any],
                       extra: Mapping[str, Iterable[Any]] | None = None) -> dict[str, Any]:
    """The stored values that are still valid for ``options``; the defaults for the others."""
    out = option_defaults(options)
    for o in options:
        if o.type == "image" or o.name not in stored:
            continue
        value = stored[o.name]
        if extra and value in extra.get(o.name, ()):
            out[o.name] = value
            continue
        try:
            o.parse(value)
        except N2xError:
            continue  # a value an older version allowed: back to the default
        out[o.name] = value
    return out


@evented
@dataclass
class TrainSettings:
    """What the Train widget will do: the method, the training length and every option's value.

    ``options``: the common options (:data:`COMMON_OPTIONS`); ``method_options``: per method, the values the user
    set (the others keep the method's declared defaults). ``None`` means "auto": not passed to the engine.
    """

    KIND: ClassVar[str] = "train"

    method: str = field(default_factory=default_method)
    length_unit: str = "minutes"
    length: float = LENGTH_UNITS["minutes"]
    options: dict[str, Any] = field(default_factory=lambda: option_defaults(COMMON_OPTIONS))
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    # -- changing -------------------------------------------------------------------------------------------
    def set_option(self, name: str, value: Any) -> None:
        """Set a common option (a new dict, so that ``events.options`` fires)."""
        self.options = {**self.options, name: value}

    def method_values(self, method: str | None = None) -> dict[str, Any]:
        """The option values of ``method`` (default: the chosen one): its declared defaults, then the user's."""
        method = method or self.method
        options = method_info(method).options
        values = {**option_defaults(options), **self.method_options.get(method, {})}
        if has_partner(options) and values.get("pairs") is None:
            values["pairs"] = default_partner(options)
        return values

    def set_method_option(self, name: str, value: Any, method: str | None = None) -> None:
        """Set an option of ``method`` (default: the chosen one)."""
        method = method or self.method
        self.method_options = {**self.method_options, method: {**self.method_options.get(method, {}), name: value}}

    def set_unit(self, unit: str) -> None:
        """Change the length's unit; the length starts again at that unit's usual value."""
        if unit not in LENGTH_UNITS:
            raise N2xError(f"unknown length unit {unit!r}; choose one of {', '.join(LENGTH_UNITS)}")
        if unit != self.length_unit:
            self.length_unit = unit
            self.length = LENGTH_UNITS[unit]

    def set_length(self, value: float, unit: str) -> None:
        """Train for ``value`` ``unit`` (minutes, seconds, steps or epochs)."""
        self.set_unit(unit)
        self.length = float(value)

    # -- using ------------------------------------------------------------------------------------------------
    def length_kwargs(self) -> dict[str, Any]:
        """The length as the api's ``time`` (seconds), ``steps`` or ``epochs``."""
        value = float(self.length)
        if self.length_unit == "minutes":
            return {"time": value * 60}
        if self.length_unit == "seconds":
            return {"time": value}
        if self.length_unit == "steps":
            return {"steps": max(1, int(round(value)))}
        return {"epochs": value}

    def training_kwargs(self, images: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The keyword arguments of :func:`n2x.api.train_iter` (``method`` included; no images, axes, preview or
        stop callback); ``images``: the arrays of the method's image options (N2N's ``target``). N2xError (an
        OptionError for a bad value) when a setting cannot be used."""
        kw: dict[str, Any] = {"method": self.method, **self.length_kwargs()}
        engine = [o for o in api.TRAIN_OPTIONS if o.name not in LENGTH_NAMES]
        for o in engine:
            value = o.parse(self.options.get(o.name, o.default), "training")
            if value is not None:
                kw[o.name] = value
        network = {}
        for o in NETWORK_OPTIONS:
            value = o.parse(self.options.get(o.name), "the network")
            if value is not None and not (o.name == "depth" and self.method in NO_UNET_METHODS):
                network[o.name] = value
        if network:
            kw["network"] = network
        kw["preview_every"] = float(self.options.get("preview_every", 3.0))
        kw.update(method_kwargs(self.method, self.method_values(), images))
        return kw

    # -- persistence -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready data (image options are never stored)."""
        return {"method": self.method, "length_unit": self.length_unit, "length": self.length,
                "options": _jsonable(self.options), "method_options": _jsonable(self.method_options)}

    def update_from(self, data: Mapping[str, Any]) -> None:
        """Take the stored values that are still valid (known method, declared options, values in range)."""
        names = method_names()
        if data.get("method") in names:
            self.method = data["method"]
        if data.get("length_unit") in LENGTH_UNITS:
            self.length_unit = data["length_unit"]
            if isinstance(data.get("length"), (int, float)) and data["length"] > 0:
                self.length = float(data["length"])
        if isinstance(data.get("options"), dict):
            self.options = _parsed_or_default(COMMON_OPTIONS, data["options"])
        stored = data.get("method_options")
        if isinstance(stored, dict):
            kept = {}
            for method, values in stored.items():
                if method in names and isinstance(values, dict):
                    options = method_info(method).options
                    extra = {"pairs": [PARTNER_LAYER]} if has_partner(options) else None
                    valid = _parsed_or_default(options, values, extra)
                    kept[method] = {k: v for k, v in valid.items() if k in values}
            self.method_options = kept


@evented
@dataclass
class DenoiseSettings:
    """What the Denoise widget will do: tile, halo, device and output (:data:`DENOISE_OPTIONS`), and whether an
    existing output is replaced (never remembered)."""

    KIND: ClassVar[str] = "denoise"

    options: dict[str, Any] = field(default_factory=lambda: option_defaults(DENOISE_OPTIONS))
    overwrite: bool = False

    def set_option(self, name: str, value: Any) -> None:
        """Set an option (a new dict, so that ``events.options`` fires)."""
        self.options = {**self.options, name: value}

    def value(self, name: str) -> Any:
        """The parsed value of option ``name`` (None: auto); OptionError when it cannot be read."""
        option = next(o for o in DENOISE_OPTIONS if o.name == name)
        return option.parse(self.options.get(name, option.default))

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready data (without :data:`NOT_PERSISTED`)."""
        return {"options": _jsonable(self.options)}

    def update_from(self, data: Mapping[str, Any]) -> None:
        """Take the stored values that are still valid."""
        if isinstance(data.get("options"), dict):
            self.options = _parsed_or_default(DENOISE_OPTIONS, data["options"])


def _jsonable(value: Any) -> Any:
    """``value`` with what JSON cannot hold (arrays, layers) left out: those are chosen again each session."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if _storable(v)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _storable(value: Any) -> bool:
    if isinstance(value, (dict, list, tuple)):
        return True
    return value is None or isinstance(value, (str, int, float, bool))


# -- files -------------------------------------------------------------------------------------------------------
def settings_dir() -> Path:
    """Where the settings live: ``$N2X_SETTINGS_DIR``, else the per-user config folder of napari-n2x."""
    env = os.environ.get(SETTINGS_ENV)
    if env:
        return Path(env)
    try:
        from platformdirs import user_config_dir  # a dependency of napari
    except ImportError:  # napari-n2x's engine without napari: the settings still load and save
        return Path.home() / ".config" / APP_NAME
    return Path(user_config_dir(APP_NAME, appauthor=False))


def settings_path(kind: str) -> Path:
    """The JSON file of the ``kind`` settings (``"train"`` or ``"denoise"``)."""
    return settings_dir() / f"{kind}-settings.json"


def save_settings(settings: TrainSettings | DenoiseSettings, path: Path | None = None) -> Path | None:
    """Write the settings (atomically) to ``path`` (default: :func:`settings_path`); None when the folder cannot be
    written (the session goes on)."""
    path = path or settings_path(settings.KIND)
    text = json.dumps({"version": SETTINGS_VERSION, "kind": settings.KIND, "settings": settings.to_dict()}, indent=1)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        return None
    return path


def load_settings(cls: type, persist: bool = True) -> Any:
    """New ``cls`` settings with the values saved by an earlier session (a missing, unreadable or stale file is
    ignored); with ``persist``, every later change is saved."""
    settings = cls()
    path = settings_path(cls.KIND)  # fixed now: a session saves where it loaded from, whatever the environment later
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = None
    if isinstance(stored, dict) and stored.get("version") == SETTINGS_VERSION and stored.get("kind") == cls.KIND \
            and isinstance(stored.get("settings"), dict):
        settings.update_from(stored["settings"])
    if persist:
        settings.events.all.connect(lambda *_: save_settings(settings, path))
    return settings
