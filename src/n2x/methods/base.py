"""What a denoising method is to the engine: a network, a training loss on patches, and tile inference."""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from .._numbers import round_up
from ..nets import build_network
from ..options import Option

#: ``net -> (noisy, prediction)`` at pixels predicted as inference predicts them, ``(C, N)`` each, or None
#: (:meth:`Method.calibrate`)
InContext = Callable[[nn.Module], "tuple[np.ndarray, np.ndarray] | None"]


class Method:
    """Base class of the methods.

    A method decides its network, turns a batch of normalised patches into a loss, and predicts a normalised tile.
    Patches arrive as a tuple of tensors ``(B, C, *spatial)``: one for single-image methods, two (input, target) for
    Noise2Noise with a partner.
    """

    name: ClassVar[str] = "base"
    #: display name and one-line description shown by the front doors
    label: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: the options a user may set (the CLI flags and widget panels are generated from them); their defaults are the
    #: method's defaults (constructors take them from here through :meth:`settled`)
    options: ClassVar[tuple[Option, ...]] = ()
    #: parameters a model file stores besides the options: what training settled (e.g. N2N's ``pairing``, AP-BSN's
    #: fitted ``box_filter``); :meth:`from_params` puts them back, a user cannot set them
    internal: ClassVar[tuple[str, ...]] = ()
    #: how many aligned arrays each training patch needs (1: the noisy image; 2: input and independent target)
    n_stacks: ClassVar[int] = 1
    #: preferred training patch shape by number of spatial dims (None: the engine's default)
    default_patch: ClassVar[dict[int, tuple[int, ...]] | None] = None
    #: patches per step with ``default_patch``, by number of spatial dims (None: the engine's default)
    default_batch: ClassVar[dict[int, int] | None] = None
    #: whether :meth:`loss` draws nothing at random (no masks): validation then needs one draw, not several
    deterministic_loss: ClassVar[bool] = False
    #: clip a step's gradient norm at this many times the recent median (:class:`n2x.training.GradientSpikeClip`),
    #: or None: no clipping
    gradient_spike_factor: ClassVar[float | None] = None
    #: whether the method's model assumes one noise variance for every pixel (``vst="auto"`` then stabilises any
    #: Poisson-Gaussian noise the probe finds, not only noise whose variance spreads widely: see n2x.api._auto)
    constant_noise: ClassVar[bool] = False
    #: whether the method models Poisson-Gaussian noise itself, as a variance that grows with the signal, when the api
    #: sets ``params["noise_model"] = "photon"`` (``vst="auto"`` then leaves the data raw: see n2x.api._auto)
    photon_noise: ClassVar[bool] = False
    #: whether the network's output at a pixel never sees that pixel's value (a blind spot of one pixel and noise
    #: independent between pixels): training then holds pixels out of the loss for validation instead of a stripe
    #: of the image (:mod:`n2x.data.holdout`), and :meth:`loss` gets their mask as the last array of a batch
    validates_on_held_out_pixels: ClassVar[bool] = False
    #: whether a run whose held-out loss stops improving goes back to its best weights and anneals from there
    #: (:class:`n2x.training.RewindAnneal`), instead of training on past them; the budget such a run leaves trains
    #: further networks (:mod:`n2x.api._members`), so the method's :meth:`predict` must average the members of a
    #: :class:`~n2x.nets.ensemble.NetworkEnsemble`
    rewinds_when_memorising: ClassVar[bool] = False
    #: passes over the training pixels one network trains at most (None: no cap); with
    #: :attr:`rewinds_when_memorising`, the budget beyond trains further networks (:mod:`n2x.api._members`)
    max_epochs_per_network: ClassVar[float | None] = None
    #: passes over the training pixels before which a run that rewinds when memorising does not rewind
    #: (:class:`n2x.training.RewindAnneal`): a held-out loss that wavers earlier may be the learning rate's doing
    min_passes_to_memorise: ClassVar[float] = 0.0
    #: whether the networks a budget trains (:mod:`n2x.api._members`) share it equally, each on at least a
    #: ``MAX_MEMBERS``-th of it, rather than a ``MAX_MEMBERS``-th of what the networks before it left
    members_share_budget: ClassVar[bool] = False

    def __init__(self, **params: Any):
        self.params = dict(params)

    # -- declaration -----------------------------------------------------------------------------------------
    @classmethod
    def label_for(cls, entry: str) -> str:
        """Display name of the registry entry ``entry`` (a class may serve several entries, e.g. N2V and N2V2)."""
        return cls.label or entry

    @classmethod
    def description_for(cls, entry: str) -> str:
        return cls.description

    @classmethod
    def declared_options(cls, entry: str) -> tuple[Option, ...]:
        """The options of registry entry ``entry``, with that entry's defaults."""
        return cls.options

    @classmethod
    def from_params(cls, **params: Any) -> "Method":
        """Rebuild from the parameters a model file stored (see :meth:`to_config`): the options go through the
        constructor (checked as a user's would be), the :attr:`internal` parameters are put back as stored."""
        state = {k: params.pop(k) for k in cls.internal if k in params}
        method = cls(**params)
        method.params.update(state)
        return method

    @classmethod
    def settled(cls, entry: str, **given: Any) -> dict[str, Any]:
        """The values of the method options (not the data options) of registry entry ``entry``: each given value
        checked and converted by its declaration (:class:`~n2x.errors.OptionError` otherwise), the declared default
        where it is ``None``. Constructors call this, so the declaration is the one place of every default and
        range, and a method built directly (not through :func:`~n2x.methods.get_method`) is checked the same way."""
        out = {}
        for opt in cls.declared_options(entry):
            if opt.data:
                continue
            value = opt.parse(given.pop(opt.name, None), f"method {entry!r}")
            out[opt.name] = opt.default if value is None else value
        if given:  # a constructor passed a name its class does not declare: a bug in the method, not a user error
            raise TypeError(f"{cls.__name__} declares no option {', '.join(sorted(given))}")
        return out

    # -- network ---------------------------------------------------------------------------------------------
    def spatial_dims(self, requested: int | None, **options: Any) -> int | None:
        """The network's spatial dimensionality (2 or 3) given the user's ``dims`` and data options (``pairs``,
        ``along``...); ``None`` lets the data decide (3 when there is a Z axis). Methods with a fixed
        dimensionality override this and raise :class:`~n2x.errors.N2xError` on a contradictory request."""
        return requested

    def prepare(self, images: list, layouts: list) -> None:
        """Settle parameters that depend on the training data (e.g. AP-BSN's blind box from the noise probe) before
        the network is built. ``images`` are validated, with their layouts."""

    #: pixels of training patches :meth:`initialise` wants to see before the first step (0: none, not called)
    initial_sample_pixels = 0

    def initialise(self, net: nn.Module, patches: np.ndarray) -> None:
        """Before the first step: fit anything that must be fixed from the data before training (e.g. a noise
        level) on ``patches``, about :attr:`initial_sample_pixels` pixels of the training regions, normalised,
        ``(N, C, *patch)`` as the network sees them (independent channels folded into N)."""

    #: pixels of training patches (without flips or rotations) :meth:`calibrate` gets after the held-out ones (0:
    #: the held-out ones only). A held-out stripe is one region of an image, not a sample of all of it.
    calibration_pixels = 0

    def calibrate(self, net: nn.Module, val_patches: tuple | None, scale: list[float], device: torch.device,
                  fold_channels: bool, in_context: InContext | None = None) -> None:
        """After training: fit anything of the method's inference to the trained ``net`` (e.g. AP-BSN's filter of
        the blind box), from the held-out normalised patches ``val_patches`` (None without a validation split),
        followed by about :attr:`calibration_pixels` pixels of training patches. ``in_context(net)`` gives
        :meth:`blind_prediction` as inference makes it, each pixel with its whole receptive field, and the noisy
        values there (``(C, N)`` each, normalised), or None where the data allow no such measurement."""

    def blind_prediction(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """What ``net`` predicts for each pixel of the tile ``x`` ``(B, C, ...)`` from its surroundings alone, with
        :meth:`predict`'s flips and rotations (normalised; a blind-spot method's prior mean), or None where the
        method has no such prediction."""
        return None

    def held_out_predictions(self, net: nn.Module, val_patches: tuple | None, device: torch.device,
                             fold_channels: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """What ``net`` predicts at the held-out pixels of ``val_patches`` (normalised; the last array marks the
        held-out pixels) without seeing them, and the noisy values there: two flat float32 arrays, or None where the
        method has no such prediction. For a prediction blind to its own pixel, the mean squared difference is the
        error against the clean image plus the noise variance, so it ranks the networks of one run
        (:func:`n2x.api._members.choose_members`)."""
        return None

    def network_config(self, ndim: int, channels: int, overrides: dict | None = None, **options: Any) -> dict:
        """The ``{"name": ..., **kwargs}`` of the default network for ``ndim`` spatial dims and ``channels``.

        ``overrides`` (the user's ``network=``) win; ``options`` are the training call's pairing options
        (``pairs``, ``along``).
        """
        # 16 features: on a CPU the 32-feature U-Net of CAREamics trains 3x slower and, at equal compute, denoises
        # no better (camera/G25: 27.8 dB for 16 features after 1990 steps vs 27.6 dB for a depth-3 net).
        cfg = {"name": "unet", "ndim": ndim, "in_channels": channels, "out_channels": channels,
               "depth": 2, "features": 16}
        cfg.update(overrides or {})
        return cfg

    def build_network(self, net_cfg: dict) -> nn.Module:
        cfg = dict(net_cfg)
        return build_network(cfg.pop("name"), **cfg)

    def halo(self, net: nn.Module) -> int:
        """Halo in pixels (per side, along each spatial axis) a tile needs so its cropped output is exact."""
        r = net.receptive_radius()
        m = self.multiple(net)
        return round_up(r, m)

    def multiple(self, net: nn.Module) -> int:
        """Tile sizes (halo included) must be multiples of this."""
        return getattr(net, "multiple", 1)

    # -- training --------------------------------------------------------------------------------------------
    def training_defaults(self, ndim: int, **options: Any) -> tuple[tuple[int, ...] | None, int | None]:
        """Preferred ``(patch shape, patches per step)`` for ``ndim`` spatial dims given the data options
        (``pairs``...); ``None`` leaves the engine's default."""
        return ((self.default_patch or {}).get(ndim), (self.default_batch or {}).get(ndim))

    def make_sources(self, images: list, layouts: list, **options: Any) -> list:
        """Training sources for ``images`` (already validated, with their layouts).

        The default draws patches from each image alone; pairing methods override this. ``options`` are the
        data options of :func:`n2x.train` that are not method parameters (e.g. ``target``, ``pairs``).
        """
        from ..data.patches import single_source

        unknown = {k: v for k, v in options.items() if v is not None}
        if unknown:
            from ..errors import N2xError
            raise N2xError(f"method {self.name!r} does not take {', '.join(sorted(unknown))}")
        return [single_source(img, lay, name) for img, lay, name in
                zip(images, layouts, [f"image {i}" for i in range(len(images))])]

    def loss(self, net: nn.Module, patches: tuple[torch.Tensor, ...], generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    # -- inference -------------------------------------------------------------------------------------------
    def predict(self, net: nn.Module, x: torch.Tensor, position: tuple[int, ...] = ()) -> torch.Tensor:
        """Denoise a normalised tile ``x`` of shape ``(B, C, *spatial)``; ``position`` seeds any randomness."""
        return net(x)

    def to_config(self) -> dict:
        return {"name": self.name, **self.params}
