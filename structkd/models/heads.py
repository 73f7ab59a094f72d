"""Output heads of the NER taggers: contextual word vectors -> a distribution over BIOES structures.

Every head has ``scores(features, lengths)`` (the raw network output), ``distribution(scores,
lengths)`` (a ``structkd.structures`` distribution) and ``gold_loss(scores, lengths, label_ids)``
(``[batch]``, one loss per sentence). Labels use the BIOES layout of the structures contract for
``R`` entity types: ``0 = O``, ``B-r = 1 + 4r``, ``I-r = 2 + 4r``, ``E-r = 3 + 4r``,
``S-r = 4 + 4r``.

* ``CRFHead``: ``emissions = W h_i + b``; a linear-chain CRF with learned ``transitions``, ``start``
  and ``end`` scores, restricted to well-formed BIOES (``transition_constraints``).
* ``SoftmaxHead``: ``logits = W h_i + b``; independent tokens (``Factorized``).
* ``BiaffineSpanHead`` ("NER as parsing", Yu et al. 2020): ``h^s_i = FFNN_s(h_i)``,
  ``h^e_j = FFNN_e(h_j)``, ``s(i, j, c) = [h^s_i; 1]^T U_c [h^e_j; 1]`` for ``c`` in
  ``{no entity, type_0, ..., type_{R-1}}`` (the ``[.; 1]`` folds in the paper's linear term and
  bias).
  Its distribution is the exact distribution over flat span sets with span potentials
  ``phi(i, j, r) = s(i, j, 1 + r) - s(i, j, 0)`` (``SemiMarkovSpans``); its decoding is that
  distribution's argmax, flat and non-overlapping.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structkd.data.tag_schemes import label_names
from structkd.structures.base import length_mask
from structkd.structures.factorized import Factorized
from structkd.structures.linear_chain import LinearChainCRF, transition_constraints
from structkd.structures.semimarkov import SemiMarkovSpans, bioes_to_spans

__all__ = ["BiaffineSpanDistribution", "BiaffineSpanHead", "CRFHead", "SoftmaxHead"]


def _n_types(types: tuple[str, ...] | list[str]) -> int:
    label_names(types, "bioes")  # validates: sorted, unique, valid tag types
    if len(types) < 1:
        raise ValueError("types must hold at least one entity type")
    return len(types)


class SoftmaxHead(nn.Module):
    """Per-token softmax over BIOES labels: ``[B, N, D]`` -> ``Factorized(logits [B, N, 1 + 4R])``.

    Decoding takes each token's best label independently, so it may break BIOES (e.g. ``I-X``
    after ``O``); it is not repaired here (strict evaluation handles it).
    """

    def __init__(self, input_dim: int, types: tuple[str, ...] | list[str]):
        super().__init__()
        self.types = tuple(types)
        self.n_labels = 1 + 4 * _n_types(self.types)
        self.projection = nn.Linear(input_dim, self.n_labels)

    def scores(self, features: Tensor, lengths: Tensor) -> Tensor:
        """``[B, N, D]`` -> logits ``[B, N, 1 + 4R]``."""
        return self.projection(features)

    def distribution(self, scores: Tensor, lengths: Tensor) -> Factorized:
        """The factorized distribution of ``scores`` ``[B, N, 1 + 4R]``."""
        return Factorized(scores, lengths)

    def gold_loss(
        self, scores: Tensor, lengths: Tensor, label_ids: Tensor, distribution: Factorized | None
    ) -> Tensor:
        """``[B]`` ``-log P(gold)`` = the sum of the tokens' cross-entropies."""
        distribution = self.distribution(scores, lengths) if distribution is None else distribution
        return -distribution.log_prob(label_ids)


