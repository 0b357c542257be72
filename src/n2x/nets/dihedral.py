"""Flips and 90-degree rotations of the last two axes (the YX plane): the 8 elements of the dihedral group.

Averaging a network's predictions over these transforms (a self-ensemble, "test-time augmentation") reduces the
variance of the prediction; AP-BSN's blind box uses it by default and :meth:`n2x.model.Model.predict_tiles` with
``tta=True``. One implementation for both, so the two cannot drift apart.
"""
from __future__ import annotations

from typing import Callable

import torch

#: the transforms in the order used (a self-ensemble of ``n < 8`` takes the first ``n``): (transpose Y/X?, flip Y?,
#: flip X?); the first two are the identity and the X mirror, the first four include both 90-degree rotations
TRANSFORMS: tuple[tuple[bool, bool, bool], ...] = (
    (False, False, False), (False, False, True), (True, False, False), (False, True, False),
    (True, True, False), (False, True, True), (True, False, True), (True, True, True))


def dihedral(x: torch.Tensor, transform: tuple[bool, bool, bool], inverse: bool = False) -> torch.Tensor:
    """``x`` (``(..., Y, X)``) transformed by ``transform`` (an entry of :data:`TRANSFORMS`), or by its inverse."""
    transpose, flip_y, flip_x = transform
    dims = [d for d, on in ((-2, flip_y), (-1, flip_x)) if on]
    if not inverse:
        x = x.transpose(-2, -1) if transpose else x
        return x.flip(dims) if dims else x
    x = x.flip(dims) if dims else x
    return x.transpose(-2, -1) if transpose else x


def dihedral_mean(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n: int = 8) -> torch.Tensor:
    """Mean (float32) of ``fn`` applied to the first ``n`` transforms of ``x``, each prediction transformed back.

    ``fn`` maps ``(B, C, ..., Y, X)`` to the same shape and must accept the transposed shape ``(..., X, Y)``.
    """
    if not 1 <= n <= len(TRANSFORMS):
        raise ValueError(f"a dihedral ensemble has 1 to {len(TRANSFORMS)} transforms, not {n}")
    acc = None
    for t in TRANSFORMS[:n]:
        y = dihedral(fn(dihedral(x, t)).float(), t, inverse=True)
        acc = y if acc is None else acc + y
    return acc / n


def four_rotations(branch: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """``branch`` applied to ``x`` (``(B, C, Y, X)``) turned by 0, 90, 180 and 270 degrees, each result turned back:
    the four directions of a blind-spot network's half-plane branches. Rotations of one shape go through ``branch``
    as one batch (all four when Y == X)."""
    # unflatten to (rotations, batch, ...), not split(batch): TorchScript traces and ONNX keep the batch free
    if x.shape[2] == x.shape[3]:
        up = branch(torch.cat([torch.rot90(x, k, (2, 3)) for k in range(4)])).unflatten(0, (4, -1))
        return [torch.rot90(up[k], -k, (2, 3)) for k in range(4)]
    even = branch(torch.cat([x, torch.rot90(x, 2, (2, 3))])).unflatten(0, (2, -1))  # 0/180 and 90/270 share a shape
    odd = branch(torch.cat([torch.rot90(x, 1, (2, 3)), torch.rot90(x, 3, (2, 3))])).unflatten(0, (2, -1))
    return [even[0], torch.rot90(odd[0], -1, (2, 3)), torch.rot90(even[1], 2, (2, 3)), torch.rot90(odd[1], 1, (2, 3))]
