"""What a batch reports: one :class:`FileResult` per input, the :class:`BatchSummary` of the job, and the
:class:`BatchEvent` progress a front door shows while it runs."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import N2xError, Wording


@dataclass
class FileResult:
    """What happened to one input. ``status``: ``ok``, ``skipped`` (finished by an earlier run) or ``failed``;
    ``seconds``: wall-clock time of this file in this run; ``chunks``/``resumed_chunks``: output chunks in all and
    found finished from an earlier run. In a dry run ``status`` is the planned action (``denoise``, ``resume``,
    ``overwrite``, ``skip``, ``fail``). ``reason`` is in neutral words and ``hint`` (what to do) names options as
    ``{placeholders}``: :meth:`explain` words them for a front door."""

    file: str
    status: str
    seconds: float = 0.0
    output: str | None = None
    format: str | None = None
    reason: str | None = None
    chunks: int | None = None
    resumed_chunks: int | None = None
    hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def explain(self, words: Wording | None = None) -> str | None:
        """The reason with its hint, the options worded by ``words`` (see :meth:`n2x.errors.N2xError.render`)."""
        if not self.reason:
            return self.reason
        return N2xError(self.reason, hint=self.hint).render(words)


@dataclass
class BatchSummary:
    """The outcome of :func:`n2x.batch.run_batch`: one :class:`FileResult` per input, in input order.

    ``seconds``: wall-clock time of the whole job; ``workers``: worker processes (1: this process);
    ``summary_path``: the summary file written next to the outputs (None in a dry run).
    """

    results: list[FileResult]
    outdir: Path
    model: str
    model_sha256: str | None = None
    started: str = ""
    finished: str = ""
    seconds: float = 0.0
    workers: int = 1
    scheduler: str | None = None
    dry_run: bool = False
    interrupted: bool = False
    summary_path: Path | None = None

    @property
    def counts(self) -> dict[str, int]:
        """Number of files per status."""
        c: dict[str, int] = {}
        for r in self.results:
            c[r.status] = c.get(r.status, 0) + 1
        return c

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status in ("failed", "fail")]

    @property
    def exit_code(self) -> int:
        """0 when every file succeeded or was already done, 1 when some failed (or would fail in a dry run)."""
        return 1 if self.failed or self.interrupted else 0

    def to_dict(self) -> dict[str, Any]:
        return {"n2x_version": __version__, "model": self.model, "model_sha256": self.model_sha256,
                "outdir": str(self.outdir), "started": self.started, "finished": self.finished,
                "seconds": round(self.seconds, 3), "workers": self.workers, "scheduler": self.scheduler,
                "dry_run": self.dry_run, "interrupted": self.interrupted, "counts": self.counts,
                "files": [_reported(r) for r in self.results]}


@dataclass(frozen=True)
class BatchEvent:
    """Progress of a batch, for a front door to show.

    ``kind``: ``"start"`` (the job's ``total`` files are known; ``workers`` set), ``"file"`` (file ``index`` started),
    ``"chunks"`` (file ``index`` has ``done`` of ``total`` chunks finished, ``skipped`` of them from an earlier run),
    ``"done"`` (file ``index`` finished; ``result`` says how).
    """

    kind: str
    index: int = -1
    file: str = ""
    done: int = 0
    total: int = 0
    skipped: int = 0
    workers: int = 1
    result: FileResult | None = None


def _reported(result: FileResult) -> dict[str, Any]:
    """A result as the summary file reports it: the reason with its hint in the Python API's words."""
    d = result.to_dict()
    d["reason"] = result.explain()
    d.pop("hint")
    return d