class CRFHead(nn.Module):
    """Linear-chain CRF over BIOES labels: ``[B, N, D]`` -> ``LinearChainCRF``.

    ``Score(y) = start[y_0] + sum_i emissions[i, y_i] + sum_i transitions[y_i, y_{i+1}]
    + end[y_{n-1}]``. With ``constrained=True`` (the default) transitions, starts and ends that
    break BIOES are forbidden (``-inf``), so every decoded sequence is well-formed; with
    ``constrained=False`` every tag sequence keeps some probability (needed to distill a teacher
    that puts mass on ill-formed sequences, e.g. a softmax tagger: case 3).
    """

    def __init__(
        self, input_dim: int, types: tuple[str, ...] | list[str], *, constrained: bool = True
    ):
        super().__init__()
        self.types = tuple(types)
        self.n_labels = 1 + 4 * _n_types(self.types)
        self.constrained = constrained
        self.projection = nn.Linear(input_dim, self.n_labels)
        self.transitions = nn.Parameter(torch.zeros(self.n_labels, self.n_labels))
        self.start = nn.Parameter(torch.zeros(self.n_labels))
        self.end = nn.Parameter(torch.zeros(self.n_labels))
        allowed, allowed_start, allowed_end = transition_constraints(
            label_names(self.types, "bioes"), "BIOES"
        )
        if not constrained:
            allowed, allowed_start, allowed_end = None, None, None
        self.register_buffer("allowed_transitions", allowed, persistent=False)
        self.register_buffer("allowed_start", allowed_start, persistent=False)
        self.register_buffer("allowed_end", allowed_end, persistent=False)

    def scores(self, features: Tensor, lengths: Tensor) -> Tensor:
        """``[B, N, D]`` -> emissions ``[B, N, 1 + 4R]``."""
        return self.projection(features)

    def distribution(self, scores: Tensor, lengths: Tensor) -> LinearChainCRF:
        """The CRF of emissions ``scores`` ``[B, N, 1 + 4R]`` with the learned transitions."""
        dtype = scores.dtype
        return LinearChainCRF(
            scores,
            self.transitions.to(dtype),
            self.start.to(dtype),
            self.end.to(dtype),
            lengths=lengths,
            allowed_transitions=self.allowed_transitions,
            allowed_start=self.allowed_start,
            allowed_end=self.allowed_end,
        )

    def gold_loss(
        self,
        scores: Tensor,
        lengths: Tensor,
        label_ids: Tensor,
        distribution: LinearChainCRF | None,
    ) -> Tensor:
        """``[B]`` negative log-likelihood ``log Z - Score(gold)``."""
        distribution = self.distribution(scores, lengths) if distribution is None else distribution
        return -distribution.log_prob(label_ids)


def _ffnn(input_dim: int, output_dim: int, dropout: float) -> nn.Sequential:
    """``Linear -> ReLU -> Dropout``: ``[..., input_dim]`` -> ``[..., output_dim]``."""
    return nn.Sequential(nn.Linear(input_dim, output_dim), nn.ReLU(), nn.Dropout(dropout))


class BiaffineSpanDistribution(SemiMarkovSpans):
    """``SemiMarkovSpans`` that also keeps the biaffine head's ``span_logits`` ``[B, N, N, R + 1]``
    (index 0: no entity), which its gold loss (a per-span cross-entropy) needs."""

    def __init__(self, span_logits: Tensor, lengths: Tensor, max_width: int | None = None):
        super().__init__(span_logits[..., 1:] - span_logits[..., :1], lengths, max_width=max_width)
        self.span_logits = span_logits


