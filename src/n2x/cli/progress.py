"""Progress bars and exit codes of the command line."""
from __future__ import annotations

from typing import Any

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def progress_bar(total: float, desc: str, quiet: bool, unit: str = "s") -> Any:
    """A tqdm bar showing ``n/total unit`` (seconds, steps or chunks)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, leave=True, dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}{unit} [{elapsed}<{remaining}{postfix}]")
