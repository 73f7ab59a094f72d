"""Pieces of the models rewritten for ONNX export, shared by the tasks' exporters
(``structkd/tasks/*/export.py``): an exact BiLSTM without packed sequences, the character CNN on
the flat character layout, the TorchScript export call, and the destination check.

**The BiLSTM.** Packed sequences do not export, but the ONNX ``LSTM`` operator takes the
sequence lengths itself (``sequence_lens``): its reverse direction starts at each sequence's last
real step, which is what ``nn.LSTM`` computes on a packed batch. ``ExportBiLSTM`` exports each
layer as one bidirectional ``LSTM`` node with the trained weights (ONNX's gate order ``i, o, f,
c`` against PyTorch's ``i, f, g, o``); in torch (tracing, tests) it computes the same function step
by step, the backward direction on each row reversed within its length. Outputs at padding are 0,
as ``pad_packed_sequence`` gives.

**The character CNN** runs on ``structkd.serve.chars``' flat layout: one convolution over the
characters of all distinct words of a batch, each word between zeros, then a max over each word's
characters (gathered by ``char_index``, ``-inf`` past a word's end).
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
    "batch_axes",
    "char_context",
    "check_against_torch",
    "check_destination",
    "export_directory",
    "flat_char_features",
    "write_onnx",
]

_ONNX_GATES = (0, 3, 1, 2)
"""PyTorch's gate blocks (i, f, g, o) in ONNX's order (i, o, f, c)."""


class _BidirectionalLSTM(torch.autograd.Function):
    """One bidirectional LSTM layer over ``inputs [B, N, D]`` and ``lengths [B]`` with ONNX-layout
    weights ``w [2, 4H, D]``, ``r [2, 4H, H]``, ``b [2, 8H]`` -> ``[B, N, 2H]`` (0 at padding);
    exported as the ONNX ``LSTM`` node (``symbolic``)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, inputs: Tensor, lengths: Tensor, w: Tensor, r: Tensor, b: Tensor
    ) -> Tensor:
        positions = torch.arange(inputs.shape[1], device=inputs.device).unsqueeze(0)
        ends = lengths.unsqueeze(1)
        mask = positions < ends  # [B, N]
        # reversal[b, i] = length_b - 1 - i inside a sentence, i beyond: its own inverse
        reversal = torch.where(mask, ends - 1 - positions, positions)
        forward_out = _lstm_steps(inputs, w[0], r[0], b[0])
        backward_out = _lstm_steps(_gather_positions(inputs, reversal), w[1], r[1], b[1])
        hidden = torch.cat([forward_out, _gather_positions(backward_out, reversal)], dim=-1)
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)

    @staticmethod
    def symbolic(g: Any, inputs: Any, lengths: Any, w: Any, r: Any, b: Any) -> Any:
        time_major = g.op("Transpose", inputs, perm_i=[1, 0, 2])  # [N, B, D]
        sequence_lens = g.op("Cast", lengths, to_i=6)  # int32
        hidden_size = w.type().sizes()[1] // 4
        y, _, _ = g.op(
            "LSTM",
            time_major,
            w,
            r,
            b,
            sequence_lens,
            direction_s="bidirectional",
            hidden_size_i=hidden_size,
            outputs=3,
        )  # y: [N, 2, B, H], 0 past each sequence's end
        y = g.op("Transpose", y, perm_i=[2, 0, 1, 3])  # [B, N, 2, H]
        return g.op("Reshape", y, g.op("Constant", value_t=torch.tensor([0, 0, -1])))


def _lstm_steps(inputs: Tensor, w: Tensor, r: Tensor, b: Tensor) -> Tensor:
    """One direction, left to right over ``inputs [B, N, D]`` from zero states, ONNX gate order:
    ``[i, o, f, c] = x_t w^T + h r^T + b``; ``C = sigmoid(f) C + sigmoid(i) tanh(c)``, ``h =
    sigmoid(o) tanh(C)``; ``[B, N, H]``."""
    hidden_size = r.shape[-1]
    state = inputs.new_zeros(inputs.shape[0], hidden_size)
    cell = state
    bias = b[: 4 * hidden_size] + b[4 * hidden_size :]
    projected = inputs @ w.T + bias  # [B, N, 4H]
    outputs = []
    for step in range(inputs.shape[1]):
        gates = projected[:, step] + state @ r.T
        i, o, f, c = gates.chunk(4, dim=-1)
        cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(c)
        state = torch.sigmoid(o) * torch.tanh(cell)
        outputs.append(state)
    return torch.stack(outputs, dim=1)


