"""The training loop: batches from a :class:`PatchSampler`, a method's loss, a schedule fitted to the planned length.

:func:`fit` is a generator: it yields :class:`TrainProgress` after steps and validations, checks ``should_stop``
between steps, keeps the weights with the best validation loss, and returns ``(net, history)``. The learning rate
follows a short warm-up then a cosine decay over the planned length (steps, epochs or wall-clock seconds), so a
time-limited run anneals to the end of its budget instead of being cut mid-schedule. A method may ask for rare
gradient spikes to be clipped (:class:`GradientSpikeClip`, ``Method.gradient_spike_factor``).
"""
from __future__ import annotations

import copy
import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Generator, Iterable

import numpy as np
import torch
from torch import nn

from .data.patches import PatchSampler
from .device import autocast_dtype, precision_name
from .errors import TrainingError
from .methods.base import Method
from .nets import memory_format


def import_optimiser_support() -> None:
    """Import ``torch._dynamo`` now, in the calling thread.

    torch.optim imports torch._dynamo lazily on first use; when that first import happens inside a worker thread
    (napari, dask) it can fail half-way ("'prims' object has no attribute 'sum'"). It costs about a second, so it is
    not imported with this module (``n2x --help``, ``n2x info`` and ``n2x probe`` never need it): the training entry
    (:func:`n2x.api.train_iter`) and the front doors, before they start a training worker, call this instead.
    """
    import torch._dynamo  # noqa: F401


@dataclass
class TrainProgress:
    """One report from the training loop. Times in seconds; losses on normalised intensities."""

    step: int
    epoch: float
    loss: float
    val_loss: float | None
    best_val_loss: float | None
    elapsed: float
    fraction: float
    lr: float
    patches_per_second: float
    total_steps: int | None = None
    preview: np.ndarray | None = None
    done: bool = False
    stopped: bool = False
    history: dict = field(default_factory=dict, repr=False)
    #: which network of the run is training: 1, or more where a memorising run's budget trains others
    #: (:mod:`n2x.api._members`)
    network: int = 1


def _fold(x: torch.Tensor, fold: bool) -> torch.Tensor:
    x = x.reshape((-1, 1) + tuple(x.shape[2:])) if fold and x.shape[1] > 1 else x
    return x.contiguous(memory_format=memory_format(x.ndim - 2))


#: the share of the planned length the learning rate warms up over, and the share of it left at the end
#: (:func:`lr_at`; :class:`RewindAnneal` ends at the same floor)
WARMUP, LR_FLOOR = 0.03, 0.01


