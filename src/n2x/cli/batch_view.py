"""How the command line shows a batch: tqdm bars while it runs (:class:`BatchBars`) and the plain-text summary
table at the end (:func:`summary_table`). Presentation only: the engine reports through :class:`n2x.api.BatchEvent`
and :class:`n2x.api.BatchSummary`."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

from ..api import BatchEvent, BatchSummary

#: characters of a file name shown before a file's chunk bar
NAME_WIDTH = 30


class BatchBars:
    """tqdm bars for :class:`BatchEvent`: an overall bar (files) and one bar per file in progress (chunks), each
    file's bar in a free line below the overall one. A failed file is reported on stderr as it finishes."""

    def __init__(self, disable: bool = False, words: Mapping[str, str] | None = None):
        self.disable = disable
        self.words = words  # how the CLI words a failure's hint (flags)
        self.overall: Any = None
        self.bars: dict[int, Any] = {}
        self.slots: dict[int, int] = {}
        self.free: list[int] = []

    def __call__(self, ev: BatchEvent) -> None:
        from tqdm.auto import tqdm

        if self.disable:
            return
        if ev.kind == "start":
            self.overall = tqdm(total=ev.total, desc="files", unit=" file", position=0, dynamic_ncols=True)
            self.free = list(range(ev.workers, 0, -1))
        elif ev.kind == "file" and ev.index not in self.bars:
            pos = self.free.pop() if self.free else len(self.bars) + 1
            self.slots[ev.index] = pos
            name = Path(ev.file).name
            self.bars[ev.index] = tqdm(total=0, desc=name[:NAME_WIDTH], unit=" chunk", position=pos, leave=False,
                                       dynamic_ncols=True)
        elif ev.kind == "chunks" and ev.index in self.bars:
            bar = self.bars[ev.index]
            bar.total, bar.n = ev.total, ev.done
            if ev.skipped:
                bar.set_postfix({"resumed": ev.skipped}, refresh=False)
            bar.refresh()
        elif ev.kind == "done":
            bar = self.bars.pop(ev.index, None)
            if bar is not None:
                self.free.append(self.slots.pop(ev.index))
                bar.close()
            if self.overall is not None:
                self.overall.update(1)
                if ev.result is not None and ev.result.status == "failed":
                    self.overall.write(f"n2x: {ev.file}: failed: {ev.result.explain(self.words)}", file=sys.stderr)

    def close(self) -> None:
        """Close every bar (after the run, or when it is interrupted)."""
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
        if self.overall is not None:
            self.overall.close()


def summary_table(summary: BatchSummary, words: Mapping[str, str] | None = None) -> str:
    """``summary`` as a plain-text table: one line per file (file, status, seconds, output, reason), then the
    counts per status and the job's wall-clock time."""
    head = ("file", "status", "seconds", "output", "reason")
    rows = [(r.file, r.status, f"{r.seconds:.1f}", r.output or "-", r.explain(words) or "") for r in summary.results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    widths[-1] = 0  # the reason is last and not padded: it may be long

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    out = [line(head), line(tuple("-" * max(w, 6) for w in widths))] + [line(r) for r in rows]
    counts = ", ".join(f"{n} {k}" for k, n in sorted(summary.counts.items()))
    verb = "would be" if summary.dry_run else "in"
    out.append(f"{len(summary.results)} file(s) {verb} {summary.seconds:.1f} s: {counts}"
               + (" (interrupted)" if summary.interrupted else ""))
    return "\n".join(out)
