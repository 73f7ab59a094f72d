"""The teachers of dependency-parsing distillation: graph-based biaffine parsers (Dozat & Manning
2017), first order or with second-order sibling / grandparent factors (Wang & Tu 2020).

Positions ``0..N`` with ``0`` the root; every arc tensor is ``[batch, N + 1, N + 1]`` as
``[head, dependent]``. From the encoder's vectors ``r_i`` (``DepWordEncoder.with_root``):

    a^h_i, a^d_i = MLP_arc-head(r_i), MLP_arc-dep(r_i)                        [arc_dim]
    arcs[h, d]   = a^d_d^T U a^h_h + u^T a^h_h                                (head-bias term)
    l^h_i, l^d_i = MLP_rel-head(r_i), MLP_rel-dep(r_i)                        [rel_dim]
    rels[h, d, r] = [l^d_d; 1]^T W_r [l^h_h; 1]                               (bias per relation)

Second order (``second_order_dim`` MLPs, triaffine scorers, every input extended with a 1):

    siblings[h, d, s]     = T_sib([s^h_h; 1], [s^d_d; 1], [s^s_s; 1])    d, s both dependents of h
    grandparents[g, h, d] = T_grd([g^g_g; 1], [g^h_h; 1], [g^d_d; 1])    arcs g -> h and h -> d

with ``T(x, y, z) = sum_{ijk} W[i, j, k] x_i y_j z_k``. The mean-field parser shares one MLP for the
two dependents of a sibling pair and symmetrizes ``W`` in them, so ``siblings[h, d, s] ==
siblings[h, s, d]`` up to rounding (what ``mean_field_arcs`` expects); the exact sibling parser
keeps them ordered (``s`` is the inner sibling of ``Dependency2oCRF``).

The modes (``PARSER_MODES``) differ in the distribution over heads they train and decode with:

* ``head-selection``: every word picks its head by a softmax (``HeadSelection``);
* ``projective`` / ``matrix-tree``: first-order tree CRF over projective (Eisner) or all
  (matrix-tree theorem) single-root trees (``DependencyCRF``);
* ``mean-field``: per-word head posteriors ``Q`` of mean-field inference with sibling and
  grandparent factors (``mean_field_arcs``), trained by the cross-entropy of ``Q`` at the gold
  heads (Wang & Tu 2020);
* ``sibling-exact``: the exact projective sibling CRF (``Dependency2oCRF``).

Typical use::

    vocab = DepVocab.build(train)
    parser = BiaffineParser(vocab, ParserConfig(mode="matrix-tree"))
    batch = DepCollator(vocab)(list(enumerate(train[:32])))
    parser.gold_loss(batch, parser(batch)).backward()
    parser.eval()
    with torch.no_grad():
        scores = parser(batch)
        heads, rel_ids = parser.decode(batch, scores)                  # [32, N + 1] each
        marginals = parser.arc_marginals(scores, batch.lengths, 2.0)   # P_T(head_d = h)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structkd.data.dep_batching import DepBatch, DepVocab
from structkd.models.dep_encoder import DepEncoderConfig, DepWordEncoder
from structkd.structures.base import NumericalError
from structkd.structures.dependency import DependencyCRF, HeadSelection, is_tree
from structkd.structures.second_order import Dependency2oCRF, mean_field_arcs

__all__ = ["PARSER_MODES", "PROJECTIVE_MODES", "BiaffineParser", "ParserConfig", "ParserScores"]

PARSER_MODES = ("head-selection", "projective", "matrix-tree", "mean-field", "sibling-exact")
"""The parser's distributions over heads (see the module docstring)."""

