"""Noise2Noise training pairs: two arrays, or partners inside one stack along T or Z.

Each builder returns :class:`~n2x.data.patches.Source` objects with two stacks, ``(input, target)``: two noisy
realisations of the same scene. The patch sampler crops the same region from both and augments them identically.
Frame-to-frame pairs (``f2f``) also carry an alignment block (:mod:`n2x.data.flow`): the optical flow between the two
frames and where it holds, computed lazily for the regions read. Nothing is read here; sources read lazily, so dask
and zarr arrays stay on disk.
"""
from __future__ import annotations

import itertools
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from .axes import Layout
from .patches import Source

PAIRINGS = ("adjacent", "even-odd", "subsample", "f2f")
#: pairings of frames or planes along an axis
STACK_PAIRINGS = ("adjacent", "even-odd", "f2f")
PAIR_AXES = ("T", "Z")


def normalize_pairs(pairs: str | None) -> str | None:
    """``pairs`` in canonical form (``adjacent``, ``even-odd``, ``subsample``, ``f2f``) or :class:`InputError`."""
    if pairs is None:
        return None
    key = str(pairs).lower().replace("_", "-").replace(" ", "-")
    key = {"evenodd": "even-odd", "neighbour": "subsample", "neighbor2neighbor": "subsample",
           "neighbour2neighbour": "subsample", "sub-sample": "subsample", "frame-to-frame": "f2f",
           "motion": "f2f"}.get(key, key)
    if key not in PAIRINGS:
        raise InputError(f"pairs must be one of {', '.join(PAIRINGS)}, not {pairs!r}")
    return key


def normalize_along(along: str | None, pairs: str) -> str:
    """The pairing axis (``T`` or ``Z``) or an :class:`InputError` that says what to give.

    Frame-to-frame pairs (``f2f``) align frames in time: ``T``, also when ``along`` is not given.
    """
    if pairs == "f2f":
        if along is not None and along != "" and str(along).upper() != "T":
            raise InputError(f"frame-to-frame pairs align frames in time, so they pair along T, not {along!r}",
                             hint="set {along} to T (or leave it unset), or set {pairs} to adjacent for planes along Z")
        return "T"
    if along is None or along == "":
        raise InputError(f"pairs {pairs!r} need the axis along which frames or planes are paired",
                         hint="set {along} to T (time frames) or Z (planes)")
    a = str(along).upper()
    if a not in PAIR_AXES:
        raise InputError(f"along must be 'T' or 'Z', not {along!r}")
    return a


def target_sources(images: Sequence[Any], layouts: Sequence[Layout], target: Any) -> list[Source]:
    """Pairs from two acquisitions: ``images[i]`` is the input and ``target[i]`` (same shape and axes) the target.

    ``target`` is one array (when there is one image) or a list with one array per image.
    """
    targets = list(target) if isinstance(target, (list, tuple)) else [target]
    if len(targets) != len(images):
        raise InputError(f"Noise2Noise needs one target per training image: got {len(images)} image(s) and "
                         f"{len(targets)} target(s)")
    sources = []
    for i, (img, tgt, lay) in enumerate(zip(images, targets, layouts)):
        if not hasattr(tgt, "shape") or not hasattr(tgt, "dtype"):
            tgt = np.asarray(tgt)
        if tuple(tgt.shape) != tuple(img.shape):
            raise InputError(f"the target has shape {tuple(tgt.shape)} but the image has {tuple(img.shape)}; a "
                             "Noise2Noise target must be a second acquisition of the same scene with the same shape "
                             "and axes")
        if np.dtype(tgt.dtype).kind not in "uif":
            raise InputError(f"the target has dtype {np.dtype(tgt.dtype)}, which is not numeric intensities")

        def read(s: int, region, img=img, tgt=tgt, lay=lay):
            return lay.read(img, s, region), lay.read(tgt, s, region)

        sources.append(Source(lay, lay.n_samples, read, 2, f"image {i} and its target"))
    return sources