def cosine_decay(f: float, floor: float) -> float:
    """The factor of a cosine decay from 1 at ``f`` 0 to ``floor`` at ``f`` 1 (and after)."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, f)))


def lr_at(fraction: float, lr: float, warmup: float = WARMUP, floor: float = LR_FLOOR) -> float:
    """Warm-up then cosine decay to ``floor * lr`` at ``fraction`` 1."""
    if fraction < warmup:
        return lr * max(fraction / warmup, 0.05)
    return lr * cosine_decay((fraction - warmup) / (1 - warmup), floor)


#: the first step-counted validation, and the factor between the next ones (:class:`ValidationSchedule`)
FIRST_EARLY_VALIDATION, EARLY_VALIDATION_GROWTH = 25, 1.5
#: the share of the run's time past which the step-counted validations wait
MAX_VALIDATION_SHARE = 0.1
#: validations in a row worse than the best before a memorising run rewinds (:class:`RewindAnneal`), and the
#: shortest anneal after it, in steps
REWIND_PATIENCE, MIN_ANNEAL_STEPS = 3, 50


class ValidationSchedule:
    """When to validate: at every ``1 / n`` of the planned length, and also at steps ``25, 38, 57, 86...`` (growing
    by half each time).

    A fraction of the run alone misses the time scale of memorisation, which is counted in steps: a small image
    memorises within a few hundred steps whatever the budget. In 180 s (about 10 thousand steps on a 102 x 102
    image) the first validation at 5% came at step 475, already past the best weights, and ``bsn`` kept 23.2 dB;
    the same image validated every 75 steps kept step 150 at 28.4 dB. The step-counted validations grow
    geometrically and end once they are sparser than the fractions: a run of 10 thousand steps adds 10. They are
    skipped while validating has taken more than :data:`MAX_VALIDATION_SHARE` of the run's time (a 3D validation
    costs about ten of its training steps).
    """

    def __init__(self, n: int, first: int = FIRST_EARLY_VALIDATION, growth: float = EARLY_VALIDATION_GROWTH):
        self.n, self.growth = n, growth
        self.next_fraction, self.next_step = 1, first

    def due(self, step: int, fraction: float, validation_share: float = 0.0) -> bool:
        """Whether to validate after ``step`` steps at ``fraction`` of the planned length (never at its end, where
        the loop validates anyway), given the share of the time spent validating so far; a due validation moves
        both schedules on."""
        by_step = step >= self.next_step and validation_share <= MAX_VALIDATION_SHARE
        if fraction >= 1.0 or (fraction < self.next_fraction / self.n and not by_step):
            return False
        self.next_fraction = int(fraction * self.n) + 1
        while self.next_step <= step:
            self.next_step = math.ceil(self.next_step * self.growth)
        if fraction > 0 and self.next_step - step > step / (fraction * self.n):
            self.next_step = math.inf  # sparser than the fractions by now
        return True


class RewindAnneal:
    """A run that memorises (its held-out loss worse at each of the last :data:`REWIND_PATIENCE` validations than
    at its best while its training loss fell, and at least twice the best's steps done) goes back to its best weights and anneals the learning
    rate from there to the schedule's floor, in as many steps as it took to reach them (fewer where the budget has
    fewer left; at least :data:`MIN_ANNEAL_STEPS`), then stops.

    It waits for ``min_step`` steps (the method's :attr:`~n2x.methods.base.Method.min_passes_to_memorise` passes
    over the data): a held-out loss that rises earlier may be the peak learning rate's wavering, from which the run
    recovers, and where the network does memorise, the rewind after the wait goes back to the same best weights.

    A single small image memorises within a few hundred steps whatever the budget, so its best weights come from
    early in the cosine schedule, at a high learning rate, and the rest of the run is spent past them. An anneal
    that ends where memorising begins keeps what it learnt without the noise of a high rate: ``bsn`` on the camera
    100 x 100 crop (G25) kept step 437 of 10809 at 26.21 dB in 180 s; trained to 600 steps it ended at 26.55.
    """

    def __init__(self, floor: float = LR_FLOOR, min_step: int = 0):
        self.floor = floor
        self.min_step = int(min_step)
        self.start: int | None = None
        self.length = 0
        self.lr0 = 0.0

    def due(self, step: int, best_step: int, worse_in_a_row: int, past_warmup: bool, training_fell: bool) -> bool:
        """Whether to rewind now, after a validation at ``step`` (the best was at ``best_step``). ``training_fell``:
        the recent training loss is below what it was at the best. Memorising is the held-out loss rising *while*
        the training loss falls; where both rose, training is unstable, not memorising (a real 31 x 61 x 57 volume:
        both spiked at steps 38-57, which rewound to step 25 and ended the run at step 107, at a held-out loss of
        -0.518 where training on reached -0.588)."""
        return (self.start is None and past_warmup and training_fell and best_step > 0 and step >= self.min_step
                and step >= 2 * best_step and worse_in_a_row >= REWIND_PATIENCE)

    def begin(self, step: int, length: int, lr0: float) -> None:
        self.start, self.length, self.lr0 = step, max(int(length), MIN_ANNEAL_STEPS), lr0

    def lr(self, step: int) -> float:
        return self.lr0 * cosine_decay((step - self.start) / self.length, self.floor)

    def finished(self, step: int) -> bool:
        return self.start is not None and step - self.start >= self.length


class GradientSpikeClip:
    """Scales a step's gradient down to ``factor`` times the median gradient norm of the last ``window`` steps.

    A fixed clipping norm does not fit a whole run: the typical norm falls tenfold as the loss settles (bsn on
    camera/G25: medians about 3 early, 0.3 at the end), so a norm that tames the spikes early slows every later step.
    A limit relative to the recent median only touches the rare steps far above it, the ones that move the weights
    into a region training does not leave.
    """

    def __init__(self, factor: float, window: int = 100, min_history: int = 10):
        self.factor, self.window, self.min_history = float(factor), int(window), int(min_history)
        self.norms: deque[float] = deque(maxlen=self.window)
        self.clipped = 0

    def __call__(self, params: Iterable[torch.Tensor]) -> float:
        """Clip the gradients of ``params`` in place (those without one are skipped); return their norm before
        clipping."""
        enough = len(self.norms) >= self.min_history
        limit = self.factor * float(np.median(self.norms)) if enough else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
        if math.isfinite(norm):
            self.clipped += int(norm > limit)
            self.norms.append(norm)
        return norm


def fit(method: Method, net: nn.Module, sampler: PatchSampler, *, device: torch.device,
        steps: int | None = None, seconds: float | None = None, batch_size: int = 16, lr: float = 2e-3,
        seed: int | None = None, should_stop: Callable[[], bool] | None = None,
        preview: Callable[[nn.Module], np.ndarray | None] | None = None, preview_every: float = 2.0,
        n_validations: int = 20, report_every: float = 0.5, fold_channels: bool = False, val_repeats: int = 4,
        final_margin: float = 0.01, precision: str = "auto", max_steps: int | None = None,
        cap_floor: float = 0.0) -> Generator[TrainProgress, None, tuple[nn.Module, dict]]:
    """Train ``net`` with ``method``'s loss; exactly one of ``steps`` and ``seconds`` sets the length, and
    ``max_steps`` caps it, though never below ``cap_floor`` of that length (the schedule then fits the shorter
    length; ``history["capped"]`` says the cap ended the run).

    ``precision`` chooses mixed precision (:func:`n2x.device.autocast_dtype`: ``"auto"``, ``"float32"`` or
    ``"bfloat16"``). ``fold_channels`` trains a single-channel network on every channel of multichannel patches (channels
    independent): ``(B, C, ...)`` patches become ``(B * C, 1, ...)``.
    """
    if (steps is None) == (seconds is None):
        raise ValueError("give exactly one of steps and seconds")
    gen = torch.Generator().manual_seed(seed if seed is not None else int(np.random.SeedSequence().entropy % 2**63))
    net.to(device).train()
    net.to(memory_format=memory_format(sampler.ndim))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    spike_clip = GradientSpikeClip(method.gradient_spike_factor) if method.gradient_spike_factor else None
    amp = autocast_dtype(device, training=True, precision=precision, ndim=sampler.ndim)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    per_epoch = sampler.patches_per_epoch()
    history: dict = {"step": [], "loss": [], "elapsed": [], "val_step": [], "val_loss": [], "val_elapsed": [],
                     "lr": [], "precision": precision_name(amp)}
    if method.deterministic_loss:
        val_repeats = 1
    capped = max_steps is not None and (steps is None or max(max_steps, cap_floor * steps) < steps)
    if steps is not None and max_steps is not None:
        steps, max_steps = min(steps, max(max_steps, math.ceil(cap_floor * steps))), None
    if steps is not None:  # a validation every few steps at least, not every step of a short run
        n_validations = max(1, min(n_validations, steps // 5))
    best_state, best_val, best_step, best_lr, worse_in_a_row = None, math.inf, 0, lr, 0
    best_train = math.inf  # the recent training loss when the best validation came
    step, recent, t_train, t_val = 0, [], 0.0, 0.0
    rewind = (RewindAnneal(min_step=math.ceil(method.min_passes_to_memorise * per_epoch / batch_size))
              if method.rewinds_when_memorising else None)
    t0 = time.perf_counter()
    last_report = last_preview = -math.inf
    schedule = ValidationSchedule(n_validations)
    stopped = False

    def fraction() -> float:
        # Wall-clock, validation and previews included: "3 minutes" means 3 minutes.
        if steps is not None:
            return step / steps
        by_time = (time.perf_counter() - t0) / seconds
        if not max_steps:
            return min(1.0, by_time)
        # ends at the cap once the floor's time has passed; continuous and rising, so the schedule follows it
        return min(1.0, max(by_time, min(step / max_steps, by_time / cap_floor if cap_floor > 0 else math.inf)))

    def validate() -> float:
        net.eval()
        losses, weights = [], []
        # Several fixed draws of the method's randomness (masks, sub-samplings): a held-out stripe may hold only a
        # few patches, and one draw makes the loss too noisy to pick the best model by.
        with torch.no_grad():
            for rep, i in itertools.product(range(val_repeats), range(0, len(sampler.val_patches[0]), batch_size)):
                vgen = torch.Generator().manual_seed(4242 + 1000 * rep + i)
                batch = tuple(_fold(torch.from_numpy(v[i:i + batch_size]).to(device), fold_channels)
                              for v in sampler.val_patches)
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    losses.append(float(method.loss(net, batch, vgen)))
                weights.append(len(batch[0]))
        net.train()
        return float(np.average(losses, weights=weights))

    def report(val: float | None, done: bool = False) -> TrainProgress:
        prev = None
        nonlocal last_preview
        if preview is not None and (done or time.perf_counter() - last_preview >= preview_every):
            net.eval()
            prev = preview(net)
            net.train()
            last_preview = time.perf_counter()
        return TrainProgress(
            step=step, epoch=step * batch_size / per_epoch, loss=float(np.mean(recent)) if recent else math.nan,
            val_loss=val, best_val_loss=best_val if best_val < math.inf else None,
            elapsed=time.perf_counter() - t0, fraction=fraction(), lr=opt.param_groups[0]["lr"],
            patches_per_second=step * batch_size / max(time.perf_counter() - t0, 1e-9), total_steps=steps,
            preview=prev, done=done, stopped=stopped, history=history)

    try:
        while fraction() < 1.0 and not (rewind is not None and rewind.finished(step)):
            if should_stop is not None and should_stop():
                stopped = True
                break
            ts = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = rewind.lr(step) if rewind is not None and rewind.start is not None else lr_at(fraction(), lr)
            batch = tuple(_fold(torch.from_numpy(b).to(device, non_blocking=True), fold_channels)
                          for b in sampler.batch(batch_size))
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = method.loss(net, batch, gen)
            if not torch.isfinite(loss):
                raise TrainingError(f"training diverged at step {step} (loss {float(loss)}); lower the learning rate "
                                    "or check the data for extreme values")
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                if spike_clip is not None:
                    scaler.unscale_(opt)
                    spike_clip(net.parameters())
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                if spike_clip is not None:
                    spike_clip(net.parameters())
                opt.step()
            step += 1
            lv = float(loss.detach())
            t_train += time.perf_counter() - ts
            recent.append(lv)
            recent = recent[-20:]
            history["step"].append(step)
            history["loss"].append(lv)
            history["elapsed"].append(round(time.perf_counter() - t0, 3))
            history["lr"].append(opt.param_groups[0]["lr"])
            val = None
            if schedule.due(step, fraction(), t_val / max(time.perf_counter() - t0, 1e-9)):
                tv = time.perf_counter()
                val = validate()
                t_val += time.perf_counter() - tv
                history["val_step"].append(step)
                history["val_loss"].append(val)
                history["val_elapsed"].append(round(time.perf_counter() - t0, 3))
                if val < best_val:
                    best_val, best_step, best_lr, worse_in_a_row = val, step, opt.param_groups[0]["lr"], 0
                    best_train = float(np.mean(recent))
                    best_state = copy.deepcopy(net.state_dict())
                else:
                    worse_in_a_row += 1
                if rewind is not None and rewind.due(step, best_step, worse_in_a_row, fraction() > WARMUP,
                                                     float(np.mean(recent)) < best_train):
                    net.load_state_dict(best_state)
                    left = int(step * (1 - fraction()) / max(fraction(), 1e-9))  # steps the budget has left
                    rewind.begin(step, min(best_step, left), best_lr)
                    history["rewound_at"], history["rewound_to"] = step, best_step
            now = time.perf_counter()
            if val is not None or now - last_report >= report_every:
                last_report = now
                yield report(val)
    except torch.OutOfMemoryError:
        raise TrainingError(f"the {device.type} device ran out of memory; use a smaller batch size or patch size, "
                            "or train on the CPU") from None
    finally:
        sampler.close()
    val = None
    if step > 0:
        val = validate()
        history["val_step"].append(step)
        history["val_loss"].append(val)
        history["val_elapsed"].append(round(time.perf_counter() - t0, 3))
        # A run that reached its end has annealed its learning rate: its final weights are kept unless an earlier
        # checkpoint validated clearly better (overfitting), not by the noise of a small validation set.
        # (relative to the size of the loss: a likelihood loss can be negative)
        margin = 0.0 if stopped else final_margin
        if val <= best_val + margin * abs(best_val) or best_state is None:
            best_val, best_step, best_state = val, step, None
    if best_state is not None:
        net.load_state_dict(best_state)
    history["best_step"] = best_step
    history["best_val_loss"] = best_val if best_val < math.inf else None
    history["steps"] = step
    history["train_seconds"] = round(time.perf_counter() - t0, 3)
    history["step_seconds"] = round(t_train, 3)
    history["stopped"] = stopped
    # ended by the cap, not by the time, the user or a rewind
    history["capped"] = bool(capped and not stopped and "rewound_at" not in history
                             and (steps is not None or (step >= max_steps and time.perf_counter() - t0 < seconds)))
    history["clipped_steps"] = spike_clip.clipped if spike_clip is not None else 0
    history["patches_per_second"] = step * batch_size / max(history["train_seconds"], 1e-9)
    net.eval()
    net.to(memory_format=torch.contiguous_format)
    yield report(val, done=True)
    return net, history
