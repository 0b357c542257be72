"""The summary file ``OUTDIR/n2x-summary.json``: a report of the job (one entry per finished file), rewritten
atomically after each file so that a killed run leaves an accurate account of what it finished.

It is a report only: whether an output may be skipped or resumed is read from the output itself (its fingerprint),
never from this file, which may be deleted at any time.
"""
from __future__ import annotations

import json
from typing import Sequence

from .._files import atomic_path
from .plan import PlanItem
from .results import BatchSummary, FileResult

SUMMARY_NAME = "n2x-summary.json"


class Journal:
    """The results of a running job, by plan index, and the summary file they are written to."""

    def __init__(self, summary: BatchSummary, plan: Sequence[PlanItem]):
        self.summary = summary
        self.plan = plan
        self.done: dict[int, FileResult] = {}

    def record(self, item: PlanItem, result: FileResult) -> None:
        """Keep the result of ``item`` and rewrite the summary file."""
        self.done[item.index] = result
        self.write()

    def write(self) -> None:
        """Write the summary (the files finished so far, in input order) atomically; nothing in a dry run."""
        if self.summary.dry_run:
            return
        data = self.summary.to_dict()
        data["files"] = [self.done[i.index].to_dict() for i in self.plan if i.index in self.done]
        data["counts"] = {}
        for r in data["files"]:
            data["counts"][r["status"]] = data["counts"].get(r["status"], 0) + 1
        path = self.summary.outdir / SUMMARY_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        self.summary.summary_path = path
