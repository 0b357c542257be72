"""Training through the api: check the data and options, build the method and its network, run the loop."""
from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from datetime import datetime, timezone
from functools import partial
from typing import Any, Callable, Generator, Sequence

import numpy as np
import torch

from .._progress import drain
from .._version import __version__
from ..data.axes import CONSTANT_MESSAGE, Layout, check_dtype, check_train_size, make_layout
from ..data.holdout import with_held_out_pixels
from ..data.patches import PatchSampler
from ..device import autocast_dtype, precision_name, select_device
from ..durations import parse_duration
from ..errors import InputError, N2xError, N2xWarning, OptionError
from ..methods import get_method, method_info
from ..model import Model
from ..nets.ensemble import NetworkEnsemble
from ..options import parse_options
from ..training import TrainProgress, fit, import_optimiser_support

from ._auto import (MethodChoice, choose_method, fit_vst_normalization, noise_config, photon_noise_wanted,
                    probe_quietly, resolve_vst)
from ._calibration import calibration_patches, context_windows, predict_in_context
from ._members import MAX_MEMBERS, fit_members, member_cap_floor
from ._options import (DEFAULT_BATCH, DEFAULT_PATCH, DEFAULT_SECONDS, LEARNING_RATE,  # noqa: F401
                       MAX_DEFAULT_BATCH, MAX_MEMORY, PREVIEW_EVERY, TRAIN_OPTIONS, VAL_FRACTION)


