"""Fold teachers (`structkd train --folds K`): the fold assignment, the directory, each fold
teacher's training data, out-of-fold and in-fold targets against a direct computation from the
fold taggers, the mixture's decoding, evaluation and prediction, the command line end to end, and
the errors."""

from __future__ import annotations

import itertools
import json
import random
import shutil

import numpy as np
import pytest
import torch

from structkd.api import DistillOptions, TrainOptions, distill, evaluate, export, load, train
from structkd.cli import main
from structkd.data.batching import TaggingCollator
from structkd.data.conll import Sentence
from structkd.distill.bridges import project_teacher
from structkd.structures.linear_chain import LinearChainCRF
from structkd.tasks import get_task
from structkd.tasks.ner.data import DataSource, load_labeled, load_text
from structkd.tasks.ner.folds import FoldMixture, MixtureBatch, chain_decode, mixture_chain
from structkd.tasks.ner.model import load_tagger
from structkd.train.folds import (
    FOLDS_FILE,
    FoldAssignment,
    assign_folds,
    read_fold_model,
    sentence_key,
)
from tests.tasks.ner import TINY, tagged_sentences, write_conll

prepare_distill = get_task("ner").prepare_distill


def write_sentences(path, sentences) -> None:
    blocks = ["".join(f"{t} {g}\n" for t, g in zip(*pair, strict=True)) for pair in sentences]
    path.write_text("\n".join(blocks), encoding="utf-8")


@pytest.fixture(scope="module")
def folded(tmp_path_factory):
    """A 2-fold tiny CRF teacher on 24 sentences plus 5 duplicates of some of them; dev; and
    tokenized text of 5 new sentences and one training sentence."""
    root = tmp_path_factory.mktemp("folds")
    sentences = tagged_sentences(24, seed=1)
    sentences += sentences[:3] + sentences[:2]
    write_sentences(root / "train.conll", sentences)
    write_conll(root / "dev.conll", 8, seed=2)
    lines = [" ".join(tokens) for tokens, _ in tagged_sentences(5, seed=3)]
    lines.insert(2, " ".join(sentences[5][0]))
    (root / "text.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    metrics = train(
        TrainOptions(
            train=str(root / "train.conll"),
            dev=str(root / "dev.conll"),
            test=str(root / "dev.conll"),
            out=str(root / "teacher"),
            arch="student-crf",
            arch_overrides=dict(TINY),
            epochs=3,
            batch_size=8,
            learning_rate=0.02,
            patience=None,
            progress=False,
            cache_dir=str(root / "cache"),
            folds=2,
        )
    )
    return root, metrics


def distill_options(root, tmp_path, **changes) -> DistillOptions:
    fields = {
        "train": str(root / "train.conll"),
        "dev": str(root / "dev.conll"),
        "out": str(tmp_path / "student"),
        "teachers": [str(root / "teacher")],
        "arch": "student-crf",
        "arch_overrides": dict(TINY),
        "epochs": 1,
        "batch_size": 8,
        "patience": None,
        "progress": False,
        "cache_dir": str(tmp_path / "cache"),
    }
    fields.update(changes)
    return DistillOptions(**fields)


# -- the assignment ---------------------------------------------------------------------------


def test_assignment_is_deterministic_balanced_and_groups_duplicates() -> None:
    rng = random.Random(0)
    distinct = [sentence_key([f"w{i}", "x"]) for i in range(40)]
    keys = distinct + distinct[:6] + distinct[:3] * 3  # duplicates, up to 5 copies
    for k in (2, 3, 7):
        folds = assign_folds(keys, k, seed=4)
        shuffled = list(keys)
        rng.shuffle(shuffled)
        assert assign_folds(shuffled, k, seed=4) == folds  # order does not matter
        assert set(folds) == set(keys) and set(folds.values()) == set(range(k))
        sizes = [sum(folds[key] == fold for key in keys) for fold in range(k)]
        assert max(sizes) - min(sizes) <= 5  # at most the largest group
        plain = assign_folds(distinct, k, seed=4)
        plain_sizes = [list(plain.values()).count(fold) for fold in range(k)]
        assert max(plain_sizes) - min(plain_sizes) <= 1
    assert assign_folds(keys, 3, seed=4) != assign_folds(keys, 3, seed=5)
    assignment = FoldAssignment.of(keys, 3, seed=4)
    assert assignment.fold_of(["w0", "x"]) == assignment.folds[distinct[0]]
    assert assignment.fold_of(["never", "seen"]) == -1
    assert sorted(itertools.chain(*assignment.fold_keys())) == sorted(set(keys))


