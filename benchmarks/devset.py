"""The dev set of shared/BENCHMARK.md, built deterministically: clean images and their noisy realisations."""
from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np

SIGMA = 25 / 255
IMAGES_2D = ("camera", "coins", "moon")
NOISES = ("G25", "PG", "CORR")


def rng_for(name: str, kind: str, realisation: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"{name}/{kind}/{realisation}".encode()))


@lru_cache(maxsize=None)
def clean_image(name: str) -> np.ndarray:
    """float32 in [0, 1] (min-max rescaled); ``volume`` is the 32 x 256 x 256 fluorescence-like volume."""
    import skimage.data

    if name == "volume":
        return clean_volume()
    img = getattr(skimage.data, name)().astype(np.float32)
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def clean_volume() -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage.data import binary_blobs
    from skimage.draw import line_nd

    blobs = binary_blobs(length=256, blob_size_fraction=0.06, n_dim=3, volume_fraction=0.08, rng=0)[:32]
    v = 0.6 * ndi.gaussian_filter(blobs.astype(np.float32), sigma=(1, 2, 2))
    rng = np.random.default_rng(zlib.crc32(b"volume/filaments"))
    fil = np.zeros(v.shape, np.float32)
    for _ in range(60):
        a = rng.uniform([0, 0, 0], np.array(v.shape) - 1)
        b = rng.uniform([0, 0, 0], np.array(v.shape) - 1)
        idx = line_nd(a, b, endpoint=True)
        fil[idx] = np.maximum(fil[idx], rng.uniform(0.6, 1.0))
    fil = ndi.grey_dilation(fil, size=(1, 5, 5))  # 2 px in y/x on each side
    fil = ndi.gaussian_filter(fil, sigma=(0.7, 1, 1))
    v = np.maximum(v, fil)
    v = v / v.max()
    return (0.05 + 0.95 * v).astype(np.float32)


def add_noise(clean: np.ndarray, kind: str, name: str, realisation: str = "a") -> np.ndarray:
    """Noisy float32 realisation ``a`` or ``b`` of ``kind`` (never clipped): the dev set's G25, PG and CORR, or,
    for images and noise outside it, ``G<s>`` (white Gaussian, sigma ``s / 255``) and ``PG<p>`` (Poisson with ``p``
    photons at intensity 1, plus Gaussian read noise of 0.02; ``PG`` is ``PG20``)."""
    rng = rng_for(name, kind, realisation)
    if kind.startswith("G"):
        return (clean + rng.normal(0, gaussian_sigma(kind), clean.shape)).astype(np.float32)
    if kind.startswith("PG"):
        peak = photons(kind)
        return (rng.poisson(clean * peak) / peak + rng.normal(0, 0.02, clean.shape)).astype(np.float32)
    if kind == "CORR":
        from scipy import ndimage as ndi

        white = rng.normal(0, 1, clean.shape)
        k = np.ones((3,) * clean.ndim) / 3 ** clean.ndim if clean.ndim == 2 else np.ones((1, 3, 3)) / 9
        corr = ndi.convolve(white, k, mode="wrap")
        corr = corr / corr.std() * SIGMA
        return (clean + corr).astype(np.float32)
    raise ValueError(kind)


def gaussian_sigma(kind: str) -> float:
    """The standard deviation of ``G<s>`` noise (intensity units of the [0, 1] image)."""
    return int(kind[1:]) / 255


def photons(kind: str) -> float:
    """Photons at intensity 1 of ``PG<p>`` noise (``PG``: 20)."""
    return float(kind[2:] or 20)


def noise_sigma(kind: str, clean: np.ndarray) -> float:
    """The true per-pixel noise standard deviation (for BM3D with the true sigma; Poisson-Gaussian: the root of
    the mean variance over the image)."""
    if kind == "CORR":
        return SIGMA
    if kind.startswith("G"):
        return gaussian_sigma(kind)
    return float(np.sqrt(np.mean(clean) / photons(kind) + 0.02 ** 2))


