"""The student of dependency-parsing distillation: dependency parsing as sequence labeling
(Strzyz, Vilares and Gómez-Rodríguez, NAACL 2019).

Every word gets one label of a ``DepLabelScheme`` (its head, as a relative offset or a relative
PoS-based code, and its relation), predicted by an independent softmax over the ``L`` labels:

    h = DepWordEncoder(batch)                                   [batch, seq_len, 2 * lstm_hidden]
    z = dropout(relu(W_1 h + b_1))   (only with hidden_dim > 0)  [batch, seq_len, hidden_dim]
    logits = W_2 z + b_2                                        [batch, seq_len, n_labels]
    P(label_i = l) = softmax(logits[i])[l]

Its output distribution is ``Factorized`` (per-word softmax), so a teacher's arc marginals mapped
onto the labels (``DepLabelScheme.label_heads``) give an exact KD loss (cases 1b, 2b of
docs/design.md).
Decoding takes each word's best label and repairs the result into a tree
(``structkd.serve.trees.decode_scores``, numpy, batched: the exported student decodes with it too).

Typical use::

    vocab = DepVocab.build(train)
    scheme = DepLabelScheme.from_sentences(train, encoding="offset")
    parser = SequenceLabelingParser(vocab, scheme, DepTaggerConfig())
    batch = DepCollator(vocab, scheme)(list(enumerate(train[:32])))
    logits = parser(batch)                                      # [32, N, L]
    parser.gold_loss(batch, logits).backward()
    parser.eval(); prediction = parser.decode(batch, parser(batch))  # heads [32, N + 1]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structkd.data.dep_batching import DepBatch, DepVocab
from structkd.data.dep_encodings import DepLabelScheme
from structkd.models.dep_encoder import DepEncoderConfig, DepWordEncoder
from structkd.serve.trees import decode_scores, head_probabilities, problem_names
from structkd.structures.base import NumericalError
from structkd.structures.factorized import Factorized

__all__ = ["DepPrediction", "DepTaggerConfig", "SequenceLabelingParser"]

STUDENT_ENCODER = DepEncoderConfig(
    word_dim=50,
    char_dim=25,
    char_filters=50,
    upos_dim=25,
    lstm_hidden=100,
    lstm_layers=1,
    dropout=0.33,
)
"""The student's default encoder: smaller than the biaffine teachers' (``DepEncoderConfig()``)."""


@dataclass(frozen=True)
class DepTaggerConfig:
    """Sizes of a ``SequenceLabelingParser`` (JSON-able with ``to_dict`` / ``from_dict``).

    Attributes:
        encoder: the word encoder's sizes (``DepEncoderConfig``).
        hidden_dim: size of an optional ``Linear -> ReLU -> Dropout(encoder.dropout)`` layer
            before the output layer; ``0``: none (the output layer reads the BiLSTM directly).
    """

    encoder: DepEncoderConfig = field(default=STUDENT_ENCODER)
    hidden_dim: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.encoder, DepEncoderConfig):
            raise ValueError(
                f"encoder must be a DepEncoderConfig, got {type(self.encoder).__name__}"
            )
        if isinstance(self.hidden_dim, bool) or not isinstance(self.hidden_dim, int):
            raise ValueError(f"hidden_dim must be an int >= 0, got {self.hidden_dim!r}")
        if self.hidden_dim < 0:
            raise ValueError(f"hidden_dim must be >= 0, got {self.hidden_dim}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"encoder": {...}, "hidden_dim": ...}``."""
        return {"encoder": self.encoder.to_dict(), "hidden_dim": self.hidden_dim}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DepTaggerConfig:
        """Rebuild from ``to_dict``'s output; missing fields take their defaults, unknown fields
        (here or in ``encoder``) raise ``ValueError``."""
        _check_fields(cls, data)
        values = dict(data)
        if "encoder" in values and not isinstance(values["encoder"], DepEncoderConfig):
            encoder = values["encoder"]
            if not isinstance(encoder, Mapping):
                raise ValueError(f"encoder must be a mapping, got {type(encoder).__name__}")
            _check_fields(DepEncoderConfig, encoder)
            values["encoder"] = DepEncoderConfig(**encoder)
        return cls(**values)


def _check_fields(cls: type, data: Mapping[str, Any]) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__} data must be a mapping, got {type(data).__name__}")
    known = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")


