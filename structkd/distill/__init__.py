"""Structural knowledge distillation: the one table of KD methods, each method's teacher half
(what is cached) and student half (the loss), the bridges that project a teacher's distribution
onto the substructures of a student kind, the temperature rule, and the library losses built from
the halves (the structural KD objective and the baselines).

Importing this package is cheap (no torch): its names are imported from their modules on first
use, and that first use imports every built-in module, so that every built-in bridge is
registered. ``structkd.distill.methods``, the method table, imports nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BRIDGES": "bridges",
    "Bridge": "bridges",
    "CHAIN_KINDS": "bridges",
    "ChainTargets": "bridges",
    "DEFAULT_METHOD": "methods",
    "DEP_LABELS": "dep_bridges",
    "DepLabelTargets": "dep_bridges",
    "DepTeacherOutput": "dep_bridges",
    "KDMethod": "methods",
    "KD_METHODS": "methods",
    "METHODS": "methods",
    "METHOD_NAMES": "methods",
    "PAD_VALUES": "halves",
    "ROW_RULES": "halves",
    "STUDENT_CLASSES": "bridges",
    "STUDENT_KINDS": "bridges",
    "TEMPERATURE_MODES": "temperature",
    "arcs_to_dep_labels": "dep_bridges",
    "cached_quantities": "halves",
    "check_compatible": "bridges",
    "check_weights": "bridges",
    "crf_to_crf": "bridges",
    "crf_to_factorized": "bridges",
    "cross_entropy_lower_bound": "objective",
    "factorized_to_crf": "bridges",
    "factorized_to_factorized": "bridges",
    "find_bridge": "bridges",
    "kd_loss_from_targets": "losses",
    "kd_scale": "temperature",
    "label_marginals": "dep_bridges",
    "local_head_probs": "dep_bridges",
    "local_temper": "temperature",
    "lost_mass_summary": "dep_bridges",
    "mix_targets": "bridges",
    "padded_rows": "halves",
    "posterior_kd_loss": "baselines",
    "posterior_loss_from_targets": "losses",
    "project_teacher": "bridges",
    "register_bridge": "bridges",
    "spans_to_crf": "bridges",
    "spans_to_factorized": "bridges",
    "structural_kd_loss": "objective",
    "student_half": "halves",
    "student_kind_of": "bridges",
    "student_targets": "halves",
    "teacher_half": "halves",
    "token_kd_loss": "baselines",
    "token_loss_from_targets": "losses",
    "topk_kd_loss": "baselines",
    "topk_loss_from_targets": "losses",
}
"""Each public name and the module of the package that defines it."""

__all__ = [
    "BRIDGES",
    "CHAIN_KINDS",
    "DEFAULT_METHOD",
    "DEP_LABELS",
    "KD_METHODS",
    "METHODS",
    "METHOD_NAMES",
    "PAD_VALUES",
    "ROW_RULES",
    "STUDENT_CLASSES",
    "STUDENT_KINDS",
    "TEMPERATURE_MODES",
    "Bridge",
    "ChainTargets",
    "DepLabelTargets",
    "DepTeacherOutput",
    "KDMethod",
    "arcs_to_dep_labels",
    "cached_quantities",
    "check_compatible",
    "check_weights",
    "crf_to_crf",
    "crf_to_factorized",
    "cross_entropy_lower_bound",
    "factorized_to_crf",
    "factorized_to_factorized",
    "find_bridge",
    "kd_loss_from_targets",
    "kd_scale",
    "label_marginals",
    "local_head_probs",
    "local_temper",
    "lost_mass_summary",
    "mix_targets",
    "padded_rows",
    "posterior_kd_loss",
    "posterior_loss_from_targets",
    "project_teacher",
    "register_bridge",
    "spans_to_crf",
    "spans_to_factorized",
    "structural_kd_loss",
    "student_half",
    "student_kind_of",
    "student_targets",
    "teacher_half",
    "token_kd_loss",
    "token_loss_from_targets",
    "topk_kd_loss",
    "topk_loss_from_targets",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for module in sorted(set(_LAZY.values())):
        importlib.import_module(f"{__name__}.{module}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
