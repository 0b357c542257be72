"""The training loop's safeguards (n2x.training)."""
import math

import numpy as np
import pytest
import torch

from n2x.data.axes import make_layout
from n2x.data.patches import PatchSampler, single_source
from n2x.methods.base import Method
from n2x.training import GradientSpikeClip, ValidationSchedule, fit, lr_at


def _step(clip: GradientSpikeClip, p: torch.Tensor, norm: float) -> float:
    p.grad = torch.full_like(p, norm / math.sqrt(p.numel()))
    return clip([p])


def test_a_gradient_spike_is_clipped_relative_to_the_recent_steps():
    clip = GradientSpikeClip(3.0, window=50, min_history=10)
    p = torch.zeros(16, requires_grad=True)
    for i in range(10):  # too little history: nothing is clipped, not even a large norm
        assert abs(_step(clip, p, 1.0 if i else 50.0) - (1.0 if i else 50.0)) < 1e-4
    assert clip.clipped == 0
    before = _step(clip, p, 200.0)
    assert abs(before - 200.0) < 1e-3
    assert abs(float(p.grad.norm()) - 3.0) < 1e-4, "the spike is scaled to 3 x the median of recent norms"
    assert clip.clipped == 1
    _step(clip, p, 2.5)  # an ordinary step keeps its gradient
    assert abs(float(p.grad.norm()) - 2.5) < 1e-4 and clip.clipped == 1
    for _ in range(60):  # the limit follows the norms as they fall
        _step(clip, p, 0.1)
    _step(clip, p, 1.0)
    assert abs(float(p.grad.norm()) - 0.3) < 1e-4 and clip.clipped == 2


def test_learning_rate_warms_up_then_anneals():
    assert lr_at(0.0, 1.0) < 0.1
    assert abs(lr_at(0.03, 1.0) - 1.0) < 1e-6
    assert lr_at(0.5, 1.0) < lr_at(0.2, 1.0) < 1.0
    assert abs(lr_at(1.0, 1.0) - 0.01) < 1e-6


def test_validations_resolve_the_first_hundreds_of_steps_of_a_long_run():
    schedule = ValidationSchedule(20)
    steps = [s for s in range(1, 10001) if schedule.due(s, s / 10000)]
    early = [s for s in steps if s < 500]
    assert len(early) >= 6 and early[0] <= 30, "memorisation of a small image starts within a few hundred steps"
    assert all(b / a <= 1.6 for a, b in zip(early, early[1:]))
    assert all(s in steps for s in range(500, 10000, 500)), "every 5% of the run is still validated"
    assert len(steps) <= 35 and 10000 not in steps, "the loop validates the end itself"
    costly = ValidationSchedule(20)  # validating has taken 30% of the time: only the fractions remain
    assert [s for s in range(1, 1001) if costly.due(s, s / 10000, 0.3)] == [500, 1000]
    short = ValidationSchedule(20)
    assert [s for s in range(1, 101) if short.due(s, s / 100)] == list(range(5, 100, 5))


