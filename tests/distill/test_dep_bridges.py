"""Dependency teacher -> dependency-as-sequence-labeling student: label marginals against
brute-force enumeration of (head vector, relations) pairs, lost mass, padding, bad input."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pytest
import torch

from structkd.data.dep_encodings import ENCODINGS, DepLabel, DepLabelScheme, encode_tree
from structkd.distill import (
    BRIDGES,
    DEP_LABELS,
    STUDENT_KINDS,
    DepTeacherOutput,
    arcs_to_dep_labels,
    find_bridge,
    kd_loss_from_targets,
    project_teacher,
)
from structkd.distill.dep_bridges import (
    DepLabelTargets,
    label_marginals,
    local_head_probs,
    lost_mass_summary,
)
from structkd.structures import DependencyCRF, HeadSelection, NumericalError
from structkd.structures.factorized import Factorized
from tests.structures.brute_trees import all_head_vectors, all_trees, padded, structure_scores


@pytest.fixture(autouse=True, scope="module")
def _on_one_thread(one_thread):
    yield


def _close(actual, expected, atol: float = 1e-7, rtol: float = 1e-6) -> None:
    """``torch.allclose`` with shapes and a readable failure (``torch.testing.assert_close`` costs
    seconds of imports on its first call)."""
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, atol=atol, rtol=rtol), (actual, expected)


@dataclass
class Tree:
    heads: list[int]
    relations: list[str]
    upos: list[str]


# A small training set: its label vocabulary leaves many (head, relation) pairs inexpressible.
TRAIN = [
    Tree([2, 0, 2], ["nsubj", "root", "obj"], ["NOUN", "VERB", "NOUN"]),
    Tree([2, 3, 0], ["amod", "nsubj", "root"], ["ADJ", "NOUN", "VERB"]),
    Tree([0, 1, 1, 3], ["root", "obj", "nsubj", "amod"], ["VERB", "NOUN", "NOUN", "ADJ"]),
    Tree([3, 1, 0], ["nsubj", "amod", "root"], ["NOUN", "ADJ", "VERB"]),
]
# The teacher knows one relation more than the scheme ("dep"): its mass is always lost.
EXTRA_RELATION = "dep"
# Test sentences (UPOS; "PUNCT" is a tag no head code names), batched with padding to 4 words.
SENTENCES = [
    ["NOUN", "VERB", "ADJ", "NOUN"],
    ["VERB", "PUNCT"],
    ["NOUN", "NOUN", "VERB"],
    ["VERB"],
]
MAX_LEN = 4


def _scheme(encoding: str) -> DepLabelScheme:
    return DepLabelScheme.from_sentences(TRAIN, encoding=encoding)


def _teacher_relations(scheme: DepLabelScheme) -> tuple[str, ...]:
    return (EXTRA_RELATION, *reversed(scheme.relations))  # another order than the scheme's


def _label_relations(scheme: DepLabelScheme) -> torch.Tensor:
    teacher = _teacher_relations(scheme)
    return torch.tensor([teacher.index(label.relation) for label in scheme.labels])


def _inputs(scheme: DepLabelScheme, seed: int):
    generator = torch.Generator().manual_seed(seed)
    n_relations = len(_teacher_relations(scheme))
    size = MAX_LEN + 1
    arc_scores = 1.5 * torch.randn(len(SENTENCES), size, size, generator=generator).double()
    rel_scores = (
        1.5 * torch.randn(len(SENTENCES), size, size, n_relations, generator=generator).double()
    )
    rel_log_probs = rel_scores.log_softmax(-1)
    lengths = torch.tensor([len(tags) for tags in SENTENCES])
    upos_ids = scheme.upos_ids(SENTENCES, max_len=MAX_LEN)
    label_heads = scheme.label_heads(lengths, upos_ids)
    return arc_scores, rel_log_probs, label_heads, lengths


def _brute_force(
    scheme: DepLabelScheme,
    teacher: str,
    arc_scores: torch.Tensor,
    rel_log_probs: torch.Tensor,
    upos: list[str],
) -> torch.Tensor:
    """``[n, n_labels]`` P(label_i = l) of one sentence by enumerating every (head vector,
    relations) pair of the teacher and encoding each with the scheme's pure-Python encoder."""
    n = len(upos)
    size = n + 1
    scores = arc_scores[:size, :size]
    if teacher == "head_selection":
        structures = list(all_head_vectors(n))
    else:
        structures = all_trees(n, projective=teacher == "projective", multiroot=False)
    heads_table = padded(structures, size)
    tree_log_weights = structure_scores(scores, heads_table)
    if teacher == "head_selection":  # product of per-word softmaxes
        columns = scores[:, 1:].clone()
        columns[torch.arange(1, size), torch.arange(n)] = float("-inf")  # no self-loop
        tree_log_weights = tree_log_weights - torch.logsumexp(columns, 0).sum()
    else:
        tree_log_weights = tree_log_weights - torch.logsumexp(tree_log_weights, 0)
    relation_names = _teacher_relations(scheme)
    rel_probs = rel_log_probs.exp().tolist()
    probs = [[0.0] * scheme.n_labels for _ in range(n)]
    total = 0.0
    for heads, log_weight in zip(structures, tree_log_weights.tolist(), strict=True):
        tree_prob = math.exp(log_weight)
        # label_of[word][r]: index of the label encode_tree gives word + 1 with relation r, or -1
        label_of = list(
            zip(
                *(
                    [
                        scheme.index(label) if label in scheme else -1
                        for label in encode_tree(
                            list(heads[1:]), [name] * n, upos, encoding=scheme.encoding
                        )
                    ]
                    for name in relation_names
                ),
                strict=True,
            )
        )
        for rels in itertools.product(range(len(relation_names)), repeat=n):
            prob = tree_prob
            for word in range(1, n + 1):
                prob *= rel_probs[heads[word]][word][rels[word - 1]]
            total += prob
            for word in range(n):
                label = label_of[word][rels[word]]
                if label >= 0:
                    probs[word][label] += prob
    assert abs(total - 1.0) < 1e-9  # the enumeration covers the whole distribution
    return torch.tensor(probs, dtype=torch.float64)