def _gather_positions(values: Tensor, index: Tensor) -> Tensor:
    """``values[b, index[b, i], :]`` for ``values [B, N, D]`` and ``index [B, N]``."""
    return values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


class ExportBiLSTM(nn.Module):
    """``(inputs [B, N, D], lengths [B])`` -> ``[B, N, 2H]``: the batch-first bidirectional
    ``lstm`` as on a packed batch, 0 at padding; one ONNX ``LSTM`` node per layer (see the module
    docstring). The weights are copied (float32) in ONNX's layout."""

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        if not (lstm.bidirectional and lstm.batch_first and lstm.bias) or lstm.proj_size:
            raise ValueError("ExportBiLSTM expects a batch-first bidirectional LSTM with biases")
        size = lstm.hidden_size
        order = torch.cat([torch.arange(k * size, (k + 1) * size) for k in _ONNX_GATES])
        self.num_layers = lstm.num_layers
        with torch.no_grad():
            for layer in range(lstm.num_layers):
                weights = {
                    name: [
                        getattr(lstm, f"{name}_l{layer}{suffix}").detach().float()[order]
                        for suffix in ("", "_reverse")
                    ]
                    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                }
                both = zip(weights["bias_ih"], weights["bias_hh"], strict=True)
                self.register_buffer(f"w{layer}", torch.stack(weights["weight_ih"]).clone())
                self.register_buffer(f"r{layer}", torch.stack(weights["weight_hh"]).clone())
                self.register_buffer(f"b{layer}", torch.stack([torch.cat(pair) for pair in both]))

    def forward(self, inputs: Tensor, lengths: Tensor) -> Tensor:
        hidden = inputs
        for layer in range(self.num_layers):
            weights = (getattr(self, f"{name}{layer}") for name in "wrb")
            hidden = _BidirectionalLSTM.apply(hidden, lengths, *weights)
        return hidden


def char_context(conv: nn.Conv1d) -> int:
    """The zeros a word needs on each side in the flat layout: the convolution's padding, which
    ``CharCNN`` sets to ``kernel // 2`` (``ValueError`` for any other convolution)."""
    (kernel,), (padding,) = conv.kernel_size, conv.padding
    if not isinstance(padding, int) or padding != kernel // 2 or conv.stride != (1,):
        raise ValueError(
            f"the character CNN must pad by kernel // 2 with stride 1; got kernel {kernel}, "
            f"padding {conv.padding}, stride {conv.stride}"
        )
    return padding


def flat_char_features(
    embedding: nn.Embedding, conv: nn.Conv1d, chars: Tensor, char_index: Tensor
) -> Tensor:
    """``CharCNN`` on the flat layout (``structkd.serve.chars``): ``chars [T]`` (0 between
    words), ``char_index [U, C]`` (``T``: no character) -> ``[U, filters]``, the max over each
    word's convolved characters. The embedding of 0 is taken as 0 (``padding_idx``) whatever the
    table holds."""
    embedded = embedding(chars) * (chars != 0).unsqueeze(-1).to(embedding.weight.dtype)
    convolved = conv(embedded.t().unsqueeze(0))[0].t()  # [T, F]
    beyond = torch.full_like(convolved[:1], -torch.inf)
    return nn.functional.embedding(char_index, torch.cat([convolved, beyond])).amax(1)


_AXES = {
    "word_ids": {0: "batch", 1: "words"},
    "upos_ids": {0: "batch", 1: "words"},
    "word_chars": {0: "batch", 1: "words"},
    "lengths": {0: "batch"},
    "chars": {0: "characters"},
    "char_index": {0: "distinct_words", 1: "word_characters"},
}


def batch_axes(input_names: Sequence[str], output: str) -> dict[str, dict[int, str]]:
    """The dynamic axes of an exported model over a batch of sentences: its inputs' (word-level
    ``[B, N]``, ``lengths [B]``, the flat characters ``[T]`` and ``[U, C]``) and its output's
    ``[B, N, ...]``; ``KeyError`` for an input name not listed here."""
    return {**{name: _AXES[name] for name in input_names}, output: {0: "batch", 1: "words"}}


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
