"""The training loop's safeguards (n2x.training)."""
import math

import torch

from n2x.training import GradientSpikeClip, ValidationSchedule, lr_at


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
