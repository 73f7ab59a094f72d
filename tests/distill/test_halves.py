"""The teacher and student halves of every KD method: what they cache, that they rebuild the
library losses (structural KD and the baselines) for single teachers and ensembles, both
temperature modes, and that they equal the training code they replace (kept below as
``_reference_*``: the cache's ``teacher_outputs`` with its dummy student and the module's
``kd_losses``)."""

from __future__ import annotations

import pytest
import torch

from structkd.distill import (
    KD_METHODS,
    PAD_VALUES,
    ChainTargets,
    cached_quantities,
    kd_loss_from_targets,
    kd_scale,
    local_temper,
    mix_targets,
    padded_rows,
    posterior_kd_loss,
    posterior_loss_from_targets,
    project_teacher,
    structural_kd_loss,
    student_half,
    student_targets,
    teacher_half,
    token_kd_loss,
    topk_kd_loss,
    topk_loss_from_targets,
)
from structkd.distill.losses import token_emissions
from structkd.structures.factorized import Factorized
from structkd.structures.linear_chain import LinearChainCRF
from tests.distill.enumeration import (
    LENGTHS,
    PAIRS,
    enumerated_mixture_loss,
    n_tags_for,
    random_raw,
    with_grad,
)

TAG_METHODS = ("token", "topk", "topwk", "posterior")
K = 3


def _ensemble(teacher_kind: str, student_kind: str, seed: int, n_teachers: int = 2):
    """``n_teachers`` raw teachers of ``teacher_kind`` and one raw student on the same sentences."""
    generator = torch.Generator().manual_seed(seed)
    n_tags = n_tags_for(teacher_kind)
    teachers = [random_raw(teacher_kind, LENGTHS, n_tags, generator) for _ in range(n_teachers)]
    return teachers, random_raw(student_kind, LENGTHS, n_tags, generator)


def _halves(method, teachers, student, weights, temperature, mode="global", kind=None):
    kind = kind or ("crf" if isinstance(student, LinearChainCRF) else "factorized")
    n_labels = student.emissions.shape[-1] if kind == "crf" else student.logits.shape[-1]
    per_teacher = [
        student_targets(
            teacher_half(
                method,
                teacher,
                student_kind=kind,
                n_labels=n_labels,
                temperature=temperature,
                temperature_mode=mode,
                k=K,
            )
        )
        for teacher in teachers
    ]
    return student_half(
        method, student, per_teacher, weights, temperature=temperature, temperature_mode=mode
    )


# --- the training code the halves replace ---------------------------------------------------------


def _reference_teacher_outputs(teacher, method, kind, n_labels, temperature, mode, k):
    """The cache's old ``teacher_outputs``: a zero-potential dummy student picks the bridge."""
    lengths = teacher.lengths
    tempered = teacher.tempered(temperature) if temperature != 1.0 else teacher
    if method in ("struct", "posterior"):
        like = torch.zeros(teacher.batch_size, teacher.max_len, n_labels, dtype=torch.float64)
        kind = kind if method == "struct" else "factorized"
        if kind == "crf":
            dummy = LinearChainCRF(like, like.new_zeros(n_labels, n_labels), lengths=lengths)
        else:
            dummy = Factorized(like, lengths)
        if method == "struct" and mode == "local":
            targets = local_temper(project_teacher(teacher, dummy), temperature, lengths)
        else:
            targets = project_teacher(tempered, dummy)
        found = {"marginals": targets.marginals}
        if kind == "crf":
            found["pair_marginals"] = targets.pair_marginals
        return found
    if method == "token":
        return {"emissions": token_emissions(teacher, "teacher")}
    values, scores = tempered.kbest(k)
    log_probs = scores - tempered.log_partition.unsqueeze(0)
    return {
        "kbest_tags": values.permute(1, 2, 0),
        "kbest_log_probs": log_probs.transpose(0, 1).unsqueeze(1),
    }


def _reference_kd_losses(student, per_teacher, weights, method, temperature, mode):
    """The module's old ``kd_losses`` on targets read back from a cache (k best structure-first)."""
    local = method == "struct" and mode == "local"
    tempered = student.tempered(temperature) if temperature != 1.0 and not local else student
    potentials = student.emissions if isinstance(student, LinearChainCRF) else student.logits
    if method == "struct":
        chains = [ChainTargets(t["marginals"], t.get("pair_marginals")) for t in per_teacher]
        mixed = mix_targets(chains, weights)
        return kd_loss_from_targets(mixed.to(potentials), tempered, reduction="none")
    losses = []
    for teacher in per_teacher:
        if method == "token":
            emissions = Factorized(teacher["emissions"].to(potentials), student.lengths)
            losses.append(token_kd_loss(emissions, student, temperature, reduction="none"))
        elif method in ("topk", "topwk"):
            losses.append(
                topk_loss_from_targets(
                    teacher["kbest_tags"],
                    teacher["kbest_log_probs"],
                    tempered,
                    weighted=method == "topwk",
                )
            )
        else:
            losses.append(posterior_loss_from_targets(teacher["marginals"], tempered))
    weights = weights.to(losses[0])
    return sum(w * loss for w, loss in zip(weights, losses, strict=True))