PROJECTIVE_MODES = ("projective", "sibling-exact")
"""The modes whose trees are projective: they train on projective trees only."""
_SIBLING_MODES = ("mean-field", "sibling-exact")
# A per-word loss below -tolerance is a bug (a negative cross-entropy), not float32 rounding.
_NEGATIVE_LOSS_TOLERANCE = 1e-4


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParserConfig:
    """Hyperparameters of a ``BiaffineParser`` (JSON-able with ``to_dict`` / ``from_dict``).

    Attributes:
        mode: one of ``PARSER_MODES``.
        encoder: the word encoder's sizes (``DepEncoderConfig``).
        arc_dim, rel_dim: sizes of the arc and relation MLPs (Dozat & Manning: 500 / 100).
        second_order_dim: size of the sibling / grandparent MLPs (used by ``mean-field`` and
            ``sibling-exact`` only).
        dropout: after every MLP (LeakyReLU, slope 0.1).
        mean_field_iterations: mean-field updates (``mean-field`` only; Wang & Tu use 3).
    """

    mode: str = "head-selection"
    encoder: DepEncoderConfig = field(default_factory=DepEncoderConfig)
    arc_dim: int = 400
    rel_dim: int = 100
    second_order_dim: int = 100
    dropout: float = 0.33
    mean_field_iterations: int = 3

    def __post_init__(self) -> None:
        if self.mode not in PARSER_MODES:
            raise ValueError(f"mode must be one of {', '.join(PARSER_MODES)}; got {self.mode!r}")
        if not isinstance(self.encoder, DepEncoderConfig):
            raise ValueError(
                f"encoder must be a DepEncoderConfig, got {type(self.encoder).__name__}"
            )
        for name in ("arc_dim", "rel_dim", "second_order_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1; got {value!r}")
        iterations = self.mean_field_iterations
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"mean_field_iterations must be an int >= 0; got {iterations!r}")
        dropout = self.dropout
        if isinstance(dropout, bool) or not isinstance(dropout, int | float):
            raise ValueError(f"dropout must be a number in [0, 1); got {dropout!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1); got {dropout!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, the encoder's sizes nested under ``"encoder"``."""
        data = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
        data["encoder"] = self.encoder.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParserConfig:
        """Rebuild from ``to_dict``'s output; missing fields take their defaults, unknown fields
        (here or in ``encoder``) raise ``ValueError``."""
        _check_fields(cls, data)
        values = dict(data)
        encoder = values.get("encoder")
        if encoder is not None and not isinstance(encoder, DepEncoderConfig):
            _check_fields(DepEncoderConfig, encoder)
            values["encoder"] = DepEncoderConfig(**encoder)
        return cls(**values)


def _check_fields(cls: type, data: Any) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__} data must be a mapping, got {type(data).__name__}")
    known = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")


class ParserScores(NamedTuple):
    """The parser's output for a batch of ``B`` sentences of at most ``N`` words (``R``
    relations); position 0 is the root. Entries at padding are finite and meaningless.

    Attributes:
        arcs: ``[B, N + 1, N + 1]`` arc scores as ``[head, dependent]``.
        rels: ``[B, N + 1, N + 1, R]`` relation scores of each arc as ``[head, dependent, rel]``.
        siblings: ``[B, N + 1, N + 1, N + 1]`` as ``[head, dependent, sibling]``
            (``mean-field``: symmetric in dependent and sibling; ``sibling-exact``: sibling is the
            inner one), or ``None`` (first-order modes).
        grandparents: ``[B, N + 1, N + 1, N + 1]`` as ``[grandparent, head, dependent]``
            (``mean-field`` only), or ``None``.
    """

    arcs: Tensor
    rels: Tensor
    siblings: Tensor | None = None
    grandparents: Tensor | None = None


# ----------------------------------------------------------------------------------------------
# scorers
# ----------------------------------------------------------------------------------------------


