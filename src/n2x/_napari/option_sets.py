"""What the Train and Denoise widgets offer besides the api's and the methods' own options: the training length's
units, the network's size, the view options, the Denoise widget's options, and the "auto" method choice. Declared as
data (:class:`n2x.api.Option`), like every option, so the panels are generated from them."""
from __future__ import annotations

from n2x import api

#: The training length: one of these options of the api, chosen in the widget by a unit.
LENGTH_NAMES = ("time", "steps", "epochs")
#: Length units of the Train widget and the value each starts at (time from the api's default training time).
LENGTH_UNITS: dict[str, float] = {"minutes": api.DEFAULT_SECONDS / 60, "seconds": api.DEFAULT_SECONDS,
                                  "steps": 1000.0, "epochs": 20.0}

#: The network's size: "auto" (the method's own network) unless the user sets a value.
NETWORK_OPTIONS: tuple[api.Option, ...] = (
    api.Option("features", "int", None, "feature maps in the first network level; fewer is faster, more can be "
               "more accurate (auto: the method's network)", label="Network features", range=(4, 256), auto=True,
               advanced=True),
    api.Option("depth", "int", None, "resolution levels of the U-Net (auto: the method's network)",
               label="Network depth", range=(1, 5), auto=True, advanced=True),
)
#: Methods whose networks are not U-Nets: a depth would be refused, so it is not passed.
NO_UNET_METHODS = ("apbsn",)
#: What the Train widget does around training (not options of the engine).
VIEW_OPTIONS: tuple[api.Option, ...] = (
    api.Option("preview", "bool", True, "denoise the current view every few seconds while training",
               label="live preview", advanced=True),
    api.Option("preview_every", "float", 3.0, "seconds between preview updates", label="Preview every",
               range=(0.5, 120.0), unit="s", advanced=True),
    api.Option("denoise_after", "bool", True, "denoise the whole image into a new layer when training ends",
               label="denoise at the end", advanced=True),
)
#: The Train widget's common options: the api's (less the length), the network's size and the view's.
COMMON_OPTIONS: tuple[api.Option, ...] = tuple(
    o for o in api.TRAIN_OPTIONS if o.name not in LENGTH_NAMES) + NETWORK_OPTIONS + VIEW_OPTIONS

#: The Denoise widget's options.
DENOISE_OPTIONS: tuple[api.Option, ...] = (
    api.Option("tile", "shape", None, "core tile size in pixels: auto, one size (256) or one per spatial axis "
               "(32, 256, 256); smaller tiles use less memory", label="Tile", auto=True, unit="px"),
    api.Option("halo", "int", None, "context read around each tile; auto: the network's receptive radius, so tiles "
               "join without seams; smaller is faster but the result then depends on the tiling", label="Halo",
               range=(0, 4096), auto=True, unit="px"),
    api.Option("device", "str", "auto", "where the network runs", label="Device"),
    api.Option("output", "str", "auto", "automatic: small results stay in memory, large ones are written chunk by "
               "chunk to an OME-Zarr (a temporary folder unless “Save to” is set) and shown while it fills; the "
               "same rule as the command line", label="Output", choices=("auto", "tiff", "zarr")),
    api.Option("scheduler", "str", None, "address of a dask scheduler (e.g. tcp://head:8786): the chunks of a file "
               "or folder input run on its workers, and the result fills in here as they finish; empty: this "
               "computer (auto)", label="Dask scheduler"),
)
#: Settings never remembered between sessions: replacing files must be chosen each time.
NOT_PERSISTED = ("overwrite",)

#: N2N's partner: "another layer" (the method's image option, ``target``) or one of its ``pairs`` choices.
PARTNER_LAYER = "layer"
#: Pairs that are taken along an axis (the ``along`` option applies to them only).
PAIRS_ALONG = ("adjacent", "even-odd")


AUTO_LABEL = "Auto (from the noise)"
AUTO_DESCRIPTION = ("The noise probe chooses when training starts, and says why: Noise2Void for pixel-independent "
                    "noise (with the Anscombe transform for Poisson-Gaussian noise), AP-BSN for spatially "
                    "correlated noise. Choose N2N for a partner image.")


def method_names() -> tuple[str, ...]:
    """The widget's method choices: auto, then the registered methods."""
    return (api.AUTO_METHOD, *api.method_names())


def method_info(name: str) -> api.MethodInfo:
    """The declaration of method ``name``; auto (the widget's first choice: the noise probe decides when training
    starts, :func:`n2x.api.choose_method`) declares no options."""
    if name == api.AUTO_METHOD:
        return api.MethodInfo(api.AUTO_METHOD, AUTO_LABEL, AUTO_DESCRIPTION, ())
    return api.method_info(name)