@pytest.mark.parametrize("k", [1, 0, -2, True, 2.0])
def test_assignment_refuses_fewer_than_two_folds(k) -> None:
    with pytest.raises(ValueError, match="--folds must be an integer >= 2"):
        assign_folds(["a", "b", "c"], k)


def test_assignment_refuses_more_folds_than_distinct_sentences() -> None:
    with pytest.raises(ValueError, match="only 2 distinct sentences"):
        assign_folds(["a", "b", "a", "b"], 3)


# -- the mixture's decoding -------------------------------------------------------------------


def test_chain_decode_is_the_best_path_of_the_moment_matched_chain() -> None:
    """``chain_decode`` of a mixture of two CRFs' marginals is the argmax, by enumeration, of
    ``P(y_1) prod P(y_i, y_i+1) / P(y_i)``; of one CRF's marginals, its Viterbi path."""
    generator = torch.Generator().manual_seed(0)
    n_labels, lengths = 3, torch.tensor([4, 3, 1])
    crfs = [
        LinearChainCRF(
            torch.randn(3, 4, n_labels, generator=generator, dtype=torch.float64),
            torch.randn(n_labels, n_labels, generator=generator, dtype=torch.float64),
            lengths=lengths,
        )
        for _ in range(2)
    ]
    mixed = mixture_chain(crfs)
    found = chain_decode(mixed.marginals, mixed.pair_marginals, lengths)
    for row, length in enumerate(lengths.tolist()):
        token, pair = mixed.marginals[row], mixed.pair_marginals[row]

        def score(path, token=token, pair=pair):
            value = token[0, path[0]]
            for i in range(len(path) - 1):
                value = value * pair[i, path[i], path[i + 1]] / token[i, path[i]]
            return float(value)

        best = max(itertools.product(range(n_labels), repeat=length), key=score)
        assert found[row, :length].tolist() == list(best)
        assert (found[row, length:] == -1).all()
    single = mixture_chain(crfs[:1])
    viterbi = chain_decode(single.marginals, single.pair_marginals, lengths)
    assert torch.equal(viterbi, crfs[0].argmax)


# -- the directory and each fold's training data ----------------------------------------------


def test_directory_and_fold_training_data(folded) -> None:
    root, metrics = folded
    teacher = root / "teacher"
    index = json.loads((teacher / FOLDS_FILE).read_text())
    assert index["k"] == 2 and index["complete"] is True and index["models"] == ["fold-1", "fold-2"]
    sentences = load_labeled(str(root / "train.conll")).sentences
    keys = [sentence_key(s.tokens) for s in sentences]
    assert sorted(itertools.chain(*index["folds"])) == sorted(set(keys))
    model = read_fold_model(teacher)
    folds = model.assignment.fold_index(s.tokens for s in sentences)
    assert (folds >= 0).all() and sorted(index["fold_sizes"]) == sorted(np.bincount(folds))
    assert folds[0] == folds[24] == folds[27] and folds[1] == folds[25] == folds[28]
    assert metrics["data"]["n_train_sentences"] == 29 and metrics["folds"] == 2
    for k, directory in enumerate(model.models):
        fold_metrics = json.loads((directory / "metrics.json").read_text())
        recorded = fold_metrics["data"]
        kept = [s for s, f in zip(sentences, folds, strict=True) if f != k]
        assert recorded["fold"] == {
            "fold": k + 1,
            "folds": 2,
            "n_held_out": int((folds == k).sum()),
            "train_fingerprint": DataSource("x", kept, None).fingerprint,
        }
        assert recorded["n_train_sentences"] == len(kept) < len(sentences)
    # the directory's scores are the mixture's, as `evaluate` gives them
    again = evaluate(teacher, str(root / "dev.conll"))
    assert again["folds"] == 2
    assert again["f1"] == pytest.approx(metrics["dev"]["f1"])
    assert metrics["fold_metrics"][0]["model_dir"] == "fold-1"