class BiaffineSpanHead(nn.Module):
    """The biaffine span scorer of "NER as parsing" (Yu et al. 2020): ``[B, N, D]`` ->
    ``span_logits [B, N, N, R + 1]`` and the flat-span distribution ``SemiMarkovSpans``.

    ``span_logits[b, i, j, 0]`` scores span ``i..j`` as no entity, ``[b, i, j, 1 + r]`` as type
    ``r``. Args: ``ffnn_dim`` the size of the start and end projections (150 in the paper),
    ``dropout`` after them, ``max_width`` the widest span (tokens) or ``None``.
    """

    def __init__(
        self,
        input_dim: int,
        types: tuple[str, ...] | list[str],
        ffnn_dim: int = 150,
        dropout: float = 0.2,
        max_width: int | None = None,
    ):
        super().__init__()
        self.types = tuple(types)
        self.n_types = _n_types(self.types)
        self.n_labels = 1 + 4 * self.n_types
        if max_width is not None and (not isinstance(max_width, int) or max_width < 1):
            raise ValueError(f"max_width must be None or an integer >= 1; got {max_width!r}")
        self.max_width = max_width
        self.start_ffnn = _ffnn(input_dim, ffnn_dim, dropout)
        self.end_ffnn = _ffnn(input_dim, ffnn_dim, dropout)
        # U[c] is [ffnn_dim + 1, ffnn_dim + 1]: bilinear term, linear terms and bias of class c
        self.biaffine = nn.Parameter(torch.empty(self.n_types + 1, ffnn_dim + 1, ffnn_dim + 1))
        nn.init.normal_(self.biaffine, std=1.0 / (ffnn_dim + 1))

    def scores(self, features: Tensor, lengths: Tensor) -> Tensor:
        """``[B, N, D]`` -> ``span_logits [B, N, N, R + 1]`` (``[b, i, j, c]``: span ``i..j``)."""
        starts = self.start_ffnn(features)
        ends = self.end_ffnn(features)
        ones = starts.new_ones(*starts.shape[:-1], 1)
        starts = torch.cat([starts, ones], dim=-1)
        ends = torch.cat([ends, ones], dim=-1)
        return torch.einsum("bix,cxy,bjy->bijc", starts, self.biaffine.to(starts.dtype), ends)

    def distribution(self, scores: Tensor, lengths: Tensor) -> BiaffineSpanDistribution:
        """Flat span sets, ``phi(i, j, r) = span_logits[i, j, 1 + r] - span_logits[i, j, 0]``."""
        return BiaffineSpanDistribution(scores, lengths, max_width=self.max_width)

    def span_mask(self, lengths: Tensor, max_len: int) -> Tensor:
        """``[B, N, N]`` bool: the spans scored, ``i <= j < length`` and ``j - i < max_width``."""
        positions = torch.arange(max_len, device=lengths.device)
        start, end = positions.view(-1, 1), positions.view(1, -1)
        shape_ok = start <= end
        if self.max_width is not None:
            shape_ok = shape_ok & (end - start < self.max_width)
        return shape_ok & length_mask(lengths, max_len).unsqueeze(1)

    def span_targets(self, label_ids: Tensor, lengths: Tensor) -> Tensor:
        """``[B, N, N]`` int64 gold class of every span (0: no entity, ``1 + r``: type ``r``)."""
        spans = bioes_to_spans(label_ids, lengths, self.n_types)  # [B, N, N, R] bool
        classes = torch.arange(1, self.n_types + 1, device=label_ids.device)
        return (spans.long() * classes).sum(-1)

    def gold_loss(
        self,
        scores: Tensor,
        lengths: Tensor,
        label_ids: Tensor,
        distribution: SemiMarkovSpans | None = None,
    ) -> Tensor:
        """``[B]`` sum over the sentence's spans ``i <= j`` (within ``max_width``) of the
        cross-entropy ``-log softmax(span_logits[i, j])[gold class]`` (Yu et al. 2020).

        A gold span wider than ``max_width`` is not scored (it cannot be predicted either).
        """
        batch_size, max_len = label_ids.shape
        lengths = lengths.to(label_ids.device)
        targets = self.span_targets(label_ids, lengths)
        losses = F.cross_entropy(
            scores.reshape(-1, self.n_types + 1), targets.reshape(-1), reduction="none"
        ).view(batch_size, max_len, max_len)
        mask = self.span_mask(lengths, max_len)
        return (losses * mask).sum((1, 2))
