"""ONNX export of a (pruned) network, checked against PyTorch with onnxruntime before anyone deploys it.

A pruned model is only useful if it runs where it is deployed, so the export is not trusted until onnxruntime
reproduces the PyTorch outputs on the example batch and on a batch of another size (the batch dimension is
exported as dynamic).

How torch 2.14 exports: ``torch.onnx.export(..., dynamo=True)`` (the default) goes through ``torch.export`` and
onnxscript's torchlib; the TorchScript exporter (``dynamo=False``) still exists but is deprecated, so only the
new path is used. It needs ``onnx`` and ``onnxscript`` (0.6 or later: torch 2.14 calls its ``torch_2_11`` API);
checking needs ``onnxruntime``. These are the ``onnx`` extra.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

__all__ = ["ExportError", "export_onnx"]

# The opset torch 2.14 uses by default, pinned so that the files do not change with torch's default and stay
# loadable by every onnxruntime the `onnx` extra allows (1.18 reads up to opset 21).
OPSET = 20
# torch's exporter moves weights into a side file past 1.5 GiB (protobuf caps a file at 2 GiB); the caller
# publishes one file, so larger models are refused instead.
MAX_INITIALIZER_BYTES = 1536 * 1024**2
_INSTALL_HINT = 'ONNX export needs onnx, onnxscript and onnxruntime: pip install "hypernets[onnx]"'


class ExportError(ValueError):
    """The model cannot be exported to ONNX, or the exported graph does not reproduce it (message says which
    and why)."""


def export_onnx(
    model: nn.Module,
    example_inputs: Tensor,
    path: str | os.PathLike,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> float:
    """Write ``model`` as one ONNX file at ``path`` and check it with onnxruntime (CPUExecutionProvider).

    The batch dimension (dim 0 of ``example_inputs``) is dynamic. The file is run on ``example_inputs`` and on a
    batch of 2 and compared with the model in eval mode, elementwise ``|onnx - torch| <= atol + rtol * |torch|``.
    The file is written to ``path`` directly (the caller stages it atomically); the model's mode is restored.

    Returns:
        The largest absolute difference seen over both batches.

    Raises:
        ExportError: the ONNX packages are missing, the export fails, the batch cannot stay dynamic, the weights
            are too large for one file, or onnxruntime does not reproduce the outputs.
    """
    ort = _import_onnx_packages()
    device = _device_of(model)
    example = example_inputs.to(device)
    batches = [example, _batch_of_two(example)]
    was_training = model.training
    model.eval()
    try:
        # Traced on the batch of 2: torch.export may specialize a size-1 batch (it does for GPT-2), fixing it at 1.
        program = _export(model, batches[1])
        _save_single_file(program, path)
        session = _session(ort, path)
        return max(_compare(model, session, batch, atol=atol, rtol=rtol) for batch in batches)
    finally:
        model.train(was_training)


def _import_onnx_packages() -> Any:
    """onnxruntime, after checking that the exporter's own dependencies import too (all are optional)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ExportError(f"{_INSTALL_HINT} ({error})") from error
    return onnxruntime


def _export(model: nn.Module, example: Tensor) -> Any:
    """The ONNXProgram of ``model`` with a dynamic batch, or an ExportError naming the root cause."""
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(
            model, (example,), dynamo=True, dynamic_shapes=({0: batch},), opset_version=OPSET, verbose=False
        )
    except Exception as error:
        raise ExportError(
            f"cannot export {type(model).__name__} to ONNX: {_root_cause(error)}{_hint(model)}"
        ) from error
    first_dim = program.model.graph.inputs[0].shape[0] if program.model.graph.inputs else None
    if isinstance(first_dim, int):
        raise ExportError(
            f"cannot export {type(model).__name__} to ONNX with a dynamic batch: the exported input has a fixed "
            f"batch of {first_dim} (the model's code specializes on the batch size)"
        )
    return program


def _root_cause(error: BaseException) -> str:
    """The innermost exception's type and first line: the exporter wraps it in pages of advice."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _hint(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", False):
        return " (Hugging Face models return a KV cache that ONNX cannot hold: set model.config.use_cache = False)"
    return ""


def _save_single_file(program: Any, path: str | os.PathLike) -> None:
    size = sum(v.const_value.nbytes for v in program.model.graph.initializers.values() if v.const_value is not None)
    if size > MAX_INITIALIZER_BYTES:
        raise ExportError(
            f"the model's weights take {size / 1024**3:.2f} GiB, more than one ONNX file holds "
            f"({MAX_INITIALIZER_BYTES / 1024**3:.1f} GiB); export would need an external data file"
        )
    program.save(os.fspath(path), external_data=False)


def _session(ort: Any, path: str | os.PathLike) -> Any:
    try:
        return ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    except Exception as error:
        raise ExportError(f"onnxruntime cannot load the exported model: {_root_cause(error)}") from error


@torch.no_grad()
def _compare(model: nn.Module, session: Any, batch: Tensor, *, atol: float, rtol: float) -> float:
    """Max abs difference between PyTorch's and onnxruntime's outputs on ``batch``; ExportError if not close."""
    expected = [_to_numpy(leaf) for leaf in pytree.tree_leaves(model(batch)) if isinstance(leaf, Tensor)]
    feeds = {i.name: _to_numpy(batch) for i in session.get_inputs()}
    try:
        actual = session.run(None, feeds)
    except Exception as error:
        raise ExportError(f"onnxruntime fails on a batch of {len(batch)}: {_root_cause(error)}") from error
    if len(actual) != len(expected):
        raise ExportError(f"the ONNX model has {len(actual)} outputs, the PyTorch model {len(expected)}")
    worst = 0.0
    for index, (ours, theirs) in enumerate(zip(actual, expected, strict=True)):
        if ours.shape != theirs.shape:
            raise ExportError(f"output {index} has shape {ours.shape} in ONNX, {theirs.shape} in PyTorch")
        difference = float(np.nanmax(np.abs(ours.astype(np.float64) - theirs), initial=0.0))
        if not np.allclose(ours, theirs, atol=atol, rtol=rtol, equal_nan=True):
            raise ExportError(
                f"the ONNX model does not reproduce output {index} on a batch of {len(batch)}: max abs difference "
                f"{difference:.3g} (atol={atol}, rtol={rtol})"
            )
        worst = max(worst, difference)
    return worst


def _batch_of_two(example: Tensor) -> Tensor:
    """The first sample, then the last one mirrored along its last dimension: two distinct, valid samples of
    any dtype (image width and token order both flip)."""
    return torch.cat([example[:1], example[-1:].flip(-1)])


def _to_numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")
