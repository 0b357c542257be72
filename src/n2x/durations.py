"""Parsing of training lengths given as text: ``90s``, ``3m``, ``1h``, ``1h30m``, or a number of seconds."""
from __future__ import annotations

import re

from .errors import N2xError

_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``text``; :class:`N2xError` with an example when it cannot be read."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        t = text.strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d+)?)(h|min|m|sec|s)?", t)
        if not t or "".join(n + (u or "") for n, u in parts) != t:
            raise N2xError(f"cannot read the duration {text!r}; write it like 90s, 3m, 1h or 1h30m")
        seconds = sum(float(n) * _UNITS[u or "s"] for n, u in parts)
    if seconds <= 0:
        raise N2xError(f"the training time must be positive, not {text!r}")
    return seconds