# -- the targets a student gets ---------------------------------------------------------------


def direct_chains(root, sentences):
    """Per fold tagger, each sentence's token and pair marginals (CRF bridge), one by one."""
    found = []
    for directory in read_fold_model(root / "teacher").models:
        tagger, info = load_tagger(directory)
        rows = []
        for sentence in sentences:
            batch = TaggingCollator(info.vocab)([(0, Sentence(list(sentence.tokens)))])
            with torch.no_grad():
                chain = project_teacher(tagger(batch), "crf")
            rows.append((chain.marginals[0], chain.pair_marginals[0]))
        found.append(rows)
    return found


def read_mixed(reader, ids, sentences):
    """The mixed token and pair marginals the reader gives each sentence (one batch)."""
    lengths = torch.tensor([len(sentences[i]) for i in ids])
    targets = reader(torch.tensor(ids), lengths)
    weights = targets.weights.double()
    sets = list(zip(weights, targets.per_teacher, strict=True))
    token = sum(w * t["marginals"].double() for w, t in sets)
    pair = sum(w * t["pair_marginals"].double() for w, t in sets)
    return targets, token, pair


def check_targets(reader, sentences, ids, expected_of) -> None:
    _, token, pair = read_mixed(reader, ids, sentences)
    for row, i in enumerate(ids):
        n = len(sentences[i])
        want_token, want_pair = expected_of(i)
        assert torch.allclose(token[row, :n], want_token.double(), atol=1e-6, rtol=0)
        assert torch.allclose(pair[row, : n - 1], want_pair.double(), atol=1e-6, rtol=0)


def test_out_of_fold_targets_equal_the_held_out_teacher_and_the_mixture_elsewhere(
    folded, tmp_path
) -> None:
    root, _ = folded
    run = prepare_distill(
        distill_options(root, tmp_path, labeled_fraction=0.5, unlabeled=str(root / "text.txt"))
    )
    model = read_fold_model(root / "teacher")
    for source, sentences in (
        ("train", load_labeled(str(root / "train.conll")).sentences),
        ("unlabeled", load_text(str(root / "text.txt")).sentences),
    ):
        folds = model.assignment.fold_index(s.tokens for s in sentences)
        direct = direct_chains(root, sentences)

        def expected(i, folds=folds, direct=direct):
            if folds[i] >= 0:
                return direct[folds[i]][i]
            return tuple((a + b) / 2 for a, b in zip(direct[0][i], direct[1][i], strict=True))

        ids = list(range(len(sentences)))
        check_targets(run.target_readers[source], sentences, ids, expected)
        seen = [i for i in ids if folds[i] >= 0]
        targets, _, _ = read_mixed(run.target_readers[source], seen, sentences)
        assert len(targets.per_teacher) == 1  # only out-of-fold: one set of targets
    # the unlabeled text: 5 new sentences (the mixture) and one training sentence (out-of-fold)
    assert (folds < 0).sum() == 5 and folds[2] >= 0
    # each fold tagger ran on its held-out fold (and on the new sentences) only
    caches = run.extra["distillation"]["caches"]
    train_folds = model.assignment.fold_index(
        s.tokens for s in load_labeled(str(root / "train.conll")).sentences
    )
    for record in caches:
        k = record["fold"] - 1
        if record["data"].endswith("train.conll"):
            assert record["n_sentences"] == int((train_folds == k).sum())
        else:
            assert record["n_sentences"] == 5 + int(folds[2] == k)
    distillation = run.extra["distillation"]
    assert distillation["teacher_targets"] == "out-of-fold"
    assert distillation["fold_teachers"] == [{"teacher": str(root / "teacher"), "folds": 2}]
    diagnostics = run.extra["target_diagnostics"]
    labeled = diagnostics["train (labeled)"]["by_targets"]
    assert set(labeled) == {"out-of-fold"}
    assert labeled["out-of-fold"]["n_tokens"] == diagnostics["train (labeled)"]["n_tokens"]
    text = diagnostics["unlabeled (unlabeled)"]["by_targets"]
    assert text["out-of-fold"]["n_sentences"] == 1 and text["unseen"]["n_sentences"] == 5