def _teacher_marginals(teacher: str, arc_scores: torch.Tensor, lengths: torch.Tensor):
    if teacher == "head_selection":
        return local_head_probs(arc_scores, lengths)
    return DependencyCRF(arc_scores, lengths, projective=teacher == "projective").marginals


@pytest.mark.parametrize("teacher", ["head_selection", "projective", "nonprojective"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_label_marginals_match_enumeration(encoding, teacher):
    scheme = _scheme(encoding)
    arc_scores, rel_log_probs, label_heads, lengths = _inputs(scheme, seed=len(teacher))
    arc_marginals = _teacher_marginals(teacher, arc_scores, lengths)
    label_relations = _label_relations(scheme)
    exact = label_marginals(
        arc_marginals, rel_log_probs, label_heads, label_relations, lengths, renormalize=False
    )
    normalized = label_marginals(
        arc_marginals, rel_log_probs, label_heads, label_relations, lengths
    )
    assert isinstance(exact, DepLabelTargets) and not exact.renormalized
    assert normalized.renormalized
    assert exact.probs.shape == (len(SENTENCES), MAX_LEN, scheme.n_labels)
    some_lost = False
    for b, upos in enumerate(SENTENCES):
        n = len(upos)
        expected = _brute_force(scheme, teacher, arc_scores[b], rel_log_probs[b], upos)
        expressible = expected.sum(-1)
        _close(exact.probs[b, :n], expected, atol=1e-10, rtol=1e-8)
        _close(exact.lost_mass[b, :n], 1.0 - expressible, atol=1e-10, rtol=0)
        _close(normalized.probs[b, :n], expected / expressible[:, None], atol=1e-9, rtol=1e-8)
        _close(normalized.lost_mass, exact.lost_mass)
        assert normalized.has_target[b, :n].all() and exact.has_target[b, :n].all()
        some_lost |= bool((expressible < 0.99).any())
        # padding
        assert (exact.probs[b, n:] == 0).all() and (normalized.probs[b, n:] == 0).all()
        assert (exact.lost_mass[b, n:] == 0).all() and not exact.has_target[b, n:].any()
    assert some_lost  # the test exercises inexpressible mass
    _close(normalized.probs.sum(-1), normalized.has_target.double(), atol=1e-12, rtol=0)


def test_padding_content_is_ignored():
    """Garbage at padded positions (arc marginals, relation log-probs, label heads) changes
    nothing, and a sentence gives the same result alone as in a batch."""
    scheme = _scheme("pos")
    arc_scores, rel_log_probs, label_heads, lengths = _inputs(scheme, seed=3)
    arc_marginals = local_head_probs(arc_scores, lengths)
    label_relations = _label_relations(scheme)
    reference = label_marginals(arc_marginals, rel_log_probs, label_heads, label_relations, lengths)
    noisy_arcs, noisy_rels, noisy_heads = (
        arc_marginals.clone(),
        rel_log_probs.clone(),
        label_heads.clone(),
    )
    for b, n in enumerate(lengths.tolist()):
        noisy_arcs[b, n + 1 :] = 7.0
        noisy_arcs[b, :, n + 1 :] = float("nan")
        noisy_rels[b, n + 1 :] = float("nan")
        noisy_rels[b, :, n + 1 :] = 5.0
        noisy_heads[b, n:] = 99
    noisy = label_marginals(noisy_arcs, noisy_rels, noisy_heads, label_relations, lengths)
    _close(noisy.probs, reference.probs)
    _close(noisy.lost_mass, reference.lost_mass)
    assert torch.equal(noisy.has_target, reference.has_target)
    n = 2  # the second sentence alone, cut to its own length
    alone = label_marginals(
        arc_marginals[1:2, : n + 1, : n + 1],
        rel_log_probs[1:2, : n + 1, : n + 1],
        label_heads[1:2, :n],
        label_relations,
        lengths[1:2],
    )
    _close(alone.probs[0], reference.probs[1, :n])


def _offset_scheme() -> DepLabelScheme:
    """Labels: root|root, +1|nsubj, -1|obj (heads at offsets 0, +1, -1 only)."""
    labels = [DepLabel(0, None, "root"), DepLabel(1, None, "nsubj"), DepLabel(-1, None, "obj")]
    return DepLabelScheme(labels, encoding="offset")


def test_hand_computed_and_all_mass_lost_word():
    """Three words, relations (root, nsubj, obj) as the scheme's. Word 1: head 2 (p 0.6) or 3
    (p 0.4, offset +2: no label). Word 2: all mass on head 0 with relation obj (no root|obj label).
    Word 3: head 2 (p 1), relation obj (p 0.75) or root (0.25; no -1|root label)."""
    scheme = _offset_scheme()
    arcs = torch.zeros(1, 4, 4, dtype=torch.float64)
    arcs[0, 2, 1], arcs[0, 3, 1] = 0.6, 0.4
    arcs[0, 0, 2] = 1.0
    arcs[0, 2, 3] = 1.0
    rels = torch.full((1, 4, 4, 3), float("-inf"), dtype=torch.float64)  # root, nsubj, obj
    rels[0, 2, 1, 1] = 0.0  # word 1 under 2: nsubj
    rels[0, 3, 1, 1] = 0.0
    rels[0, 0, 2, 2] = 0.0  # word 2 under root: obj
    rels[0, 2, 3] = torch.tensor([0.25, 1e-300, 0.75]).log()
    lengths = torch.tensor([3])
    label_heads = scheme.label_heads(lengths)
    assert label_heads[0].tolist() == [[0, 2, -1], [0, 3, 1], [0, -1, 2]]
    for renormalize in (False, True):
        targets = label_marginals(
            arcs, rels, label_heads, scheme.label_relation, lengths, renormalize=renormalize
        )
        assert not torch.isnan(targets.probs).any()
        assert targets.has_target[0].tolist() == [True, False, True]
        _close(targets.lost_mass[0], torch.tensor([0.4, 1.0, 0.25], dtype=torch.float64))
        scale = torch.tensor([0.6, 1.0, 0.75] if renormalize else [1.0] * 3, dtype=torch.float64)
        expected = torch.tensor([[0, 0.6, 0], [0, 0, 0], [0, 0, 0.75]], dtype=torch.float64)
        _close(targets.probs[0], expected / scale[:, None])
    summary = lost_mass_summary(targets, lengths)
    assert summary["words"] == 3
    assert summary["mean_lost_mass"] == pytest.approx((0.4 + 1.0 + 0.25) / 3)
    assert summary["lossy_word_rate"] == pytest.approx(1.0)
    assert summary["no_target_rate"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="word 2 of sentence 0"):
        targets.as_chain_targets(lengths)


def test_mass_below_floor_gets_no_target():
    """A word whose expressible mass underflows the floor is skipped, never divided by ~0."""
    scheme = _offset_scheme()
    arcs = torch.zeros(1, 3, 3)
    arcs[0, 0, 1], arcs[0, 2, 1] = 1e-20, 1.0 - 1e-20  # word 1: root (label) or head 2 (label)
    arcs[0, 0, 2] = 1.0
    rels = torch.zeros(1, 3, 3, 3).log_softmax(-1)
    rels[0, 0, 1] = torch.tensor([0.0, float("-inf"), float("-inf")])  # under root: root only
    rels[0, 2, 1] = torch.tensor([0.0, float("-inf"), float("-inf")])  # under 2: root only
    lengths = torch.tensor([2])
    targets = label_marginals(
        arcs, rels, scheme.label_heads(lengths), scheme.label_relation, lengths
    )
    assert targets.has_target[0].tolist() == [False, True]
    assert (targets.probs[0, 0] == 0).all() and targets.lost_mass[0, 0] == pytest.approx(1.0)
    assert targets.probs.dtype == torch.float32
    assert not torch.isnan(targets.probs).any()


def test_as_chain_targets_gives_the_student_cross_entropy():
    scheme = _scheme("offset")
    arc_scores, rel_log_probs, label_heads, lengths = _inputs(scheme, seed=5)
    arcs = local_head_probs(arc_scores, lengths)
    targets = label_marginals(arcs, rel_log_probs, label_heads, _label_relations(scheme), lengths)
    logits = torch.randn(len(SENTENCES), MAX_LEN, scheme.n_labels, dtype=torch.float64)
    student = Factorized(logits, lengths)
    loss = kd_loss_from_targets(targets.as_chain_targets(lengths), student, reduction="none")
    words = torch.arange(MAX_LEN) < lengths[:, None]
    expected = -(targets.probs * logits.log_softmax(-1)).sum(-1).masked_fill(~words, 0).sum(-1)
    _close(loss, expected)
    exact = label_marginals(
        arcs, rel_log_probs, label_heads, _label_relations(scheme), lengths, renormalize=False
    )
    with pytest.raises(ValueError, match="renormalized"):
        exact.as_chain_targets(lengths)
    assert targets.detach().probs.requires_grad is False


def test_gradient_reaches_the_teacher_scores():
    scheme = _scheme("offset")
    arc_scores, rel_log_probs, label_heads, lengths = _inputs(scheme, seed=6)
    arc_scores.requires_grad_(True)
    targets = label_marginals(
        DependencyCRF(arc_scores, lengths).marginals,
        rel_log_probs,
        label_heads,
        _label_relations(scheme),
        lengths,
        renormalize=False,
    )
    targets.lost_mass.sum().backward()
    assert arc_scores.grad is not None and torch.isfinite(arc_scores.grad).all()
    assert arc_scores.grad.abs().sum() > 0


def test_local_head_probs_is_the_per_word_softmax():
    scores = torch.randn(2, 4, 4, dtype=torch.float64)
    lengths = torch.tensor([3, 2])
    probs = local_head_probs(scores, lengths, temperature=2.0)
    _close(probs, HeadSelection(scores, lengths, 2.0).marginals)
    for b, n in enumerate(lengths.tolist()):
        for d in range(1, n + 1):
            heads = [h for h in range(n + 1) if h != d]
            expected = torch.softmax(scores[b, heads, d] / 2.0, 0)
            _close(probs[b, heads, d], expected)
            assert probs[b, d, d] == 0
        assert (probs[b, :, n + 1 :] == 0).all() and (probs[b, n + 1 :] == 0).all()
        assert (probs[b, :, 0] == 0).all()


def test_lost_mass_summary_hand_computed():
    lost = torch.tensor([[0.0, 0.02, 0.5], [0.005, 0.3, 0.9]])
    targets = DepLabelTargets(
        torch.zeros(2, 3, 1), lost, torch.tensor([[True, True, False], [True, True, True]]), True
    )
    summary = lost_mass_summary(targets, torch.tensor([3, 1]))
    assert summary == {
        "words": 4,
        "mean_lost_mass": pytest.approx((0.0 + 0.02 + 0.5 + 0.005) / 4),
        "lossy_word_rate": pytest.approx(0.5),
        "no_target_rate": pytest.approx(0.25),
        "threshold": 0.01,
    }
    assert lost_mass_summary(targets, torch.tensor([3, 1]), threshold=0.4)["lossy_word_rate"] == (
        pytest.approx(0.25)
    )


def _good():
    scheme = _offset_scheme()
    lengths = torch.tensor([3, 2])
    arcs = HeadSelection(torch.randn(2, 4, 4), lengths).marginals
    rels = torch.randn(2, 4, 4, 3).log_softmax(-1)
    return arcs, rels, scheme.label_heads(lengths), scheme.label_relation, lengths


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: {**a, "arcs": a["arcs"][:, :, :3]}, ValueError, "arc_marginals must have shape"),
        (lambda a: {**a, "arcs": a["arcs"][0]}, ValueError, "arc_marginals must have shape"),
        (lambda a: {**a, "arcs": a["arcs"].long()}, ValueError, "floating-point"),
        (lambda a: {**a, "rels": a["rels"][:, :3]}, ValueError, "rel_log_probs must have shape"),
        (lambda a: {**a, "rels": a["rels"][..., 0]}, ValueError, "rel_log_probs must have shape"),
        (lambda a: {**a, "heads": a["heads"][:, :2]}, ValueError, "label_heads must have shape"),
        (lambda a: {**a, "heads": a["heads"].float()}, ValueError, "integer"),
        (lambda a: {**a, "rel_ids": a["rel_ids"][:2]}, ValueError, "label_relations must have"),
        (lambda a: {**a, "rel_ids": a["rel_ids"] + 1}, ValueError, r"lie in 0\.\.2"),
        (lambda a: {**a, "lengths": torch.tensor([3, 4])}, ValueError, "lengths"),
        (lambda a: {**a, "lengths": torch.tensor([3])}, ValueError, "lengths"),
        (lambda a: {**a, "heads": a["heads"] + 5}, ValueError, "is not -1 or a head"),
        (
            lambda a: {**a, "arcs": a["arcs"] * 0 + 1, "rels": a["rels"] * 0},
            ValueError,
            "sum to",
        ),
        (lambda a: {**a, "arcs": a["arcs"] * float("nan")}, NumericalError, "NaN"),
        (lambda a: {**a, "rels": a["rels"] * float("nan")}, NumericalError, "NaN"),
        (lambda a: {**a, "arcs": a["arcs"].tolist()}, TypeError, "torch.Tensor"),
    ],
)
def test_bad_input(change, error, match):
    arcs, rels, heads, rel_ids, lengths = _good()
    args = change(
        {"arcs": arcs, "rels": rels, "heads": heads, "rel_ids": rel_ids, "lengths": lengths}
    )
    with pytest.raises(error, match=match):
        label_marginals(args["arcs"], args["rels"], args["heads"], args["rel_ids"], args["lengths"])