def partner_samples(layout: Layout, along: str, pairs: str) -> list[tuple[int, int]]:
    """Flat sample indices ``(input, target)`` of the partners along ``along`` (a sample axis of ``layout``).

    ``adjacent`` and ``f2f``: every frame/plane with the next one (``n - 1`` pairs per stack). ``even-odd``: frame
    ``2k`` with ``2k + 1`` (two acquisitions per time point, stored interleaved; an odd last frame has no partner).
    """
    if along not in layout.axes:
        raise InputError(f"pairs along {along} need a {along} axis, but the image's axes are {layout.axes!r}",
                         hint=f"set {{along}} to {'Z' if along == 'T' else 'T'}, or give the {{axes}} that name it")
    if along in layout.spatial:
        raise InputError(f"pairs along {along} cannot be formed with a 3D network that sees {along} as space",
                         hint=f"set {{dims}} to 2, so that {along} planes are paired one by one")
    n = layout.shape[layout.axes.index(along)]
    if n < 2:
        raise InputError(f"{pairs} pairing needs at least 2 {'frames' if along == 'T' else 'planes'} along {along}, "
                         f"but the image has {n}", hint="give a second acquisition as {target}, or set {pairs} to "
                         "subsample")
    if pairs in ("adjacent", "f2f"):
        steps = [(k, k + 1) for k in range(n - 1)]
    else:
        steps = [(k, k + 1) for k in range(0, n - 1, 2)]
    sample_shape = layout.sample_shape
    ax = layout.sample_axes.index(along)
    others = [range(m) if i != ax else [0] for i, m in enumerate(sample_shape)]
    out = []
    for base in itertools.product(*others):
        for k0, k1 in steps:
            i0 = list(base)
            i1 = list(base)
            i0[ax], i1[ax] = k0, k1
            out.append((int(np.ravel_multi_index(i0, sample_shape)), int(np.ravel_multi_index(i1, sample_shape))))
    return out


def stack_sources(images: Sequence[Any], layouts: Sequence[Layout], pairs: str, along: str) -> list[Source]:
    """Pairs formed inside each stack along ``along`` (``T`` or ``Z``) by ``pairs`` (``adjacent``/``even-odd``)."""
    sources = []
    for i, (img, lay) in enumerate(zip(images, layouts)):
        partners = partner_samples(lay, along, pairs)

        def read(s: int, region, img=img, lay=lay, partners=partners):
            a, b = partners[s]
            return lay.read(img, a, region), lay.read(img, b, region)

        sources.append(Source(lay, len(partners), read, 2, f"image {i} ({pairs} pairs along {along})"))
    return sources


def f2f_sources(images: Sequence[Any], layouts: Sequence[Layout], settings: Any = None) -> list[Source]:
    """Frame-to-frame pairs along T: frame ``t`` with ``t + 1`` and their alignment block (see
    :func:`n2x.data.flow.align_pair`), computed for each region read (:class:`n2x.data.flow.Aligner`) and held only
    by the reader, so that it counts within the sampler's ``max_memory``.

    The frames must be 2D (Z planes are paired plane by plane with their own flows); channels share one flow.
    """
    from .flow import ALIGN_CHANNELS, ALIGN_VECTORS, Aligner, FlowSettings

    settings = settings or FlowSettings()
    sources = []
    for i, (img, lay) in enumerate(zip(images, layouts)):
        if lay.ndim_spatial != 2:
            raise InputError("frame-to-frame pairs align 2D frames", hint="set {dims} to 2 so that Z planes are "
                             "paired plane by plane")
        partners = partner_samples(lay, "T", "f2f")

        def read_pair(p: int, region, img=img, lay=lay, partners=partners):
            a, b = partners[p]
            return lay.read(img, a, region), lay.read(img, b, region)

        aligner = Aligner(read_pair, lay.spatial_shape, settings)

        def read(s: int, region, read_pair=read_pair, aligner=aligner):
            return read_pair(s, region) + (aligner.region(s, region),)

        sources.append(Source(lay, len(partners), read, 2, f"image {i} (frame-to-frame pairs along T)",
                              aux_channels=ALIGN_CHANNELS, aux_vectors=ALIGN_VECTORS, aux_cache=aligner))
    return sources
