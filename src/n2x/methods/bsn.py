"""All-pixel blind-spot denoising for pixel-independent noise (after Laine et al., NeurIPS 2019).

Noise2Void hides about 2% of the pixels per step and learns from those only. A network that is blind by
construction (:class:`~n2x.nets.shifted_bsn.ShiftedBSN`: every output sees every pixel but its own) learns from
every pixel of every patch instead. Its prediction misses what only the pixel itself knows, which the noisy pixel
puts back through a Gaussian posterior:

- the network predicts, from the surroundings, a prior mean ``mu`` and a prior variance ``s_p^2`` per pixel; the
  noise variance ``s_n^2`` is one number per channel, measured before training on a sample of training patches
  (:data:`NOISE_SAMPLE_PIXELS`) by a robust estimator (:func:`robust_noise_var`) and then fixed (Laine et al.'s
  known-noise variant; learnt, it drifted below or above the truth: docs/methods.md), and after training bounded
  by the residuals at held-out pixels (:mod:`.noise_bound`);
- training fits the prior variance by the negative log-likelihood of the noisy value ``y`` under
  ``N(mu, s_p^2 + s_n^2)`` at every pixel, and the prior mean by the squared error ``(y - mu)^2`` (the likelihood's
  gradient weighs it by ``1 / (s_p^2 + s_n^2)``, which favours flat, dark regions: see :meth:`loss`);
- the prediction is the posterior mean ``(s_p^2 y + s_n^2 mu) / (s_p^2 + s_n^2)``: the noisy pixel counts where
  the surroundings cannot tell its value (edges, texture), not where they can (flat regions). One global weight
  (AP-BSN's box filter with a 1 x 1 box) cannot serve both;
- then the noisy image is filtered by the Wiener weights of that estimate in sliding 8 x 8 DCT blocks, or
  4 x 8 x 8 (ZYX) cubes in 3D (:mod:`.pilot_wiener`, BM3D's second step without block matching): the prior
  mean's errors are shared by neighbours, which the posterior, pixel by pixel, cannot see (:mod:`.posterior` holds
  these functions).

Values are in normalised units. With Poisson-Gaussian noise (``noise_model`` ``"photon"``, set where ``vst="auto"``
finds it) the noise variance is a line in the signal, for which the prior mean stands (Laine et al.'s
Poisson-Gaussian variant: :func:`robust_noise_line`); ``vst="on"`` stabilises the data instead (one variance).

Small images (a crop, one field of view): the network can memorise a single image's noise. A tenth of the pixels
(a fixed pattern: :mod:`n2x.data.holdout`) is held out of the loss; the network still sees them as neighbours, but
its output at a pixel never sees the pixel, so the likelihood there is an unbiased criterion, and training keeps the
weights that scored best on it. Once it shows the network memorising, training goes back to the best weights,
anneals from there and stops (:class:`n2x.training.RewindAnneal`); the budget left trains up to three more networks
from other seeds, whose posterior means are averaged (:mod:`n2x.api._members`). And fresh noise in the network's
input (:data:`INPUT_NOISE_SMALL`) hides the noisy neighbourhoods it would recognise the image's pixels by.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .._numbers import round_up
from ..nets import memory_format
from ..nets.dihedral import dihedral_mean
from ..nets.ensemble import members_of
from ..options import Option
from .base import InContext, Method
from .noise_bound import tighten_noise_var
from .posterior import noise_variance, posterior_mean, prior_and_noise, wiener_refined
from .prior_offset import clear_offset, set_offset
from .robust_noise import robust_noise_line, robust_noise_var

#: training patch side in pixels, and patches per step (2D); 3D: one (8, 64, 64) patch per step. Every pixel is
#: in the loss, so a step of 4 patches already averages 16 thousand pixels; more, smaller steps learn more in a
#: short budget (camera 100 x 100 crop, G25, 30 s: 4 patches 247 steps 25.5 dB, 16 patches 68 steps 25.1 dB)
PATCH_2D, BATCH_2D = 64, 4
PATCH_3D, BATCH_3D = (8, 64, 64), 1
#: the smallest training patch side in pixels the small-image rule goes down to
MIN_PATCH = 16
#: pixels of training patches the noise variance is measured on before training: an error in ``s_n^2`` moves into
#: ``s_p^2`` where the surroundings tell the value. The first batch alone scattered by 3-4% in variance and read
#: moon/G25 6% low; 2^18 pixels read it within 0.1% (the estimator's bias on texture stays: :mod:`.noise_bound`)
NOISE_SAMPLE_PIXELS = 2 ** 18
#: passes over the training pixels one network trains at most; a longer budget trains further networks from other
#: seeds, averaged (:mod:`n2x.api._members`). The held-out loss stopped improving after 110-140 passes on camera/G25
#: and moon/PG, and two networks of 165 passes beat one of 280 (docs/methods.md, "One network learns...")
MAX_EPOCHS_PER_NETWORK = 150
#: passes before which a network trained with input noise does not rewind (``min_passes_to_memorise``); such networks
#: also share the budget equally (``members_share_budget``): they learn for longer, and an early rise of the held-out
#: loss is the learning rate's wavering (crops/G25: rewinds after 39-58 passes ended 0.5-3.5 dB under the others).
#: Without input noise neither helped (microaneurysms/PG10). docs/methods.md, "Members share the budget".
MIN_PASSES_TO_MEMORISE = 100
#: flips/rotations averaged when denoising: 2 kept all but 0.02-0.03 dB of 8 at a quarter of the time (180 s
#: models of camera/G25, coins/PG and the dev volume/PG); 1 lost 0.1-0.2 dB
ENSEMBLE = 2
#: block side (px) of the Wiener filter after the posterior (:mod:`.pilot_wiener`; 0: none). docs/methods.md, "Wiener"
WIENER_BLOCK = 8
#: noise added to the network's input in training (option ``input_noise``, ``auto``), in noise standard deviations:
#: the most a patch gets, each patch drawing from 0 up to it, afresh at every step: it hides the noisy neighbourhoods
#: a network memorises a small image by. ``auto``: this on a small 2D image with noise of one variance, else 0
#: (docs/methods.md, "Input noise")
INPUT_NOISE_SMALL = 1.5
#: the negative slope of the head's activations (Laine et al.'s leaky ReLU slope)
HEAD_LEAK = 0.1
#: a step's gradient norm is clipped at this many times the recent median (:class:`n2x.training.GradientSpikeClip`):
#: the likelihood's gradient grows as ``(y - mu) / var``, and one step hundreds of times the typical one (an edge
#: not learnt yet) put a camera/G25 run on a plateau 2 dB below the others
GRADIENT_SPIKE_FACTOR = 3.0


class BlindSpotAllPixels(Method):
    """Laine et al.'s blind-spot network trained on every pixel, with a Gaussian posterior re-injecting the pixel.

    Options (:attr:`options`): ``ensemble`` (flips and 90-degree rotations averaged when denoising, default
    :data:`ENSEMBLE`), ``trunk`` (the in-plane network: ``unet``, Laine et al.'s shifted U-Net, ``dilated``, AP-BSN's
    dilated half-plane convolutions, or ``auto``: :meth:`trunk_for`), ``input_noise`` (noise added to the network's
    input in training, at most this many noise standard deviations, or ``auto``: :meth:`input_noise_for`),
    ``wiener_block`` (the block side of the Wiener filter after the posterior, 0 for none), ``z_context`` (3D:
    planes on each side of a voxel's plane the network sees, default 2). Stored by training:
    ``noise_sigma`` (the noise standard deviation per channel denoised with, normalised units, for the record:
    measured before training, bounded after it) and ``input_noise`` (the amount ``auto`` chose).
    """

    name = "bsn"
    label = "Blind-spot, all pixels"
    description = ("For noise independent from pixel to pixel (photon and read noise): a network blind to each "
                   "pixel learns from every pixel, then the noisy pixel is weighed in where its surroundings "
                   "cannot tell its value.")
    options = (
        Option("ensemble", "int", ENSEMBLE, "flips and 90-degree rotations of each tile averaged when denoising: "
               f"1, 2, 4 or 8 (default {ENSEMBLE})", label="Ensemble", choices=(1, 2, 4, 8)),
        Option("trunk", "str", "auto", "the network's in-plane trunk: unet (Laine et al.'s U-Net of shifted "
               "convolutions and poolings), dilated (AP-BSN's dilated half-plane convolutions at full resolution) "
               "or auto (unet on a 2D image of 192 px or more, else dilated); default auto", label="Trunk",
               choices=("auto", "unet", "dilated"), advanced=True),
        Option("input_noise", "float", None, "training: fresh noise added to the network's input at every step, "
               "at most this many noise standard deviations (each patch draws its amount from 0 up to it); a "
               f"regulariser against memorising a small image; default auto: {INPUT_NOISE_SMALL} on a 2D image "
               f"under {3 * PATCH_2D} px without photon noise, else 0 (off)", label="Input noise", range=(0.0, 4.0),
               auto=True, advanced=True),
        Option("wiener_block", "int", WIENER_BLOCK, "denoising: the noisy image filtered again in sliding blocks "
               "(cubes in 3D) of this many pixels by the Wiener weights of the posterior's estimate (BM3D's second "
               "step without block matching); not in 2D under photon noise in the posterior; 0 turns it off "
               f"(default {WIENER_BLOCK})", label="Wiener block", range=(0, 32), unit="px", advanced=True),
        Option("z_context", "int", 2, "3D: planes on each side of a voxel's plane that the network sees (default "
               "2)", label="Z context", range=(0, 8), unit="planes", advanced=True),
    )
    internal = ("noise_sigma", "noise_model", "noise_gain", "mean_offset")
    initial_sample_pixels = NOISE_SAMPLE_PIXELS
    #: the loss draws nothing at random in validation, so the loop validates with one draw, not several (with 4 patches
    #: per step, 4 draws of the 64 held-out patches cost about as much as the steps of a short run)
    deterministic_loss = True
    gradient_spike_factor = GRADIENT_SPIKE_FACTOR
    #: the posterior weighs the pixel by the noise variance: one variance, or a line in the signal for photon noise
    #: (``noise_model`` ``"photon"``); vst "on" stabilises the data and leaves one variance
    constant_noise = True
    photon_noise = True
    validates_on_held_out_pixels = True
    rewinds_when_memorising = True
    max_epochs_per_network = MAX_EPOCHS_PER_NETWORK
    #: training pixels the offset of the prior mean is measured on, after the held-out ones (:meth:`calibrate`)
    calibration_pixels = NOISE_SAMPLE_PIXELS

    def __init__(self, ensemble: int | None = None, trunk: str | None = None, input_noise: float | None = None,
                 wiener_block: int | None = None, z_context: int | None = None):
        super().__init__(**self.settled("bsn", ensemble=ensemble, trunk=trunk, input_noise=input_noise,
                                        wiener_block=wiener_block, z_context=z_context))
        self._longest_axis: int | None = None  # of the smallest training image, set by prepare()
        self._ndim: int | None = None  # spatial dimensions of the training images, set by prepare()

    def prepare(self, images: list, layouts: list) -> None:
        """Note the training images' size: a small image gets a smaller patch (see :meth:`training_defaults`)."""
        self._longest_axis = min(max(lay.spatial_shape[-2:]) for lay in layouts)
        self._ndim = len(layouts[0].spatial_shape)

    @property
    def min_passes_to_memorise(self) -> float:  # type: ignore[override]
        """:data:`MIN_PASSES_TO_MEMORISE` where training adds input noise (:meth:`input_noise_for`), else 0."""
        return MIN_PASSES_TO_MEMORISE if self.members_share_budget else 0.0

    @property
    def members_share_budget(self) -> bool:  # type: ignore[override]
        """Whether training adds input noise (see :data:`MIN_PASSES_TO_MEMORISE`)."""
        return self._ndim is not None and self.input_noise_for(self._ndim) > 0

    # -- network ---------------------------------------------------------------------------------------------
    def network_config(self, ndim: int, channels: int, overrides: dict | None = None, **options: Any) -> dict:
        # 16 features. The U-Net: 3 poolings (receptive radius about 75 px). The dilated trunk: AP-BSN's blind-box
        # dilations (receptive radius 20 px), whose 32-feature version memorised coins in 190 steps at 180 s of CPU.
        trunk = self.trunk_for(ndim)
        # Leaky ReLUs in the head: with ReLUs 1-7 of its 16 hidden units were dead after 2000 steps (16 runs on
        # camera, coins and moon; 8-12 on cell), and the camera/G25 run that plateaued at 27.52 dB reached 29.56
        # with leaky ones.
        cfg: dict[str, Any] = {"name": "shifted_bsn", "ndim": ndim, "in_channels": channels, "features": 16,
                               "trunk": trunk, "z_context": self.params["z_context"] if ndim == 3 else 0,
                               "leak": HEAD_LEAK}
        if trunk == "unet":
            cfg["depth"] = 3
        else:
            cfg["dilations"] = [1, 2, 4, 8, 1, 2]
        cfg.update(overrides or {})
        return cfg

    def trunk_for(self, ndim: int) -> str:
        """The trunk ``auto`` stands for: the U-Net on a 2D image of 192 px or more, the dilated trunk otherwise.

        - A small 2D image gets a patch a third of its size (:meth:`training_defaults`), and the U-Net's view
          (radius about 75 px) would be mostly the zero padding around it. At 300 steps the dilated trunk was
          better there (camera 100 x 100 crop, G25: 25.5 against 25.0 dB; PG: level) and on the synthetic
          100 x 100 image of ``tests/test_bsn.py``.
        - In 3D the U-Net trunk cost 4 times the time per step and was 0.4 dB behind at 40 steps (the dev volume,
          PG: 29.9 against 30.3 dB).
        """
        if self.params["trunk"] != "auto":
            return self.params["trunk"]
        return "unet" if ndim == 2 and not self._small_2d(ndim) else "dilated"

    def _small_2d(self, ndim: int) -> bool:
        """Whether training is on a 2D image under ``3 * PATCH_2D`` px along its longest axis (a crop, a field)."""
        return ndim == 2 and self._longest_axis is not None and self._longest_axis < 3 * PATCH_2D

    def input_noise_for(self, ndim: int) -> float:
        """The input noise ``auto`` stands for: :data:`INPUT_NOISE_SMALL` on a small 2D image, where a network
        memorises the image's noise within the budget, unless the noise model is photon noise; else 0."""
        if self.params["input_noise"] is not None:
            return float(self.params["input_noise"])
        photon = self.params.get("noise_model") == "photon"
        return INPUT_NOISE_SMALL if self._small_2d(ndim) and not photon else 0.0

    def training_defaults(self, ndim: int, **options: Any) -> tuple[tuple[int, ...] | None, int | None]:
        """``(patch, batch)``. On a 2D image of fewer than ``3 * 64`` pixels along its longest axis the patch
        side is a third of that axis (at least :data:`MIN_PATCH`). Chosen when validation held out a stripe one
        patch wide; with held-out pixels the whole image trains, and 64 x 64 patches were still worse there (camera
        100 x 100 crop/G25 25.89 against 26.21 dB, microaneurysms/G25 28.36 against 28.61, 180 s)."""
        if ndim == 3:
            return PATCH_3D, BATCH_3D
        side = PATCH_2D
        if self._small_2d(ndim):
            side = max(MIN_PATCH, (self._longest_axis // 3) // 8 * 8)
        return (side, side), BATCH_2D

    # -- training and inference ------------------------------------------------------------------------------
    def _prior_and_noise(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prior mean, prior variance and noise variance (:func:`prior_and_noise`)."""
        return prior_and_noise(net, x)

    def initialise(self, net: nn.Module, patches: np.ndarray) -> None:
        """Measure the noise on a sample of the training patches (:data:`NOISE_SAMPLE_PIXELS`): one variance, or
        with photon noise (``noise_model`` ``"photon"``, set by the api) a line in the signal
        (:func:`robust_noise_line`)."""
        x = torch.from_numpy(patches)
        if self.params.get("noise_model") == "photon":
            net.set_noise_var(*robust_noise_line(x))
        else:
            net.set_noise_var(robust_noise_var(x))

    def loss(self, net: nn.Module, patches: tuple[torch.Tensor, ...], generator: torch.Generator) -> torch.Tensor:
        """Mean Gaussian negative log-likelihood per pixel (up to a constant); in training, its gradient reaches
        the prior mean through the squared error instead (the comment below says why). With held-out pixels (a
        second array, 1 where a pixel is held out: :mod:`n2x.data.holdout`), training (``net.training``) averages
        over the other pixels, and validation over the held-out ones."""
        y = patches[0]
        if net.training and not bool(net.noise_initialised):  # a loop that did not call initialise()
            net.set_noise_var(robust_noise_var(y))
        mu, prior_var, noise_var = self._prior_and_noise(net, self._training_input(net, y, generator))
        var = prior_var + noise_var
        residual = y.float() - mu
        if net.training:
            nll = 0.5 * (torch.log(var) + residual.detach() ** 2 / var)
            # The mean learns by the plain squared error, the variance by the likelihood around the mean (Stirn et
            # al. 2023's "faithful" heteroscedastic regression): the likelihood weighs each pixel's error by
            # 1 / (s_p^2 + s_n^2), so the mean fits flat and dark regions at the expense of the textured and bright
            # ones, which the squared error of the denoised image counts alike. Scaled by the noise variance, so that
            # in flat regions the gradient is the likelihood's; the loss's value stays the likelihood.
            scale = noise_var.detach().mean(dim=[d for d in range(noise_var.ndim) if d != 1], keepdim=True)
            fit = 0.5 * residual ** 2 / scale
            nll = nll + (fit - fit.detach())
        else:
            nll = 0.5 * (torch.log(var) + residual ** 2 / var)
        if len(patches) < 2:
            return nll.mean()
        held_out = patches[-1].float()
        weight = 1.0 - held_out if net.training else held_out
        return (nll * weight).sum() / weight.sum().clamp_min(1.0)

    def _training_input(self, net: nn.Module, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``y`` ``(B, C, ...)`` in training plus fresh noise of up to :meth:`input_noise_for` noise standard
        deviations (the noise variance at ``y``'s value, with photon noise), each patch its own amount drawn
        uniformly from 0 up to it; ``y`` itself in validation."""
        most = self.input_noise_for(y.ndim - 2) if net.training else 0.0
        if most == 0.0:
            return y
        amount = most * torch.rand((y.shape[0],) + (1,) * (y.ndim - 1), generator=generator)
        noise = amount * torch.randn(y.shape, generator=generator)
        return (y.float() + noise.to(y.device) * noise_variance(net, y.float()).sqrt()).to(y.dtype)

    def posterior_mean(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean for the tile ``x`` (:func:`posterior_mean`)."""
        return posterior_mean(net, x)

    def predict(self, net: nn.Module, x: torch.Tensor, position: tuple = ()) -> torch.Tensor:
        estimate = dihedral_mean(lambda t: self.posterior_mean(net, t), x, self.params["ensemble"])
        return wiener_refined(net, x, estimate, self.wiener_block_used(x.ndim - 2)).to(x.dtype)

    def wiener_block_used(self, ndim: int) -> int:
        """The Wiener filter's block side for ``ndim`` spatial dimensions (2: squares, 3: cubes): 0 in 2D under
        photon noise in the posterior (``noise_model`` ``"photon"``), where it lost on moon/PG (-0.27 dB) and
        camera/PG (-0.02); cubes gained on both volumes under photon noise (docs/methods.md, "Wiener")."""
        if ndim == 2 and self.params.get("noise_model") == "photon":
            return 0
        return int(self.params["wiener_block"])

    def halo(self, net: nn.Module) -> int:
        block = self.wiener_block_used(members_of(net)[0].ndim)
        return round_up(net.receptive_radius() + max(block - 1, 0), self.multiple(net))

    def held_out_predictions(self, net: nn.Module, val_patches: tuple | None, device: torch.device,
                             fold_channels: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """The prior mean at the held-out pixels and their noisy values (flat, normalised units). The prior mean,
        not the posterior: the posterior weighs in the pixel itself, and its difference from the noisy value would
        favour the networks that copy it."""
        if val_patches is None or len(val_patches) < 2:
            return None
        x, mu = prior_means(net, val_patches[0], device, fold_channels)
        held = _as_network_input(val_patches[-1], fold_channels) > 0
        return mu[held].numpy(), x[held].numpy()

    def blind_prediction(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The prior mean (offset included) for the tile ``x``, averaged over :meth:`predict`'s transforms."""
        return dihedral_mean(lambda t: prior_and_noise(net, t)[0], x, self.params["ensemble"])

    def calibrate(self, net: nn.Module, val_patches: tuple | None, scale: list[float], device: torch.device,
                  fold_channels: bool, in_context: InContext | None = None) -> None:
        """Correct each network's prior mean by its offset, a constant and a curve in the prior mean
        (:mod:`.prior_offset`), and record the noise standard deviation (normalised units, per network channel).
        The residual is measured on the prior mean as inference makes it (``in_context``): trained on patches, a
        network's offset depends on how much of its receptive field the input holds (moon/PG, 180 s: -0.002 on
        64 x 64 patches, +0.016 on 128 x 128 tiles, +0.027 on the whole image, normalised), so the held-out and
        training patches (:func:`measure_mean_offset`) are only the fallback where no such regions exist. Then, with
        one noise variance, bound it by the residuals at the held-out pixels (:mod:`.noise_bound`)."""
        if val_patches is not None or in_context is not None:
            for member in members_of(net):
                clear_offset(member)
                measured = in_context(member) if in_context is not None else None
                if measured is not None:
                    set_offset(member, *measured)
                elif val_patches is not None:
                    measure_mean_offset(member, val_patches[0], device, fold_channels)
            self.params["mean_offset"] = [round(float(v), 6) for v in members_of(net)[0].mean_offset.cpu()]
        if val_patches is not None and len(val_patches) > 1 and self.params.get("noise_model") != "photon":
            tighten_noise_var(lambda n, t: prior_and_noise(n, t)[:2], members_of(net),
                              _as_network_input(val_patches[0], fold_channels),
                              _as_network_input(val_patches[-1], fold_channels) > 0, device)
        net = members_of(net)[0]  # the members of an ensemble measured the same noise
        self.params["input_noise"] = self.input_noise_for(net.ndim)
        sigma = net.noise_var.detach().float().sqrt().cpu().tolist()
        self.params["noise_sigma"] = [round(s, 6) for s in sigma]
        if self.params.get("noise_model") == "photon":
            self.params["noise_gain"] = [round(g, 6) for g in net.noise_gain.detach().float().cpu().tolist()]


def measure_mean_offset(net: nn.Module, patches: np.ndarray, device: torch.device, fold_channels: bool) -> None:
    """Set the offset of ``net``'s prior mean (``mean_offset`` and the curve of :mod:`.prior_offset`) from
    ``y - mu`` per channel over ``patches`` ``(N, C, ...)`` (normalised).

    The noise has zero mean and the prior mean is blind to its pixel, so the mean of ``y - mu`` is the prior mean's
    offset from the clean image, to within ``sigma / sqrt(pixels)``: on these patches, with the context they give.
    The fallback of :meth:`BlindSpotAllPixels.calibrate`, which measures it as inference predicts where it can."""
    clear_offset(net)
    x, mu = prior_means(net, patches, device, fold_channels)
    c = x.shape[1]
    set_offset(net, x.transpose(0, 1).reshape(c, -1).numpy(), mu.transpose(0, 1).reshape(c, -1).numpy())


def prior_means(net: nn.Module, patches: np.ndarray, device: torch.device, fold_channels: bool,
                batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, mu)`` on the CPU: ``patches`` ``(N, C, ...)`` as the network takes them (independent channels folded
    into N with ``fold_channels``) and the prior mean of ``net`` for each, computed ``batch`` patches at a time."""
    x = _as_network_input(patches, fold_channels)
    layout = memory_format(x.ndim - 2)
    with torch.no_grad():
        mu = torch.cat([prior_and_noise(net, xi.to(device).contiguous(memory_format=layout))[0].cpu()
                        for xi in x.split(batch)])
    return x, mu


def _as_network_input(patches: np.ndarray, fold_channels: bool) -> torch.Tensor:
    """``patches`` ``(N, C, ...)`` as a float32 tensor, with independent channels folded into N."""
    x = torch.from_numpy(np.ascontiguousarray(patches, np.float32))
    return x.reshape((-1, 1) + tuple(x.shape[2:])) if fold_channels else x
