"""The budget a memorising run leaves trains further networks, whose predictions are averaged.

On a small image (a crop, one field of view) the all-pixel blind-spot method memorises the noise early, goes back to
its best weights, anneals from there and stops (:class:`n2x.training.RewindAnneal`): a 180 s run on a 100 x 100
image ends after about 30 s. Networks trained with other seeds make errors that differ from seed to seed (the same
settings scattered by 0.5-0.7 dB there), and the mean of their predictions keeps what they agree on: 5 members gained
0.5-0.7 dB over the mean of their single PSNRs (camera 100 x 100 crop, G25, two noise draws), 2 members most of it.
So, after a run that rewound, or that reached the method's cap on passes over the data
(:attr:`~n2x.methods.base.Method.max_epochs_per_network`: one image holds a limited amount to learn, and past it a
network memorises), further members train while the budget left is at least a quarter of what the first one took,
up to :data:`MAX_MEMBERS` (inference costs one pass per member); where the method says so, each on at least an
equal share of the budget (:func:`member_cap_floor`). A run that ended with its budget is left as it is.

The members are not all equal: a full-size image whose held-out loss wavered at the peak learning rate can rewind
early, to an undertrained network, and the next member then trains on the rest of the budget (moon/G25, 3000 steps:
the first network 31 dB, the second 36.2, their mean 35.0). So a member joins the average only where the held-out
pixels do not show that it makes it worse (:func:`choose_members`).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Generator

import numpy as np
from torch import nn

from ..nets.ensemble import NetworkEnsemble
from ..training import TrainProgress

#: the most networks one model averages (inference costs one pass of each)
MAX_MEMBERS = 4
#: a further member trains only on at least this share of what the first one took. Shorter members still help the
#: average: after a first network of 2400 steps (moon, 1 thread), one of 600 steps (a quarter) raised the PSNR by
#: 0.26 dB with G25 and 0.22 with PG, one of 1000 steps by 0.21, and by 0.41 and 0.11 with PG (two seeds);
#: :func:`choose_members` drops one that does not help (camera/G25: the 1000-step member). Half, before, left up
#: to 55 s of a 180 s budget unused.
MIN_MEMBER_SHARE = 0.25
#: a member that makes the average's held-out error worse by more than this many standard errors is left out
WORSE_BY = 2.0

#: ``(index, steps left or None, seconds left or None) -> fit generator`` of a new member
MemberTrainer = Callable[[int, "int | None", "float | None"], Generator[TrainProgress, None, tuple[nn.Module, dict]]]
#: ``net -> (prediction, noisy value)`` at the held-out pixels, flat, the prediction blind to its pixel; or None
HeldOutPredictions = Callable[[nn.Module], "tuple[np.ndarray, np.ndarray] | None"]


def fit_members(first: Generator[TrainProgress, None, tuple[nn.Module, dict]], train_member: MemberTrainer, *,
                member_config: dict, steps: int | None, seconds: float | None,
                preview: Callable[[nn.Module], np.ndarray | None] | None = None,
                held_out: HeldOutPredictions | None = None,
                ) -> Generator[TrainProgress, None, tuple[nn.Module, dict]]:
    """Run ``first`` (a :func:`n2x.training.fit` generator); while :func:`wants_another` says so, train another
    member through ``train_member`` with what is left of ``steps`` or ``seconds``. Progress is reported over the
    whole budget (steps and seconds counted from the first member's start); returns ``(net, history)``: the single
    network and its history, or a :class:`NetworkEnsemble` of ``member_config`` networks and the merged history
    (:func:`merge_histories`). A later member that the user stopped part-way is left out (``history["stopped"]``
    says the user stopped), and so are those :func:`choose_members` drops, given ``held_out``."""
    t0 = time.perf_counter()
    nets: list[nn.Module] = []
    histories: list[dict] = []
    gen, done_steps = first, 0
    while True:
        (net, hist), last = yield from _reported_over_budget(gen, len(nets) + 1, done_steps,
                                                             time.perf_counter() - t0, steps, seconds)
        nets.append(net)
        histories.append(hist)
        done_steps += hist["steps"]
        steps_left = steps - done_steps if steps is not None else None
        seconds_left = seconds - (time.perf_counter() - t0) if seconds is not None else None
        if not wants_another(histories, steps_left, seconds_left):
            break
        gen = train_member(len(nets), steps_left, seconds_left)
    stopped = bool(histories[-1].get("stopped"))
    if stopped and len(nets) > 1:  # stopped by the user part-way: a half-trained network would pull the mean down
        nets.pop()
        histories.pop()
    if len(nets) == 1:
        yield dataclasses.replace(last, stopped=stopped)
        return nets[0], {**histories[0], "stopped": stopped}
    predictions = [held_out(net) for net in nets] if held_out is not None else []
    kept = (choose_members(predictions) if predictions and all(p is not None for p in predictions)
            else list(range(len(nets))))
    history = merge_histories(histories, time.perf_counter() - t0, kept)
    history["stopped"] = stopped
    final = NetworkEnsemble.of([nets[i] for i in kept], member_config).eval() if len(kept) > 1 else nets[kept[0]]
    yield dataclasses.replace(last, best_val_loss=history["best_val_loss"], fraction=1.0, stopped=stopped,
                              preview=preview(final) if preview is not None else None, history=history)
    return final, history


def choose_members(predictions: list[tuple[np.ndarray, np.ndarray]]) -> list[int]:
    """The indices (ascending) of the members to average, from their held-out predictions ``(prediction, noisy
    value)``: ranked by how close each one's own is to the noisy values, members join the average one by one until
    one makes it clearly worse, by more than :data:`WORSE_BY` standard errors of the change.

    Each prediction is blind to its pixel, so its mean squared difference from the noisy values is its error against
    the clean image plus the noise variance, the same for every candidate: the comparison is unbiased, for any
    zero-mean noise independent from pixel to pixel. A member joins unless the held-out pixels show that it hurts:
    the average of members about as good as each other is never much worse than they are (its squared error is at
    most the mean of theirs), and the held-out pixels measure a small gain only roughly (moon/G25: about two
    standard errors for +0.3 dB)."""
    noisy = predictions[0][1].astype(np.float64)
    own = [float(np.mean((p.astype(np.float64) - noisy) ** 2)) for p, _ in predictions]
    order = [int(i) for i in np.argsort(own, kind="stable")]
    kept, total = [order[0]], predictions[order[0]][0].astype(np.float64)
    error = (total - noisy) ** 2
    for i in order[1:]:
        candidate = (total + predictions[i][0]) / (len(kept) + 1)
        change = (candidate - noisy) ** 2 - error
        if change.mean() > WORSE_BY * change.std() / np.sqrt(change.size):
            break
        kept.append(i)
        total, error = total + predictions[i][0], (candidate - noisy) ** 2
    return sorted(kept)


def member_cap_floor(budget: float, left: float) -> float:
    """The share of ``left`` (steps or seconds of the budget still to spend) below which the cap on passes over the
    data (:func:`n2x.training.fit`'s ``cap_floor``) may not cut the next network: a :data:`MAX_MEMBERS`-th of the
    whole ``budget``, so that the members share it equally.

    For a method whose networks share the budget (:attr:`~n2x.methods.base.Method.members_share_budget`). A network
    on a small image reaches the cap on passes within seconds (the 100 x 100 camera crop: 330 steps), and the floor,
    not the cap, sets how long it trains. With fresh noise in its input (``bsn``'s input noise) it keeps learning
    past a quarter of the budget without memorising, where a floor taken of what was left gave each member less than
    the one before (45, 34, 25 and 19 s of 180 s, the last three still improving when cut) and left 57 s unused.
    Measured: docs/methods.md, "Members share the budget"."""
    if left <= 0:
        return 1.0
    return min(1.0, budget / MAX_MEMBERS / left)


def wants_another(histories: list[dict], steps_left: int | None, seconds_left: float | None) -> bool:
    """Whether to train another member: the first one memorised (rewound) or reached the method's cap on passes
    over the data (``capped``), none was stopped by the user, fewer than :data:`MAX_MEMBERS` exist, and the budget
    left is at least :data:`MIN_MEMBER_SHARE` of what the first member took."""
    first = histories[0]
    ended_early = first.get("rewound_at") or first.get("capped")
    if not ended_early or any(h.get("stopped") for h in histories) or len(histories) >= MAX_MEMBERS:
        return False
    if steps_left is not None:
        return steps_left >= MIN_MEMBER_SHARE * first["steps"]
    return seconds_left is not None and seconds_left >= MIN_MEMBER_SHARE * first["train_seconds"]


def merge_histories(histories: list[dict], seconds: float, kept: list[int] | None = None) -> dict:
    """One history for the members trained one after the other: the curves concatenated with steps and times
    counted from the first member's start; ``steps`` their total; ``members`` each one's own summary (steps, best
    step, where it rewound, whether the model ``kept`` it: default all); ``best_val_loss`` the mean of the kept
    members' best (each on the same held-out pixels)."""
    kept = list(range(len(histories))) if kept is None else kept
    merged: dict = {k: [] for k in ("step", "loss", "elapsed", "val_step", "val_loss", "val_elapsed", "lr")}
    steps, t = 0, 0.0
    summary = []
    for h in histories:
        for key, shift in (("step", steps), ("val_step", steps), ("elapsed", t), ("val_elapsed", t)):
            merged[key] += [v + shift for v in h[key]]
        for key in ("loss", "val_loss", "lr"):
            merged[key] += list(h[key])
        summary.append({**{k: h.get(k) for k in ("steps", "best_step", "best_val_loss", "rewound_at", "rewound_to",
                                                 "capped", "train_seconds")}, "kept": len(summary) in kept})
        steps += h["steps"]
        t += h["train_seconds"]
    first = histories[0]
    bests = [h["best_val_loss"] for i, h in enumerate(histories) if i in kept and h.get("best_val_loss") is not None]
    merged.update(
        precision=first.get("precision"), members=summary, steps=steps, best_step=first["best_step"],
        best_val_loss=float(np.mean(bests)) if bests else None, rewound_at=first.get("rewound_at"),
        rewound_to=first.get("rewound_to"), capped=first.get("capped"), train_seconds=round(seconds, 3),
        step_seconds=round(sum(h["step_seconds"] for h in histories), 3),
        clipped_steps=sum(h.get("clipped_steps", 0) for h in histories),
        patches_per_second=float(np.mean([h["patches_per_second"] for h in histories])))
    return merged


def _reported_over_budget(gen: Generator, network: int, steps_before: int, seconds_before: float,
                          steps: int | None, seconds: float | None
                          ) -> Generator[TrainProgress, None, tuple[tuple, TrainProgress]]:
    """Pass on the progress of ``gen`` (training network number ``network``) with steps, epochs, time and fraction
    counted over the whole budget, except its final report (``done``), which is returned with ``gen``'s value:
    whether training ends there is decided after."""
    last = None
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value, last
        step, elapsed = p.step + steps_before, p.elapsed + seconds_before
        fraction = step / steps if steps is not None else min(1.0, elapsed / seconds) if seconds else p.fraction
        epoch = p.epoch * step / p.step if p.step else p.epoch  # an epoch is a fixed number of steps
        p = dataclasses.replace(p, step=step, epoch=epoch, elapsed=elapsed, fraction=fraction, total_steps=steps,
                                network=network)
        if p.done:
            last = p
        else:
            yield p