class DepPrediction(NamedTuple):
    """Decoded trees of a batch of ``B`` sentences of at most ``N`` words.

    Attributes:
        heads: ``[B, N + 1]`` int64 head of word ``d`` at ``[b, d]`` (0 = root), ``-1`` at
            position 0 and at padding; always a tree.
        rel_ids: ``[B, N + 1]`` int64 relation of the arc into word ``d`` (index into
            ``vocab.relations``), ``-1`` at position 0 and at padding (and for a relation the
            vocabulary lacks).
        well_formed: ``[B]`` bool, True when the predicted labels formed a tree before repair.
        problems: per sentence, what the repair fixed (names in ``serve.trees.PROBLEMS``).
        head_probs: ``[B, N + 1]`` float64 probability of each decoded head under the model
            (``decode(..., head_probs=True)``; ``0`` at position 0 and at padding), or ``None``.
    """

    heads: Tensor
    rel_ids: Tensor
    well_formed: Tensor
    problems: list[tuple[str, ...]]
    head_probs: Tensor | None = None


class SequenceLabelingParser(nn.Module):
    """Dependency parsing as sequence labeling: ``DepBatch`` -> logits ``[batch, seq_len, L]``
    over the ``L = scheme.n_labels`` labels, a per-word softmax (``Factorized``).

    Args:
        vocab: the vocabularies the batches index (``DepVocab``).
        scheme: the label scheme (``"offset"`` or ``"pos"`` encoding); the batches must be
            collated with it (``DepCollator(vocab, scheme)``).
        config: sizes (``DepTaggerConfig``).
    """

    def __init__(self, vocab: DepVocab, scheme: DepLabelScheme, config: DepTaggerConfig):
        super().__init__()
        if not isinstance(vocab, DepVocab):
            raise ValueError(f"vocab must be a DepVocab, got {type(vocab).__name__}")
        if not isinstance(scheme, DepLabelScheme):
            raise ValueError(f"scheme must be a DepLabelScheme, got {type(scheme).__name__}")
        if not isinstance(config, DepTaggerConfig):
            raise ValueError(f"config must be a DepTaggerConfig, got {type(config).__name__}")
        self.vocab = vocab
        self.scheme = scheme
        self.config = config
        self.encoder = DepWordEncoder(vocab, config.encoder)
        features = self.encoder.output_dim
        if config.hidden_dim > 0:
            self.hidden: nn.Module = nn.Sequential(
                nn.Linear(features, config.hidden_dim),
                nn.ReLU(),
                nn.Dropout(config.encoder.dropout),
            )
            features = config.hidden_dim
        else:
            self.hidden = nn.Identity()
        self.output = nn.Linear(features, scheme.n_labels)
        # the scheme's relation index -> index in vocab.relations (-1: a relation it lacks)
        relation_index = {relation: index for index, relation in enumerate(vocab.relations)}
        self._vocab_relation = np.array(
            [relation_index.get(relation, -1) for relation in scheme.relations], dtype=np.int64
        )

    @property
    def n_labels(self) -> int:
        return self.scheme.n_labels

    def forward(self, batch: DepBatch) -> Tensor:
        """``DepBatch`` -> label logits ``[batch, seq_len, n_labels]`` (values at padding are
        meaningless; every consumer masks them by ``batch.lengths``)."""
        return self.output(self.hidden(self.encoder(batch)))

    def distribution(self, logits: Tensor, lengths: Tensor) -> Factorized:
        """The per-word softmax over the labels, ``Factorized(logits [B, N, L], lengths [B])``:
        ``P(y) = prod_i softmax(logits[i])[y_i]``."""
        self._check_logits(logits)
        return Factorized(logits, lengths)

    def gold_loss(self, batch: DepBatch, logits: Tensor) -> Tensor:
        """Scalar mean label cross-entropy ``-log softmax(logits[b, i])[label_ids[b, i]]`` over
        the words whose gold label is in the scheme (``label_ids >= 0``); words outside it and
        padding are skipped. A batch with no such word gives 0 (with a gradient of 0).

        ``ValueError`` if the batch has no ``label_ids`` (collated without the scheme or
        unlabeled); ``NumericalError`` if the loss is not finite.
        """
        if batch.label_ids is None:
            raise ValueError(
                "the batch has no label_ids: collate labeled sentences with the scheme, "
                "DepCollator(vocab, scheme, labeled=True)"
            )
        self._check_logits(logits, batch)
        label_ids = batch.label_ids.to(logits.device)
        if tuple(label_ids.shape) != tuple(logits.shape[:2]):
            raise ValueError(
                f"label_ids {list(label_ids.shape)} and logits {list(logits.shape)} disagree"
            )
        targets = label_ids.masked_fill(~batch.mask.to(logits.device), -1)
        if (targets >= self.n_labels).any():
            raise ValueError(
                f"label_ids must lie in -1..{self.n_labels - 1} (the scheme of this parser), "
                f"got {int(targets.max())}"
            )
        n_counted = (targets >= 0).sum()
        total = F.cross_entropy(
            logits.float().reshape(-1, self.n_labels),
            targets.reshape(-1),
            ignore_index=-1,
            reduction="sum",
        )
        loss = total / n_counted.clamp(min=1)  # 0 / 1 when no word counts
        if not torch.isfinite(loss):
            raise NumericalError(f"the label cross-entropy is not finite ({float(loss)})")
        return loss.to(logits.dtype)

    @torch.no_grad()
    def decode(self, batch: DepBatch, logits: Tensor, *, head_probs: bool = False) -> DepPrediction:
        """Best label of every word, turned into heads and relations and repaired into trees by
        ``structkd.serve.trees.decode_scores`` on ``log_softmax(logits)`` (numpy, batched; the
        exported model decodes with the same function).

        ``logits`` ``[B, N, L]``. The label -> head tables are ``batch.code_heads`` (collated
        with the scheme), else computed from the lengths (and, for the ``"pos"`` encoding,
        ``batch.scheme_upos_ids``; ``ValueError`` without them). ``head_probs``: also return
        each decoded head's probability, ``P(head_i = h) = sum_{l : head(l) = h} softmax(
        logits[i])[l]``. Returns a ``DepPrediction`` (tensors on the device of ``logits``).
        """
        self._check_logits(logits, batch)
        code_heads = self._code_heads(batch)  # [B, N, K] numpy
        log_probabilities = torch.log_softmax(logits.detach().float(), dim=-1)
        # a row of logits with a NaN has a NaN normalizer: every log-probability of it is NaN
        if (torch.isnan(log_probabilities[:, :, 0]) & batch.mask.to(logits.device)).any():
            raise NumericalError("label scores contain NaN")
        scores = log_probabilities.cpu().numpy()
        lengths = batch.lengths.cpu().numpy()
        arrays = self.scheme.arrays
        trees = decode_scores(
            scores,
            code_heads,
            lengths,
            label_code=arrays.label_code,
            label_relation=arrays.label_relation,
            root_labels=arrays.root_labels,
        )
        relations = np.where(trees.relations >= 0, self._vocab_relation[trees.relations], -1)
        first = np.full((len(lengths), 1), -1, dtype=np.int64)
        device = logits.device
        probabilities = None
        if head_probs:
            found = head_probabilities(
                scores, code_heads, trees.heads, label_code=arrays.label_code
            )
            root = np.zeros((len(lengths), 1))
            probabilities = torch.from_numpy(np.concatenate([root, found], axis=1)).to(device)
        return DepPrediction(
            heads=torch.from_numpy(np.concatenate([first, trees.heads], axis=1)).to(device),
            rel_ids=torch.from_numpy(np.concatenate([first, relations], axis=1)).to(device),
            well_formed=torch.from_numpy(trees.well_formed).to(device),
            problems=problem_names(trees.problems),
            head_probs=probabilities,
        )

    def _code_heads(self, batch: DepBatch) -> np.ndarray:
        """``[B, N, K]`` the head each code denotes for each word of ``batch`` (numpy)."""
        if batch.code_heads is not None:
            if batch.code_heads.shape[-1] != self.scheme.n_codes:
                raise ValueError(
                    f"the batch was collated with a scheme of {batch.code_heads.shape[-1]} head "
                    f"codes, this parser's has {self.scheme.n_codes}"
                )
            return batch.code_heads.cpu().numpy()
        upos_ids = None
        if self.scheme.encoding == "pos":
            if batch.scheme_upos_ids is None:
                raise ValueError(
                    "decoding the 'pos' encoding needs batch.scheme_upos_ids: collate with the "
                    "scheme, DepCollator(vocab, scheme)"
                )
            upos_ids = batch.scheme_upos_ids.cpu().numpy()
        return self.scheme.code_head_array(
            batch.lengths.cpu().numpy(), upos_ids, max_len=batch.max_len
        )

    def _check_logits(self, logits: Tensor, batch: DepBatch | None = None) -> None:
        if not isinstance(logits, Tensor) or logits.dim() != 3:
            shape = list(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"logits must be a tensor [batch, seq_len, n_labels], got {shape}")
        if logits.shape[2] != self.n_labels:
            raise ValueError(
                f"logits must have n_labels={self.n_labels} (the scheme) in the last dimension, "
                f"got {list(logits.shape)}"
            )
        if batch is not None and tuple(logits.shape[:2]) != (batch.batch_size, batch.max_len):
            raise ValueError(
                f"logits {list(logits.shape)} do not match the batch "
                f"[{batch.batch_size}, {batch.max_len}]"
            )
        if batch is not None and batch.label_heads is not None:
            if batch.label_heads.shape[-1] != self.n_labels:
                raise ValueError(
                    f"the batch was collated with a scheme of {batch.label_heads.shape[-1]} "
                    f"labels, this parser's has {self.n_labels}"
                )

    def extra_repr(self) -> str:
        return f"encoding={self.scheme.encoding!r}, n_labels={self.n_labels}"
