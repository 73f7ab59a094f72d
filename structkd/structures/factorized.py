"""Factorized (MaxEnt, softmax) tagger: every token's tag is independent.

    Score(y) = sum_{i<n} logits[i, y_i] / T,   log Z = sum_{i<n} logsumexp_l logits[i, l] / T,
    P(y) = prod_i softmax(logits[i] / T)[y_i].

The substructures are single tokens, so the marginals are the per-token softmax and the pair
marginals of consecutive tokens are outer products. The exact k-best merges the per-token sorted
lists position by position (a k-best over a chain with one state).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from structkd.structures.base import (
    StructDistribution,
    check_potential_values,
    check_tag_values,
    check_temperature,
    upcast,
)

__all__ = ["Factorized"]

_COMPUTE_DTYPE = torch.float64


class Factorized(StructDistribution):
    """A batch of factorized distributions over tag sequences, one per sentence.

    Args:
        logits: ``[batch, seq_len, n_labels]`` per-token tag scores (ignored at padding).
        lengths: ``[batch]`` int64 tokens per sentence, ``1 <= length <= seq_len``.
        temperature: ``T > 0``; every logit is divided by it.

    ``-inf`` logits forbid a tag; a token whose tags are all ``-inf`` raises ``ValueError``.
    Reductions over a sentence (``log_partition``, scores, entropy) are computed in float64 and
    returned in the dtype of ``logits``.

    Examples:
        >>> tagger = Factorized(torch.randn(2, 4, 3), torch.tensor([4, 2]))
        >>> tagger.marginals.sum(-1).round().tolist()
        [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]]
        >>> values, scores = tagger.kbest(5)
        >>> values.shape, scores.shape
        (torch.Size([5, 2, 4]), torch.Size([5, 2]))
    """

    def __init__(self, logits: Tensor, lengths: Tensor, temperature: float = 1.0):
        if not isinstance(logits, Tensor):
            raise TypeError(
                f"logits must be a torch.Tensor [batch, seq_len, n_labels], "
                f"got {type(logits).__name__}"
            )
        if logits.dim() != 3:
            raise ValueError(
                f"logits must have shape [batch, seq_len, n_labels], got {list(logits.shape)}"
            )
        if not logits.dtype.is_floating_point:
            raise ValueError(f"logits must be a floating tensor, got {logits.dtype}")
        batch_size, seq_len, n_labels = logits.shape
        if seq_len < 1 or n_labels < 1:
            raise ValueError(
                f"logits must have seq_len >= 1 and n_labels >= 1, got {list(logits.shape)}"
            )
        super().__init__(lengths, temperature, batch_size, seq_len)
        self.lengths = self.lengths.to(logits.device)
        logits = check_potential_values(
            "logits", upcast(logits), self.mask.unsqueeze(-1), self.temperature
        )
        self.logits = logits
        self.n_labels = n_labels
        with torch.no_grad():
            empty = torch.isneginf(logits.amax(-1)) & self.mask if logits.numel() else None
        if empty is not None and bool(empty.any()):
            rows = empty.any(-1).nonzero().flatten().tolist()
            raise ValueError(
                f"no tag sequence is allowed for sentence(s) {rows}: a token has every logit -inf"
            )
        self._memo: dict[object, Tensor] = {}

    def _single_sentence(self) -> tuple[Factorized, list[Tensor]]:
        logits = self.logits.detach().new_zeros(1, self.max_len, self.n_labels)
        one = torch.ones(1, dtype=torch.long, device=logits.device)
        return Factorized(logits, one, self.temperature), [self.logits]

    def _scores(self) -> Tensor:
        """``[batch, seq_len, n_labels]`` tempered logits, 0 at padding (input dtype)."""
        logits = torch.where(self.mask.unsqueeze(-1), self.logits, 0.0)
        return logits if self.temperature == 1.0 else logits / self.temperature

    def _cached(self, name: str, compute) -> Tensor:
        """Cache per (name, whether autograd records it), so that a result computed without a
        graph is never handed out where gradients are expected."""
        key = (name, torch.is_grad_enabled() and self.logits.requires_grad)
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @property
    def log_partition(self) -> Tensor:
        """``[batch]`` ``log Z = sum_i logsumexp_l logits[i, l] / T``."""

        def compute() -> Tensor:
            per_token = torch.logsumexp(self._scores().to(_COMPUTE_DTYPE), dim=-1)
            return torch.where(self.mask, per_token, 0.0).sum(-1).to(self.logits.dtype)

        return self._cached("log_partition", compute)

    @property
    def marginals(self) -> Tensor:
        """``[batch, seq_len, n_labels]`` per-token softmax, 0 at padding. Differentiable."""

        def compute() -> Tensor:
            probabilities = torch.softmax(self._scores(), dim=-1)
            return torch.where(self.mask.unsqueeze(-1), probabilities, 0.0)

        return self._cached("marginals", compute)

    @property
    def pair_marginals(self) -> Tensor:
        """``[batch, seq_len-1, n_labels, n_labels]``:
        ``[b, i, a, c] = P(y_i = a) P(y_{i+1} = c)``, 0 where ``i + 1 >= length``."""

        def compute() -> Tensor:
            marginals = self.marginals
            return marginals[:, :-1].unsqueeze(-1) * marginals[:, 1:].unsqueeze(-2)

        return self._cached("pair_marginals", compute)

    def score(self, value: Tensor) -> Tensor:
        """``[..., batch]`` tempered score ``sum_i logits[i, value_i] / T`` of tag sequences
        ``value [..., batch, seq_len]`` (``-inf`` if a tag is forbidden)."""
        return self._score(value).to(self.logits.dtype)

    def _score(self, value: Tensor) -> Tensor:
        value = self._check_value(value)
        leading = value.shape[:-2]
        tags = value.reshape(-1, self.batch_size, self.max_len)
        scores = self._scores().to(_COMPUTE_DTYPE).unsqueeze(0).expand(tags.shape[0], -1, -1, -1)
        picked = scores.gather(-1, torch.where(self.mask, tags, 0).unsqueeze(-1)).squeeze(-1)
        total = torch.where(self.mask, picked, 0.0).sum(-1)
        return total.reshape((*leading, self.batch_size))

    def log_prob(self, value: Tensor) -> Tensor:
        """``[..., batch]`` ``log P(value)`` (computed in float64)."""
        log_partition = self.log_partition.to(_COMPUTE_DTYPE)
        return (self._score(value) - log_partition).to(self.logits.dtype)

    def expected_score(self, marginals: Tensor | None = None) -> Tensor:
        """``[batch]`` ``sum_{i, l} mu[i, l] logits[i, l] / T``.

        ``marginals [batch, seq_len, n_labels]`` defaults to this distribution's own; given ones
        (e.g. a teacher's, on these tags) are ignored at padding. ``0 * -inf`` counts as 0; mass on
        a ``-inf`` logit gives ``-inf``.
        """
        if marginals is None:
            marginals = self.marginals
        else:
            shape = (self.batch_size, self.max_len, self.n_labels)
            if not isinstance(marginals, Tensor) or not marginals.dtype.is_floating_point:
                raise ValueError(f"marginals must be a floating tensor of shape {list(shape)}")
            if tuple(marginals.shape) != shape:
                raise ValueError(
                    f"marginals must have shape {list(shape)}, got {list(marginals.shape)}"
                )
            marginals = torch.where(self.mask.unsqueeze(-1), marginals, 0.0)
        marginals = marginals.to(_COMPUTE_DTYPE)
        scores = self._scores().to(_COMPUTE_DTYPE)
        scores = torch.where(marginals == 0, 0.0, scores)
        return (marginals * scores).sum((-1, -2)).to(self.logits.dtype)

    @property
    def entropy(self) -> Tensor:
        """``[batch]`` ``sum_i H(softmax(logits[i] / T))`` in nats (float64 inside)."""

        def compute() -> Tensor:
            log_probabilities = torch.log_softmax(self._scores().to(_COMPUTE_DTYPE), dim=-1)
            probabilities = log_probabilities.exp()
            terms = torch.where(probabilities == 0, 0.0, probabilities * log_probabilities)
            terms = torch.where(self.mask.unsqueeze(-1), terms, 0.0)
            return -terms.sum((-1, -2)).to(self.logits.dtype)

        return self._cached("entropy", compute)

    @property
    def argmax(self) -> Tensor:
        """``[batch, seq_len]`` int64 best tag of every token, ``-1`` at padding."""
        return torch.where(self.mask, self.logits.detach().argmax(-1), -1)

    def kbest(self, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` best tag sequences, best first (exact and distinct).

        Merges the per-token sorted candidates position by position: the best ``k`` sequences of
        tokens ``0..i`` are among the best ``k`` of ``0..i-1`` extended by one of the best ``k``
        tags of token ``i``.

        Returns:
            ``(values [k, batch, seq_len] int64, scores [k, batch])``; where a sentence has fewer
            than ``k`` allowed sequences the surplus rows hold ``-1`` values and ``-inf`` scores.
            Ties are broken arbitrarily.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        with torch.no_grad():
            scores = self._scores().detach().to(_COMPUTE_DTYPE)
            batch_size, seq_len, n_labels = scores.shape
            width = min(k, n_labels)
            token_scores, token_tags = scores.topk(width, dim=-1)  # [batch, seq_len, width]
            padding = scores.new_full((batch_size, k - width), -math.inf)
            best = torch.cat([token_scores[:, 0], padding], dim=-1)  # [batch, k]
            keep = torch.arange(k, device=scores.device).expand(batch_size, k)
            previous_ranks, choices = [], []
            for position in range(1, seq_len):
                candidates = best.unsqueeze(-1) + token_scores[:, position].unsqueeze(1)
                extended, index = candidates.flatten(1).topk(k, dim=-1)
                inside = (position < self.lengths).unsqueeze(-1)
                best = torch.where(inside, extended, best)
                previous_ranks.append(torch.where(inside, index // width, keep))
                choices.append(index % width)

            # Backtrack: rank[b, j] is the rank of sequence j's prefix at the current position.
            tags = torch.full((batch_size, k, seq_len), -1, dtype=torch.long, device=scores.device)
            rank = keep
            for position in range(seq_len - 1, -1, -1):
                if position == 0:  # the first token's candidates are its sorted tags (then -inf)
                    choice = torch.where(rank < width, rank, 0)
                else:
                    choice = choices[position - 1].gather(1, rank)
                tag = token_tags[:, position].gather(1, choice)
                inside = (position < self.lengths).unsqueeze(-1)
                tags[:, :, position] = torch.where(inside, tag, -1)
                if position > 0:
                    rank = previous_ranks[position - 1].gather(1, rank)
            exists = torch.isfinite(best)
            tags = torch.where(exists.unsqueeze(-1), tags, -1)
            return tags.permute(1, 0, 2), best.t().to(self.logits.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``[n, batch, seq_len]`` int64 exact samples (Gumbel-max per token), ``-1`` at
        padding."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        with torch.no_grad():
            scores = self._scores().detach().to(_COMPUTE_DTYPE)
            uniform = torch.rand(
                (n, *scores.shape), generator=generator, dtype=scores.dtype, device=scores.device
            ).clamp_min(torch.finfo(scores.dtype).tiny)
            choice = (scores - torch.log(-torch.log(uniform))).argmax(-1)
            return torch.where(self.mask, choice, -1)

    def tempered(self, temperature: float) -> Factorized:
        """The same tagger with every logit further divided by ``temperature``."""
        return Factorized(
            self.logits, self.lengths, self.temperature * check_temperature(temperature)
        )

    def _check_value(self, value: Tensor) -> Tensor:
        return check_tag_values(value, self.mask, self.n_labels)

    def __repr__(self) -> str:
        return (
            f"Factorized(batch_size={self.batch_size}, max_len={self.max_len}, "
            f"n_labels={self.n_labels}, temperature={self.temperature}, dtype={self.logits.dtype})"
        )
