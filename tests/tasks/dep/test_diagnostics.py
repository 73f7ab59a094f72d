"""Target diagnostics of dependency distillation (``metrics.json`` ``target_diagnostics``,
``structkd.tasks.dep.diagnostics``): the numbers against a direct computation from the cached
targets, the labeled and unlabeled parts of ``--labeled-fraction``, the split by target kind of a
fold teacher (out-of-fold / in-fold / unseen), and words the student's scheme cannot encode."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from structkd.api import DistillOptions, TrainOptions, distill, train
from structkd.data.conllu_io import read_conllu
from structkd.data.dep_batching import DepCollator, DepVocab
from structkd.data.dep_encodings import DepLabelScheme
from structkd.structures.base import NumericalError
from structkd.tasks import get_task
from structkd.tasks.dep.diagnostics import dep_target_diagnostics
from structkd.tasks.dep.model import load_dep_model, scheme_of
from structkd.tasks.dep.targets import DepTargets
from structkd.train.folds import read_fold_model
from structkd.train.store import ShardedArray

prepare_distill = get_task("dep").prepare_distill

TEMPLATES = [
    (["DET", "NOUN", "VERB", "PUNCT"], [2, 3, 0, 3], ["det", "nsubj", "root", "punct"]),
    (["NOUN", "VERB", "NOUN", "ADV"], [2, 0, 2, 2], ["nsubj", "root", "obj", "advmod"]),
    (["PRON", "VERB", "ADV", "PUNCT"], [2, 0, 2, 2], ["nsubj", "root", "advmod", "punct"]),
    (
        ["NOUN", "VERB", "NOUN", "ADV", "ADJ"],
        [2, 0, 2, 2, 1],
        ["nsubj", "root", "obj", "advmod", "amod"],
    ),
]
WORDS = {
    "DET": ["bir", "bu"],
    "NOUN": ["Ev", "kedi", "okul", "yol"],
    "VERB": ["gel", "gördü", "koştu"],
    "ADJ": ["büyük", "eski"],
    "ADV": ["hızla", "çok"],
    "PRON": ["o", "Ben"],
    "PUNCT": [".", "!"],
}
TINY = {"word_dim": 8, "char_dim": 4, "char_filters": 8, "upos_dim": 4, "lstm_hidden": 8}
TINY_PARSER = {**TINY, "arc_dim": 8, "rel_dim": 4}
LABELED_KEYS = {
    "n_words",
    "n_without_target",
    "mean_entropy",
    "mean_max_probability",
    "n_scored",
    "n_unencodable",
    "mean_gold_probability",
    "argmax_error",
}
UNLABELED_KEYS = {"n_words", "n_without_target", "mean_entropy", "mean_max_probability"}


def treebank(n_sentences: int, seed: int) -> str:
    rng = random.Random(seed)
    blocks = []
    for index in range(n_sentences):
        upos, heads, relations = TEMPLATES[index % len(TEMPLATES)]
        lines = [f"# sent_id = s{seed}-{index}"]
        for word, (tag, head, rel) in enumerate(zip(upos, heads, relations, strict=True), 1):
            lines.append(f"{word}\t{rng.choice(WORDS[tag])}\t_\t{tag}\t_\t_\t{head}\t{rel}\t_\t_")
        blocks.append("\n".join(lines) + "\n\n")
    return "".join(blocks)


def common(root, **changes):
    fields = {
        "train": str(root / "train.conllu"),
        "dev": str(root / "dev.conllu"),
        "task": "dep",
        "epochs": 1,
        "batch_size": 8,
        "learning_rate": 1e-2,
        "patience": None,
        "progress": False,
        "num_threads": 1,
        "cache_dir": str(root / "cache"),
    }
    fields.update(changes)
    return fields


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """20 training trees (``more.conllu``: those and 6 more no teacher saw), dev, a teacher and a
    2-fold teacher (both tiny head-selection parsers trained on ``train.conllu``)."""
    root = tmp_path_factory.mktemp("dep-diagnostics")
    text = treebank(26, seed=1)
    (root / "more.conllu").write_text(text, encoding="utf-8")
    (root / "train.conllu").write_text(
        "".join(block + "\n\n" for block in text.split("\n\n")[:20]), encoding="utf-8"
    )
    (root / "dev.conllu").write_text(treebank(6, seed=2), encoding="utf-8")
    parser = {"arch": "parser-head-selection", "arch_overrides": dict(TINY_PARSER), "epochs": 2}
    train(TrainOptions(**common(root, out=str(root / "teacher"), **parser)))
    train(TrainOptions(**common(root, out=str(root / "folds"), folds=2, **parser)))
    return root


def student(root, tmp_path, teacher="teacher", **changes) -> DistillOptions:
    fields = common(
        root,
        out=str(tmp_path / "student"),
        teachers=[str(root / teacher)],
        arch="student-dep-offset",
        arch_overrides=dict(TINY),
        method="struct",
    )
    fields.update(changes)
    return DistillOptions(**fields)


def by_hand(rows, sentences, scheme, *, labeled: bool) -> dict[str, float]:
    """The diagnostics of ``sentences`` from their cached ``rows`` (``[n, L]`` each), one word at
    a time."""
    entropy, top, gold, errors, words, scored = 0.0, 0.0, 0.0, 0, 0, 0
    for sentence, table in zip(sentences, rows, strict=True):
        labels = scheme.known_labels(sentence.heads, sentence.relations, sentence.upos)
        assert len(table) == len(sentence.words)
        for row, label in zip(table.astype(np.float64), labels, strict=True):
            assert row.sum() > 0
            words += 1
            entropy -= sum(p * math.log(p) for p in row if p > 0)
            top += row.max()
            if labeled and label >= 0:
                scored += 1
                gold += row[label]
                errors += int(int(row.argmax()) != label)
    found = {"n_words": words, "mean_entropy": entropy / words, "mean_max_probability": top / words}
    if labeled:
        found.update(
            n_scored=scored, mean_gold_probability=gold / scored, argmax_error=errors / scored
        )
    return found


def check_close(found, expected) -> None:
    for key, value in expected.items():
        assert found[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_diagnostics_equal_a_direct_computation_of_the_cache(data, tmp_path) -> None:
    """A student with struct KD on half of the trees (the rest unparsed): metrics.json holds the
    diagnostics of both parts, equal to those computed from the cache one word at a time."""
    metrics = distill(student(data, tmp_path, labeled_fraction=0.5))
    recorded = json.loads((tmp_path / "student" / "metrics.json").read_text())
    diagnostics = recorded["target_diagnostics"]
    assert diagnostics == metrics["target_diagnostics"]
    assert set(diagnostics) == {"train (labeled)", "train (unlabeled)"}
    assert set(diagnostics["train (labeled)"]) == LABELED_KEYS
    assert set(diagnostics["train (unlabeled)"]) == UNLABELED_KEYS  # no gold: no gold numbers
    scheme = scheme_of(load_dep_model(tmp_path / "student")[0])
    cache = ShardedArray.open(recorded["distillation"]["teachers"][0]["cache"], "probs")
    sentences = read_conllu(data / "train.conllu")
    rows = [np.asarray(cache[index]) for index in range(len(sentences))]
    labeled = diagnostics["train (labeled)"]
    check_close(labeled, by_hand(rows[:10], sentences[:10], scheme, labeled=True))
    assert labeled["n_unencodable"] == 0 and labeled["n_without_target"] == 0
    assert labeled["n_scored"] == labeled["n_words"] == sum(len(s) for s in sentences[:10])
    unlabeled = diagnostics["train (unlabeled)"]
    check_close(unlabeled, by_hand(rows[10:], sentences[10:], scheme, labeled=False))
    assert 0 < unlabeled["mean_max_probability"] <= 1 and unlabeled["mean_entropy"] > 0
    # without KD nothing is recorded
    plain = distill(student(data, tmp_path, out=str(tmp_path / "plain"), method="none"))
    assert "target_diagnostics" not in plain


@pytest.mark.parametrize("mode", ["out-of-fold", "in-fold"])
def test_the_split_by_target_kind_of_a_fold_teacher(data, tmp_path, mode) -> None:
    """``more.conllu``: 20 sentences the fold teacher trained on (out-of-fold or in-fold targets)
    and 6 it never saw (the mixture): each group's numbers are those of its own sentences, read
    one sentence at a time, and together they make the part's."""
    options = student(
        data, tmp_path, "folds", train=str(data / "more.conllu"), teacher_targets=mode
    )
    run = prepare_distill(options)
    found = run.extra["target_diagnostics"]["train (labeled)"]
    groups = found["by_targets"]
    assert set(groups) == {mode, "unseen"}
    assert groups[mode]["n_sentences"] == 20 and groups["unseen"]["n_sentences"] == 6
    sentences = read_conllu(data / "more.conllu")
    fold_model = read_fold_model(data / "folds")
    seen = fold_model.assignment.fold_index(s.words for s in sentences) >= 0
    assert seen.sum() == 20
    reader = run.target_readers["train"]
    scheme = scheme_of(run.model)
    for group, flags in ((mode, seen), ("unseen", ~seen)):
        ids = np.flatnonzero(flags).tolist()
        rows = []
        for index in ids:  # one sentence per batch: another batching than the run's
            targets = reader(torch.tensor([index]), torch.tensor([len(sentences[index])]))
            rows.append(targets.probs[0].double().numpy())
        chosen = [sentences[index] for index in ids]
        check_close(groups[group], by_hand(rows, chosen, scheme, labeled=True))
    assert found["n_words"] == groups[mode]["n_words"] + groups["unseen"]["n_words"]
    for key in ("mean_entropy", "mean_gold_probability", "argmax_error"):
        total = sum(g[key] * g["n_words"] for g in groups.values())
        assert found[key] == pytest.approx(total / found["n_words"], rel=1e-6)


