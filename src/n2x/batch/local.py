"""Running a batch in this process: the files one after the other, with the model already loaded."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from .journal import Journal
from .one_file import denoise_file, task_spec
from .plan import PlanItem
from .results import BatchEvent


def run_here(todo: Sequence[PlanItem], model: Any, options: dict[str, Any], journal: Journal,
             emit: Callable[[BatchEvent], None]) -> None:
    """Denoise the planned files ``todo`` in order with ``model``, recording each result in ``journal`` and
    reporting progress through ``emit``. ``options``: see :func:`task_spec`."""
    for item in todo:
        emit(BatchEvent("file", item.index, item.file))
        res = denoise_file(task_spec(item, options), model,
                           lambda d, t, s, i=item: emit(BatchEvent("chunks", i.index, i.file, d, t, s)))
        journal.record(item, res)
        emit(BatchEvent("done", item.index, item.file, result=res))
