"""Built-in synthetic samples with a known clean image (no download): for the demo, tests and the napari sample menu.

Only numpy is used. The clean image holds blurred blobs ("nuclei") and thin bright filaments on a dim background,
intensities in [0.05, 1]; noise is added with a seeded generator.
"""
from __future__ import annotations

import numpy as np


def _blur(img: np.ndarray, sigma: float | tuple[float, ...]) -> np.ndarray:
    """Gaussian blur through the FFT (periodic borders; the samples are made large enough for that not to matter)."""
    sig = (sigma,) * img.ndim if np.isscalar(sigma) else tuple(sigma)
    out = np.fft.fftn(img)
    for ax, (n, s) in enumerate(zip(img.shape, sig)):
        f = np.fft.fftfreq(n)
        shape = [1] * img.ndim
        shape[ax] = n
        out *= np.exp(-2 * (np.pi * f * s) ** 2).reshape(shape)
    return np.real(np.fft.ifftn(out))


def clean_cells(shape: tuple[int, ...] = (256, 256), seed: int = 0) -> np.ndarray:
    """A clean fluorescence-like image (2D or 3D), float32 in [0.05, 1]."""
    rng = np.random.default_rng(seed)
    nd = len(shape)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), -1)
    img = np.zeros(shape, np.float32)
    n_blobs = max(4, int(np.prod(shape) / (28 ** nd) * (3 if nd == 2 else 1)))
    for _ in range(n_blobs):
        c = rng.uniform(0, shape)
        r = rng.uniform(4, 12, nd)
        if nd == 3:
            r[0] = max(2.0, r[0] * shape[0] / max(shape[1:]) * 2)
        d = (((grid - c) / r) ** 2).sum(-1)
        img = np.maximum(img, (d < 1) * rng.uniform(0.3, 0.8))
    img = _blur(img, 1.5)
    fil = np.zeros(shape, np.float32)
    for _ in range(max(6, n_blobs // 2)):
        a, b = rng.uniform(0, shape), rng.uniform(0, shape)
        t = np.linspace(0, 1, int(np.linalg.norm(b - a) * 2) + 2)[:, None]
        pts = np.round(a + t * (b - a)).astype(int)
        pts = pts[np.all((pts >= 0) & (pts < np.array(shape)), 1)]
        fil[tuple(pts.T)] = rng.uniform(0.6, 1.0)
    fil = _blur(fil, 0.8) * 4
    img = np.maximum(img, fil)
    img = img / max(float(img.max()), 1e-6)
    return (0.05 + 0.95 * img).astype(np.float32)


def noisy_sample(kind: str = "2d", noise: str = "pg", seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """``(noisy, clean, axes)`` for ``kind`` ``"2d"`` (256 x 256, YX) or ``"3d"`` (32 x 128 x 128, ZYX).

    ``noise``: ``"gaussian"`` (sigma 0.1), ``"pg"`` (Poisson-Gaussian: 20 photons at intensity 1, read noise 0.02).
    """
    shape, axes = ((256, 256), "YX") if kind == "2d" else ((32, 128, 128), "ZYX")
    clean = clean_cells(shape, seed)
    rng = np.random.default_rng(seed + 1)
    if noise == "gaussian":
        noisy = clean + rng.normal(0, 0.1, clean.shape)
    elif noise == "pg":
        noisy = rng.poisson(clean * 20) / 20 + rng.normal(0, 0.02, clean.shape)
    else:
        raise ValueError(f"unknown noise {noise!r}")
    return noisy.astype(np.float32), clean, axes


def clean_round_cells(shape: tuple[int, ...] = (256, 256), seed: int = 0) -> np.ndarray:
    """A clean image of cells (2D or 3D), float32 in [0.05, 1]: round cells with a dim, textured cytoplasm and a
    bright nucleus, packed without overlapping, on a dark background. What napari's "noisy cells" samples show;
    :func:`clean_cells` (blobs and filaments) stays as it is, for the tests and benchmarks that depend on it."""
    rng = np.random.default_rng(seed)
    nd = len(shape)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), -1)
    img = np.zeros(shape, np.float32)
    centres: list[np.ndarray] = []
    radii: list[float] = []
    aniso = np.ones(nd, np.float32)
    if nd == 3:
        aniso[0] = shape[0] / max(shape[1:]) * 2  # flatter along Z, as in a confocal stack
    for _ in range(400):  # rejection sampling: cells touch at most, never overlap
        r = float(rng.uniform(11, 19))
        c = rng.uniform(r * aniso, np.array(shape) - r * aniso)
        if any(np.linalg.norm((c - c2) / aniso) < (r + r2) * 0.95 for c2, r2 in zip(centres, radii)):
            continue
        centres.append(c)
        radii.append(r)
        d = np.sqrt((((grid - c) / (r * aniso)) ** 2).sum(-1))
        offset = rng.uniform(-0.2, 0.2, nd) * r * aniso  # the nucleus is a little off-centre
        dn = np.sqrt((((grid - c - offset) / (0.45 * r * aniso)) ** 2).sum(-1))
        cyto = (d < 1) * rng.uniform(0.25, 0.4)
        nucleus = (dn < 1) * rng.uniform(0.7, 1.0)
        img = np.maximum(img, np.maximum(cyto, nucleus).astype(np.float32))
    texture = _blur(rng.normal(size=shape).astype(np.float32), 2.0)
    texture /= max(float(np.abs(texture).max()), 1e-6)
    img = _blur(img * (1 + 0.25 * texture) * (img > 0), 1.2)
    img = img / max(float(img.max()), 1e-6)
    return (0.05 + 0.95 * np.clip(img, 0, 1)).astype(np.float32)


def noisy_cells(kind: str = "2d", seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """``(noisy, clean, axes)`` of :func:`clean_round_cells`, 256 x 256 (YX) or 32 x 128 x 128 (ZYX), with the
    Poisson-Gaussian noise of :func:`noisy_sample` (20 photons at intensity 1, read noise 0.02)."""
    shape, axes = ((256, 256), "YX") if kind == "2d" else ((32, 128, 128), "ZYX")
    clean = clean_round_cells(shape, seed)
    rng = np.random.default_rng(seed + 1)
    noisy = rng.poisson(clean * 20) / 20 + rng.normal(0, 0.02, clean.shape)
    return noisy.astype(np.float32), clean, axes
