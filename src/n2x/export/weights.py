"""TorchScript and ONNX weights of an export wrapper (:mod:`.modules`), each checked against the wrapper itself.

Both are traced from one example block; a trace records one path through the Python code, so each result is run
on blocks of other shapes (square and not, batch of two) and compared with the eager wrapper. A mismatch refuses
TorchScript (export stops) or drops ONNX (with a warning): never weights that compute something else. The blocks
are random values in the input's units (``to_input``: the model's inverse normalisation of standard normal values,
so a transformed model is checked on values around its data, not on clamped negative ones).
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import N2xError, N2xWarning

#: largest |difference| allowed between a traced/exported wrapper and the eager one, relative to the output range
TOLERANCE = 1e-4


def check_shapes(minimum: int, multiple: int, ndim: int, channels: int) -> list[tuple[int, ...]]:
    """Block shapes ``(B, C, *spatial)`` the weights are checked on: non-square, square, and a batch of two."""
    a, b = minimum + multiple, minimum + 3 * multiple
    first = (a,) * (ndim - 2) + (a, b) if ndim == 3 else (a, b)
    square = (b,) * ndim
    return [(1, channels) + first, (1, channels) + square, (2, channels) + (a,) * ndim]


#: maps standard normal values ``(B, C, *spatial)`` to the input's units (None: times the scale)
ToInput = Optional[Callable[[np.ndarray], np.ndarray]]


def _agree(run: Callable[[np.ndarray], np.ndarray], module: nn.Module, shapes: Sequence[tuple[int, ...]],
           scale: float, to_input: ToInput = None) -> float:
    """Largest |run(x) - module(x)| over random blocks of ``shapes`` (in input units of range ~``scale``)."""
    rng = np.random.default_rng(0)
    worst = 0.0
    for shape in shapes:
        z = rng.standard_normal(shape)
        x = np.asarray(to_input(z) if to_input is not None else z * scale, np.float32)
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
        worst = max(worst, float(np.abs(run(x) - ref).max()))
    return worst


def trace_torchscript(module: nn.Module, shapes: Sequence[tuple[int, ...]], scale: float,
                      to_input: ToInput = None) -> torch.jit.ScriptModule:
    """The wrapper traced on ``shapes[0]``, checked on all ``shapes``; :class:`N2xError` when it disagrees."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # trace's deprecation and shape-as-constant notices: checked below instead
        traced = torch.jit.trace(module, torch.zeros(shapes[0]), check_trace=False)
        # Through a save/load round trip: what a consumer loads is what is checked.
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
        buf.seek(0)
        traced = torch.jit.load(buf)
    worst = _agree(lambda x: traced(torch.from_numpy(x)).detach().numpy(), module, shapes, scale, to_input)
    if not worst <= TOLERANCE * max(scale, 1e-12) * 10:
        raise N2xError(f"the TorchScript trace of this model computes something else on other block shapes "
                       f"(max difference {worst:.3g}); it cannot be exported")
    return traced


def write_onnx(module: nn.Module, path: Path, shapes: Sequence[tuple[int, ...]], multiple: int,
               scale: float, to_input: ToInput = None) -> int | None:
    """Write ONNX weights of the wrapper to ``path``, checked in onnxruntime on ``shapes``; the opset, or None (and
    an :class:`N2xWarning` saying why) when the network does not export cleanly or onnx/onnxruntime are missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError:
        warnings.warn("ONNX weights skipped: the onnx and onnxruntime packages are not installed "
                      '(pip install "napari-n2x[bmz]")', N2xWarning, stacklevel=3)
        return None
    opset = 18
    ndim = len(shapes[0]) - 2
    # The example is a non-square batch of two: torch.export fixes a dimension it sees at size 1, and a square
    # example would take the blind box's square-only branch.
    dims: dict[int, object] = {0: torch.export.Dim("batch")}
    for i, name in enumerate("zyx"[3 - ndim:]):
        # Sizes are declared as multiples of the network's factor, as the package's shape step says.
        dims[2 + i] = torch.export.Dim(f"{name}_blocks") * multiple if multiple > 1 else torch.export.Dim(name)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            _quiet_exporter_logs()
            torch.onnx.export(module, (torch.zeros((2,) + tuple(shapes[0][1:])),), str(path), input_names=["input"],
                              output_names=["output"], dynamo=True, dynamic_shapes={"x": dims},
                              opset_version=opset, verbose=False, external_data=False)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        worst = _agree(lambda x: session.run(None, {"input": x})[0], module, shapes, scale, to_input)
    except Exception as exc:  # noqa: BLE001 - any exporter or runtime failure means: no ONNX weights
        path.unlink(missing_ok=True)
        warnings.warn(f"ONNX weights skipped: this network does not export cleanly ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:200] if str(exc) else ''})", N2xWarning, stacklevel=3)
        return None
    if not worst <= TOLERANCE * max(scale, 1e-12) * 10:
        path.unlink(missing_ok=True)
        warnings.warn(f"ONNX weights skipped: onnxruntime's result differs from PyTorch's by {worst:.3g}",
                      N2xWarning, stacklevel=3)
        return None
    return opset


def _quiet_exporter_logs() -> None:
    """The dynamo exporter logs a line per missing optional library (torchvision): not the user's concern."""
    import logging

    for name in ("torch.onnx", "torch.onnx._internal.exporter._registration", "torch.export", "torch._dynamo"):
        logging.getLogger(name).setLevel(logging.ERROR)
