"""Exact inference over structures: pure tensors in, tensors out (no nn.Module, no data)."""

from structkd.structures.base import NumericalError, StructDistribution

__all__ = ["NumericalError", "StructDistribution"]
