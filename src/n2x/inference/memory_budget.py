"""How the memory of one process (or one cluster worker) is shared between the network and the chunks in flight.

A volume run holds, besides the interpreter, torch and the model (:data:`BASELINE_BYTES`): the network's activations
of one batch of tiles, and the chunk data in flight (the window being read ahead, its normalised copy, the
prediction and up to :data:`n2x.inference.chunks.MAX_PENDING_WRITES` chunks waiting to be written). A budget of
``max_memory`` bytes (default :data:`CPU_WORKER_MEMORY` on a CPU; the free device memory for the activations on a
GPU) is split between the two, and the tile, batch and chunk sizes are chosen to fit (:mod:`.volume_plan`). A 3D
model, whose activations per voxel are large, gets smaller tiles rather than more memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: default budget of one CPU process or worker (bytes)
CPU_WORKER_MEMORY = 1.5 * 2**30
#: resident memory of the interpreter, torch and a model, not available to a run (bytes)
BASELINE_BYTES = 450 * 2**20
#: share of the rest given to the activations of one network call on a CPU
ACTIVATION_SHARE = 0.4
#: float32 chunk-sized buffers alive at once: per sample of a run read together, its window, normalised window,
#: read-ahead window and prediction (:data:`RUN_COPIES`); then the pending writes and a pyramid block
CHUNK_COPIES = 9
#: the copies that scale with the samples read together (see :func:`run_window_bytes`)
RUN_COPIES = 4


@dataclass(frozen=True)
class MemoryBudget:
    """``activations``: bytes one network call may use (on the model's device); ``chunk_bytes``: float32 bytes of
    one chunk's input window (host RAM); ``total``: the budget they were derived from (bytes)."""

    activations: float
    chunk_bytes: float
    total: float


def _available_ram() -> float:
    try:
        import psutil

        return float(psutil.virtual_memory().available)
    except Exception:
        return 4.0 * 2**30


def memory_budget_for(device: Any, max_memory: float | None = None) -> MemoryBudget:
    """The split of ``max_memory`` bytes (None: the default for ``device``) for a run on ``device``.

    On CUDA the activations get half the free device memory (or half of ``max_memory`` when given) and the chunks
    the CPU default; on a CPU the activations get :data:`ACTIVATION_SHARE` of what remains above
    :data:`BASELINE_BYTES` (and at most a quarter of the available RAM), the chunks the rest.
    """
    host = float(max_memory) if max_memory is not None else CPU_WORKER_MEMORY
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        if max_memory is None:
            free, _ = torch.cuda.mem_get_info(device)
            activations = 0.5 * free
        else:
            activations = 0.5 * float(max_memory)
        host = CPU_WORKER_MEMORY
        return MemoryBudget(activations, max(host - BASELINE_BYTES, 64 * 2**20) / CHUNK_COPIES, float(host))
    spare = max(host - BASELINE_BYTES, 64 * 2**20)
    activations = min(ACTIVATION_SHARE * spare, 0.25 * _available_ram())
    return MemoryBudget(activations, (spare - activations) / CHUNK_COPIES, host)


def parse_memory(text: str | float | int | None) -> float | None:
    """``"1.5G"``, ``"800M"``, ``"2GiB"`` or a number of bytes as bytes (None stays None); ValueError otherwise."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    if t and t[-1] in units:
        return float(t[:-1]) * units[t[-1]]
    return float(t)


def run_window_bytes(chunk_bytes: float, pending_writes: int) -> float:
    """Bytes the float32 input windows of one run of samples may take (raw and normalised copies together), so that
    the four copies per sample (:data:`RUN_COPIES`), ``pending_writes`` chunks waiting to be written and one pyramid
    block stay within :data:`CHUNK_COPIES` chunk budgets of ``chunk_bytes``."""
    return 2 * chunk_bytes * max(1, CHUNK_COPIES - pending_writes - 1) / RUN_COPIES
