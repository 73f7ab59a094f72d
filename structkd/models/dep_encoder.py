"""The sentence encoder of the dependency models (the biaffine parser teachers and the
sequence-labeling student): word, character and UPOS features, then a BiLSTM.

    x_i = [word(lower(w_i)); charcnn(w_i); upos(t_i)]
    h   = dropout(BiLSTM(dropout(x)))                     [batch, seq_len, 2 * lstm_hidden]

Word vectors are trained from scratch (the installed GloVe table is English; the treebank is
Turkish), so the characters carry morphology and casing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from structkd.data.dep_batching import DepBatch, DepVocab
from structkd.models.embeddings import CharCNN

__all__ = ["DepEncoderConfig", "DepWordEncoder"]


@dataclass(frozen=True)
class DepEncoderConfig:
    """Sizes of a ``DepWordEncoder`` (``char_filters=0`` / ``upos_dim=0`` turn a feature off)."""

    word_dim: int = 100
    char_dim: int = 50
    char_filters: int = 100
    char_kernel: int = 3
    upos_dim: int = 50
    lstm_hidden: int = 200
    lstm_layers: int = 2
    dropout: float = 0.33

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DepWordEncoder(nn.Module):
    """``DepBatch`` -> contextual word vectors ``[batch, seq_len, 2 * lstm_hidden]`` (0 at padding).

    ``output_dim`` is ``2 * lstm_hidden``. With ``root=True`` (the parsers), ``root``
    ``[output_dim]`` is a trained vector for the root position that ``with_root`` prepends; a
    model that never reads it (the sequence-labeling student) has none, so that every parameter
    takes part in the loss (DDP requires it).
    """

    def __init__(self, vocab: DepVocab, config: DepEncoderConfig, *, root: bool = False):
        super().__init__()
        self.config = config
        self.word_embedding = nn.Embedding(len(vocab.words), config.word_dim, padding_idx=0)
        self.char_cnn = (
            CharCNN(len(vocab.chars), config.char_dim, config.char_filters, config.char_kernel)
            if config.char_filters > 0
            else None
        )
        self.upos_embedding = (
            nn.Embedding(len(vocab.upos), config.upos_dim, padding_idx=0)
            if config.upos_dim > 0
            else None
        )
        input_dim = config.word_dim + config.char_filters * (self.char_cnn is not None)
        input_dim += config.upos_dim * (self.upos_embedding is not None)
        self.input_dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            input_dim,
            config.lstm_hidden,
            num_layers=config.lstm_layers,
            bidirectional=True,
            batch_first=True,
            dropout=config.dropout if config.lstm_layers > 1 else 0.0,
        )
        self.output_dropout = nn.Dropout(config.dropout)
        self.output_dim = 2 * config.lstm_hidden
        self.root = nn.Parameter(torch.randn(self.output_dim) * 0.1) if root else None

    def forward(self, batch: DepBatch) -> Tensor:
        """``[batch, seq_len, output_dim]``."""
        parts = [self.word_embedding(batch.word_ids)]
        if self.char_cnn is not None:
            parts.append(self.char_cnn(batch.char_ids))
        if self.upos_embedding is not None:
            parts.append(self.upos_embedding(batch.upos_ids))
        inputs = self.input_dropout(torch.cat(parts, dim=-1))
        packed = pack_padded_sequence(
            inputs, batch.lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        output, _ = self.lstm(packed)
        output, _ = pad_packed_sequence(output, batch_first=True, total_length=batch.max_len)
        return self.output_dropout(output)

    def with_root(self, batch: DepBatch) -> Tensor:
        """``[batch, seq_len + 1, output_dim]``: the trained root vector at position 0, then the
        words (0 at padding)."""
        if self.root is None:
            raise ValueError("this encoder was built without a root vector (root=False)")
        words = self(batch)
        root = self.root.to(words.dtype).expand(words.shape[0], 1, -1)
        return torch.cat([root, words], dim=1)
