"""Structural knowledge distillation: the KD objective, the bridges that project a teacher's
distribution onto the student's substructures, the temperatures, and the baselines."""

from structkd.distill.baselines import posterior_kd_loss, token_kd_loss, topk_kd_loss
from structkd.distill.bridges import (
    BRIDGES,
    Bridge,
    ChainTargets,
    check_compatible,
    crf_to_crf,
    crf_to_factorized,
    factorized_to_crf,
    factorized_to_factorized,
    find_bridge,
    mix_targets,
    project_teacher,
    register_bridge,
    spans_to_crf,
    spans_to_factorized,
)
from structkd.distill.dep_bridges import (
    DepLabelTargets,
    label_marginals,
    local_head_probs,
    lost_mass_summary,
)
from structkd.distill.objective import (
    cross_entropy_lower_bound,
    kd_loss_from_targets,
    structural_kd_loss,
)
from structkd.distill.temperature import TEMPERATURE_MODES, local_temper

__all__ = [
    "BRIDGES",
    "TEMPERATURE_MODES",
    "Bridge",
    "ChainTargets",
    "DepLabelTargets",
    "check_compatible",
    "crf_to_crf",
    "crf_to_factorized",
    "cross_entropy_lower_bound",
    "factorized_to_crf",
    "factorized_to_factorized",
    "find_bridge",
    "kd_loss_from_targets",
    "label_marginals",
    "local_head_probs",
    "local_temper",
    "lost_mass_summary",
    "mix_targets",
    "posterior_kd_loss",
    "project_teacher",
    "register_bridge",
    "spans_to_crf",
    "spans_to_factorized",
    "structural_kd_loss",
    "token_kd_loss",
    "topk_kd_loss",
]
