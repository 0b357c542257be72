import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch

torch.set_num_threads(2)
# The widgets save their settings between sessions: never into the user's own folder from a test run.
os.environ.setdefault("N2X_SETTINGS_DIR", tempfile.mkdtemp(prefix="n2x-test-settings-"))


def psnr(x: np.ndarray, clean: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((np.asarray(x, np.float64) - clean) ** 2)))


#: training options of a tiny, fast model for the volume, pyramid, shard and cluster tests
TINY = {"steps": 2, "network": {"features": 8}, "device": "cpu", "seed": 0, "batch_size": 4}


def noisy_waves(shape, seed=0):
    """float32 ``shape`` (last two axes Y, X): smooth waves around 0.5 plus Gaussian noise of sigma 0.1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 6, shape[-2]), np.linspace(0, 6, shape[-1]), indexing="ij")
    return (0.5 + 0.4 * np.sin(yy) * np.cos(xx) + rng.normal(0, 0.1, shape)).astype(np.float32)


def run_cli(*args, check=True, **kwargs):
    """Run the real ``n2x`` command (as ``python -m n2x.cli``); raise with its output when it fails and ``check``."""
    proc = subprocess.run([sys.executable, "-m", "n2x.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def cells2d():
    """(noisy, clean) 2D synthetic cells, Gaussian noise sigma 0.1, 256 x 256."""
    from n2x.api import noisy_sample

    noisy, clean, _ = noisy_sample("2d", "gaussian", seed=3)
    return noisy, clean


@pytest.fixture(scope="session")
def real2d_path():
    from importlib.resources import files

    return str(files("n2x") / "sample_data" / "nuclei2d_real.tif")


@pytest.fixture(scope="session")
def trained_n2v(cells2d):
    """A quickly trained N2V model shared by tests that need any trained model."""
    import n2x

    noisy, _ = cells2d
    return n2x.train(noisy, "YX", "n2v", steps=30, patch_size=32, batch_size=8, seed=0, device="cpu",
                     network={"features": 8})
