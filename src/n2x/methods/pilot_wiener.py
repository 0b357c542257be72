"""Empirical Wiener filtering of the noisy image in sliding DCT blocks, guided by a first estimate (the pilot).

The second step of BM3D (Dabov et al., IEEE TIP 2007) without its block matching: every block of ``block`` pixels
along each spatial axis, at every position (stride 1, so the result does not depend on a grid), is transformed by
an orthonormal DCT, in the noisy image (``Y``) and in the pilot (``P``); each coefficient of the noisy block is
shrunk by ``P^2 / (P^2 + s^2)`` (the Wiener weight the pilot's power gives, ``s^2`` the noise variance, which an
orthonormal transform leaves as it is), and the blocks are transformed back and averaged where they overlap, each
block weighed by ``1 / (s^2 sum(W^2))`` (the inverse of its estimate's noise, as in BM3D).

Why after a blind-spot posterior: the posterior (:func:`n2x.methods.bsn.posterior_mean`) weighs each noisy pixel
alone, and the prior mean's errors are smooth and shared by neighbours; a transform over a block sees them together
and takes from the noisy image the coarse content it holds almost without noise (measured in docs/methods.md).

Blocks lie in the YX plane (a volume is filtered plane by plane: 64 coefficients per pixel, where cubes would need
512), and are transformed separably, one axis at a time, as convolutions with the DCT's basis vectors, then put back
with transposed convolutions (overlap-add), a strip of rows of a few planes at a time so that memory stays near a
few hundred MB whatever the tile; float32 on any device, whatever autocast the caller runs under.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: rows of block positions filtered at a time, and block positions at most (planes of a volume or batch are taken
#: together up to it): with 8 x 8 blocks a few tensors of 64 floats per block position, about 64 MB each
STRIP_ROWS, STRIP_BLOCKS = 64, 2 ** 18


def dct_basis(n: int, device: torch.device | None = None) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``(n, n)``: row ``k`` is the ``k``-th basis vector."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    basis = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return basis.to(device=device, dtype=torch.float32)


def block_dct(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """The DCT coefficients of every block of ``x`` ``(N, 1, H, W)``: ``(N, n^2, H - n + 1, W - n + 1)``, at each
    position the coefficients of the block whose first pixel is there."""
    n = basis.shape[0]
    x = F.conv2d(x, basis.reshape(n, 1, n, 1))  # along Y: (N, n, H', W)
    x = F.conv2d(x.reshape((-1, 1) + tuple(x.shape[2:])), basis.reshape(n, 1, 1, n))  # along X
    return x.reshape((-1, n * n) + tuple(x.shape[2:]))


def block_idct_add(z: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Every block of coefficients ``z`` ``(N, n^2, H', W')`` transformed back and added where the blocks overlap:
    ``(N, 1, H' + n - 1, W' + n - 1)`` (the adjoint of :func:`block_dct`)."""
    n = basis.shape[0]
    z = F.conv_transpose2d(z.reshape((-1, n) + tuple(z.shape[2:])), basis.reshape(n, 1, 1, n))  # along X
    return F.conv_transpose2d(z.reshape((-1, n) + tuple(z.shape[2:])), basis.reshape(n, 1, n, 1))  # along Y


def pilot_wiener(noisy: torch.Tensor, pilot: torch.Tensor, noise_var: torch.Tensor, block: int = 8,
                 strip_rows: int | None = STRIP_ROWS) -> torch.Tensor:
    """The noisy tile ``(B, C, ..., Y, X)`` filtered by the empirical Wiener weights of ``pilot`` (same shape) in
    every ``block`` x ``block`` block of each YX plane (float32, the units of ``noisy``).

    ``noise_var``: the noise variance, broadcastable to ``noisy`` (one per channel, or per pixel for noise that grows
    with the signal: each block then uses the mean over its pixels). A plane narrower than ``block``, or ``block``
    under 2, gives ``pilot`` back. ``strip_rows=None`` filters the whole tile at once, on one path for any shape
    (as a traced or exported graph needs; its tiles are never narrower than the block).
    """
    shape = noisy.shape
    flat = (-1, 1) + tuple(shape[-2:])
    if block < 2:
        return pilot.float()
    if strip_rows is None:
        var = torch.broadcast_to(noise_var.float(), shape).reshape(flat)
        num, den = _wiener_sums(noisy.float().reshape(flat), pilot.float().reshape(flat), var,
                                dct_basis(block, noisy.device))
        return (num / den).reshape(shape)
    if min(shape[-2:]) < block:
        return pilot.float()
    with torch.autocast(noisy.device.type, enabled=False):
        y, p = noisy.float().reshape(flat), pilot.float().reshape(flat)
        var = torch.broadcast_to(noise_var.float(), shape).reshape(flat)
        num, den = torch.zeros_like(y), torch.zeros_like(y)
        basis = dct_basis(block, noisy.device)
        last = shape[-2] - block + 1  # the last block's first row, plus one
        planes = max(1, STRIP_BLOCKS // (strip_rows * shape[-1]))
        for first in range(0, y.shape[0], planes):
            for top in range(0, last, strip_rows):
                at = (slice(first, first + planes), slice(None), slice(top, min(top + strip_rows, last) + block - 1))
                strip_num, strip_den = _wiener_sums(y[at], p[at], var[at], basis)
                num[at] += strip_num
                den[at] += strip_den
    return (num / den).reshape(shape)


def _wiener_sums(y: torch.Tensor, p: torch.Tensor, var: torch.Tensor,
                 basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks' Wiener estimates ``(N, 1, H, W)`` added where they overlap, each weighed by the inverse of its
    noise, and the sum of those weights: their ratio is the filtered image (``basis``: :func:`dct_basis`)."""
    block = basis.shape[0]
    block_var = F.avg_pool2d(var, block, stride=1).clamp_min(1e-12)
    coeff_p = block_dct(p, basis)
    weight = coeff_p.square() / (coeff_p.square() + block_var)
    block_weight = 1.0 / (block_var * weight.square().sum(1, keepdim=True))
    num = block_idct_add(weight * block_dct(y, basis) * block_weight, basis)
    return num, F.conv_transpose2d(block_weight, torch.ones((1, 1, block, block), device=y.device))
