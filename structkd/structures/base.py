"""Shared machinery of every distribution over structures.

A distribution over structures ``y`` of a sentence is an exponential family:
``P(y) = exp(Score(y) - log Z)`` with ``Score(y) = sum_{u in y} s(u)`` (potentials divided by
the temperature). Subclasses implement the log-partition and the score of a given structure; the
base derives ``log_prob``, marginals by differentiating ``log Z`` (inside-outside is backprop),
and the entropy as ``log Z - sum_u P(u) s(u)``.

Conventions shared by every class:

* ``lengths`` ``[batch]`` (int64) counts the tokens of each sentence (a root, where there is one,
  is not counted). Every length is at least 1 and at most the padded size of the potentials.
* Padded positions never change a result: their potentials are ignored, their marginals are 0, and
  values (argmax, k-best, samples) hold ``-1`` there.
* ``temperature`` divides every potential before inference, so ``P_T(y) ∝ exp(Score(y) / T)``.
* Potentials may require grad; ``log_partition`` and ``marginals`` are then differentiable
  (marginals with ``create_graph``), so they can sit inside a loss.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


class NumericalError(ArithmeticError):
    """Numerical trouble in inference or a loss (NaN, a negative cross-entropy); never clamped."""


def lazy_property(method: Callable[[Any], T]) -> T:
    """A read-only property computed once per instance and cached in its ``__dict__``."""
    name = method.__name__

    @functools.wraps(method)
    def getter(self: Any) -> T:
        cache = self.__dict__.setdefault("_lazy_cache", {})
        if name not in cache:
            cache[name] = method(self)
        return cache[name]

    return property(getter)  # type: ignore[return-value]


def check_lengths(
    lengths: Tensor, batch_size: int, max_len: int, *, name: str = "lengths"
) -> Tensor:
    """Validate per-sentence lengths ``[batch]`` against padded potentials; returns them as int64.

    Raises ``ValueError`` naming the problem (wrong shape, a length < 1 or > ``max_len``).
    """
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.shape[0] != batch_size:
        raise ValueError(
            f"{name} must have shape [batch]=[{batch_size}], got {list(lengths.shape)}"
        )
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {lengths.dtype}")
    lengths = lengths.long()
    if batch_size and int(lengths.min()) < 1:
        raise ValueError(f"{name} must be >= 1, got min {int(lengths.min())}")
    if batch_size and int(lengths.max()) > max_len:
        raise ValueError(
            f"{name} must be <= the padded length {max_len}, got max {int(lengths.max())}"
        )
    return lengths


def check_temperature(temperature: float) -> float:
    """Validate a temperature: a finite float > 0."""
    temperature = float(temperature)
    if not (temperature > 0.0) or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return temperature


def check_potentials(name: str, tensor: Tensor, dims: int, shape_doc: str) -> Tensor:
    """Check a potentials tensor: a floating tensor of ``dims`` dimensions with no NaN."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape_doc}, got {type(tensor).__name__}")
    if tensor.dim() != dims:
        raise ValueError(f"{name} must have shape {shape_doc}, got {list(tensor.shape)}")
    if not tensor.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating tensor, got {tensor.dtype}")
    if torch.isnan(tensor).any():
        raise NumericalError(f"{name} contains NaN")
    return tensor


def check_tag_values(value: Tensor, mask: Tensor, n_labels: int) -> Tensor:
    """Validate tag sequences ``[..., batch, seq_len]`` against a ``[batch, seq_len]`` length mask.

    Returns them as int64; raises ``ValueError`` for a wrong type, shape or dtype, or a tag outside
    ``[0, n_labels)`` inside a sentence (padding may hold anything, e.g. ``-1``).
    """
    batch_size, max_len = mask.shape
    if not isinstance(value, Tensor):
        raise ValueError(f"value must be a tensor of tags, got {type(value).__name__}")
    if value.dim() < 2 or tuple(value.shape[-2:]) != (batch_size, max_len):
        raise ValueError(
            f"value must have shape [..., batch, seq_len]=[..., {batch_size}, {max_len}], "
            f"got {list(value.shape)}"
        )
    if value.dtype.is_floating_point or value.dtype == torch.bool:
        raise ValueError(f"value must be an integer tensor, got {value.dtype}")
    value = value.long()
    if bool(((value < 0) | (value >= n_labels))[mask.expand_as(value)].any()):
        raise ValueError(
            f"value must hold tags in [0, {n_labels}) at every position inside a sentence"
        )
    return value


def length_mask(lengths: Tensor, max_len: int) -> Tensor:
    """``[batch, max_len]`` bool mask, True at positions ``< lengths``."""
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(-1)


def autograd_marginals(
    log_partition_fn: Callable[..., Tensor], potentials: list[Tensor]
) -> tuple[Tensor, list[Tensor]]:
    """Marginals as ``d log Z / d potentials``: inside-outside is backprop.

    ``log_partition_fn(*potentials)`` returns ``log Z`` ``[batch]``. Returns ``(log Z, marginals)``
    with one marginal tensor per potential (zeros where a potential does not reach ``log Z``). When
    grad is enabled and a potential requires grad, the marginals keep their graph
    (``create_graph``), so a loss on marginals can be backpropagated; otherwise they are computed
    on detached copies.
    """
    differentiable = torch.is_grad_enabled() and any(p.requires_grad for p in potentials)
    with torch.enable_grad():
        inputs = [
            p if (differentiable and p.requires_grad) else p.detach().requires_grad_()
            for p in potentials
        ]
        log_z = log_partition_fn(*inputs)
        grads = torch.autograd.grad(
            log_z.sum(), inputs, create_graph=differentiable, allow_unused=True
        )
    if not differentiable:
        log_z = log_z.detach()
    marginals = [
        torch.zeros_like(p) if g is None else g for p, g in zip(inputs, grads, strict=True)
    ]
    return log_z, marginals


class StructDistribution:
    """Base class: a batch of distributions over structures, one per sentence.

    Subclasses set ``self.lengths`` and ``self.temperature`` (via ``super().__init__``) and
    implement:

    * ``log_partition`` ``[batch]``
    * ``marginals`` (shape documented per class)
    * ``score(value)`` ``[..., batch]``: the tempered score of given structures
    * ``expected_score()`` ``[batch]``: ``sum_u P(u) s(u)`` with tempered potentials
    * ``argmax``, ``kbest(k)``, ``sample(n)`` where the structure admits them
    * ``tempered(T)``: the same distribution with potentials further divided by ``T``
    """

    def __init__(self, lengths: Tensor, temperature: float, batch_size: int, max_len: int):
        self.temperature = check_temperature(temperature)
        self.lengths = check_lengths(lengths, batch_size, max_len)
        self.batch_size = batch_size
        self.max_len = max_len

    @lazy_property
    def mask(self) -> Tensor:
        """``[batch, max_len]`` bool, True on real tokens."""
        return length_mask(self.lengths, self.max_len)

    @property
    def log_partition(self) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def score(self, value: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def expected_score(self) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def tempered(self, temperature: float) -> StructDistribution:  # pragma: no cover - interface
        raise NotImplementedError

    def log_prob(self, value: Tensor) -> Tensor:
        """``log P(value)`` ``[..., batch]`` = ``score(value) - log Z``."""
        return self.score(value) - self.log_partition

    @lazy_property
    def entropy(self) -> Tensor:
        """``[batch]`` Shannon entropy ``H = log Z - sum_u P(u) s(u)`` (nats)."""
        return self.log_partition - self.expected_score()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(batch_size={self.batch_size}, max_len={self.max_len}, "
            f"temperature={self.temperature})"
        )
