"""Pieces of the models rewritten for ONNX export, shared by the tasks' exporters
(``structkd/tasks/*/export.py``): an exact BiLSTM without packed sequences, the character CNN on
every word at once, the TorchScript export call, and the destination check.

Packed sequences do not export. ``ExportBiLSTM`` computes what ``nn.LSTM`` on a packed batch
computes, at every real position: the forward direction runs on the padded batch (padding lies
after a sentence, so it never reaches its real positions) and the backward direction on each row
reversed within its length, ``reversal[b, i] = length_b - 1 - i`` for ``i < length_b`` (padding
stays in place), then reversed back; outputs at padding are 0, as ``pad_packed_sequence`` gives.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from structkd.serve.onnx import onnx_session

__all__ = [
    "ExportBiLSTM",
    "char_cnn_features",
    "check_against_torch",
    "check_destination",
    "export_directory",
    "gather_positions",
    "write_onnx",
]


def gather_positions(values: Tensor, index: Tensor) -> Tensor:
    """``values[b, index[b, i], :]`` for ``values [B, N, D]`` and ``index [B, N]``."""
    return values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


class ExportBiLSTM(nn.Module):
    """``(inputs [B, N, D], lengths [B])`` -> ``[B, N, 2H]``: the batch-first bidirectional
    ``lstm`` (copied: one one-direction ``nn.LSTM`` per layer and direction) as on a packed batch,
    0 at padding (see the module docstring)."""

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        if not (lstm.bidirectional and lstm.batch_first and lstm.bias) or lstm.proj_size:
            raise ValueError("ExportBiLSTM expects a batch-first bidirectional LSTM with biases")
        self.forward_layers = nn.ModuleList()
        self.backward_layers = nn.ModuleList()
        for layer in range(lstm.num_layers):
            width = lstm.input_size if layer == 0 else 2 * lstm.hidden_size
            for suffix, layers in (("", self.forward_layers), ("_reverse", self.backward_layers)):
                direction = nn.LSTM(width, lstm.hidden_size, batch_first=True)
                with torch.no_grad():
                    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                        source = getattr(lstm, f"{name}_l{layer}{suffix}")
                        getattr(direction, f"{name}_l0").copy_(source)
                layers.append(direction)

    def forward(self, inputs: Tensor, lengths: Tensor) -> Tensor:
        positions = torch.arange(inputs.shape[1], device=inputs.device).unsqueeze(0)
        ends = lengths.unsqueeze(1)
        mask = positions < ends  # [B, N]
        # reversal[b, i] = length_b - 1 - i inside a sentence, i beyond: its own inverse
        reversal = torch.where(mask, ends - 1 - positions, positions)
        hidden = inputs
        for forward_layer, backward_layer in zip(
            self.forward_layers, self.backward_layers, strict=True
        ):
            forward_out, _ = forward_layer(hidden)
            backward_out, _ = backward_layer(gather_positions(hidden, reversal))
            hidden = torch.cat([forward_out, gather_positions(backward_out, reversal)], dim=-1)
            hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)
        return hidden


def char_cnn_features(embedding: nn.Embedding, conv: nn.Conv1d, char_ids: Tensor) -> Tensor:
    """``[B, N, C]`` -> ``[B, N, filters]``: ``CharCNN`` (max over the convolved characters) on
    every word at once; a word without characters (padding) gets 0."""
    batch_size, seq_len, width = char_ids.shape
    flat = char_ids.reshape(-1, width)  # [W, C]
    real = flat != 0
    convolved = conv(embedding(flat).transpose(1, 2))  # [W, F, C]
    convolved = convolved.masked_fill(~real.unsqueeze(1), -torch.inf)
    pooled = convolved.amax(-1)  # [W, F]
    pooled = torch.where(real.any(-1, keepdim=True), pooled, torch.zeros_like(pooled))
    return pooled.reshape(batch_size, seq_len, -1)


def write_onnx(
    graph: nn.Module,
    arguments: tuple[Tensor, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> None:
    """``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``: ``torch.export``
    fixes an ``nn.LSTM``'s sequence length to the example's), its known warnings silenced."""
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated (see above for why it is used)
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript", DeprecationWarning
        )
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        # nn.LSTM's own shape checks, constant for a given model
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module="torch.nn")
        # about LSTM initial states fixed to the example's batch size: ours are zeros of the
        # input's batch size, and every exporter checks several batch sizes afterwards
        warnings.filterwarnings(
            "ignore", "Exporting a model to ONNX with a batch_size", UserWarning
        )
        torch.onnx.export(
            graph,
            arguments,
            os.fspath(path),
            dynamo=False,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
        )


def check_destination(out: Path) -> None:
    """``ValueError`` unless ``out`` is absent or an empty directory (an export never
    overwrites)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{os.fspath(out)!r} exists and is not a directory: choose another `out`")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(
            f"{os.fspath(out)!r} exists and is not empty: refusing to overwrite it (remove it or "
            "choose another `out`)"
        )


@contextlib.contextmanager
def export_directory(out: Path) -> Iterator[Path]:
    """A scratch directory beside ``out`` for an export to fill; when the block ends it is renamed
    onto ``out`` (which must then still be absent or an empty directory), and when the block raises
    it is removed: an export is all there or not at all."""
    check_destination(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.parent / f".{out.name}.export-{uuid.uuid4().hex[:12]}"
    scratch.mkdir()
    try:
        yield scratch
        check_destination(out)
        try:
            os.replace(scratch, out)  # replaces an empty directory, never a non-empty one
        except OSError as error:
            raise ValueError(
                f"could not move the export into {os.fspath(out)!r} ({error.strerror}): "
                "refusing to overwrite it"
            ) from None
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def check_against_torch(
    path: Path,
    output: str,
    batches: Iterable[dict[str, np.ndarray]],
    reference: Callable[[dict[str, np.ndarray]], np.ndarray],
    *,
    tolerance: float,
    what: str,
    model: str,
) -> dict[str, Any]:
    """Check the ONNX model at ``path`` and run it with onnxruntime on ``batches`` (arrays by
    input name, with ``lengths [B]``); its ``output`` ``[B, N, ...]`` must equal ``reference(
    arrays)`` within ``tolerance`` at every real position. Returns the summary (the model's input
    names, the largest difference, the sentences); ``RuntimeError`` naming ``what`` (the output,
    e.g. ``"emissions"``) and ``model`` (``"tagger"``) otherwise."""
    import onnx

    onnx.checker.check_model(os.fspath(path))
    session = onnx_session(path, 1)
    wanted = [item.name for item in session.get_inputs()]  # e.g. no char_ids without a char CNN
    largest, sentences = 0.0, 0
    for arrays in batches:
        shape = list(arrays["char_ids"].shape)
        (exported,) = session.run([output], {name: arrays[name] for name in wanted})
        expected = reference(arrays)
        if exported.shape != expected.shape:
            raise RuntimeError(
                f"the exported model returned {what} of shape {list(exported.shape)}, torch "
                f"{list(expected.shape)} (batch shape {shape})"
            )
        inside = np.arange(shape[1]) < arrays["lengths"][:, None]
        difference = float(np.abs(exported - expected)[inside].max())
        if not difference <= tolerance:
            raise RuntimeError(
                f"the exported model's {what} differ from the torch {model}'s by "
                f"{difference:.3g} (more than {tolerance:g}) on a batch of shape {shape}: the "
                "export is wrong; nothing was written"
            )
        largest = max(largest, difference)
        sentences += shape[0]
    return {
        "inputs": wanted,
        "max_abs_diff": largest,
        "tolerance": tolerance,
        "sentences": sentences,
    }
