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

Blocks are squares in each YX plane, or cubes in a volume denoised by a 3D network (whose estimate holds what the
neighbouring planes tell, which squares would throw away: docs/methods.md, "Wiener"). They are transformed
separably, one axis at a time, as convolutions with the DCT's basis vectors, then put back with transposed
convolutions (overlap-add), a strip at a time so that memory stays near a few hundred MB whatever the tile; float32
on any device, whatever autocast the caller runs under.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: rows of block positions filtered at a time, and block positions at most (planes of a volume or batch are taken
#: together up to it): with 8 x 8 blocks a few tensors of 64 floats per block position, about 64 MB each; cubes
#: take fewer positions at a time, so that their coefficients fit the same memory
STRIP_ROWS, STRIP_BLOCKS = 64, 2 ** 18
#: coefficients per block position that :data:`STRIP_BLOCKS` is counted for (8 x 8 blocks)
_STRIP_COEFFS = 64


def dct_basis(n: int, device: torch.device | None = None) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``(n, n)``: row ``k`` is the ``k``-th basis vector."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    basis = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return basis.to(device=device, dtype=torch.float32)


def block_dct(x: torch.Tensor, basis: torch.Tensor, z_basis: torch.Tensor | None = None) -> torch.Tensor:
    """The DCT coefficients of every block of ``x``, at each position those of the block whose first pixel is there.

    ``x`` ``(N, 1, H, W)``: ``(N, n^2, H - n + 1, W - n + 1)`` (``basis``: :func:`dct_basis` of ``n``). ``x``
    ``(N, 1, D, H, W)`` with ``z_basis`` (of ``n_z``): cubes, ``(N, n_z, D - n_z + 1, n^2, H - n + 1, W - n + 1)``,
    the Z coefficients before the planes' positions so that no copy reorders them. Only 2D convolutions, along Z
    over the rows of a ``(D, H * W)`` view: the ONNX exporter wrote 3D ones that ONNX Runtime refused.
    """
    n = basis.shape[0]
    if z_basis is not None:
        nz, (count, _, depth, height, width) = z_basis.shape[0], x.shape
        x = F.conv2d(x.reshape(count, 1, depth, height * width), z_basis.reshape(nz, 1, nz, 1))
        return block_dct(x.reshape(-1, 1, height, width), basis).reshape(
            (count, nz, depth - nz + 1, n * n, height - n + 1, width - n + 1))
    x = F.conv2d(x, basis.reshape(n, 1, n, 1))  # along Y: (N, n, H', W)
    x = F.conv2d(x.reshape((-1, 1) + tuple(x.shape[2:])), basis.reshape(n, 1, 1, n))  # along X
    return x.reshape((-1, n * n) + tuple(x.shape[2:]))


def block_idct_add(z: torch.Tensor, basis: torch.Tensor, z_basis: torch.Tensor | None = None) -> torch.Tensor:
    """Every block of coefficients ``z`` (:func:`block_dct`'s shape) transformed back and added where the blocks
    overlap: ``(N, 1, H' + n - 1, W' + n - 1)``, or for cubes ``(N, 1, D' + n_z - 1, H' + n - 1, W' + n - 1)``
    (the adjoint of :func:`block_dct`)."""
    n = basis.shape[0]
    if z_basis is not None:
        count, nz, depth = z.shape[:3]
        planes = block_idct_add(z.reshape((-1,) + tuple(z.shape[3:])), basis)  # (N n_z D', 1, H, W)
        height, width = planes.shape[-2:]
        z = F.conv_transpose2d(planes.reshape(count, nz, depth, height * width), z_basis.reshape(nz, 1, nz, 1))
        return z.reshape(count, 1, depth + nz - 1, height, width)
    z = F.conv_transpose2d(z.reshape((-1, n) + tuple(z.shape[2:])), basis.reshape(n, 1, 1, n))  # along X
    return F.conv_transpose2d(z.reshape((-1, n) + tuple(z.shape[2:])), basis.reshape(n, 1, n, 1))  # along Y


def block_sizes(spatial: tuple[int, ...], block: int, dims: int = 2) -> tuple[int, ...] | None:
    """The block's side along each of the last ``dims`` axes of a tile of ``spatial`` shape: ``block`` in the
    plane, and along Z of a cube half of it (at least 2), or as many planes as the tile has where it has fewer; None
    where no block fits (a plane narrower than ``block``). Half along Z: BM4D's cubes are 4 voxels deep, Z is
    often sampled more coarsely than YX, and 8 x 8 x 4 blocks matched or beat 8 x 8 x 8 on four volumes (+0.24,
    +0.04, 0.00, -0.08 dB) at two thirds of the cost (docs/methods.md, "A volume is filtered in cubes")."""
    if min(spatial[-2:]) < block:
        return None
    return ((min(max(block // 2, 2), spatial[-3]),) if dims == 3 else ()) + (block, block)


def pilot_wiener(noisy: torch.Tensor, pilot: torch.Tensor, noise_var: torch.Tensor, block: int = 8,
                 strip_rows: int | None = STRIP_ROWS, dims: int = 2) -> torch.Tensor:
    """The noisy tile ``(B, C, ..., Y, X)`` filtered by the empirical Wiener weights of ``pilot`` (same shape) in
    every block of ``block`` px along each of its last ``dims`` axes (float32, the units of ``noisy``): ``dims`` 2,
    squares in each YX plane; 3, cubes in each ZYX volume (of fewer planes where the tile has fewer).

    ``noise_var``: the noise variance, broadcastable to ``noisy`` (one per channel, or per pixel for noise that grows
    with the signal: each block then uses the mean over its pixels). Where no block fits (:func:`block_sizes`) the
    result is ``pilot``. ``strip_rows=None`` filters the whole tile at once, on one path for any shape (as a traced
    or exported graph needs; its tiles are never narrower than the block).
    """
    shape = noisy.shape
    flat = (-1, 1) + tuple(shape[-dims:])
    if block < 2:
        return pilot.float()
    sizes = block_sizes(tuple(shape[-dims:]), block, dims)
    if sizes is None:
        if strip_rows is not None:
            return pilot.float()
        sizes = (block,) * dims
    with torch.autocast(noisy.device.type, enabled=False):
        y, p = noisy.float().reshape(flat), pilot.float().reshape(flat)
        var = torch.broadcast_to(noise_var.float(), shape).reshape(flat)
        basis = dct_basis(sizes[-1], noisy.device)
        z_basis = dct_basis(sizes[0], noisy.device) if dims == 3 else None
        if strip_rows is None:
            num, den = _wiener_sums(y, p, var, basis, z_basis)
            return (num / den).reshape(shape)
        num, den = torch.zeros_like(y), torch.zeros_like(y)
        for at in _strips(y.shape, sizes, strip_rows):
            strip_num, strip_den = _wiener_sums(y[at], p[at], var[at], basis, z_basis)
            num[at] += strip_num
            den[at] += strip_den
    return (num / den).reshape(shape)


def _strips(shape: tuple[int, ...], sizes: tuple[int, ...], strip_rows: int) -> list[tuple[slice, ...]]:
    """Windows of the tile ``(N, 1, *spatial)`` that together hold every block once: up to ``strip_rows`` block
    positions along the first spatial axis, and :data:`STRIP_BLOCKS` positions (of 8 x 8 blocks: fewer cubes),
    splitting the second axis too where one row of positions is more than that, and taking several planes or
    volumes together where a strip is less."""
    positions = [s - n + 1 for s, n in zip(shape[2:], sizes)]
    budget = max(1, STRIP_BLOCKS * _STRIP_COEFFS // math.prod(sizes))
    per_row = math.prod(positions[1:])
    rows = max(1, min(strip_rows, budget // per_row))
    cols = positions[1] if per_row <= budget else max(1, budget // math.prod(positions[2:]))
    items = max(1, budget // (rows * cols * math.prod(positions[2:])))
    return [(slice(first, first + items), slice(None), slice(top, min(top + rows, positions[0]) + sizes[0] - 1),
             slice(left, min(left + cols, positions[1]) + sizes[1] - 1))
            for first in range(0, shape[0], items) for top in range(0, positions[0], rows)
            for left in range(0, positions[1], cols)]


def _wiener_sums(y: torch.Tensor, p: torch.Tensor, var: torch.Tensor, basis: torch.Tensor,
                 z_basis: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks' Wiener estimates ``(N, 1, *spatial)`` added where they overlap, each weighed by the inverse of
    its noise, and the sum of those weights: their ratio is the filtered image (``basis``, ``z_basis``:
    :func:`block_dct`'s; cubes where ``z_basis`` is given)."""
    n = basis.shape[0]
    block_var = _block_sums(var, n, z_basis, adjoint=False).clamp_min(1e-12)
    # in place where it can be: with cubes each of these tensors holds 256 floats per voxel
    weight = block_dct(p, basis, z_basis).square_()
    weight = weight.div_(weight + block_var)
    coeffs = (1,) if z_basis is None else (1, 3)
    block_weight = 1.0 / (block_var * torch.linalg.vector_norm(weight, dim=coeffs, keepdim=True).square())
    num = block_idct_add(block_dct(y, basis, z_basis).mul_(weight).mul_(block_weight), basis, z_basis)
    return num, _block_sums(block_weight, n, z_basis, adjoint=True)


def _block_sums(x: torch.Tensor, n: int, z_basis: torch.Tensor | None, adjoint: bool) -> torch.Tensor:
    """The mean of ``x`` over every block (``adjoint`` False: an image to :func:`block_dct`'s positions, one value
    each), or each position's value added over its block (True: back to the image), with 2D operations only."""
    ones = torch.ones((1, 1, n, n), device=x.device)
    if z_basis is None:
        return F.conv_transpose2d(x, ones) if adjoint else F.avg_pool2d(x, n, stride=1)
    nz = z_basis.shape[0]
    if adjoint:
        count, _, depth, _, height, width = x.shape
        planes = F.conv_transpose2d(x.reshape(-1, 1, height, width), ones)
        x = F.conv_transpose2d(planes.reshape(count, 1, depth, -1), torch.ones((1, 1, nz, 1), device=x.device))
        return x.reshape(count, 1, depth + nz - 1, height + n - 1, width + n - 1)
    count, _, depth, height, width = x.shape
    x = F.avg_pool2d(x.reshape(count, 1, depth, height * width), (nz, 1), stride=1)
    x = F.avg_pool2d(x.reshape(-1, 1, height, width), n, stride=1)
    return x.reshape(count, 1, depth - nz + 1, 1, height - n + 1, width - n + 1)