def _modes(method, student_kind, temperature):
    """The (mode) cases that are defined: local with T != 1 is refused for a CRF student."""
    if method == "struct" and student_kind == "crf" and temperature != 1.0:
        return ["global"]
    return ["global", "local"]


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("method", KD_METHODS)
@pytest.mark.parametrize(("teacher_kind", "student_kind"), PAIRS)
def test_halves_equal_the_training_code_they_replace(
    teacher_kind, student_kind, method, temperature
):
    if method == "token" and teacher_kind == "spans":
        pytest.skip("a span teacher has no token emissions")
    raw_teachers, raw_student = _ensemble(teacher_kind, student_kind, seed=61)
    teachers = [raw.build() for raw in raw_teachers]
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
    n_labels = n_tags_for(teacher_kind)
    for mode in _modes(method, student_kind, temperature):
        student = with_grad(raw_student).build()  # a fresh graph per mode
        cached = []
        for teacher in teachers:
            got = teacher_half(
                method,
                teacher,
                student_kind=student_kind,
                n_labels=n_labels,
                temperature=temperature,
                temperature_mode=mode,
                k=K,
            )
            want = _reference_teacher_outputs(
                teacher, method, student_kind, n_labels, temperature, mode, K
            )
            assert (
                set(got) == set(want) == set(cached_quantities(method, student_kind, n_labels, K))
            )
            for name in want:
                torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
                assert not got[name].requires_grad
            cached.append(got)
        loss = student_half(
            method,
            student,
            [student_targets(t) for t in cached],
            weights,
            temperature=temperature,
            temperature_mode=mode,
        )
        expected = _reference_kd_losses(
            student, [student_targets(t) for t in cached], weights, method, temperature, mode
        )
        assert loss.shape == (len(LENGTHS),)
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
        grads = torch.autograd.grad(
            loss.sum(),
            [student.emissions if student_kind == "crf" else student.logits],
            allow_unused=True,
        )
        assert grads[0] is not None


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize(("teacher_kind", "student_kind"), PAIRS)
def test_struct_halves_equal_structural_kd_loss_and_the_mixture(
    teacher_kind, student_kind, temperature
):
    raw_teachers, raw_student = _ensemble(teacher_kind, student_kind, seed=62)
    teachers, student = [raw.build() for raw in raw_teachers], raw_student.build()
    for weights in ([1.0, 0.0], [0.25, 0.75]):
        for mode in _modes("struct", student_kind, temperature):
            halves = _halves("struct", teachers, student, weights, temperature, mode)
            library = structural_kd_loss(
                teachers,
                student,
                temperature=temperature,
                temperature_mode=mode,
                weights=weights,
                reduction="none",
            )
            torch.testing.assert_close(halves, library, rtol=0, atol=0)
        global_loss = _halves("struct", teachers, student, weights, temperature)
        kept = [(raw, w) for raw, w in zip(raw_teachers, weights, strict=True) if w > 0]
        expected = enumerated_mixture_loss(
            [raw for raw, _ in kept], [w for _, w in kept], raw_student, temperature
        )
        torch.testing.assert_close(global_loss, expected, rtol=1e-9, atol=1e-9)


def _baseline(method, teacher, student, temperature):
    if method == "token":
        return token_kd_loss(teacher, student, temperature, reduction="none")
    if method == "posterior":
        return posterior_kd_loss(teacher, student, temperature, reduction="none")
    weighted = method == "topwk"
    return topk_kd_loss(teacher, student, K, weighted, temperature, reduction="none")