def test_bad_options():
    arcs, rels, heads, rel_ids, lengths = _good()
    label_marginals(arcs, rels, heads, rel_ids, lengths)  # the unchanged inputs are fine
    with pytest.raises(ValueError, match="min_mass"):
        label_marginals(arcs, rels, heads, rel_ids, lengths, min_mass=0.0)
    with pytest.raises(ValueError, match="renormalize"):
        label_marginals(arcs, rels, heads, rel_ids, lengths, renormalize=1)


@pytest.mark.parametrize("renormalize", [True, False])
def test_dep_bridge_is_found_through_the_registry(renormalize):
    """The dependency bridge registers like the chain bridges: the teacher type
    ``DepTeacherOutput`` and the student kind ``"dep-labels"`` pick it, and ``project_teacher``
    gives exactly ``label_marginals``, detached."""
    scheme = _scheme("offset")
    arc_scores, rel_log_probs, label_heads, lengths = _inputs(scheme, seed=7)
    arc_scores = arc_scores.clone().requires_grad_()
    arcs = DependencyCRF(arc_scores, lengths, projective=True).marginals
    teacher = DepTeacherOutput(arcs, rel_log_probs, lengths)
    assert find_bridge(teacher, DEP_LABELS) is arcs_to_dep_labels
    assert BRIDGES[(DepTeacherOutput, "dep-labels")] is arcs_to_dep_labels
    assert "dep-labels" in STUDENT_KINDS
    label_relations = _label_relations(scheme)
    projected = project_teacher(
        teacher,
        "dep-labels",
        label_heads=label_heads,
        label_relations=label_relations,
        renormalize=renormalize,
    )
    direct = label_marginals(
        arcs, rel_log_probs, label_heads, label_relations, lengths, renormalize=renormalize
    )
    assert isinstance(projected, DepLabelTargets)
    assert projected.renormalized is renormalize
    for got, want in zip(projected, direct, strict=True):
        if isinstance(want, torch.Tensor):
            assert torch.equal(got, want.detach())
    assert not projected.probs.requires_grad and direct.probs.requires_grad
    with pytest.raises(TypeError, match="DepTeacherOutput"):
        find_bridge(teacher, "crf")
