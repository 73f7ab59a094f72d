"""The export-only model pieces (structkd.models.export): ``ExportBiLSTM`` computes what
``nn.LSTM`` computes on a packed batch, in torch and as the ONNX ``LSTM`` node onnxruntime runs;
``flat_char_features`` computes ``CharCNN`` on the flat layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from structkd.models.embeddings import CharCNN
from structkd.models.export import ExportBiLSTM, char_context, flat_char_features, write_onnx
from structkd.serve.chars import flat_chars_from_padded
from structkd.serve.onnx import onnx_session


def packed_lstm(lstm: nn.LSTM, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    packed = pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
    output, _ = lstm(packed)
    return pad_packed_sequence(output, batch_first=True, total_length=inputs.shape[1])[0]


def batch(seed: int, batch_size: int = 5, seq_len: int = 9, width: int = 6):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch_size, seq_len, width, generator=generator)
    lengths = torch.randint(1, seq_len + 1, (batch_size,), generator=generator)
    lengths[0] = seq_len
    return inputs, lengths


@pytest.mark.parametrize("layers", [1, 2])
def test_export_bilstm_equals_the_packed_lstm_in_torch_and_in_onnxruntime(layers, tmp_path) -> None:
    torch.manual_seed(layers)
    lstm = nn.LSTM(6, 4, num_layers=layers, batch_first=True, bidirectional=True).eval()
    graph = ExportBiLSTM(lstm).eval()
    path = tmp_path / "bilstm.onnx"
    axes = {"inputs": {0: "batch", 1: "steps"}, "lengths": {0: "batch"}, "out": {0: "b", 1: "n"}}
    example = batch(0, 2, 3)
    write_onnx(
        graph,
        example,
        path,
        input_names=["inputs", "lengths"],
        output_names=["out"],
        dynamic_axes=axes,
        opset=17,
    )
    session = onnx_session(path, 1)
    for seed, shape in enumerate([(5, 9), (1, 1), (7, 20), (3, 2)]):
        inputs, lengths = batch(seed, *shape)
        with torch.no_grad():
            expected = packed_lstm(lstm, inputs, lengths)  # 0 at padding
            in_torch = graph(inputs, lengths)
        arrays = {"inputs": inputs.numpy(), "lengths": lengths.numpy()}
        (in_onnx,) = session.run(None, arrays)
        assert in_onnx.shape == tuple(expected.shape)
        torch.testing.assert_close(in_torch, expected, atol=1e-6, rtol=1e-5)
        np.testing.assert_allclose(in_onnx, expected.numpy(), atol=1e-5, rtol=1e-5)


def test_export_bilstm_refuses_other_lstms() -> None:
    with pytest.raises(ValueError, match="batch-first bidirectional"):
        ExportBiLSTM(nn.LSTM(3, 2, batch_first=True))


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_flat_char_features_equal_the_char_cnn(kernel) -> None:
    torch.manual_seed(kernel)
    cnn = CharCNN(12, char_dim=5, filters=7, kernel=kernel).eval()
    generator = torch.Generator().manual_seed(kernel)
    lengths = torch.tensor([4, 1, 3])
    word_lengths = torch.randint(1, 8, (3, 4), generator=generator)
    inside = torch.arange(4) < lengths[:, None]
    has_char = (torch.arange(7) < word_lengths[..., None]) & inside[..., None]
    char_ids = torch.where(has_char, torch.randint(1, 12, has_char.shape, generator=generator), 0)
    with torch.no_grad():
        expected = cnn(char_ids)[inside]  # [U, F]
        arrays = flat_chars_from_padded(char_ids.numpy(), lengths.numpy(), char_context(cnn.conv))
        chars, char_index = (torch.from_numpy(arrays[name]) for name in ("chars", "char_index"))
        flat = flat_char_features(cnn.embedding, cnn.conv, chars, char_index)
    torch.testing.assert_close(flat, expected, atol=1e-6, rtol=1e-5)


def test_char_context_refuses_other_convolutions() -> None:
    assert char_context(nn.Conv1d(2, 3, 5, padding=2)) == 2
    with pytest.raises(ValueError, match="pad by kernel // 2"):
        char_context(nn.Conv1d(2, 3, 5, padding=1))