def _as_list(images: Any) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def _default_patch(layouts: list[Layout], multiple: int, preferred: tuple[int, ...]) -> tuple[int, ...]:
    nd = layouts[0].ndim_spatial
    smallest = [min(lay.spatial_shape[d] for lay in layouts) for d in range(nd)]
    patch = []
    for want, have in zip(preferred, smallest):
        p = min(want, (have // multiple) * multiple)
        if p < multiple:
            raise InputError(f"the image (spatial shape {tuple(smallest)}) is too small to train on: each spatial "
                             f"axis needs at least {multiple} pixels")
        patch.append(p)
    return tuple(patch)


def _default_batch(patch: tuple[int, ...], preferred_patch: tuple[int, ...], preferred_batch: int) -> int:
    """Patches per step that hold as many pixels as ``preferred_batch`` patches of ``preferred_patch``: a step
    costs about the same whatever patch size the user (or a small image) sets."""
    pixels = int(np.prod(preferred_patch)) * preferred_batch
    return int(min(MAX_DEFAULT_BATCH, max(1, round(pixels / int(np.prod(patch))))))


def _data_hash(images: list, layouts: list[Layout]) -> str:
    """A cheap fingerprint of the training data: shapes, dtypes and a few sampled planes."""
    h = hashlib.sha256()
    for img, lay in zip(images, layouts):
        h.update(repr((lay.shape, lay.axes, str(np.dtype(img.dtype)))).encode())
        for s in sorted({0, lay.n_samples // 2, lay.n_samples - 1}):
            region = tuple(slice(0, min(n, 256)) for n in lay.spatial_shape)
            h.update(np.ascontiguousarray(lay.read(img, s, region)).tobytes())
    return h.hexdigest()


def train_iter(images: Any, axes: str | None = None, method: str | MethodChoice = "n2v", *,
               time: str | float | None = None, steps: int | None = None, epochs: float | None = None,
               patch_size: Sequence[int] | int | None = None, batch_size: int | None = None,
               learning_rate: float = LEARNING_RATE, network: dict | None = None, channels: str = "independent",
               dims: int | None = None, normalization: str = "meanstd", vst: str = "auto",
               val_fraction: float = VAL_FRACTION,
               max_memory: float = MAX_MEMORY, device: str | torch.device | None = "auto", seed: int | None = None,
               precision: str = "auto", should_stop: Callable[[], bool] | None = None,
               preview: np.ndarray | Callable[[], np.ndarray | None] | None = None,
               preview_every: float = PREVIEW_EVERY, **method_options: Any) -> Generator[TrainProgress, None, Model]:
    """Check the data and options, then return a generator that trains, yielding :class:`TrainProgress`; the
    generator's return value is the :class:`Model`. Bad data or options raise here, before any step runs.

    ``images``: one array or a list of arrays (numpy, dask, zarr: read lazily, at most ``max_memory`` bytes of
    patches in memory) with axes ``axes`` (``S T C Z Y X``). ``method``: a registered method (``n2v``, ``n2v2``,
    ``n2n``, ``apbsn``...), ``"auto"`` (the noise probe chooses: :func:`n2x.api.choose_method`) or a
    :class:`~n2x.api.MethodChoice` that function returned; its declared options (:func:`n2x.api.method_info`, e.g.
    ``mask_fraction`` for N2V, or ``target``/``pairs``/``along`` for N2N) go in ``method_options``, and an option
    it does not declare is an :class:`~n2x.errors.OptionError`. The other keywords are :data:`TRAIN_OPTIONS`.
    Length: one of ``time`` (seconds or text like ``"3m"``), ``steps`` or ``epochs`` (passes over the training
    pixels); default 180 s. ``channels``: ``"independent"`` (one network applied per channel) or ``"joint"``.
    ``dims``: 2 or 3 (default 3 when there is a Z axis). ``precision``: mixed precision in training, ``"auto"``
    (bfloat16 on CUDA and on CPUs with hardware bfloat16; see :func:`n2x.device.autocast_dtype`), ``"float32"`` or
    ``"bfloat16"``.
    ``vst``: ``"auto"`` (the generalised Anscombe transform when the probe finds Poisson-Gaussian noise), ``"on"`` or
    ``"off"``; recorded in the model file (``normalization``, ``noise``).
    ``preview``: a raw region ``(C, *spatial)`` (or a function returning the
    current one) denoised every ``preview_every`` seconds into ``TrainProgress.preview``. ``should_stop`` is
    polled between steps; the best model so far is returned.
    """
    import_optimiser_support()  # here, in the caller's thread, before any worker or optimiser runs
    if sum(x is not None for x in (time, steps, epochs)) > 1:
        raise OptionError("give only one of time, steps and epochs")
    common = parse_options(TRAIN_OPTIONS, {
        "patch_size": patch_size, "batch_size": batch_size,
        "learning_rate": learning_rate, "channels": channels, "dims": dims,
        "normalization": normalization, "vst": vst, "val_fraction": val_fraction, "max_memory": max_memory,
        "precision": precision, "seed": seed, "steps": steps, "epochs": epochs}, "training")
    defaults = {o.name: o.default for o in TRAIN_OPTIONS}
    # From here on the checked values (a front door may pass text: "8" steps, "0.01" learning rate)
    learning_rate, channels, normalization, vst, val_fraction, max_memory, precision, seed, steps, epochs = (
        common.get(k, defaults[k]) for k in ("learning_rate", "channels", "normalization", "vst", "val_fraction",
                                             "max_memory", "precision", "seed", "steps", "epochs"))
    images = _as_list(images)
    if not images:
        raise InputError("no training images were given")
    choice = _resolve_method(images, axes, method, method_options, vst, common.get("dims"))
    method = choice.name
    meth, data_options = _build_method(method, method_options)
    target, pairs, along = (data_options.get(k) for k in ("target", "pairs", "along"))
    dims = meth.spatial_dims(common.get("dims"), pairs=pairs, along=along)  # e.g. AP-BSN is 2D: Z planes become samples
    layouts = []
    for i, img in enumerate(images):
        if not hasattr(img, "shape") or not hasattr(img, "dtype"):
            img = images[i] = np.asarray(img)
        check_dtype(img.dtype)
        layouts.append(make_layout(img.shape, axes, dims))
        check_train_size(layouts[-1])  # the one rule every front door shows (api.check_trainable)
    n_ch = layouts[0].n_channels
    if any(lay.n_channels != n_ch for lay in layouts):
        raise InputError("all training images must have the same number of channels")
    ndim = layouts[0].ndim_spatial
    dev = select_device(device)  # before any work: a bad device or precision fails at once
    amp = autocast_dtype(dev, training=True, precision=precision, ndim=ndim)
    net_channels = 1 if channels == "independent" else n_ch
    meth.prepare(images, layouts)
    net_cfg = meth.network_config(ndim, net_channels, network, pairs=pairs, along=along)
    if seed is not None:
        torch.manual_seed(seed)
    try:
        net = meth.build_network(net_cfg)
    except (TypeError, ValueError) as exc:
        raise N2xError(f"invalid network option for method {method!r}: {exc}") from None
    multiple = meth.multiple(net)
    want_patch, want_batch = meth.training_defaults(ndim, pairs=pairs, along=along)
    want_patch, want_batch = want_patch or DEFAULT_PATCH[ndim], want_batch or DEFAULT_BATCH[ndim]
    patch_size = common.get("patch_size")
    if patch_size is None:
        patch = _default_patch(layouts, multiple, want_patch)
    else:
        patch = (int(patch_size),) * ndim if isinstance(patch_size, (int, np.integer)) else tuple(map(int, patch_size))
        if len(patch) != ndim:
            raise InputError(f"patch size {patch} needs one value per spatial axis ({layouts[0].spatial})")
        bad = [p for p in patch if p % multiple or p <= 0]
        if bad:
            raise InputError(f"patch sizes must be positive multiples of {multiple} for this network, not {patch}")
    batch_size = common.get("batch_size")
    if batch_size is None:  # its declared range has checked a given one
        batch_size = _default_batch(patch, want_patch, want_batch)
    batch_size = int(batch_size)
    sources = meth.make_sources(images, layouts, target=target, pairs=pairs, along=along)
    if meth.validates_on_held_out_pixels and val_fraction > 0:
        sources = [with_held_out_pixels(src, val_fraction) for src in sources]
    transforms = resolve_vst(vst, choice.report, method)
    if photon_noise_wanted(vst, choice.report, method):
        meth.params["noise_model"] = "photon"
    vst_norm = fit_vst_normalization(images, layouts, normalization, transforms) if transforms else None
    sampler = PatchSampler(sources, patch, max_memory=max_memory, val_fraction=val_fraction,
                           normalization=normalization, seed=seed, norm=vst_norm)
    # A constant image trains to an identity and says nothing; say it. A warning, not an error: the raw regions the
    # sampler read (all of a small image, a sample of a large one) are what the statement is about.
    flat = sampler.constant_value()
    if flat is not None:
        warnings.warn(CONSTANT_MESSAGE.format(value=flat), N2xWarning, stacklevel=2)
    noise_sample = None
    if meth.initial_sample_pixels:
        first = sampler.sample(max(1, meth.initial_sample_pixels // int(np.prod(patch))))[0]
        noise_sample = first.reshape((-1, 1) + first.shape[2:]) if channels == "independent" else first
        meth.initialise(net, noise_sample)
    if steps is None and time is None and epochs is None:
        time = DEFAULT_SECONDS
    if epochs is not None:  # steps and epochs were checked positive by their declared ranges
        steps = max(1, int(round(epochs * sampler.patches_per_epoch() / batch_size)))
    seconds = parse_duration(time) if time is not None else None
    norm = sampler.norm

    def run_preview(live_net: torch.nn.Module) -> np.ndarray | None:
        region = preview() if callable(preview) else preview
        if region is None:
            return None
        region = np.asarray(region, np.float32)
        if region.ndim == ndim:
            region = region[None]
        tmp = Model(meth, live_net, {**config, "normalization": norm.to_dict()})
        tmp._device = dev
        from ..inference.tiling import default_tile, predict_image
        normed = norm.apply(region, channel_axis=0)
        core = default_tile(region.shape[1:], tmp.multiple, tmp.halo)
        out = predict_image(tmp.predict_tiles, normed, core, tmp.halo, tmp.multiple, batch_size=4)
        return norm.invert(out, channel_axis=0)

    config: dict[str, Any] = {
        "method": meth.to_config(),
        "network": net_cfg,
        "axes": layouts[0].axes,
        "spatial": layouts[0].spatial,
        "channels": channels,
        "n_channels": n_ch,
        "patch_shape": list(patch),
        "normalization": norm.to_dict(),
        "noise": noise_config(choice.report, transforms),
        "method_choice": choice.to_config(),
        "package_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "training": {
            "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed, "device": str(dev),
            "precision": precision_name(amp),
            "steps": steps, "seconds": seconds, "data_hash": _data_hash(images, layouts),
            "data_shapes": [list(lay.shape) for lay in layouts], "val_independent": sampler.val_independent,
        },
    }
    fit_net = partial(fit, meth, sampler=sampler, device=dev, batch_size=batch_size, lr=learning_rate,
                      should_stop=should_stop, preview=run_preview if preview is not None else None,
                      preview_every=preview_every, fold_channels=channels == "independent", precision=precision,
                      max_steps=_network_steps_cap(meth, sampler, batch_size), cap_floor=1 / MAX_MEMBERS)
    steps_gen = fit_net(net, steps=steps, seconds=seconds, seed=seed)
    if meth.rewinds_when_memorising:

        def train_member(index: int, steps_left: int | None, seconds_left: float | None) -> Generator:
            if seed is not None:
                torch.manual_seed(seed + index)
            member = meth.build_network(net_cfg)
            if noise_sample is not None:
                meth.initialise(member, noise_sample)
            floor = 1 / MAX_MEMBERS  # of the budget left
            if meth.members_share_budget:
                floor = (member_cap_floor(steps, steps_left) if steps is not None
                         else member_cap_floor(seconds, seconds_left))
            return fit_net(member, steps=steps_left, seconds=seconds_left, cap_floor=floor,
                           seed=None if seed is None else seed + index)

        steps_gen = fit_members(steps_gen, train_member, member_config=net_cfg, steps=steps, seconds=seconds,
                                preview=run_preview if preview is not None else None,
                                held_out=partial(meth.held_out_predictions, val_patches=sampler.val_patches,
                                                 device=dev, fold_channels=channels == "independent"))
    fold, halo = channels == "independent", meth.halo(net)
    in_context = partial(predict_in_context, meth, windows=context_windows(sampler, halo), device=dev,
                         fold_channels=fold, halo=halo, multiple=meth.multiple(net))
    return _finish(steps_gen, meth, config, dev,
                   partial(meth.calibrate, val_patches=calibration_patches(sampler, meth, patch), scale=norm.scale,
                           device=dev, fold_channels=fold, in_context=in_context))


def _network_steps_cap(meth: Any, sampler: Any, batch_size: int) -> int | None:
    """The steps of :attr:`~n2x.methods.base.Method.max_epochs_per_network` passes over the training pixels, or
    None where the method sets no cap. It never cuts a network below a :data:`MAX_MEMBERS`-th of the budget (the
    ``cap_floor`` of :func:`n2x.training.fit`; for the later members :func:`~n2x.api._members.member_cap_floor`): a
    small image passes the cap within seconds, where the held-out loss (the rewind) says better when it starts
    memorising (camera 100 x 100 crop/G25, 180 s: cut at 367 steps, four networks of 4 s each, 26.51 dB; best steps
    375-656 otherwise, 27.66)."""
    if meth.max_epochs_per_network is None:
        return None
    return max(1, math.ceil(meth.max_epochs_per_network * sampler.patches_per_epoch() / batch_size))


def _resolve_method(images: list, axes: str | None, method: str | MethodChoice, options: dict[str, Any],
                    vst: str, dims: int | None) -> MethodChoice:
    """The method to train, with the noise probe's report where ``method`` is ``"auto"`` or ``vst`` is ``"auto"``
    or ``"on"`` (one probe serves both)."""
    choice = method
    if not isinstance(choice, MethodChoice):
        choice = choose_method(images, axes, method, target=options.get("target"), pairs=options.get("pairs"),
                               vst=vst, dims=dims)
    if choice.report is None and vst != "off":
        choice = dataclasses.replace(choice, report=probe_quietly(images, axes))
    return choice


def _build_method(name: str, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The method ``name`` built from the user's ``options`` (checked against its declaration), and the data
    options it declares (``target``, ``pairs``, ``along``), which go to its training sources."""
    info = method_info(name)
    data_names = {o.name for o in info.options if o.data}
    given = {k: v for k, v in options.items() if v is not None}
    data = parse_options([o for o in info.options if o.data], {k: v for k, v in given.items() if k in data_names},
                         f"method {info.name!r}")
    params = {k: v for k, v in given.items() if k not in data_names}
    try:
        meth = get_method(name, **params)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, N2xError):
            raise
        raise OptionError(f"invalid option for method {name!r}: {exc}") from None
    return meth, data


def _finish(steps_gen: Generator, meth: Any, config: dict, dev: torch.device,
            calibrate: Callable[[torch.nn.Module], None]) -> Generator[TrainProgress, None, Model]:
    trained, history = yield from steps_gen
    if isinstance(trained, NetworkEnsemble):
        config["network"] = {"name": "ensemble", "member": config["network"], "count": len(trained.members)}
    calibrate(trained)
    config["method"] = meth.to_config()  # with what calibration added
    config["training"]["steps_done"] = history["steps"]
    config["training"]["train_seconds"] = history["train_seconds"]
    model = Model(meth, trained, config, history)
    model.to(dev)
    return model


def train(images: Any, axes: str | None = None, method: str = "n2v", *,
          callback: Callable[[TrainProgress], None] | None = None, **kwargs: Any) -> Model:
    """Train a denoiser and return the :class:`Model`; ``callback`` receives each :class:`TrainProgress`.

    Takes the same arguments as :func:`train_iter`.
    """
    return drain(train_iter(images, axes, method, **kwargs), callback)
