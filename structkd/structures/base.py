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
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


class NumericalError(FloatingPointError):
    """Numerical trouble in inference or a loss (NaN, a negative cross-entropy); never clamped
    (beyond the float roundoff of :func:`probabilities_within_roundoff`)."""


PROBABILITY_ROUNDOFF = 1e-6
"""How far a computed probability may fall outside [0, 1] by float roundoff (differences of
entries of an inverse, sums and products of marginals) and still be read as the bound."""


def probabilities_within_roundoff(values: Tensor, what: str, *, at_most_one: bool = True) -> Tensor:
    """``values`` (probabilities, any shape) with float roundoff outside [0, 1] moved onto the
    bound: a value below 0 by at most ``PROBABILITY_ROUNDOFF`` becomes 0, one above 1 by at most
    that becomes 1 (``at_most_one=False``: only the lower bound is checked and applied).

    Raises:
        NumericalError: naming ``what``, for a value further out, or NaN.
    """
    detached = values.detach()
    bad = ~(detached >= -PROBABILITY_ROUNDOFF)  # NaN too
    if at_most_one:
        bad |= ~(detached <= 1 + PROBABILITY_ROUNDOFF)
    if bool(bad.any()):
        where = "outside [0, 1]" if at_most_one else "below 0"
        raise NumericalError(
            f"{what} is {float(detached[bad].flatten()[0]):.3g}: {where} beyond roundoff "
            "(or NaN), not a probability"
        )
    return values.clamp(0.0, 1.0) if at_most_one else values.clamp_min(0.0)


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


def check_potentials(
    name: str, tensor: Tensor, dims: int, shape_doc: str, *, nan: bool = True
) -> Tensor:
    """Check a potentials tensor: a floating tensor of ``dims`` dimensions with no NaN (with
    ``nan=False`` the values are left to :func:`check_potential_values`, which ignores padding)."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape_doc}, got {type(tensor).__name__}")
    if tensor.dim() != dims:
        raise ValueError(f"{name} must have shape {shape_doc}, got {list(tensor.shape)}")
    if not tensor.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating tensor, got {tensor.dtype}")
    if nan and torch.isnan(tensor).any():
        raise NumericalError(f"{name} contains NaN")
    return tensor


# The exactness range: every finite potential divided by the temperature must be at most this in
# absolute value (per dtype of the computation), else a constructor raises ``ValueError`` rather
# than return a wrong number. Results carry the rounding of their dtype relative to the size of
# ``log Z`` (about ``len * max|s / T|``): float32 about ``1e-7 |log Z|``, float64 ``1e-16 |log Z|``,
# so near-deterministic distributions may show a log-probability or entropy off zero by that
# much (``|s| = 1e4`` in float32: ~1e-3; ``|s| = 1e6`` in float64: ~1e-9), never more. Beyond the
# range, float32 rounding swamps log-probabilities (``log_prob(argmax) > 0``, negative entropies at
# ``|s| = 1e6``) and at 1e30 float64 sums of tree scores lose every digit of their differences.
MAX_ABS_POTENTIAL = {torch.float64: 1e7, torch.float32: 1e5}


# Half-precision potentials are computed in this dtype (float16 overflows a log-partition above
# 65504 and bfloat16 keeps 3 digits); results then come back in it.
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a class computes and returns results in for potentials of ``dtype``: float32 for
    float16 and bfloat16, the dtype itself otherwise."""
    return torch.float32 if dtype in _HALF_DTYPES else dtype


def upcast(tensor: Tensor) -> Tensor:
    """``tensor`` in :func:`compute_dtype` (differentiable; gradients reach the caller's dtype)."""
    return tensor.float() if tensor.dtype in _HALF_DTYPES else tensor


def check_potential_values(
    name: str,
    tensor: Tensor,
    keep: Tensor | None,
    temperature: float,
    bounds: Mapping[torch.dtype, float] = MAX_ABS_POTENTIAL,
) -> Tensor:
    """Check the values of a potentials tensor where they are used; returns the tensor to use.

    ``keep`` (broadcastable to ``tensor``, bool) is True where a potential is read (inside a
    sentence); elsewhere (padding, ignored entries) anything goes, NaN included: those entries are
    replaced by 0 in the returned tensor (a copy, made only when such an entry exists). Inside
    ``keep``, a NaN raises ``NumericalError``, ``+inf`` raises ``ValueError`` and a finite
    ``|potential / temperature|`` above ``bounds`` of its dtype (default
    :data:`MAX_ABS_POTENTIAL`; a structure whose sums lose more digits passes a tighter range)
    raises ``ValueError`` (outside the exactness range). One reduction and one host sync when every
    value is in range.
    """
    if tensor.numel() == 0:
        return tensor
    bound = bounds.get(tensor.dtype, bounds[torch.float32])
    limit = bound * temperature
    with torch.no_grad():
        low, high = (float(v) for v in torch.aminmax(tensor.detach()))
    if not (math.isnan(high) or high > limit or low < -limit):
        return tensor
    with torch.no_grad():
        values = tensor.detach()
        outside = values.new_zeros((), dtype=torch.bool).expand_as(values)
        if keep is not None:
            outside = ~keep.expand_as(values)
        used = values.masked_fill(outside, 0.0)
        if torch.isnan(used).any():
            raise NumericalError(f"{name} contains NaN")
        if torch.isposinf(used).any():
            raise ValueError(f"{name} contains +inf (use finite scores, -inf forbids)")
        finite = used.masked_fill(~torch.isfinite(used), 0.0)
        largest = float(finite.abs().amax())
        strange = outside & ~(values.abs() <= limit)  # NaN, +-inf or huge, where unused
    if largest > limit:
        raise ValueError(
            f"{name} holds a finite score of magnitude {largest:.3g} (divided by the temperature "
            f"{temperature:g}: {largest / temperature:.3g}), beyond the exactness range "
            f"|s / T| <= {bound:g} of structkd.structures in {tensor.dtype} (use float64 up to "
            f"{bounds[torch.float64]:g}; -inf forbids)"
        )
    if bool(strange.any()):
        return tensor.masked_fill(strange, 0.0)
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


