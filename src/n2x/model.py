"""A trained denoiser: method + network + normalisation + the axes it was trained on."""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ._version import __version__
from .data.axes import Layout, check_dtype, check_finite, make_layout
from .data.normalize import Normalization
from .device import autocast_dtype, select_device
from .errors import ModelFileError, ModelMismatchError
from .inference.tiling import default_tile, predict_image, round_up, run_network, tiles_per_batch
from .io.model_file import FORMAT_VERSION, file_sha256, read_model_file, state_sha256, write_model_file
from .methods import method_from_config
from .methods.base import Method
from .nets import memory_format, optimize_for_inference
from .nets.dihedral import TRANSFORMS, dihedral_mean
from .nets.ensemble import member_config


class Model:
    """A trained denoiser.

    ``config`` holds everything needed to rebuild it: ``method`` (name and options), ``network`` (name and
    constructor arguments), ``axes`` and ``spatial`` (``"YX"``/``"ZYX"``) of the training data, ``channels``
    (``"independent"`` or ``"joint"``), ``n_channels``, ``patch_shape`` and ``normalization``. ``history`` holds the
    training curves (``step``, ``loss``, ``val_step``, ``val_loss``, ...).
    """

    def __init__(self, method: Method, net: torch.nn.Module, config: dict, history: dict | None = None,
                 path: str | os.PathLike | None = None):
        self.method = method
        self.net = net.eval()
        self.config = config
        self.history = history or {}
        self.path = Path(path) if path is not None else None
        self.normalization = Normalization.from_dict(config["normalization"])
        self._device = torch.device("cpu")
        self._infer_net: torch.nn.Module | None = None

    # -- description ----------------------------------------------------------------------------------------
    @property
    def method_name(self) -> str:
        return self.config["method"]["name"]

    @property
    def spatial(self) -> str:
        return self.config["spatial"]

    @property
    def n_channels(self) -> int:
        return int(self.config["n_channels"])

    @property
    def halo(self) -> int:
        return self.method.halo(self.net)

    @property
    def multiple(self) -> int:
        return self.method.multiple(self.net)

    def weights_hash(self) -> str:
        return state_sha256(self.net.state_dict())

    def __repr__(self) -> str:
        return (f"Model(method={self.method_name!r}, spatial={self.spatial!r}, channels={self.n_channels}, "
                f"trained_on_axes={self.config.get('axes')!r}, halo={self.halo})")

    # -- fitting data --------------------------------------------------------------------------------------------
    def layout_for(self, shape: Sequence[int], axes: str | None = None) -> Layout:
        """The layout of data of ``shape``/``axes`` for this model, or :class:`ModelMismatchError` saying why not."""
        if axes is None:
            trained = self.config.get("axes")
            if trained and len(trained) == len(shape):
                axes = trained
        layout = make_layout(shape, axes, len(self.spatial)) if axes or len(shape) == 2 else None
        if layout is None:
            make_layout(shape, axes)  # raises the AxesError that asks for axes
        if self.spatial == "ZYX" and "Z" not in layout.axes:
            raise ModelMismatchError(
                f"this model is a 3D (ZYX) model but the data's axes {layout.axes!r} have no Z; "
                "use a 2D model or give the data's Z axis")
        if layout.n_channels != self.n_channels:
            raise ModelMismatchError(
                f"this model was trained on {self.n_channels} channel(s) but the data have {layout.n_channels} "
                f"(axes {layout.axes!r}, shape {tuple(shape)}); train a model on data with the same channels")
        return layout

    # -- inference ---------------------------------------------------------------------------------------------
    def to(self, device: str | torch.device | None = "auto") -> "Model":
        self._device = select_device(device)
        self.net.to(self._device)
        self._infer_net = None
        return self

    def inference_net(self) -> torch.nn.Module:
        """The network as used for prediction: batch norm fused into convolutions, channels-last layout."""
        if self._infer_net is None:
            self._infer_net = optimize_for_inference(self.net).to(self._device)
            self._infer_net.to(memory_format=memory_format(len(self.spatial)))
        return self._infer_net

    @property
    def device(self) -> torch.device:
        return self._device

    def predict_tiles(self, tiles: np.ndarray, positions: Sequence[tuple[int, ...]] = (), tta: bool = False) -> np.ndarray:
        """Denoise a batch of normalised tiles ``(B, C, *tile)`` on the model's device (float32 numpy back).

        ``tta`` averages the predictions of the 8 flips and 90-degree rotations in the YX plane
        (:func:`n2x.nets.dihedral.dihedral_mean`; 8x the time; tile
        sizes are multiples of the network's factor, so each transformed tile keeps the pooling grid aligned and the
        result stays independent of the tiling).
        """
        independent = self.config["channels"] == "independent"
        b, c = tiles.shape[:2]
        x = tiles.reshape((b * c, 1) + tiles.shape[2:]) if independent and c > 1 else tiles
        pos = list(positions)
        if independent and c > 1 and pos:
            pos = [p for p in pos for _ in range(c)]

        net = self.inference_net()
        fmt = memory_format(len(self.spatial))

        def once(t: torch.Tensor) -> torch.Tensor:
            return self.method.predict(net, t.contiguous(memory_format=fmt), tuple(pos))

        def fn(t: torch.Tensor) -> torch.Tensor:
            return dihedral_mean(once, t, len(TRANSFORMS)) if tta else once(t)

        y = run_network(fn, x, self._device, autocast_dtype(self._device))
        return y.reshape(tiles.shape[:2] + y.shape[2:]) if independent and c > 1 else y

    def predict(self, array: Any, axes: str | None = None, *, tile: Sequence[int] | int | None = None,
                batch_size: int | None = None, device: str | torch.device | None = None,
                progress: Callable[[int, int], None] | None = None,
                should_stop: Callable[[], bool] | None = None, tta: bool = False) -> np.ndarray:
        """Denoise an in-memory (numpy or small dask) array; float32 in the input's units, same shape and axes.

        ``tile`` is the core tile size along the spatial axes (default chosen from the image and network);
        ``tta`` averages 8 flipped/rotated predictions (8x slower, usually a few tenths of a dB better);
        ``progress(done, total)`` is called after each sample; when ``should_stop()`` turns true the samples not yet
        denoised are NaN in the result.
        """
        shape = tuple(getattr(array, "shape", np.shape(array)))
        check_dtype(getattr(array, "dtype", np.asarray(array).dtype))
        layout = self.layout_for(shape, axes)
        if device is not None:
            self.to(device)
        core = self._core(layout, tile)
        # One large tile at a time on a CPU (cache-friendly); a GPU wants a few.
        budget = 4e8 if self._device.type == "cpu" else 2e9
        features = member_config(self.config["network"]).get("features", 32)  # an ensemble's members run in turn
        bs = batch_size or tiles_per_batch(core, self.halo, 1, features, budget)
        # NaN marks samples not reached when ``should_stop`` ends the run early.
        out = np.full((layout.n_samples, layout.n_channels) + layout.spatial_shape, np.nan, np.float32)
        for s in range(layout.n_samples):
            if should_stop is not None and should_stop():
                break
            block = layout.read(array, s)
            check_finite(block)
            normed = self.normalization.apply(block, channel_axis=0)
            pred = predict_image(partial(self.predict_tiles, tta=tta), normed, core, self.halo, self.multiple, bs)
            out[s] = self.normalization.invert(pred, channel_axis=0)
            if progress is not None:
                progress(s + 1, layout.n_samples)
        return layout.from_canonical(out)

    def _core(self, layout: Layout, tile: Sequence[int] | int | None) -> tuple[int, ...]:
        m = self.multiple
        if tile is None:
            return default_tile(layout.spatial_shape, m, self.halo)
        tile = (tile,) * layout.ndim_spatial if isinstance(tile, int) else tuple(tile)
        if len(tile) != layout.ndim_spatial:
            raise ModelMismatchError(f"tile {tile} must have one size per spatial axis ({layout.spatial})")
        return tuple(max(m, round_up(t, m)) for t in tile)

    # -- files ---------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the model to ``path`` (one ``.n2x`` file, safetensors inside); returns the path."""
        cfg = dict(self.config)
        cfg["format_version"] = FORMAT_VERSION
        cfg["package_version"] = cfg.get("package_version", __version__)
        state = {k: v for k, v in self.net.state_dict().items()}
        self.path = write_model_file(path, state, cfg, self.history)
        return self.path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = "cpu") -> "Model":
        """Read a model file written by :meth:`save`; :class:`ModelFileError` when it is not one."""
        state, config, history = read_model_file(path)
        try:
            method = method_from_config(config["method"])
            net = method.build_network(config["network"])
            net.load_state_dict(state, strict=True)
            Normalization.from_dict(config["normalization"])
            for key in ("spatial", "n_channels", "channels"):
                config[key]
        except ModelFileError:
            raise
        except Exception as exc:
            raise ModelFileError(f"{path} is an n2x model file that does not load ({type(exc).__name__}: {exc})") from None
        model = cls(method, net, config, history, path)
        model.to(device)
        return model

    def file_hash(self) -> str | None:
        return file_sha256(self.path) if self.path is not None and self.path.exists() else None