class _MLP(nn.Module):
    """``[..., input_dim]`` -> ``dropout(leaky_relu(W x + b, 0.1))`` ``[..., output_dim]``."""

    def __init__(self, input_dim: int, output_dim: int, dropout: float):
        super().__init__()
        self.linear = nn.Linear(input_dim, output_dim)
        self.activation = nn.LeakyReLU(0.1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.dropout(self.activation(self.linear(inputs)))


def _with_one(vectors: Tensor) -> Tensor:
    """``[..., D]`` -> ``[..., D + 1]`` with a trailing 1 (folds linear terms into a product)."""
    return torch.cat([vectors, vectors.new_ones(*vectors.shape[:-1], 1)], dim=-1)


class _ArcScorer(nn.Module):
    """``[B, L, D]`` -> ``arcs[b, h, d] = a^d_d^T U a^h_h + u^T a^h_h`` ``[B, L, L]``.

    ``U`` and ``u`` are stored together as ``weight [arc_dim + 1, arc_dim]`` (the last row is
    ``u``), initialized to zero: all heads start equally likely.
    """

    def __init__(self, input_dim: int, arc_dim: int, dropout: float):
        super().__init__()
        self.head_mlp = _MLP(input_dim, arc_dim, dropout)
        self.dependent_mlp = _MLP(input_dim, arc_dim, dropout)
        self.weight = nn.Parameter(torch.zeros(arc_dim + 1, arc_dim))

    def forward(self, states: Tensor) -> Tensor:
        heads = self.head_mlp(states)  # [B, L, arc_dim]
        dependents = _with_one(self.dependent_mlp(states))  # [B, L, arc_dim + 1]
        return heads @ (dependents @ self.weight).transpose(1, 2)  # [B, head, dependent]


class _RelationScorer(nn.Module):
    """``[B, L, D]`` -> ``rels[b, h, d, r] = [l^d_d; 1]^T W_r [l^h_h; 1]`` ``[B, L, L, R]``
    (``W`` ``[R, rel_dim + 1, rel_dim + 1]``, zero-initialized)."""

    def __init__(self, input_dim: int, rel_dim: int, n_relations: int, dropout: float):
        super().__init__()
        self.head_mlp = _MLP(input_dim, rel_dim, dropout)
        self.dependent_mlp = _MLP(input_dim, rel_dim, dropout)
        self.weight = nn.Parameter(torch.zeros(n_relations, rel_dim + 1, rel_dim + 1))

    def forward(self, states: Tensor) -> Tensor:
        heads = _with_one(self.head_mlp(states))  # [B, L, rel_dim + 1]
        dependents = _with_one(self.dependent_mlp(states))
        # [B, R, L_dep, rel_dim + 1] then [B, R, L_dep, L_head]
        left = torch.einsum("bdi,rij->brdj", dependents, self.weight)
        scores = left @ heads.unsqueeze(1).transpose(-1, -2)
        return scores.permute(0, 3, 2, 1)  # [B, head, dependent, R]


def _triaffine(first: Tensor, second: Tensor, third: Tensor, weight: Tensor) -> Tensor:
    """``out[b, x, y, z] = sum_{ijk} weight[i, j, k] first[b, x, i] second[b, y, j]
    third[b, z, k]``: ``[B, L, P]`` three times, ``weight [P, P, P]`` -> ``[B, L, L, L]``
    (peak memory: ``[B, L, P, P]`` and ``[B, L, L, P]`` intermediates)."""
    batch, size, dim = first.shape
    by_first = (first.reshape(-1, dim) @ weight.reshape(dim, dim * dim)).view(
        batch, size, dim, dim
    )  # [B, x, j, k]
    pairs = second.unsqueeze(1) @ by_first  # [B, 1, y, j] @ [B, x, j, k] -> [B, x, y, k]
    return (pairs.reshape(batch, size * size, dim) @ third.transpose(1, 2)).view(
        batch, size, size, size
    )


class _SiblingScorer(nn.Module):
    """``[B, L, D]`` -> ``siblings[b, h, d, s]`` ``[B, L, L, L]`` (triaffine, zero-initialized).

    ``symmetric=True`` (mean field): one MLP for both dependents and ``W`` symmetrized in them,
    so ``siblings[b, h, d, s] == siblings[b, h, s, d]`` up to rounding; else (the exact sibling
    CRF, ``s`` the inner sibling) separate dependent and sibling MLPs.
    """

    def __init__(self, input_dim: int, dim: int, dropout: float, symmetric: bool):
        super().__init__()
        self.symmetric = symmetric
        self.head_mlp = _MLP(input_dim, dim, dropout)
        self.dependent_mlp = _MLP(input_dim, dim, dropout)
        self.sibling_mlp = None if symmetric else _MLP(input_dim, dim, dropout)
        self.weight = nn.Parameter(torch.zeros(dim + 1, dim + 1, dim + 1))

    def forward(self, states: Tensor) -> Tensor:
        heads = _with_one(self.head_mlp(states))
        dependents = _with_one(self.dependent_mlp(states))
        if self.sibling_mlp is None:
            weight = (self.weight + self.weight.transpose(1, 2)) / 2
            return _triaffine(heads, dependents, dependents, weight)
        siblings = _with_one(self.sibling_mlp(states))
        return _triaffine(heads, dependents, siblings, self.weight)


class _GrandparentScorer(nn.Module):
    """``[B, L, D]`` -> ``grandparents[b, g, h, d]`` ``[B, L, L, L]`` (triaffine over the
    grandparent, head and dependent roles, zero-initialized)."""

    def __init__(self, input_dim: int, dim: int, dropout: float):
        super().__init__()
        self.grandparent_mlp = _MLP(input_dim, dim, dropout)
        self.head_mlp = _MLP(input_dim, dim, dropout)
        self.dependent_mlp = _MLP(input_dim, dim, dropout)
        self.weight = nn.Parameter(torch.zeros(dim + 1, dim + 1, dim + 1))

    def forward(self, states: Tensor) -> Tensor:
        return _triaffine(
            _with_one(self.grandparent_mlp(states)),
            _with_one(self.head_mlp(states)),
            _with_one(self.dependent_mlp(states)),
            self.weight,
        )


# ----------------------------------------------------------------------------------------------
# the parser
# ----------------------------------------------------------------------------------------------


class BiaffineParser(nn.Module):
    """A graph-based dependency parser: ``DepBatch`` -> ``ParserScores`` (see the module
    docstring for the scorers and the modes).

    Args:
        vocab: the vocabularies the batches index (``DepVocab``); ``R = len(vocab.relations)``.
        config: mode and sizes (``ParserConfig``).
    """

    def __init__(self, vocab: DepVocab, config: ParserConfig):
        super().__init__()
        if not isinstance(config, ParserConfig):
            raise ValueError(f"config must be a ParserConfig, got {type(config).__name__}")
        if not vocab.relations:
            raise ValueError("vocab.relations is empty: a parser needs at least one relation")
        self.config = config
        self.vocab = vocab
        self.mode = config.mode
        self.n_relations = len(vocab.relations)
        self.encoder = DepWordEncoder(vocab, config.encoder, root=True)
        states = self.encoder.output_dim
        self.arc_scorer = _ArcScorer(states, config.arc_dim, config.dropout)
        self.relation_scorer = _RelationScorer(
            states, config.rel_dim, self.n_relations, config.dropout
        )
        self.sibling_scorer = (
            _SiblingScorer(
                states,
                config.second_order_dim,
                config.dropout,
                symmetric=config.mode == "mean-field",
            )
            if config.mode in _SIBLING_MODES
            else None
        )
        self.grandparent_scorer = (
            _GrandparentScorer(states, config.second_order_dim, config.dropout)
            if config.mode == "mean-field"
            else None
        )

    @property
    def is_projective_mode(self) -> bool:
        """True for the modes whose trees are projective (``projective``, ``sibling-exact``)."""
        return self.mode in PROJECTIVE_MODES

    def forward(self, batch: DepBatch) -> ParserScores:
        """Scores of ``batch`` (``B`` sentences, ``N = batch.max_len``): arcs ``[B, N+1, N+1]``,
        rels ``[B, N+1, N+1, R]``, and the mode's second-order scores ``[B, N+1, N+1, N+1]``."""
        states = self.encoder.with_root(batch)  # [B, N + 1, 2 * lstm_hidden]
        return ParserScores(
            arcs=self.arc_scorer(states),
            rels=self.relation_scorer(states),
            siblings=None if self.sibling_scorer is None else self.sibling_scorer(states),
            grandparents=(
                None if self.grandparent_scorer is None else self.grandparent_scorer(states)
            ),
        )

    # -- distributions over heads --------------------------------------------------------------

    def arc_marginals(
        self, scores: ParserScores, lengths: Tensor, temperature: float = 1.0
    ) -> Tensor:
        """``[B, N+1, N+1]`` ``P(head_d = h)`` at ``[b, h, d]`` under the mode's distribution with
        every score divided by ``temperature``; each word's column sums to 1, column 0, the
        diagonal and padding are 0.

        ``head-selection``: per-word softmax; ``projective`` / ``matrix-tree``: single-root tree
        CRF marginals (inside-outside / matrix-tree theorem); ``mean-field``: the mean-field
        posteriors ``Q``; ``sibling-exact``: exact sibling-CRF marginals. Differentiable when the
        scores require grad (compute teacher outputs under ``torch.no_grad()``).
        """
        lengths = lengths.to(scores.arcs.device)
        if self.mode == "head-selection":
            return HeadSelection(scores.arcs, lengths, temperature).marginals
        if self.mode in ("projective", "matrix-tree"):
            return DependencyCRF(
                scores.arcs,
                lengths,
                projective=self.mode == "projective",
                multiroot=False,
                temperature=temperature,
            ).marginals
        siblings = self._second_order(scores.siblings, "siblings")
        if self.mode == "sibling-exact":
            return Dependency2oCRF(
                scores.arcs, siblings, lengths, multiroot=False, temperature=temperature
            ).marginals
        return mean_field_arcs(
            scores.arcs,
            siblings,
            self._second_order(scores.grandparents, "grandparents"),
            lengths=lengths,
            iterations=self.config.mean_field_iterations,
            temperature=temperature,
        )

    def local_head_probs(
        self, scores: ParserScores, lengths: Tensor, temperature: float = 1.0
    ) -> Tensor:
        """``[B, N+1, N+1]`` ``softmax_h(arcs[:, h, d] / T)`` over the heads ``0..len`` of every
        word (self-loops excluded); column 0 and padding are 0. The first-order arc scores only,
        whatever the mode (what Token KD distills)."""
        return HeadSelection(scores.arcs, lengths.to(scores.arcs.device), temperature).marginals

    def rel_log_probs(self, scores: ParserScores, temperature: float = 1.0) -> Tensor:
        """``[B, N+1, N+1, R]`` ``log_softmax_r(rels[:, h, d, r] / T)``: the relation of arc
        ``h -> d`` given the arc."""
        temperature = float(temperature)
        if not (0.0 < temperature < float("inf")):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        return F.log_softmax(scores.rels / temperature, dim=-1)

    def mean_field_log_posteriors(
        self, scores: ParserScores, lengths: Tensor, temperature: float = 1.0
    ) -> Tensor:
        """``[B, N+1, N+1]`` ``log Q(head_d = h)`` of mean-field inference (``mean-field`` mode),
        ``-inf`` off the arcs (column 0, diagonal, padding).

        The last update of ``mean_field_arcs`` redone in log space (``log_softmax`` of its
        logits), so a tiny ``Q`` at a gold head gives a large finite loss, not ``log 0``:

            log Q_d(h) = log_softmax_h( s(h,d) + sum_{s != d} Q_s(h) sib(h,d,s)
                          + sum_{g != d} Q_h(g) grd(g,h,d) + sum_{c != h} Q_c(d) grd(h,d,c) ) / T

        with ``Q`` the posteriors after ``iterations - 1`` updates.
        """
        if self.mode != "mean-field":
            raise ValueError(
                f"mean_field_log_posteriors needs mode 'mean-field', not {self.mode!r}"
            )
        arcs = scores.arcs
        siblings = self._second_order(scores.siblings, "siblings")
        grandparents = self._second_order(scores.grandparents, "grandparents")
        lengths = lengths.to(arcs.device)
        iterations = self.config.mean_field_iterations
        previous = mean_field_arcs(
            arcs,
            siblings,
            grandparents,
            lengths=lengths,
            iterations=max(iterations - 1, 0),
            temperature=temperature,
        )  # validates shapes, lengths and temperature
        size = arcs.shape[-1]
        position = torch.arange(size, device=arcs.device)
        inside = position <= lengths.unsqueeze(-1)
        is_word = inside & (position >= 1)
        arc_ok = inside.unsqueeze(-1) & is_word.unsqueeze(-2) & (position.view(-1, 1) != position)
        logits = arcs
        if iterations > 0:
            off_diagonal = position.view(-1, 1) != position  # [L, L]
            # [h, d, s] with d != s; [g, h, d] with g != d
            siblings = siblings * off_diagonal
            grandparents = grandparents * off_diagonal.unsqueeze(1)
            logits = logits + torch.einsum("bhs,bhds->bhd", previous, siblings)
            logits = logits + torch.einsum("bgh,bghd->bhd", previous, grandparents)
            logits = logits + torch.einsum("bdc,bhdc->bhd", previous, grandparents)
        logits = logits / temperature
        logits = logits.masked_fill(~arc_ok, float("-inf"))
        # columns that are not words (root, padding) would be all -inf: normalize zeros instead
        logits = logits.masked_fill(~is_word.unsqueeze(1), 0.0)
        log_posteriors = torch.log_softmax(logits, dim=1)
        return log_posteriors.masked_fill(~arc_ok, float("-inf"))

    # -- training ------------------------------------------------------------------------------

    def gold_loss(self, batch: DepBatch, scores: ParserScores) -> Tensor:
        """Scalar ``(sum_sentences arc NLL + sum_words -log P(gold rel | gold arc)) / words``.

        The arc NLL of a sentence is the mode's training objective at the gold heads:
        ``head-selection``: ``sum_d -log softmax_h(arcs[:, d])[gold_d]``; ``projective`` /
        ``matrix-tree`` / ``sibling-exact``: ``log Z - Score(gold tree)`` of the tree CRF;
        ``mean-field``: ``sum_d -log Q_d(gold_d)`` (Wang & Tu 2020).

        Raises ``ValueError`` for an unlabeled batch, or a gold tree that is not projective under
        a projective mode (filter the data, e.g. ``conllu_io.projective_subset``).
        """
        if batch.heads is None or batch.rel_ids is None:
            raise ValueError("gold_loss needs a labeled batch (DepCollator(labeled=True))")
        arcs = scores.arcs
        lengths = batch.lengths.to(arcs.device)
        gold_heads = batch.heads.to(arcs.device)
        gold_rels = batch.rel_ids.to(arcs.device)
        words = gold_heads >= 0  # [B, N + 1]
        n_words = int(lengths.sum())
        if self.is_projective_mode:
            projective = is_tree(gold_heads, lengths, projective=True, multiroot=False)
            if not bool(projective.all()):
                bad = batch.sentence_ids[~projective.cpu()].tolist()
                raise ValueError(
                    f"mode {self.mode!r} trains on projective single-root trees only, but the gold "
                    f"trees of sentences {bad} are not (filter the training data first, e.g. "
                    "structkd.data.conllu_io.projective_subset)"
                )
        if self.mode == "head-selection":
            arc_nll = -HeadSelection(arcs, lengths).log_prob(gold_heads).sum()
        elif self.mode in ("projective", "matrix-tree"):
            crf = DependencyCRF(
                arcs, lengths, projective=self.mode == "projective", multiroot=False
            )
            arc_nll = -crf.log_prob(gold_heads).sum()
        elif self.mode == "sibling-exact":
            siblings = self._second_order(scores.siblings, "siblings")
            arc_nll = -Dependency2oCRF(arcs, siblings, lengths).log_prob(gold_heads).sum()
        else:
            log_q = self.mean_field_log_posteriors(scores, lengths)
            gold_log_q = log_q.gather(1, gold_heads.clamp(min=0).unsqueeze(1)).squeeze(1)
            arc_nll = -torch.where(words, gold_log_q, 0.0).sum()
        rel_log_probs = self.rel_log_probs(scores)  # [B, N+1, N+1, R]
        at_gold_arc = _at_heads(rel_log_probs, gold_heads)  # [B, N+1, R]
        gold_rel_log_prob = at_gold_arc.gather(-1, gold_rels.clamp(min=0).unsqueeze(-1))
        rel_nll = -torch.where(words, gold_rel_log_prob.squeeze(-1), 0.0).sum()
        loss = (arc_nll + rel_nll) / n_words
        value = float(loss.detach())
        if not math.isfinite(value) or value < -_NEGATIVE_LOSS_TOLERANCE:
            raise NumericalError(
                f"parser gold loss is {value} (arc NLL {float(arc_nll.detach())}, relation NLL "
                f"{float(rel_nll.detach())}; mode {self.mode!r})"
            )
        return loss

    # -- decoding ------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, batch: DepBatch, scores: ParserScores) -> tuple[Tensor, Tensor]:
        """The best single-root tree of every sentence and its relations.

        ``projective``: Eisner argmax; ``sibling-exact``: second-order Eisner argmax;
        ``head-selection`` / ``matrix-tree``: Chu-Liu-Edmonds over the arc scores; ``mean-field``:
        Chu-Liu-Edmonds over ``log Q``. Relations: the best relation of each chosen arc.

        Returns:
            ``(heads [B, N+1], rel_ids [B, N+1])`` int64, ``-1`` at position 0 and at padding.
        """
        arcs = scores.arcs.detach()
        lengths = batch.lengths.to(arcs.device)
        if self.mode == "projective":
            heads = DependencyCRF(arcs, lengths, projective=True).argmax
        elif self.mode == "sibling-exact":
            siblings = self._second_order(scores.siblings, "siblings").detach()
            heads = Dependency2oCRF(arcs, siblings, lengths).argmax
        else:
            if self.mode == "mean-field":
                arcs = self.mean_field_log_posteriors(scores, lengths)
            heads = DependencyCRF(arcs, lengths, projective=False).argmax
        best_rels = _at_heads(scores.rels.detach(), heads).argmax(-1)
        rel_ids = torch.where(heads >= 0, best_rels, torch.full_like(best_rels, -1))
        return heads, rel_ids

    def _second_order(self, tensor: Tensor | None, name: str) -> Tensor:
        if tensor is None:
            raise ValueError(f"mode {self.mode!r} needs scores.{name} (got None)")
        return tensor


def _at_heads(rel_scores: Tensor, heads: Tensor) -> Tensor:
    """``rel_scores [B, L, L, R]`` (``[head, dependent, rel]``) at the arcs ``heads[b, d] -> d``
    -> ``[B, L, R]`` (values at positions with head ``-1`` are those of head 0)."""
    index = heads.clamp(min=0).view(*heads.shape[:2], 1, 1).expand(-1, -1, 1, rel_scores.shape[-1])
    # rel_scores.transpose(1, 2): [B, dependent, head, R]; pick the head of every dependent
    return rel_scores.transpose(1, 2).gather(2, index).squeeze(2)