# Public results whose first dimension is the batch (properties) and methods whose second is.
_BATCH_FIRST = (
    "log_partition",
    "marginals",
    "log_marginals",
    "pair_marginals",
    "sibling_marginals",
    "bioes_marginals",
    "bioes_pair_marginals",
    "entropy",
    "argmax",
)
_BATCH_SECOND = ("kbest", "sample")
_BATCH_LAST = ("score", "log_prob", "expected_score")


def _slice_empty(result: Any, dim: int, anchor: Tensor | None) -> Any:
    """``result`` of a one-sentence stand-in cut to an empty batch along ``dim``; floating results
    are tied to ``anchor`` (0 with the potentials' graph) so that a loss on them backpropagates."""
    if isinstance(result, tuple):
        return tuple(_slice_empty(part, dim, anchor) for part in result)
    empty = result.narrow(dim, 0, 0)
    if anchor is not None and empty.dtype.is_floating_point:
        empty = empty + anchor.to(empty.dtype)
    return empty


def _empty_aware(name: str, function: Callable[..., Any], kind: str) -> Callable[..., Any]:
    """Wrap a public accessor: on an empty batch, answer with the shapes of a one-sentence
    stand-in (:meth:`StructDistribution._single_sentence`) cut to zero sentences."""

    @functools.wraps(function)
    def wrapper(self: StructDistribution, *args: Any, **kwargs: Any) -> Any:
        if self.batch_size:
            return function(self, *args, **kwargs)
        stand_in, anchor = self._empty_stand_in()
        if kind == "last":
            value = args[0] if args else next(iter(kwargs.values()), None)
            if name != "expected_score" and (
                not isinstance(value, Tensor) or value.dim() < 2 or value.shape[-2] != 0
            ):
                raise ValueError(
                    f"value must have shape [..., batch, ...] with batch 0, got "
                    f"{list(getattr(value, 'shape', [])) or type(value).__name__}"
                )
            leading = () if name == "expected_score" else tuple(value.shape[:-2])
            dtype = stand_in.log_partition.dtype
            empty = torch.zeros((*leading, 0), dtype=dtype, device=stand_in.lengths.device)
            return empty if anchor is None else empty + anchor.to(dtype)
        result = getattr(type(stand_in), name).__get__(stand_in)
        if kind == "first":
            return _slice_empty(result, 0, anchor)
        return _slice_empty(result(*args, **kwargs), 1, anchor)

    return wrapper


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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every public accessor a class defines answers an empty batch with empty results."""
        super().__init_subclass__(**kwargs)
        for name, kind in (
            *((name, "first") for name in _BATCH_FIRST),
            *((name, "second") for name in _BATCH_SECOND),
            *((name, "last") for name in _BATCH_LAST),
        ):
            attribute = cls.__dict__.get(name)
            if isinstance(attribute, property) and kind == "first":
                getter = _empty_aware(name, attribute.fget, kind)
                setattr(cls, name, property(getter, doc=attribute.__doc__))
            elif callable(attribute) and kind != "first":
                setattr(cls, name, _empty_aware(name, attribute, kind))

    def _single_sentence(self) -> tuple[StructDistribution, list[Tensor]]:
        """A one-sentence distribution with this one's options and potential shapes (length 1,
        zero potentials), and the potentials of this one: what an empty batch answers with."""
        raise NotImplementedError  # pragma: no cover - interface

    def _empty_stand_in(self) -> tuple[StructDistribution, Tensor | None]:
        cache = self.__dict__.setdefault("_lazy_cache", {})
        if "_stand_in" not in cache:
            stand_in, potentials = self._single_sentence()
            graph = torch.is_grad_enabled() and any(p.requires_grad for p in potentials)
            anchor = sum(p.sum() for p in potentials) if graph else None
            cache["_stand_in"] = (stand_in, anchor)
        return cache["_stand_in"]

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