def test_in_fold_targets_are_the_mixture_everywhere(folded, tmp_path) -> None:
    root, _ = folded
    run = prepare_distill(distill_options(root, tmp_path, teacher_targets="in-fold"))
    sentences = load_labeled(str(root / "train.conll")).sentences
    direct = direct_chains(root, sentences)

    def expected(i):
        return tuple((a + b) / 2 for a, b in zip(direct[0][i], direct[1][i], strict=True))

    check_targets(run.target_readers["train"], sentences, list(range(len(sentences))), expected)
    assert run.extra["distillation"]["teacher_targets"] == "in-fold"
    assert set(run.extra["target_diagnostics"]["train (labeled)"]["by_targets"]) == {"in-fold"}
    # in-fold targets read the same entries as an ensemble of the fold taggers
    assert all(
        record["n_sentences"] == len(sentences) for record in run.extra["distillation"]["caches"]
    )


# -- the mixture's evaluation and prediction --------------------------------------------------


def test_mixture_decoding_evaluation_and_prediction(folded) -> None:
    root, _ = folded
    model = read_fold_model(root / "teacher")
    loaded = [load_tagger(directory) for directory in model.models]
    sentences = [s.without_tags() for s in load_labeled(str(root / "dev.conll")).sentences]
    items = list(enumerate(sentences))
    batches = [TaggingCollator(info.vocab)(items) for _, info in loaded]
    taggers = [tagger for tagger, _ in loaded]
    # one fold tagger alone: its own Viterbi path
    assert torch.equal(
        FoldMixture(taggers[:1]).decode(MixtureBatch(batches[:1])), taggers[0].decode(batches[0])
    )
    # the mixture: the chain of the mean marginals, decoded
    with torch.no_grad():
        chains = [project_teacher(t(b), "crf") for t, b in zip(taggers, batches, strict=True)]
    token = (chains[0].marginals.double() + chains[1].marginals.double()) / 2
    pair = (chains[0].pair_marginals.double() + chains[1].pair_marginals.double()) / 2
    expected = chain_decode(token, pair, batches[0].lengths)
    assert torch.equal(FoldMixture(taggers).decode(MixtureBatch(batches)), expected)
    # prediction: those tags, their mixture marginals, entities with the mean span probability
    predictor = load(root / "teacher", scheme="bioes")
    document = predictor.predict([list(s.tokens) for s in sentences])
    labels = taggers[0].vocab.labels
    for row, (result, sentence) in enumerate(zip(document, sentences, strict=True)):
        tokens = result.sentences[0].tokens
        n = len(sentence)
        assert [t.tag for t in tokens] == [labels[i] for i in expected[row, :n].tolist()]
        want = token[row, torch.arange(n), expected[row, :n]]
        assert [t.tag_score for t in tokens] == pytest.approx(want.tolist(), abs=1e-5)
        for entity in result.entities:
            assert 0.0 <= entity.score <= 1.0


# -- the command line -------------------------------------------------------------------------


