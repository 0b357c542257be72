"""Options declared as data: the one place where an option's type, default, range and help live.

Methods declare their options (:attr:`n2x.methods.base.Method.options`) and the api declares the options common to
every training run (:data:`n2x.api.TRAIN_OPTIONS`). The CLI's flags and the napari widgets' controls are generated
from these declarations, and :meth:`Option.parse` checks a value the same way for every front door.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

from .errors import OptionError

AUTO = "auto"
TYPES = ("int", "float", "str", "bool", "shape", "image")


@dataclass(frozen=True)
class Option:
    """One option of a method or of a training run.

    ``name``: the keyword (``mask_fraction``); the CLI flag is ``--mask-fraction``. ``type``: ``"int"``,
    ``"float"``, ``"str"``, ``"bool"``, ``"shape"`` (pixels: one positive size for every spatial axis or one per
    axis, as an int, a sequence or text such as ``"16, 64, 64"``) or ``"image"`` (an array: a file on the CLI, a
    layer in napari).
    ``default``: the value used when the option is not given; ``None`` means "decided by the method" (shown as
    ``auto``). ``choices``: the allowed values; ``range``: inclusive ``(low, high)`` for numbers. ``auto``: the
    text ``"auto"`` is also accepted (the method decides, e.g. from the noise probe). ``design``: the design the
    option applies to (AP-BSN's ``"box"`` or ``"pd"``), ``None`` for all. ``data``: a data option of
    :func:`n2x.train` (``target``, ``pairs``, ``along``) rather than a parameter of the method. ``label``: the
    widget's label; ``unit``: the unit shown after a number (``"px"``, ``"s"``...); ``advanced``: kept in the
    widget's advanced section.
    """

    name: str
    type: str
    default: Any
    help: str
    label: str = ""
    choices: tuple = ()
    range: tuple[float, float] | None = None
    auto: bool = False
    design: str | None = None
    data: bool = False
    unit: str = ""
    advanced: bool = False

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"option {self.name!r}: type must be one of {TYPES}, not {self.type!r}")

    @property
    def flag(self) -> str:
        """The command-line flag: ``--mask-fraction``."""
        return "--" + self.name.replace("_", "-")

    @property
    def title(self) -> str:
        """The widget's label: ``label`` or the name in words."""
        return self.label or self.name.replace("_", " ").capitalize()

    def with_default(self, default: Any) -> "Option":
        """The same option with another default (a variant of a method, e.g. N2V2's median replacement)."""
        return replace(self, default=default)

    def parse(self, value: Any, owner: str = "") -> Any:
        """``value`` checked and converted to the option's type; :class:`OptionError` says what is wrong.

        ``None`` stays ``None`` (not given). Text from a command line or a text field is converted (``"3"`` for an
        int, ``"auto"`` where :attr:`auto` allows it: ``None`` when the default is ``None``, else ``"auto"``).
        """
        if value is None:
            return None
        lead = f"{owner}: " if owner else ""  # the name follows, so a message reads "...: precision must be ..."
        if self.auto and isinstance(value, str) and value.strip().lower() == AUTO:
            # "auto" is the default where the default is "decided by the method" (None)
            return None if self.default is None else AUTO
        if self.type == "shape":
            try:
                return parse_shape(value, self.name)
            except OptionError as exc:
                raise OptionError(f"{lead}{exc}") from None
        if self.type == "image":
            # one array, or a list of arrays: one per training image (N2N's target)
            items = list(value) if isinstance(value, (list, tuple)) else [value]
            if not items or not all(hasattr(v, "shape") for v in items):
                raise OptionError(f"{lead}{self.name} must be an image (an array), not {type(value).__name__}")
            return value
        try:
            if self.type == "bool":
                out: Any = _as_bool(value)
            elif self.type == "int":
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                out = int(value)
            elif self.type == "float":
                out = float(value)
            else:
                out = str(value).strip().lower() if self.choices else str(value)
        except (TypeError, ValueError):
            kind = {"int": "a whole number", "float": "a number", "bool": "true or false"}.get(self.type, "text")
            extra = " or 'auto'" if self.auto else ""
            raise OptionError(f"{lead}{self.name} must be {kind}{extra}, not {value!r}") from None
        if self.choices and isinstance(out, str) and out not in self.choices:
            # text is matched without case and comes back as declared (N2N's along: "t" -> "T")
            out = next((c for c in self.choices if str(c).lower() == out.lower()), out)
        if self.choices and out not in self.choices:
            raise OptionError(f"{lead}{self.name} must be one of {', '.join(map(str, self.choices))}, not {value!r}")
        if self.range is not None and self.type in ("int", "float"):
            lo, hi = self.range
            if not lo <= out <= hi:
                raise OptionError(f"{lead}{self.name} must be between {lo:g} and {hi:g}, not {value!r}")
        return out


def parse_shape(value: Any, what: str = "size") -> int | tuple[int, ...] | None:
    """A size in pixels: ``None``/``""``/``"auto"`` -> None, ``256``/``"256"`` -> 256, ``"32, 256, 256"`` or
    ``"32x256x256"`` or ``[32, 256, 256]`` -> (32, 256, 256); :class:`OptionError` otherwise."""
    import re

    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", AUTO):
            return None
        parts: list[Any] = [p for p in re.split(r"[,x× ]+", text) if p]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    try:
        values = tuple(int(p) for p in parts)
        if any(float(p) != v for p, v in zip(parts, values)):
            raise ValueError
    except (TypeError, ValueError):
        raise OptionError(f"cannot read the {what} {value!r}; write auto, one size (256) or one per axis "
                          "(32, 256, 256)") from None
    if not values or any(v <= 0 for v in values):
        raise OptionError(f"the {what} must be positive sizes in pixels, not {value!r}")
    return values[0] if len(values) == 1 else values


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def parse_options(declared: Sequence[Option], given: dict[str, Any], owner: str) -> dict[str, Any]:
    """Check ``given`` against ``declared``: every key must be declared (a near miss is suggested) and every value
    valid. Returns the parsed values of the options given (``None`` values dropped)."""
    by_name = {o.name: o for o in declared}
    out = {}
    for key, value in given.items():
        opt = by_name.get(key)
        if opt is None:
            raise OptionError(unknown_option_message(key, by_name, owner))
        parsed = opt.parse(value, owner)
        if parsed is not None:
            out[key] = parsed
    return out


def unknown_option_message(key: str, known: Iterable[str], owner: str) -> str:
    """``owner has no option KEY`` with the closest known name suggested and the known ones listed."""
    import difflib

    names = sorted(known)
    close = difflib.get_close_matches(key, names, n=1)
    text = f"{owner} has no option {key!r}"
    if close:
        text += f" (did you mean {close[0]!r}?)"
    return text + (f"; its options are {', '.join(names)}" if names else "; it takes no options")
