"""Integer arithmetic the tiling, the methods and the model share."""
from __future__ import annotations


def round_up(n: int, m: int) -> int:
    """The smallest multiple of ``m`` that is at least ``n`` (tile and halo sizes on a network's multiple)."""
    return -(-int(n) // m) * m
