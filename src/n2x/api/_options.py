"""The options every training run shares, declared as data (:data:`TRAIN_OPTIONS`), and the training defaults.

Kept free of torch, so the command line's flags and the widgets' controls can be built from the declarations without
loading the engine (``n2x --help`` stays fast). :mod:`._training` applies them.
"""
from __future__ import annotations

from ..options import Option

#: The devices and mixed precisions a user can name (the same tuples as :mod:`n2x.device`, which needs torch;
#: ``tests/test_usability.py`` checks that they agree).
DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
PRECISION_CHOICES = ("auto", "float32", "bfloat16")

#: ``vst``: the generalised Anscombe transform around the method (auto: when the probe finds Poisson-Gaussian noise)
VST_CHOICES = ("auto", "on", "off")
#: the method name that lets the noise probe choose (:func:`n2x.api.choose_method`)
AUTO_METHOD = "auto"

DEFAULT_SECONDS = 180.0
#: default training patches and patches per step. In 2D many small patches: at equal pixels per step, 64 patches of
#: 32 x 32 train N2V and N2N better than 16 of 64 x 64 or 4 of 128 x 128 (camera/G25 at 180 s: N2V 28.2 / 28.0 /
#: 27.4 dB; N2N 29.5 / 28.9 dB): a step sees more of the image, for the same cost.
DEFAULT_PATCH = {2: (32, 32), 3: (16, 64, 64)}
DEFAULT_BATCH = {2: 64, 3: 16}
MAX_DEFAULT_BATCH = 256
LEARNING_RATE = 4e-3
MAX_MEMORY = 2 * 2**30
VAL_FRACTION = 0.1
PREVIEW_EVERY = 2.0

#: The options of every training run, whatever the method: the CLI's flags and the Train widget's controls are
#: generated from these, and :func:`train_iter` takes them as keywords with these defaults.
TRAIN_OPTIONS: tuple[Option, ...] = (
    Option("time", "str", None, f"training time (wall clock), e.g. 90s, 3m, 1h (default {DEFAULT_SECONDS / 60:g}m "
           "when neither steps nor epochs are given)", label="Time"),
    Option("steps", "int", None, "number of training steps", range=(1, 10**9)),
    Option("epochs", "float", None, "passes over the training pixels", range=(1e-3, 1e6)),
    Option("patch_size", "shape", None, "training patch size in pixels, one value or one per spatial axis (default "
           "from the method: 32 x 32 in 2D, 16 x 64 x 64 in 3D for N2V); multiples of the network's "
           "downsampling factor", label="Patch size", auto=True, unit="px"),
    Option("batch_size", "int", None, "patches per step (default: as many as hold the pixels of the method's "
           "default batch, 64 patches of 32 x 32 in 2D for N2V); lower it if the device runs out of memory",
           label="Batch", range=(1, 4096), auto=True),
    Option("learning_rate", "float", LEARNING_RATE, "peak learning rate (annealed to 1% of it by the end)",
           label="Learning rate", range=(1e-6, 1.0), advanced=True),
    Option("channels", "str", "independent", "independent: one network applied to each channel; joint: the "
           "channels go through the network together", choices=("independent", "joint"), advanced=True),
    Option("dims", "int", None, "2D or 3D network (default: 3D when there is a Z axis)", label="Network",
           choices=(2, 3), auto=True),
    Option("normalization", "str", "meanstd", "how intensities are normalised: meanstd (mean and standard "
           "deviation) or percentile (1st to 99.8th percentile)", choices=("meanstd", "percentile"), advanced=True),
    Option("vst", "str", "auto", "variance-stabilising transform (generalised Anscombe, exact unbiased inverse) "
           "around the method: auto (on when the noise probe finds Poisson-Gaussian noise), on or off",
           label="Variance stabilisation", choices=VST_CHOICES, advanced=True),
    Option("val_fraction", "float", VAL_FRACTION, "share of the data held out for validation",
           label="Validation share", range=(0.0, 0.5), advanced=True),
    Option("max_memory", "float", MAX_MEMORY, "training patches kept in memory; larger data are sampled lazily",
           label="Memory for patches", range=(1e5, 2**44), unit="bytes", advanced=True),
    Option("device", "str", "auto", f"{', '.join(DEVICE_CHOICES)} (or cuda:N)", advanced=True),
    Option("precision", "str", "auto", "mixed precision in training: auto (bfloat16 on CUDA and on CPUs with "
           "hardware bfloat16, float32 elsewhere), float32 or bfloat16", choices=PRECISION_CHOICES, advanced=True),
    Option("seed", "int", None, "random seed (default: a new one each run)", range=(0, 2**31 - 1), advanced=True),
)
