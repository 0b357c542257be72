"""Networks of one design trained separately on the same data (different seeds), stored as one network.

A method averages its members' *predictions* (``bsn``: the mean of their posterior means,
:func:`n2x.methods.bsn.posterior_mean`): the raw outputs of different networks need not be comparable (``bsn``'s
second half is a variance before a softplus), so :class:`NetworkEnsemble` has no forward of its own. Averaging
independent estimates lowers the part of the error that changes from seed to seed; where a run stops early
(:class:`n2x.training.RewindAnneal`: a small image, memorised) the rest of the budget trains further members
(:func:`n2x.api._members.fit_members`).

Config: ``{"name": "ensemble", "member": {<the members' network config>}, "count": K}``; weights
``members.<i>.<...>``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import build_network, register_network


@register_network("ensemble")
class NetworkEnsemble(nn.Module):
    """``count`` networks built from ``member`` (a network config ``{"name": ..., **kwargs}``), in ``members``."""

    def __init__(self, member: dict[str, Any], count: int):
        super().__init__()
        if int(count) < 1:
            raise ValueError(f"an ensemble has at least one member, not {count}")
        self.members = nn.ModuleList(build_network(**member) for _ in range(int(count)))
        self.multiple = getattr(self.members[0], "multiple", 1)

    @classmethod
    def of(cls, nets: list[nn.Module], member: dict[str, Any]) -> "NetworkEnsemble":
        """The ensemble of the trained ``nets`` (each built from ``member``), their weights kept."""
        ens = cls(member, len(nets))
        for mine, trained in zip(ens.members, nets):
            mine.load_state_dict(trained.state_dict())
        return ens

    def to(self, *args: Any, **kwargs: Any) -> "NetworkEnsemble":  # noqa: D102
        # Each member's own .to(): a member may map what it is asked for (the 3D ShiftedBSN, whose convolutions are
        # 2D, takes channels-last for channels-last-3d), which nn.Module.to on the ensemble would bypass.
        for member in self.members:
            member.to(*args, **kwargs)
        return self

    def receptive_radius(self) -> int:
        return max(int(m.receptive_radius()) for m in self.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError("an ensemble of networks has no output of its own: the method averages the predictions of "
                        "its members (NetworkEnsemble.members)")


def members_of(net: nn.Module) -> list[nn.Module]:
    """The networks whose predictions are averaged: an ensemble's members, or ``[net]``."""
    return list(net.members) if isinstance(net, NetworkEnsemble) else [net]


def member_config(config: dict[str, Any]) -> dict[str, Any]:
    """The network config of one member of an ensemble's ``config``, or ``config`` itself (a single network)."""
    return config["member"] if config.get("name") == "ensemble" else config
