"""The shared sentence encoder of the NER taggers: embeddings, character CNN, optional transformer
features, then a BiLSTM.

    x_i = [glove(lower(w_i)); charcnn(w_i); transformer(w_i)]       (the last part optional)
    h   = dropout(BiLSTM(dropout(x)))                               [batch, seq_len, 2 * hidden]

Transformer features are either precomputed and frozen (``batch.word_features``, e.g. from a cache
made by ``compute_word_features``), or computed here from the batch's subword windows: always when
the transformer is fine-tuned, and for a frozen one when a batch carries no cached features (the
frozen model is then loaded on first use, shared by every tagger of the process, and kept out of
the module's parameters and state dict: it is the unchanged public checkpoint, reloaded from its
package).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from structkd.data.batching import SubwordTokenizer, TaggingBatch, TaggingVocab
from structkd.models.embeddings import CharCNN, WordEmbedding, glove_initialized_embedding
from structkd.models.transformer import (
    TransformerWordEncoder,
    frozen_transformer,
    transformer_hidden_size,
)

__all__ = ["WordEncoder"]


class WordEncoder(nn.Module):
    """``TaggingBatch`` -> contextual word vectors ``[batch, seq_len, 2 * lstm_hidden]``.

    Args:
        vocab: the ``TaggingVocab`` (word and character vocabularies).
        word_dim: word embedding size (50 with GloVe).
        glove: initialize the word embedding from GloVe 6B 50d (else random, all trainable).
        freeze_glove: keep the GloVe vectors fixed (words without one are trained anyway).
        char_dim, char_filters, char_kernel: the character CNN (``CharCNN``); ``char_filters=0``
            turns character features off.
        transformer: ``None``, ``"minilm"`` or a local model directory.
        transformer_layers, transformer_pooling, fine_tune: see ``TransformerWordEncoder``.
        lstm_hidden: BiLSTM hidden size per direction; lstm_layers: stacked layers.
        dropout: dropout on the concatenated inputs and on the BiLSTM output (and between layers).
        load_pretrained: ``False`` skips reading pretrained transformer weights (a fine-tuned
            transformer is then built from its config, for a checkpoint's state dict to fill).
    """

    def __init__(
        self,
        vocab: TaggingVocab,
        *,
        word_dim: int = 50,
        glove: bool = True,
        freeze_glove: bool = True,
        char_dim: int = 25,
        char_filters: int = 25,
        char_kernel: int = 3,
        transformer: str | None = None,
        transformer_layers: int = 4,
        transformer_pooling: str = "first",
        fine_tune: bool = False,
        lstm_hidden: int = 64,
        lstm_layers: int = 1,
        dropout: float = 0.5,
        load_pretrained: bool = True,
    ):
        super().__init__()
        if glove:
            self.word_embedding = glove_initialized_embedding(vocab, word_dim, freeze=freeze_glove)
        else:
            self.word_embedding = WordEmbedding(torch.randn(len(vocab.words), word_dim))
        self.char_cnn = (
            CharCNN(len(vocab.chars), char_dim, char_filters, char_kernel)
            if char_filters > 0
            else None
        )
        self.transformer_name = transformer
        self.fine_tune = bool(fine_tune) and transformer is not None
        self._transformer_options = {
            "model_path": transformer,
            "layers": transformer_layers,
            "pooling": transformer_pooling,
        }
        self.transformer: TransformerWordEncoder | None = None
        self.transformer_dim = 0
        if transformer is not None:
            if self.fine_tune:
                self.transformer = TransformerWordEncoder(
                    **self._transformer_options, fine_tune=True, load_weights=load_pretrained
                )
                self.transformer_dim = self.transformer.hidden_size
            else:
                self.transformer_dim = transformer_hidden_size(transformer)
        input_dim = word_dim + (char_filters if self.char_cnn is not None else 0)
        input_dim += self.transformer_dim
        self.input_dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(
            input_dim,
            lstm_hidden,
            num_layers=lstm_layers,
            bidirectional=True,
            batch_first=True,
            dropout=dropout if lstm_layers > 1 else 0.0,
        )
        self.output_dropout = nn.Dropout(dropout)
        self.input_dim = input_dim
        self.output_dim = 2 * lstm_hidden

    # -- the transformer ----------------------------------------------------------------------

    def frozen_transformer(self) -> TransformerWordEncoder:
        """The frozen transformer, loaded on first use and shared in the process (not a submodule:
        no parameters or state here)."""
        if self.transformer_name is None or self.fine_tune:
            raise ValueError("this encoder has no frozen transformer")
        return frozen_transformer(**self._transformer_options)

    def word_transformer(self) -> TransformerWordEncoder | None:
        """The transformer that computes word features on the fly (fine-tuned or frozen), if any."""
        if self.transformer_name is None:
            return None
        return self.transformer if self.fine_tune else self.frozen_transformer()

    @property
    def subword_tokenizer(self) -> SubwordTokenizer | None:
        """The tokenizer a collator needs to compute transformer features on the fly, if any."""
        transformer = self.word_transformer()
        return None if transformer is None else transformer.tokenizer

    def _transformer_features(self, batch: TaggingBatch, like: Tensor) -> Tensor:
        if batch.word_features is not None:
            if self.fine_tune:
                raise ValueError(
                    "batch.word_features must be None for a fine-tuned transformer (it computes "
                    "its own features from the subword windows)"
                )
            features = batch.word_features
            if features.shape[:2] != like.shape[:2] or features.shape[-1] != self.transformer_dim:
                raise ValueError(
                    f"batch.word_features must have shape [{like.shape[0]}, {like.shape[1]}, "
                    f"{self.transformer_dim}]; got {list(features.shape)}"
                )
            return features.to(like.dtype)
        if not batch.has_subwords:
            raise ValueError(
                "this encoder needs transformer features: give the batch cached word_features "
                "(TaggingCollator(features=...)) or subword windows (TaggingCollator(tokenizer="
                "model.subword_tokenizer))"
            )
        transformer = self.word_transformer()
        assert transformer is not None
        device = like.device
        if not self.fine_tune:
            transformer.to(device)
        features = transformer(
            batch.subword_ids.to(device),
            batch.subword_mask.to(device),
            batch.subword_words.to(device),
            batch.word_first_subword.to(device),
        )
        return features.to(like.dtype)

    # -- forward ------------------------------------------------------------------------------

    def forward(self, batch: TaggingBatch) -> Tensor:
        """``[batch, seq_len, 2 * lstm_hidden]`` contextual vectors (0 at padded positions)."""
        parts = [self.word_embedding(batch.word_ids)]
        if self.char_cnn is not None:
            parts.append(self.char_cnn(batch.char_ids))
        if self.transformer_name is not None:
            parts.append(self._transformer_features(batch, parts[0]))
        inputs = self.input_dropout(torch.cat(parts, dim=-1))
        packed = pack_padded_sequence(
            inputs, batch.lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        output, _ = self.lstm(packed)
        output, _ = pad_packed_sequence(output, batch_first=True, total_length=batch.max_len)
        return self.output_dropout(output)