def test_words_the_scheme_cannot_encode_are_excluded_and_counted(data) -> None:
    """The student's scheme from the first template's trees only: the other trees' labels are
    outside it (``label_ids`` -1); they are counted and left out of the gold numbers."""
    sentences = read_conllu(data / "train.conllu")[:8]
    scheme = DepLabelScheme.from_sentences(sentences[:1], encoding="offset")
    collate = DepCollator(DepVocab.build(sentences), scheme, label_heads=False)
    generator = torch.Generator().manual_seed(0)
    tables = [
        torch.softmax(torch.randn(len(s), scheme.n_labels, generator=generator) * 2, -1)
        for s in sentences
    ]

    def read(ids, lengths):
        probs = torch.zeros(len(ids), int(lengths.max()), scheme.n_labels)
        for row, (index, n) in enumerate(zip(ids.tolist(), lengths.tolist(), strict=True)):
            probs[row, :n] = tables[index]
        return DepTargets(probs, probs.sum(-1) > 0)

    items = list(enumerate(sentences))
    found = dep_target_diagnostics(items, collate, read, labeled=True, batch_size=3)
    rows = [table.double().numpy() for table in tables]
    check_close(found, by_hand(rows, sentences, scheme, labeled=True))
    unencodable = sum(
        label < 0 for s in sentences for label in scheme.known_labels(s.heads, s.relations, s.upos)
    )
    assert unencodable > 0 and found["n_unencodable"] == unencodable
    assert found["n_scored"] == found["n_words"] - unencodable