def _run(gen):
    """Drive the training generator to its end; its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def scalar_problem() -> tuple[PatchSampler, torch.nn.Module]:
    """A sampler over a 64 x 64 noise image (16 x 16 patches) and a network of one weight ``w`` at 0: what the stub
    methods below train (their losses depend on ``w`` only)."""
    image = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    net = torch.nn.Module()
    net.w = torch.nn.Parameter(torch.zeros(1))
    return PatchSampler([single_source(image, make_layout(image.shape, "YX"))], (16, 16), seed=0), net


class _Drifting(Method):
    """A loss whose training optimum (w = 10) lies past its held-out one (w = 3): a run that memorises."""

    name = "drifting"
    deterministic_loss = True
    rewinds_when_memorising = True

    def loss(self, net, patches, generator):
        return (net.w - (10.0 if net.training else 3.0)).pow(2).sum() + 0 * patches[0].mean()


def test_a_memorising_run_rewinds_to_its_best_weights_and_anneals_from_there():
    sampler, net = scalar_problem()
    net, history = _run(fit(_Drifting(), net, sampler, device=torch.device("cpu"), steps=2000, lr=0.1,
                                   batch_size=2, seed=0))
    assert "rewound_at" in history, "the held-out loss rose for three validations: the run went back"
    assert history["rewound_at"] >= 2 * history["rewound_to"]
    assert history["steps"] < 2000 and history["steps"] <= history["rewound_at"] + max(history["rewound_to"], 50)
    lrs = history["lr"][history["rewound_at"]:]
    assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.1 * lrs[0], "annealed from the best"
    assert abs(float(net.w.detach()) - 3.0) < 1.0, "the weights kept are the held-out loss's best, not the memorised ones"


class _DriftingLate(_Drifting):
    """:class:`_Drifting` for a method that does not rewind before 100 passes over the data."""

    name = "drifting_late"
    min_passes_to_memorise = 100


def test_a_run_does_not_rewind_before_the_methods_passes_to_memorise():
    sampler, net = scalar_problem()
    wait = math.ceil(100 * sampler.patches_per_epoch() / 2)  # steps of 100 passes at 2 patches per step
    _, early = _run(fit(_Drifting(), scalar_problem()[1], sampler, device=torch.device("cpu"), steps=4000, lr=0.1,
                        batch_size=2, seed=0))
    assert early["rewound_at"] < wait, "without the wait the run rewinds early"
    net, history = _run(fit(_DriftingLate(), net, sampler, device=torch.device("cpu"), steps=4000, lr=0.1,
                            batch_size=2, seed=0))
    assert wait <= history["rewound_at"] < 4000, "it waited for the passes, then went back"
    assert history["rewound_to"] == early["rewound_to"], "to the same best weights"
    assert abs(float(net.w.detach()) - 3.0) < 1.0


class _Unstable(Method):
    """Training and held-out loss both optimal at w = 3, and both raised by 100 from training step 30 to 100: an
    unstable stretch (as a high learning rate gives), not memorising."""

    name = "unstable"
    deterministic_loss = True
    rewinds_when_memorising = True

    def __init__(self):
        super().__init__()
        self.steps = 0

    def loss(self, net, patches, generator):
        if net.training:
            self.steps += 1
        spike = 100.0 if 30 <= self.steps <= 100 else 0.0
        return (net.w - 3.0).pow(2).sum() + spike + 0 * patches[0].mean()


def test_an_unstable_stretch_is_not_taken_for_memorising():
    sampler, net = scalar_problem()
    # a small learning rate: w moves towards 3 all run long and both losses fall but for the stretch
    net, history = _run(fit(_Unstable(), net, sampler, device=torch.device("cpu"), steps=400, lr=0.01,
                            batch_size=2, seed=0))
    spiked = [s for s, v in zip(history["val_step"], history["val_loss"]) if v > 50]
    assert len(spiked) >= 3 and spiked[2] >= 2 * 25, "three worse validations in a row: the old rule rewound here"
    assert "rewound_at" not in history and history["steps"] == 400
    assert 1.5 < float(net.w.detach()) < 3.0



class _Settling(Method):
    """Training and held-out loss both optimal at w = 3: a run that neither memorises nor spikes."""

    name = "settling"
    deterministic_loss = True

    def loss(self, net, patches, generator):
        return (net.w - 3.0).pow(2).sum() + 0 * patches[0].mean()


@pytest.mark.parametrize("length", [{"steps": 1000}, {"seconds": 60.0}])
def test_a_cap_on_steps_shortens_the_schedule_to_fit_it(length):
    sampler, net = scalar_problem()
    net, history = _run(fit(_Settling(), net, sampler, device=torch.device("cpu"), lr=0.1, batch_size=2, seed=0,
                            max_steps=120, **length))
    assert history["steps"] == 120 and history["capped"], "the cap ended the run, well inside its time"
    lrs = history["lr"]
    assert lrs[-1] < 0.05 * max(lrs), "the learning rate annealed over the capped length, not the budget"
    assert history["train_seconds"] < 30
    _, history = _run(fit(_Settling(), scalar_problem()[1], sampler, device=torch.device("cpu"), lr=0.1,
                          batch_size=2, seed=0, steps=100, max_steps=120))
    assert history["steps"] == 100 and not history["capped"], "a cap past the run's length changes nothing"
    _, history = _run(fit(_Settling(), scalar_problem()[1], sampler, device=torch.device("cpu"), lr=0.1,
                          batch_size=2, seed=0, steps=1000, max_steps=120, cap_floor=0.25))
    assert history["steps"] == 250 and history["capped"], "the cap never cuts below its floor's share of the run"
