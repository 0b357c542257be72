"""A run that memorises leaves budget, which trains further networks; the model averages their predictions
(n2x.api._members, n2x.nets.ensemble)."""
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

import n2x
from n2x.api._members import MAX_MEMBERS, choose_members, fit_members, member_cap_floor, wants_another
from n2x.model import Model
from n2x.nets import build_network, register_network
from n2x.nets.ensemble import NetworkEnsemble
from n2x.training import fit

from test_training_loop import _Drifting, _Settling, scalar_problem


@register_network("scalar_for_tests")
class _Scalar(nn.Module):
    """One weight: what :class:`_Drifting`'s loss trains."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def receptive_radius(self) -> int:
        return 0


def _drive(gen, reports):
    while True:
        try:
            reports.append(next(gen))
        except StopIteration as stop:
            return stop.value


def test_the_budget_a_memorising_run_leaves_trains_further_members():
    sampler, _ = scalar_problem()
    fit_net = partial(fit, _Drifting(), sampler=sampler, device=torch.device("cpu"), lr=0.1, batch_size=2)
    cfg = {"name": "scalar_for_tests"}
    budget = 6000
    reports: list = []
    gen = fit_members(fit_net(build_network(**cfg), steps=budget, seed=0),
                      lambda i, steps, seconds: fit_net(build_network(**cfg), steps=steps, seconds=seconds, seed=i),
                      member_config=cfg, steps=budget, seconds=None)
    net, history = _drive(gen, reports)
    assert isinstance(net, NetworkEnsemble) and 2 <= len(net.members) <= MAX_MEMBERS
    members = history["members"]
    assert len(members) == len(net.members) and all(m["rewound_at"] for m in members), "each member memorised"
    assert history["steps"] == sum(m["steps"] for m in members) <= budget
    assert history["steps"] + members[0]["steps"] / 2 > budget or len(members) == MAX_MEMBERS, "stopped for a reason"
    for member in net.members:  # each kept its held-out best (w = 3), not the memorised w = 10
        assert abs(float(member.w.detach()) - 3.0) < 1.0
    # One progress over the whole budget: steps count on, the fraction never falls back, one final report
    steps = [p.step for p in reports]
    assert all(b >= a for a, b in zip(steps, steps[1:])) and steps[-1] == history["steps"]
    assert all(p.total_steps == budget for p in reports)
    fractions = [p.fraction for p in reports]
    assert all(b >= a for a, b in zip(fractions, fractions[1:]))
    assert [p.done for p in reports].count(True) == 1 and reports[-1].done
    networks = [p.network for p in reports]
    assert networks[0] == 1 and networks[-1] == len(members) and sorted(networks) == networks
    epochs = [p.epoch for p in reports]
    assert all(b >= a for a, b in zip(epochs, epochs[1:])), "epochs count on too"
    assert all(b > a for a, b in zip(history["step"], history["step"][1:])), "the curves join end to end"


def test_a_network_the_user_stopped_part_way_is_left_out():
    sampler, _ = scalar_problem()
    fit_net = partial(fit, _Drifting(), sampler=sampler, device=torch.device("cpu"), lr=0.1, batch_size=2)
    cfg = {"name": "scalar_for_tests"}
    calls = iter(range(10 ** 6))
    # the user presses stop 30 steps into the second network
    gen = fit_members(fit_net(build_network(**cfg), steps=6000, seed=0),
                      lambda i, steps, seconds: fit_net(build_network(**cfg), steps=steps, seconds=seconds, seed=i,
                                                        should_stop=lambda: next(calls) >= 30),
                      member_config=cfg, steps=6000, seconds=None)
    reports: list = []
    net, history = _drive(gen, reports)
    assert not isinstance(net, NetworkEnsemble), "the first network alone: the second was stopped part-way"
    assert abs(float(net.w.detach()) - 3.0) < 1.0
    assert history["stopped"] and reports[-1].stopped and reports[-1].done


def test_networks_the_cap_on_passes_cuts_share_the_budget_equally():
    """A small image reaches the cap on passes within seconds: each network then trains on its floor, a
    MAX_MEMBERS-th of the whole budget, not of what the networks before it left."""
    sampler, _ = scalar_problem()
    fit_net = partial(fit, _Settling(), sampler=sampler, device=torch.device("cpu"), lr=0.1, batch_size=2,
                      max_steps=50)
    cfg = {"name": "scalar_for_tests"}
    budget = 2000

    def member(i, steps, seconds):
        return fit_net(build_network(**cfg), steps=steps, seed=i, cap_floor=member_cap_floor(budget, steps))

    net, history = _drive(fit_members(fit_net(build_network(**cfg), steps=budget, seed=0,
                                              cap_floor=1 / MAX_MEMBERS),
                                      member, member_config=cfg, steps=budget, seconds=None), [])
    assert [m["steps"] for m in history["members"]] == [budget // MAX_MEMBERS] * MAX_MEMBERS
    assert all(m["capped"] for m in history["members"][:-1]) and history["steps"] == budget, "the last one: its end"
    assert member_cap_floor(180.0, 135.0) == pytest.approx(45 / 135) and member_cap_floor(180.0, 45.0) == 1.0
    assert member_cap_floor(180.0, 20.0) == 1.0 and member_cap_floor(180.0, 0.0) == 1.0


def test_only_a_run_that_memorised_trains_more():
    first = {"steps": 500, "train_seconds": 30.0, "rewound_at": 400}
    assert wants_another([first], None, 150.0) and wants_another([first], 600, None)
    assert wants_another([first], None, 7.5) and not wants_another([first], None, 7.0), "a quarter of the first's time"
    assert wants_another([{**first, "rewound_at": None, "capped": True}], None, 150.0), "the first reached its cap"
    assert not wants_another([{**first, "rewound_at": None}], None, 150.0), "a run that did not memorise"
    assert not wants_another([first, {**first, "stopped": True}], None, 150.0), "the user stopped it"
    assert not wants_another([first] * MAX_MEMBERS, None, 1e6)


@pytest.mark.parametrize("axes,shape", [("YX", (48, 56)), ("ZYX", (6, 40, 36))])
def test_an_ensemble_model_averages_its_members_and_round_trips(axes, shape, tmp_path):
    rng = np.random.default_rng(0)
    noisy = (0.5 + 0.1 * rng.normal(size=shape)).astype(np.float32)
    singles = [n2x.train(noisy, axes, "bsn", steps=3, seed=s, device="cpu", trunk="dilated", ensemble=2,
                         network={"features": 8}) for s in (0, 1)]
    a, b = singles
    config = {**a.config, "network": {"name": "ensemble", "member": a.config["network"], "count": 2}}
    ens = Model(a.method, NetworkEnsemble.of([a.net, b.net], a.config["network"]), config, a.history)
    # the same normalisation for both: the members were trained on the same image
    assert a.config["normalization"] == b.config["normalization"]
    got = ens.predict(noisy, axes)  # a 3D member takes channels-last for the engine's channels-last-3d layout
    want = (a.predict(noisy, axes) + b.predict(noisy, axes)) / 2
    assert np.abs(got - want).max() < 1e-5
    assert np.abs(got - a.predict(noisy, axes)).max() > 1e-4, "the second member counts"
    path = n2x.save_model(ens, tmp_path / "ens.n2x")
    back = n2x.load_model(path)
    assert back.config["network"]["count"] == 2
    assert np.abs(back.predict(noisy, axes) - got).max() < 1e-6
    with pytest.raises(TypeError, match="members"):
        ens.net(torch.zeros((1, 1) + shape))


def test_the_members_whose_mean_fits_the_held_out_pixels_are_kept():
    rng = np.random.default_rng(0)
    clean = rng.uniform(size=20000)
    noisy = clean + 0.1 * rng.normal(size=clean.shape)
    good = [clean + 0.02 * rng.normal(size=clean.shape) for _ in range(3)]  # independent errors: the mean is better
    poor = clean + 0.08 * rng.normal(size=clean.shape)  # an undertrained network (an early rewind)
    assert choose_members([(p, noisy) for p in [poor] + good]) == [1, 2, 3]
    assert choose_members([(p, noisy) for p in good]) == [0, 1, 2]
    same = clean + 0.02 * rng.normal(size=clean.shape)  # two copies of one network add nothing, but cost nothing
    assert choose_members([(poor, noisy), (same, noisy), (same + 1e-9, noisy)]) in ([1], [1, 2])


def test_a_member_that_predicts_the_held_out_pixels_worse_is_left_out():
    sampler, _ = scalar_problem()
    fit_net = partial(fit, _Drifting(), sampler=sampler, device=torch.device("cpu"), lr=0.1, batch_size=2)
    cfg = {"name": "scalar_for_tests"}
    rng = np.random.default_rng(1)
    clean = rng.uniform(size=5000)
    noisy = clean + 0.1 * rng.normal(size=clean.shape)
    calls: list = []

    def held_out(net):  # the first member trained is the poor one
        calls.append(net)
        return clean + (0.2 if len(calls) == 1 else 0.02) * rng.normal(size=clean.shape), noisy

    gen = fit_members(fit_net(build_network(**cfg), steps=6000, seed=0),
                      lambda i, steps, seconds: fit_net(build_network(**cfg), steps=steps, seconds=seconds, seed=i),
                      member_config=cfg, steps=6000, seconds=None, held_out=held_out)
    net, history = _drive(gen, [])
    members = history["members"]
    assert len(members) >= 2 and not members[0]["kept"] and all(m["kept"] for m in members[1:])
    assert history["steps"] == sum(m["steps"] for m in members), "the budget spent is still counted"
    if len(members) == 2:
        assert net is calls[1] and not isinstance(net, NetworkEnsemble)
    else:
        assert isinstance(net, NetworkEnsemble) and len(net.members) == len(members) - 1
        assert all(m is not calls[0] for m in net.members)
