"""Running a progress generator to its end."""
from __future__ import annotations

from typing import Callable, Generator, TypeVar

P = TypeVar("P")
R = TypeVar("R")


def drain(gen: Generator[P, None, R], on_progress: Callable[[P], None] | None = None) -> R:
    """Run ``gen`` to its end, passing each yielded report to ``on_progress``; return the generator's value."""
    while True:
        try:
            report = next(gen)
        except StopIteration as end:
            return end.value
        if on_progress is not None:
            on_progress(report)