def noise_psd(kind: str, shape: tuple[int, ...]) -> np.ndarray | float:
    """What BM3D/BM4D are given as the true noise: the power spectral density of CORR noise (the 3 x 3 box kernel of
    :func:`add_noise`, circular, in the bm3d package's units: its mean is the variance times the pixel count), or
    the standard deviation of white noise (:func:`noise_sigma`)."""
    if kind != "CORR":
        raise ValueError(f"{kind} noise is white: use noise_sigma")
    k = np.ones((3, 3) if len(shape) == 2 else (1, 3, 3))
    k /= np.sqrt(np.sum(k ** 2))
    return np.abs(np.fft.fftn(k, shape)) ** 2 * SIGMA ** 2 * int(np.prod(shape))


def condition(name: str, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(clean, a, b)`` for image ``name`` and noise ``kind``."""
    clean = clean_image(name)
    return clean, add_noise(clean, kind, name, "a"), add_noise(clean, kind, name, "b")


# -- time-lapse (frame-to-frame Noise2Noise) -----------------------------------------------------------------------
TIMELAPSE_FRAMES = 24
TIMELAPSE_SIZE = 256


def timelapse_centres(n_frames: int = TIMELAPSE_FRAMES) -> np.ndarray:
    """``(T, 2)`` window centres (Y, X) in ``camera()`` pixels: from (210, 205), (3, 4 + 6 sin(t / 3)) px per frame."""
    centres = [np.array([210.0, 205.0])]
    for t in range(n_frames - 1):
        centres.append(centres[-1] + (3.0, 4.0 + 6.0 * np.sin(t / 3)))
    return np.stack(centres)


@lru_cache(maxsize=None)
def clean_timelapse(moving: bool = True, image: str = "camera") -> np.ndarray:
    """``(24, 256, 256)`` float32 frames (TYX) cut from ``camera()`` (rescaled to [0, 1]), or from another
    ``skimage.data`` image (``cell``: a microscopy image outside the dev set); the static twin repeats frame 0. Frame t: a 400 x 400 crop at the (integer) centre, rotated 0.4 t degrees about the crop centre with cubic
    interpolation, shifted by the centre's sub-pixel part, and its centre 256 x 256 kept (then clipped to [0, 1])."""
    from scipy import ndimage as ndi
    from skimage.transform import rotate

    cam = np.pad(clean_image(image), 200, mode="reflect")  # the window's 400 x 400 crop may pass the edge
    half, keep = 200, (400 - TIMELAPSE_SIZE) // 2
    centres = timelapse_centres() + 200
    frames = []
    for t in range(TIMELAPSE_FRAMES):
        t_src = t if moving else 0
        c = centres[t_src]
        r0 = np.floor(c).astype(int)
        crop = cam[r0[0] - half:r0[0] + half, r0[1] - half:r0[1] + half]
        crop = rotate(crop, 0.4 * t_src, order=3, mode="reflect")
        crop = ndi.shift(crop, -(c - r0), order=3, mode="reflect")  # the true centre onto the crop's centre
        frames.append(crop[keep:keep + TIMELAPSE_SIZE, keep:keep + TIMELAPSE_SIZE])
    # cubic interpolation overshoots a little at edges: clipped, as a clean image is in [0, 1] (and Poisson needs >= 0)
    return np.clip(np.stack(frames), 0, 1).astype(np.float32)


def timelapse(kind: str, moving: bool = True, image: str = "camera") -> tuple[np.ndarray, np.ndarray]:
    """``(clean, noisy)`` time-lapses (TYX) of ``image`` with ``kind`` G25 or PG noise, independent per frame (the
    frame index is in each frame's seed)."""
    clean = clean_timelapse(moving, image)
    name = ("timelapse" if moving else "timelapse-static") + ("" if image == "camera" else f"-{image}")
    noisy = np.stack([add_noise(frame, kind, name, f"a{t}") for t, frame in enumerate(clean)])
    return clean, noisy