def test_command_line_end_to_end(tmp_path, capsys) -> None:
    write_conll(tmp_path / "train.conll", 14, seed=5)
    write_conll(tmp_path / "dev.conll", 6, seed=6)
    overrides = [("--arch-override", f"{k}={json.dumps(v)}") for k, v in TINY.items()]
    common = ["--dev", str(tmp_path / "dev.conll"), "--epochs", "1", "--batch-size", "8",
              "--cache-dir", str(tmp_path / "cache"), "--no-progress",
              *itertools.chain(*overrides)]  # fmt: skip
    teacher = tmp_path / "teacher"
    assert main(["train", "--train", str(tmp_path / "train.conll"), "--out", str(teacher),
                 "--arch", "student-crf", "--folds", "2", *common]) == 0  # fmt: skip
    assert (teacher / "fold-1" / "model.pt").is_file() and (teacher / "fold-2").is_dir()
    assert "model:" in capsys.readouterr().out
    for mode in ("out-of-fold", "in-fold"):
        student = tmp_path / f"student-{mode}"
        assert main(["distill", "--train", str(tmp_path / "train.conll"),
                     "--out", str(student), "--teacher", str(teacher),
                     "--teacher-targets", mode, *common]) == 0  # fmt: skip
        metrics = json.loads((student / "metrics.json").read_text())
        assert metrics["distillation"]["teacher_targets"] == mode
    capsys.readouterr()
    assert main(["evaluate", "--model", str(teacher), "--data", str(tmp_path / "dev.conll"),
                 "--task", "ner"]) == 0  # fmt: skip
    assert "all" in capsys.readouterr().out
    assert main(["predict", "--model", str(teacher), "--input", str(tmp_path / "dev.conll")]) == 0


# -- errors -----------------------------------------------------------------------------------


def broken_copy(root, tmp_path, name):
    copy = tmp_path / name
    shutil.copytree(root / "teacher", copy)
    return copy


def test_errors(folded, tmp_path, capsys) -> None:
    root, _ = folded
    train_args = ["train", "--train", str(root / "train.conll"), "--dev", str(root / "dev.conll"),
                  "--out", str(tmp_path / "x")]  # fmt: skip
    assert main([*train_args, "--folds", "1"]) == 2
    assert "--folds must be an integer >= 2; got 1" in capsys.readouterr().err
    assert main([*train_args, "--folds", "40"]) == 2
    sentences = load_labeled(str(root / "train.conll")).sentences
    distinct = len({sentence_key(s.tokens) for s in sentences})
    err = capsys.readouterr().err
    assert f"only {distinct} distinct sentences" in err and "Traceback" not in err

    missing = broken_copy(root, tmp_path, "missing")
    shutil.rmtree(missing / "fold-2")
    with pytest.raises(ValueError, match=r"fold teacher 2 of 2 is missing \(fold-2/model.pt"):
        evaluate(missing, str(root / "dev.conll"))
    with pytest.raises(ValueError, match="fold teacher 2 of 2 is missing"):
        prepare_distill(distill_options(root, tmp_path, teachers=[str(missing)]))
    assert main(["evaluate", "--model", str(missing), "--data", str(root / "dev.conll")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and str(missing) in err and "Traceback" not in err

    unfinished = broken_copy(root, tmp_path, "unfinished")
    index = json.loads((unfinished / FOLDS_FILE).read_text())
    (unfinished / FOLDS_FILE).write_text(json.dumps({**index, "complete": False}))
    with pytest.raises(ValueError, match="did not finish"):
        evaluate(unfinished, str(root / "dev.conll"))
    (unfinished / FOLDS_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=f"{FOLDS_FILE}.*malformed"):
        evaluate(unfinished, str(root / "dev.conll"))

    changed = broken_copy(root, tmp_path, "changed")
    shutil.copy(changed / "fold-2" / "model.pt", changed / "fold-1" / "model.pt")
    with pytest.raises(ValueError, match=r"fold-1/model\.pt.*does not match the hash"):
        load(changed)

    with pytest.raises(ValueError, match="--teacher-targets out-of-fold needs a fold teacher"):
        prepare_distill(
            distill_options(
                root, tmp_path, teachers=[str(root / "teacher" / "fold-1")],
                teacher_targets="out-of-fold",
            )
        )  # fmt: skip
    with pytest.raises(ValueError, match="--teacher-targets must be one of"):
        prepare_distill(distill_options(root, tmp_path, teacher_targets="sideways"))
    with pytest.raises(ValueError, match="a student is one model"):
        distill(distill_options(root, tmp_path, folds=2))
    with pytest.raises(ValueError, match="holds fold teachers"):
        export(root / "teacher", tmp_path / "onnx")
