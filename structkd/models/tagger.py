"""NER taggers: a ``WordEncoder`` under a CRF, softmax or biaffine span head, and named sizes.

``Tagger(config, vocab)(batch)`` is a distribution over the BIOES structures of each sentence
(``LinearChainCRF``, ``Factorized`` or ``SemiMarkovSpans``), the object a distillation loss reads.

Named architectures (``ARCHITECTURES``; the sizes of a first feasibility run on CoNLL-2003):

* ``teacher-crf`` / ``teacher-softmax`` / ``teacher-span``: frozen MiniLM features (mean of the
  last 4 layers, first subword) + GloVe 50d (frozen) + character CNN (50 filters), BiLSTM 256 per
  direction, then a CRF (cases 1a, 2a), softmax (case 3) or biaffine span head (case 4).
* ``teacher-crf-finetune`` / ``teacher-span-finetune``: the same with MiniLM fine-tuned.
* ``teacher-crf-context``: ``teacher-crf`` whose MiniLM reads each sentence with document context,
  64 subwords of its document on each side (FLERT; ``transformer_context``).
* ``student-crf`` / ``student-softmax``: GloVe 50d (frozen) + character CNN (25 filters),
  BiLSTM 64 per direction, CRF (case 1a) or softmax (cases 2a, 4).
* ``student-crf-unconstrained``: the CRF student without BIOES constraints (case 3: a softmax
  teacher puts mass on ill-formed sequences, which a constrained CRF cannot represent).

Typical use (a frozen-transformer teacher reads cached features, ``compute_word_features``)::

    vocab = TaggingVocab.build(train, known_words=glove_vocabulary(), extra_words=other_words)
    tagger = Tagger(ARCHITECTURES["student-crf"], vocab)
    batch = TaggingCollator(vocab)(list(enumerate(train[:32])))
    tagger.gold_loss(batch).backward()            # training
    tagger.eval(); tags = tagger.decode(batch)     # [32, N] BIOES label ids, -1 at padding
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from structkd.data.batching import SubwordTokenizer, TaggingBatch, TaggingVocab
from structkd.models.encoder import WordEncoder
from structkd.models.heads import BiaffineSpanHead, CRFHead, SoftmaxHead
from structkd.models.transformer import TransformerWordEncoder
from structkd.structures.base import StructDistribution

__all__ = ["ARCHITECTURES", "HEADS", "Tagger", "TaggerConfig", "architecture"]

HEADS = ("crf", "softmax", "span")


@dataclass(frozen=True)
class TaggerConfig:
    """The hyperparameters of a ``Tagger`` (JSON-able with ``to_dict`` / ``from_dict``).

    Attributes:
        head: ``"crf"``, ``"softmax"`` or ``"span"`` (biaffine span head).
        word_dim: word embedding size (GloVe: 50).
        glove: initialize words from GloVe 6B 50d; freeze_glove: keep those vectors fixed.
        char_dim: character embedding size; char_filters: character CNN output size (0: none);
            char_kernel: its width (odd).
        lstm_hidden: BiLSTM size per direction; lstm_layers: stacked layers.
        dropout: on the encoder's input and output (and between LSTM layers).
        transformer: ``None``, ``"minilm"`` or a local model directory.
        transformer_layers: how many last layers are averaged; transformer_pooling: ``"first"`` or
            ``"mean"`` subword; fine_tune: train the transformer (else frozen; its features may be
            precomputed and cached).
        transformer_context: document context (FLERT, Schweter & Akbik 2020): the transformer
            reads each sentence with up to this many subwords of the text of its document before
            it and as many after it (whole words, never across a document boundary:
            ``Sentence.document``; within the model's maximum length), and pools only the
            sentence's own words. ``0``: each sentence alone. The collators of
            ``structkd.tasks.ner.features.make_collator`` and the feature cache apply it; a
            ``TaggingCollator`` built by hand needs ``context=DocumentContext(sentences, n)``.
        span_ffnn_dim, span_dropout: the biaffine head's start/end projections; max_span_width: the
            widest entity it can predict (tokens), ``None`` for no limit.
        crf_constraints: a CRF head forbids tag sequences that break BIOES (``False``: it
            allows every sequence, as a student distilled from a softmax teacher must).
    """

    head: str = "crf"
    word_dim: int = 50
    glove: bool = True
    freeze_glove: bool = True
    char_dim: int = 25
    char_filters: int = 25
    char_kernel: int = 3
    lstm_hidden: int = 64
    lstm_layers: int = 1
    dropout: float = 0.5
    transformer: str | None = None
    transformer_layers: int = 4
    transformer_pooling: str = "first"
    fine_tune: bool = False
    transformer_context: int = 0
    span_ffnn_dim: int = 150
    span_dropout: float = 0.2
    max_span_width: int | None = None
    crf_constraints: bool = True

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}; got {self.head!r}")
        positive = ("word_dim", "char_dim", "lstm_hidden", "lstm_layers", "transformer_layers")
        for name in (*positive, "span_ffnn_dim", "char_kernel"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        if isinstance(self.char_filters, bool) or not isinstance(self.char_filters, int):
            raise ValueError(f"char_filters must be an integer >= 0; got {self.char_filters!r}")
        if self.char_filters < 0:
            raise ValueError(f"char_filters must be an integer >= 0; got {self.char_filters!r}")
        for name in ("dropout", "span_dropout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a number in [0, 1); got {value!r}")
        if self.glove and self.word_dim != 50:
            raise ValueError(
                f"word_dim must be 50 with glove=True (GloVe 6B 50d); got {self.word_dim}"
            )
        if self.transformer_pooling not in ("first", "mean"):
            raise ValueError(
                f"transformer_pooling must be 'first' or 'mean'; got {self.transformer_pooling!r}"
            )
        if self.fine_tune and self.transformer is None:
            raise ValueError("fine_tune=True needs a transformer (e.g. transformer='minilm')")
        context = self.transformer_context
        if isinstance(context, bool) or not isinstance(context, int) or context < 0:
            raise ValueError(f"transformer_context must be an integer >= 0; got {context!r}")
        if context > 0 and self.transformer is None:
            raise ValueError(
                "transformer_context > 0 needs a transformer (e.g. transformer='minilm')"
            )
        if self.max_span_width is not None:
            if self.head != "span":
                raise ValueError("max_span_width applies to head='span' only")
            width = self.max_span_width
            if isinstance(width, bool) or not isinstance(width, int) or width < 1:
                raise ValueError(f"max_span_width must be None or an integer >= 1; got {width!r}")
        if not isinstance(self.crf_constraints, bool):
            raise ValueError(f"crf_constraints must be true or false; got {self.crf_constraints!r}")
        if not self.crf_constraints and self.head != "crf":
            raise ValueError("crf_constraints=False applies to head='crf' only")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaggerConfig:
        """Rebuild from ``to_dict``'s output; missing fields take their defaults, unknown fields
        raise ``ValueError``."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TaggerConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> TaggerConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)


_TEACHER = TaggerConfig(
    head="crf",
    char_filters=50,
    lstm_hidden=256,
    transformer="minilm",
    transformer_layers=4,
    transformer_pooling="first",
)
_STUDENT = TaggerConfig(head="crf", char_filters=25, lstm_hidden=64)

ARCHITECTURES: dict[str, TaggerConfig] = {
    "teacher-crf": _TEACHER,
    "teacher-softmax": _TEACHER.replace(head="softmax"),
    "teacher-span": _TEACHER.replace(head="span"),
    "teacher-crf-finetune": _TEACHER.replace(fine_tune=True),
    "teacher-span-finetune": _TEACHER.replace(head="span", fine_tune=True),
    "teacher-crf-context": _TEACHER.replace(transformer_context=64),
    "student-crf": _STUDENT,
    "student-softmax": _STUDENT.replace(head="softmax"),
    "student-crf-unconstrained": _STUDENT.replace(crf_constraints=False),
}
"""Named tagger configurations (see the module docstring)."""


def architecture(name: str, **changes: Any) -> TaggerConfig:
    """The named configuration ``name`` of ``ARCHITECTURES``, with ``changes`` applied."""
    if name not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[name].replace(**changes)


class Tagger(nn.Module):
    """A NER tagger: ``WordEncoder`` then a CRF, softmax or biaffine span head.

    Args:
        config: the ``TaggerConfig``.
        vocab: the ``TaggingVocab`` (words, characters, entity types -> BIOES labels).
        load_pretrained: ``False`` skips reading pretrained transformer weights (when a
            checkpoint's state dict will be loaded next). GloVe is always read (its vectors are
            saved in the state dict too, which then overrides them).

    A frozen transformer's weights are not parameters or state of the tagger (see ``WordEncoder``);
    a fine-tuned one's are.
    """

    def __init__(self, config: TaggerConfig, vocab: TaggingVocab, *, load_pretrained: bool = True):
        super().__init__()
        if not isinstance(config, TaggerConfig):
            raise ValueError(f"config must be a TaggerConfig; got {type(config).__name__}")
        if not isinstance(vocab, TaggingVocab):
            raise ValueError(f"vocab must be a TaggingVocab; got {type(vocab).__name__}")
        self.config = config
        self.vocab = vocab
        self.encoder = WordEncoder(
            vocab,
            word_dim=config.word_dim,
            glove=config.glove,
            freeze_glove=config.freeze_glove,
            char_dim=config.char_dim,
            char_filters=config.char_filters,
            char_kernel=config.char_kernel,
            transformer=config.transformer,
            transformer_layers=config.transformer_layers,
            transformer_pooling=config.transformer_pooling,
            fine_tune=config.fine_tune,
            lstm_hidden=config.lstm_hidden,
            lstm_layers=config.lstm_layers,
            dropout=config.dropout,
            load_pretrained=load_pretrained,
        )
        width = self.encoder.output_dim
        if config.head == "crf":
            self.head: nn.Module = CRFHead(width, vocab.types, constrained=config.crf_constraints)
        elif config.head == "softmax":
            self.head = SoftmaxHead(width, vocab.types)
        else:
            self.head = BiaffineSpanHead(
                width,
                vocab.types,
                ffnn_dim=config.span_ffnn_dim,
                dropout=config.span_dropout,
                max_width=config.max_span_width,
            )
        self.n_labels = vocab.n_labels

    # -- transformer access -------------------------------------------------------------------

    @property
    def uses_transformer(self) -> bool:
        """Whether the tagger reads transformer features."""
        return self.config.transformer is not None

    @property
    def transformer(self) -> TransformerWordEncoder | None:
        """The transformer computing word features (loaded on first use when frozen), if any; use
        it with ``compute_word_features`` to build a feature cache."""
        return self.encoder.word_transformer()

    @property
    def subword_tokenizer(self) -> SubwordTokenizer | None:
        """The tokenizer for ``TaggingCollator(tokenizer=...)`` when features are computed on the
        fly (always for a fine-tuned transformer), or ``None`` without a transformer."""
        return self.encoder.subword_tokenizer

    # -- the model ----------------------------------------------------------------------------

    def scores(self, batch: TaggingBatch) -> Tensor:
        """The head's raw scores: emissions / logits ``[B, N, L]`` or span logits
        ``[B, N, N, R + 1]``."""
        return self.head.scores(self.encoder(batch), batch.lengths.to(self.head_device))

    def forward(self, batch: TaggingBatch) -> StructDistribution:
        """The distribution over each sentence's BIOES structures (``LinearChainCRF``,
        ``Factorized`` or ``SemiMarkovSpans``), with ``lengths = batch.lengths``."""
        lengths = batch.lengths.to(self.head_device)
        return self.head.distribution(self.head.scores(self.encoder(batch), lengths), lengths)

    @property
    def head_device(self) -> torch.device:
        return next(self.head.parameters()).device

    def gold_loss(
        self, batch: TaggingBatch, distribution: StructDistribution | None = None
    ) -> Tensor:
        """Scalar: the mean over sentences of the gold loss, from ``distribution`` (the output of
        ``forward(batch)``; computed when ``None``).

        CRF and softmax heads: ``-log P(gold BIOES tags)``. Span head: the sum over the sentence's
        spans of the per-span cross-entropy (Yu et al. 2020).
        """
        if batch.label_ids is None:
            raise ValueError("batch.label_ids is None: the gold loss needs labeled sentences")
        if distribution is None:
            distribution = self(batch)
        label_ids = batch.label_ids.to(self.head_device)
        lengths = distribution.lengths
        if isinstance(self.head, BiaffineSpanHead):
            span_logits = getattr(distribution, "span_logits", None)
            if span_logits is None:
                raise ValueError(
                    "distribution must be this tagger's output (a BiaffineSpanDistribution "
                    "carrying span_logits)"
                )
            losses = self.head.gold_loss(span_logits, lengths, label_ids)
        else:
            losses = -distribution.log_prob(label_ids)
        return losses.mean()

    @torch.no_grad()
    def decode(self, batch: TaggingBatch) -> Tensor:
        """``[B, N]`` int64 predicted BIOES label ids, ``-1`` at padding: the CRF's Viterbi path,
        each token's best label (softmax; may break BIOES, not repaired), or the span head's exact
        best flat span set."""
        return self(batch).argmax

    @torch.no_grad()
    def token_marginals(self, batch: TaggingBatch) -> Tensor:
        """``[B, N, L]`` the probability of each BIOES label at each token (0 at padding):
        forward-backward (CRF), softmax, or the span distribution's BIOES marginals."""
        distribution = self(batch)
        if isinstance(self.head, BiaffineSpanHead):
            return distribution.bioes_marginals
        return distribution.marginals

    def n_parameters(self, trainable_only: bool = True) -> int:
        """How many (trainable) parameters; frozen GloVe rows and a frozen transformer are not
        parameters, so ``trainable_only=False`` adds only other frozen parameters."""
        return sum(
            parameter.numel()
            for parameter in self.parameters()
            if parameter.requires_grad or not trainable_only
        )

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split as ``{"transformer": [...], "rest": [...]}`` (a fine-tuned
        transformer usually wants a smaller learning rate)."""
        transformer = self.encoder.transformer
        in_transformer = set() if transformer is None else {id(p) for p in transformer.parameters()}
        groups: dict[str, list[nn.Parameter]] = {"transformer": [], "rest": []}
        for parameter in self.parameters():
            if parameter.requires_grad:
                key = "transformer" if id(parameter) in in_transformer else "rest"
                groups[key].append(parameter)
        return groups

    def extra_repr(self) -> str:
        return f"types={list(self.vocab.types)}, head={self.config.head!r}"