def test_roundoff_below_zero_counts_as_zero_and_more_raises(data) -> None:
    """Matrix-tree marginals cached before the parser zeroed their roundoff hold probabilities
    like -1e-25; ``x log x`` of them made the entropy NaN. Such roundoff counts as 0 (the means
    equal those of the table with 0 there); a probability below 0 beyond roundoff raises."""
    sentences = read_conllu(data / "train.conllu")[:6]
    scheme = DepLabelScheme.from_sentences(sentences, encoding="offset")
    collate = DepCollator(DepVocab.build(sentences), scheme, label_heads=False)
    generator = torch.Generator().manual_seed(1)
    tables = []
    for s in sentences:
        table = torch.softmax(torch.randn(len(s), scheme.n_labels, generator=generator) * 2, -1)
        table[:, -1] = 0.0
        tables.append(table)

    def reader(low: float):
        def read(ids, lengths):
            probs = torch.zeros(len(ids), int(lengths.max()), scheme.n_labels)
            for row, (index, n) in enumerate(zip(ids.tolist(), lengths.tolist(), strict=True)):
                probs[row, :n] = tables[index]
                probs[row, :n, -1] = low
            return DepTargets(probs, probs.sum(-1) > 0)

        return read

    items = list(enumerate(sentences))
    clean = dep_target_diagnostics(items, collate, reader(0.0), labeled=True)
    rounded = dep_target_diagnostics(items, collate, reader(-1e-25), labeled=True)
    assert math.isfinite(rounded["mean_entropy"])
    check_close(rounded, clean)
    with pytest.raises(NumericalError, match="not a probability"):
        dep_target_diagnostics(items, collate, reader(-1e-3), labeled=True)