@pytest.mark.parametrize("mode", ["global", "local"])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
@pytest.mark.parametrize("method", TAG_METHODS)
@pytest.mark.parametrize(("teacher_kind", "student_kind"), PAIRS)
def test_halves_equal_the_baselines_and_weight_an_ensemble(
    teacher_kind, student_kind, method, temperature, mode
):
    """The temperature mode only changes structural KD: the baselines ignore it."""
    if method == "token" and teacher_kind == "spans":
        pytest.skip("a span teacher has no token emissions")
    raw_teachers, raw_student = _ensemble(teacher_kind, student_kind, seed=63)
    teachers, student = [raw.build() for raw in raw_teachers], raw_student.build()
    single = _halves(method, teachers[:1], student, None, temperature, mode)
    torch.testing.assert_close(single, _baseline(method, teachers[0], student, temperature))
    weights = [0.4, 0.6]
    ensemble = _halves(method, teachers, student, weights, temperature, mode)
    expected = sum(
        w * _baseline(method, teacher, student, temperature)
        for w, teacher in zip(weights, teachers, strict=True)
    )
    torch.testing.assert_close(ensemble, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", KD_METHODS)
@pytest.mark.parametrize("student_kind", ["crf", "factorized"])
def test_teacher_half_rows_follow_cached_quantities(method, student_kind):
    """Every quantity is ``[B, padded_rows(rule, N), *row_shape]``, padded with ``PAD_VALUES``
    (emissions excepted); a float32 / int32 round trip (what a cache stores) gives the loss of
    the float32 student."""
    raw_teacher, raw_student = _ensemble("crf", student_kind, seed=64, n_teachers=1)
    teacher = raw_teacher[0].build()
    quantities = cached_quantities(method, student_kind, 3, K)
    found = teacher_half(
        method, teacher, student_kind=student_kind, n_labels=3, temperature=2.0, k=K
    )
    lengths = torch.tensor(LENGTHS)
    for name, (rule, row_shape, dtype) in quantities.items():
        value = found[name]
        rows = padded_rows(rule, max(LENGTHS))
        assert tuple(value.shape) == (len(LENGTHS), rows, *row_shape)
        own = {"tokens": lengths, "pairs": lengths - 1, "sentence": torch.ones_like(lengths)}[rule]
        for b, n in enumerate(own.tolist()):
            if name != "emissions":  # padded emissions are the teacher's own (ignored) values
                assert (value[b, n:] == PAD_VALUES[name]).all()
        assert (dtype == "int32") == (not value.is_floating_point())
    stored = {name: found[name].to(getattr(torch, quantities[name][2])) for name in quantities}
    student32 = (
        LinearChainCRF(
            emissions=raw_student.emissions.float(),
            transitions=raw_student.transitions.float(),
            start=raw_student.start.float(),
            end=raw_student.end.float(),
            lengths=raw_student.lengths,
        )
        if student_kind == "crf"
        else Factorized(raw_student.logits.float(), raw_student.lengths)
    )
    loss32 = student_half(method, student32, [student_targets(stored)], None, temperature=2.0)
    loss64 = student_half(
        method, raw_student.build(), [student_targets(found)], None, temperature=2.0
    )
    assert loss32.dtype == torch.float32
    torch.testing.assert_close(loss32.double(), loss64, rtol=1e-4, atol=1e-4)


def test_cached_quantities_table():
    assert cached_quantities("struct", "crf", 5) == {
        "marginals": ("tokens", (5,), "float32"),
        "pair_marginals": ("pairs", (5, 5), "float32"),
    }
    assert cached_quantities("struct", "factorized", 5) == {
        "marginals": ("tokens", (5,), "float32")
    }
    assert cached_quantities("posterior", "crf", 5) == {"marginals": ("tokens", (5,), "float32")}
    assert cached_quantities("token", "crf", 5) == {"emissions": ("tokens", (5,), "float32")}
    for method in ("topk", "topwk"):
        assert cached_quantities(method, "factorized", 5, 4) == {
            "kbest_tags": ("tokens", (4,), "int32"),
            "kbest_log_probs": ("sentence", (4,), "float32"),
        }


def test_kd_scale_is_t_squared():
    assert kd_scale(1.0) == 1.0
    assert kd_scale(2.0) == 4.0
    assert kd_scale(0.5) == 0.25
    with pytest.raises(ValueError, match="temperature"):
        kd_scale(0.0)


def test_bad_halves_raise():
    raw_teachers, raw_student = _ensemble("crf", "crf", seed=65, n_teachers=1)
    teacher, student = raw_teachers[0].build(), raw_student.build()
    kwargs = {"student_kind": "crf", "n_labels": 3}
    with pytest.raises(ValueError, match="unknown KD method"):
        teacher_half("best", teacher, **kwargs)
    with pytest.raises(ValueError, match="reads no teacher"):
        teacher_half("none", teacher, **kwargs)
    with pytest.raises(ValueError, match="student_kind"):
        teacher_half("struct", teacher, student_kind="spans", n_labels=3)
    with pytest.raises(ValueError, match="label counts"):
        teacher_half("struct", teacher, student_kind="crf", n_labels=4)
    with pytest.raises(ValueError, match="k must be"):
        teacher_half("topk", teacher, **kwargs, k=0)
    with pytest.raises(ValueError, match="temperature_mode"):
        teacher_half("struct", teacher, **kwargs, temperature_mode="medium")
    with pytest.raises(ValueError, match="unbounded below"):
        teacher_half("struct", teacher, **kwargs, temperature=2.0, temperature_mode="local")
    with pytest.raises(TypeError, match="SemiMarkovSpans"):
        teacher_half("token", _ensemble("spans", "crf", 66, 1)[0][0].build(), **kwargs)
    factorized_targets = teacher_half("struct", teacher, student_kind="factorized", n_labels=3)
    with pytest.raises(ValueError, match="pair marginals"):
        student_half("struct", student, [factorized_targets], None)
    crf_targets = teacher_half("struct", teacher, **kwargs)
    with pytest.raises(ValueError, match="shape"):
        student_half(
            "struct", student, [{**crf_targets, "marginals": crf_targets["marginals"][:2]}], None
        )
    with pytest.raises(ValueError, match="at least one teacher"):
        student_half("struct", student, [], None)
    with pytest.raises(ValueError, match="weights"):
        student_half("struct", student, [crf_targets], [0.5])
