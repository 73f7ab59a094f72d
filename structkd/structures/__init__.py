"""Exact inference over structures: pure tensors in, tensors out (no nn.Module, no data).

Every class is a batch of distributions over structures, one per sentence, with the API of
``docs/structures-contract.md``: ``log_partition``, ``marginals``, ``argmax``, ``kbest(k)``,
``sample(n)``, ``log_prob``, ``entropy``, ``expected_score``, ``tempered``.
"""

from structkd.structures.base import NumericalError, StructDistribution
from structkd.structures.dependency import DependencyCRF, HeadSelection, is_projective, is_tree
from structkd.structures.factorized import Factorized
from structkd.structures.linear_chain import LinearChainCRF, transition_constraints
from structkd.structures.second_order import Dependency2oCRF, mean_field_arcs
from structkd.structures.semimarkov import (
    SemiMarkovSpans,
    bioes_constraints,
    bioes_tag_names,
    bioes_to_spans,
    spans_to_bioes,
)

__all__ = [
    "Dependency2oCRF",
    "DependencyCRF",
    "Factorized",
    "HeadSelection",
    "LinearChainCRF",
    "NumericalError",
    "SemiMarkovSpans",
    "StructDistribution",
    "bioes_constraints",
    "bioes_tag_names",
    "bioes_to_spans",
    "is_projective",
    "is_tree",
    "mean_field_arcs",
    "spans_to_bioes",
    "transition_constraints",
]
