"""Dependency fold teachers (`structkd train --task dep --arch parser-* --folds K`): the
directory, each fold parser's training data, out-of-fold and in-fold targets against a direct
computation from the fold parsers (exact mixtures of renormalized label distributions), the
mixture's decoding against enumeration, its evaluation and prediction, the command line end to
end, and the errors."""

from __future__ import annotations

import itertools
import json
import random
import shutil

import pytest
import torch

import structkd
from structkd.api import DistillOptions, TrainOptions, evaluate, export, train
from structkd.cli import main
from structkd.data.conllu_io import tree_problem
from structkd.data.dep_batching import DepCollator
from structkd.data.dep_encodings import DepLabelScheme
from structkd.distill.dep_bridges import label_marginals, local_head_probs
from structkd.serve.text import TokenizedSentence
from structkd.tasks import get_task
from structkd.tasks.dep.data import DepSource, load_dep_source
from structkd.tasks.dep.folds import mixture_parse
from structkd.tasks.dep.model import load_dep_model
from structkd.tasks.dep.targets import relation_map
from structkd.tasks.dep.training import prepare_train
from structkd.train.folds import FOLDS_FILE, read_fold_model, sentence_key

prepare_distill = get_task("dep").prepare_distill

TEMPLATES = [
    (["DET", "NOUN", "VERB", "PUNCT"], [2, 3, 0, 3], ["det", "nsubj", "root", "punct"]),
    (
        ["DET", "ADJ", "NOUN", "VERB", "DET", "NOUN", "PUNCT"],
        [3, 3, 4, 0, 6, 4, 4],
        ["det", "amod", "nsubj", "root", "det", "obj", "punct"],
    ),
    (["NOUN", "VERB", "NOUN", "ADV"], [2, 0, 2, 2], ["nsubj", "root", "obj", "advmod"]),
    (["PRON", "VERB", "ADV", "PUNCT"], [2, 0, 2, 2], ["nsubj", "root", "advmod", "punct"]),
    (
        ["NOUN", "VERB", "NOUN", "ADV", "ADJ"],
        [2, 0, 2, 2, 1],
        ["nsubj", "root", "obj", "advmod", "amod"],
    ),  # non-projective
]
WORDS = {
    "DET": ["bir", "bu", "şu"],
    "NOUN": ["Ev", "kedi", "Kitap", "okul", "su", "yol"],
    "VERB": ["gel", "gördü", "Okudu", "koştu"],
    "ADJ": ["büyük", "güzel", "eski"],
    "ADV": ["hızla", "çok", "yine"],
    "PRON": ["o", "Ben", "sen"],
    "PUNCT": [".", "!"],
}
TINY = {
    "word_dim": 8,
    "char_dim": 4,
    "char_filters": 8,
    "upos_dim": 4,
    "lstm_hidden": 12,
    "lstm_layers": 1,
}
TINY_PARSER = {**TINY, "arc_dim": 16, "rel_dim": 8}


def treebank(n_sentences: int, seed: int) -> str:
    rng = random.Random(seed)
    blocks = []
    for index in range(n_sentences):
        upos, heads, relations = TEMPLATES[index % len(TEMPLATES)]
        lines = [f"# sent_id = s{seed}-{index}"]
        for word, (tag, head, rel) in enumerate(zip(upos, heads, relations, strict=True), 1):
            form = rng.choice(WORDS[tag])
            lines.append(f"{word}\t{form}\t_\t{tag}\t_\t_\t{head}\t{rel}\t_\t_")
        blocks.append("\n".join(lines) + "\n\n")
    return "".join(blocks)


def common(root, **changes):
    fields = {
        "train": str(root / "train.conllu"),
        "dev": str(root / "dev.conllu"),
        "task": "dep",
        "epochs": 2,
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
def folded(tmp_path_factory):
    """A 2-fold tiny matrix-tree teacher on 30 sentences (the first 30 of ``more.conllu``, whose
    last 8 no fold parser saw); dev."""
    root = tmp_path_factory.mktemp("dep-folds")
    text = treebank(38, seed=1)
    (root / "more.conllu").write_text(text, encoding="utf-8")
    (root / "train.conllu").write_text(
        "".join(block + "\n\n" for block in text.split("\n\n")[:30]), encoding="utf-8"
    )
    (root / "dev.conllu").write_text(treebank(10, seed=2), encoding="utf-8")
    options = common(
        root,
        test=str(root / "dev.conllu"),
        out=str(root / "teacher"),
        arch="parser-matrix-tree",
        arch_overrides=dict(TINY_PARSER),
        folds=2,
    )
    metrics = train(TrainOptions(**options))
    return root, metrics, options


def distill_options(root, tmp_path, **changes) -> DistillOptions:
    fields = common(
        root,
        train=str(root / "more.conllu"),
        out=str(tmp_path / "student"),
        teachers=[str(root / "teacher")],
        arch="student-dep-offset",
        arch_overrides=dict(TINY),
        epochs=1,
        method="struct",
        cache_dir=str(tmp_path / "cache"),
    )
    fields.update(changes)
    return DistillOptions(**fields)


# -- the directory and each fold's training data ----------------------------------------------


def test_directory_and_each_fold_parser_never_trains_on_its_fold(folded) -> None:
    root, metrics, options = folded
    teacher = root / "teacher"
    index = json.loads((teacher / FOLDS_FILE).read_text())
    assert index["task"] == "dep" and index["k"] == 2 and index["complete"] is True
    assert index["models"] == ["fold-1", "fold-2"]
    sentences = load_dep_source(str(root / "train.conllu")).sentences
    keys = [sentence_key(s.words) for s in sentences]
    assert sorted(itertools.chain(*index["folds"])) == sorted(set(keys))
    model = read_fold_model(teacher, task="dep")
    folds = model.assignment.fold_index(s.words for s in sentences)
    assert (folds >= 0).all() and set(folds.tolist()) == {0, 1}
    assert metrics["folds"] == 2 and metrics["data"]["n_train_sentences"] == 30
    relations = set()
    for k, directory in enumerate(model.models):
        recorded = json.loads((directory / "metrics.json").read_text())["data"]
        kept = [s for s, f in zip(sentences, folds, strict=True) if f != k]
        assert recorded["fold"] == {
            "fold": k + 1,
            "folds": 2,
            "n_held_out": int((folds == k).sum()),
            "train_fingerprint": DepSource("x", kept).fingerprint,
        }
        assert recorded["n_train_sentences"] == len(kept) < len(sentences)
        # what fold parser k trains on: every training tree outside fold k, none of fold k
        run = prepare_train(
            TrainOptions(**{**options, "folds": None, "out": str(root / "x")}),
            (model.assignment, k),
        )
        trained = [sentence for _, sentence in run.train_parts[0].items]
        assert [s.words for s in trained] == [s.words for s in kept]
        assert all(model.assignment.fold_of(s.words) != k for s in trained)
        parser, _ = load_dep_model(directory)
        # the relations of all the training trees, and the held-out fold's words
        relations.add(parser.vocab.relations)
        held_words = {
            w.lower() for s, f in zip(sentences, folds, strict=True) if f == k for w in s.words
        }
        assert held_words <= set(parser.vocab.words.items)
    assert relations == {tuple(sorted({r for s in sentences for r in s.relations}))}
    # the directory's scores are the mixture's, as `evaluate` gives them
    again = evaluate(teacher, str(root / "dev.conllu"))
    assert again["folds"] == 2 and again["well_formed_rate"] == 1.0
    assert again["las"] == pytest.approx(metrics["dev"]["las"])
    assert again["uas"] == pytest.approx(metrics["dev"]["uas"])
    assert metrics["fold_metrics"][1]["model_dir"] == "fold-2"


# -- the targets a student gets ---------------------------------------------------------------


def direct_label_marginals(root, sentences, scheme, method):
    """Per fold parser, each sentence's unnormalized label marginals ``[n, L]`` (float64), one
    sentence at a time."""
    found = []
    for directory in read_fold_model(root / "teacher").models:
        parser, info = load_dep_model(directory)
        relations, known = relation_map(scheme, info.vocab)
        rows = []
        for sentence in sentences:
            batch = DepCollator(info.vocab, scheme, labeled=False)([(0, sentence)])
            with torch.no_grad():
                scores = parser(batch)
                if method == "struct":
                    arcs = parser.arc_marginals(scores, batch.lengths)
                else:
                    arcs = local_head_probs(scores.arcs, batch.lengths)
                targets = label_marginals(
                    arcs.double(),
                    parser.rel_log_probs(scores).double(),
                    batch.label_heads.masked_fill(~known, -1),
                    relations,
                    batch.lengths,
                    renormalize=False,
                )
            rows.append(targets.probs[0])
        found.append(rows)
    return found


def renormalized(probs):
    mass = probs.sum(-1, keepdim=True)
    return torch.where(mass > 0, probs / mass.clamp(min=1e-300), 0.0)


@pytest.mark.parametrize("method", ["struct", "token"])
def test_out_of_fold_targets_are_the_held_out_parsers_and_the_mixture_elsewhere(
    folded, tmp_path, method
) -> None:
    root, _, _ = folded
    run = prepare_distill(distill_options(root, tmp_path, method=method))
    sentences = load_dep_source(str(root / "more.conllu")).sentences
    scheme = DepLabelScheme.from_sentences(sentences, encoding="offset")
    model = read_fold_model(root / "teacher")
    folds = model.assignment.fold_index(s.words for s in sentences)
    assert (folds[:30] >= 0).all() and (folds[30:] < 0).all()  # 8 unseen sentences
    direct = direct_label_marginals(root, sentences, scheme, method)
    reader = run.target_readers["train"]
    ids = list(range(len(sentences)))
    lengths = torch.tensor([len(s) for s in sentences])
    targets = reader(torch.tensor(ids), lengths)
    naive_gap, lost = 0.0, []
    for i in ids:
        n = len(sentences[i])
        if folds[i] >= 0:  # out-of-fold: the parser that never saw it, alone
            given = direct[folds[i]][i]
        else:  # the mixture: the mean of the K parsers' label marginals, renormalized
            given = (direct[0][i] + direct[1][i]) / 2
            naive = (renormalized(direct[0][i]) + renormalized(direct[1][i])) / 2
            naive_gap = max(naive_gap, float((naive - renormalized(given)).abs().max()))
        expected = renormalized(given)
        lost.append(1.0 - given.sum(-1))
        got = targets.probs[i, :n].double()
        assert torch.allclose(got, expected, atol=1e-6, rtol=0), (i, (got - expected).abs().max())
        assert targets.has_target[i, :n].tolist() == (expected.sum(-1) > 0).tolist()
    # the teachers lose different mass: averaging the renormalized rows would be wrong
    assert naive_gap > 1e-4
    # a batch of out-of-fold sentences only reads one set of targets
    assert len(reader.sets(torch.arange(30), lengths[:30])) == 1
    # each fold parser ran on its held-out fold and on the unseen sentences only
    distillation = run.extra["distillation"]
    assert distillation["teacher_targets"] == "out-of-fold"
    assert distillation["fold_teachers"] == [{"teacher": str(root / "teacher"), "folds": 2}]
    (record,) = distillation["teachers"]
    assert record["folds"] == 2
    assert [c["n_sentences"] for c in record["caches"]] == [
        int((folds == k).sum()) + 8 for k in range(2)
    ]
    # the mass the student's labels cannot express, of the targets given
    assert 0.0 < run.extra["teacher_lost_mass"] < 1.0
    assert run.extra["teacher_lost_mass"] == pytest.approx(float(torch.cat(lost).mean()), abs=1e-5)


def test_in_fold_targets_are_the_mixture_everywhere(folded, tmp_path) -> None:
    root, _, _ = folded
    run = prepare_distill(distill_options(root, tmp_path, teacher_targets="in-fold"))
    sentences = load_dep_source(str(root / "more.conllu")).sentences
    scheme = DepLabelScheme.from_sentences(sentences, encoding="offset")
    direct = direct_label_marginals(root, sentences, scheme, "struct")
    lengths = torch.tensor([len(s) for s in sentences])
    targets = run.target_readers["train"](torch.arange(len(sentences)), lengths)
    for i, sentence in enumerate(sentences):
        expected = renormalized((direct[0][i] + direct[1][i]) / 2)
        got = targets.probs[i, : len(sentence)].double()
        assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    distillation = run.extra["distillation"]
    assert distillation["teacher_targets"] == "in-fold"
    # in-fold targets read the entries an ensemble of the fold parsers reads: every sentence
    caches = distillation["teachers"][0]["caches"]
    assert [c["n_sentences"] for c in caches] == [len(sentences)] * 2


# -- the mixture's decoding -------------------------------------------------------------------


@pytest.mark.parametrize("projective", [False, True])
def test_mixture_parse_is_the_tree_of_highest_expected_attachment(projective) -> None:
    """Against enumeration of every (projective) single-root tree: the tree maximizing the sum
    of the mean arc marginals; each arc's relation the argmax of the mixture's joint."""
    from structkd.structures.dependency import DependencyCRF, is_tree

    generator = torch.Generator().manual_seed(3)
    lengths = torch.tensor([4, 3, 1])
    size, n_relations = 5, 3
    arcs, rels = [], []
    for _ in range(3):
        crf = DependencyCRF(
            torch.randn(3, size, size, generator=generator, dtype=torch.float64) * 2, lengths
        )
        arcs.append(crf.marginals)
        rels.append(
            torch.log_softmax(torch.randn(3, size, size, n_relations, generator=generator), -1)
        )
    heads, rel_ids, scores = mixture_parse(arcs, rels, lengths, projective=projective)
    mean = torch.stack(arcs).mean(0)
    for row, n in enumerate(lengths.tolist()):
        best, best_value = None, -1.0
        for choice in itertools.product(range(n + 1), repeat=n):
            candidate = torch.tensor([[-1, *choice, *([-1] * (size - 1 - n))]])
            if not bool(is_tree(candidate, lengths[row : row + 1], projective=projective)):
                continue
            value = sum(float(mean[row, h, d]) for d, h in enumerate(choice, start=1))
            if value > best_value + 1e-12:
                best, best_value = choice, value
        assert heads[row, 1 : n + 1].tolist() == list(best)
        assert tree_problem(list(best)) is None
        for d, h in enumerate(best, start=1):
            joint = sum(
                a[row, h, d] * r[row, h, d].double().exp() for a, r in zip(arcs, rels, strict=True)
            )
            assert int(rel_ids[row, d]) == int(joint.argmax())
            assert float(scores[row, d]) == pytest.approx(float(mean[row, h, d]), abs=1e-12)
        assert (heads[row, n + 1 :] == -1).all() and int(heads[row, 0]) == -1


# -- the mixture's evaluation and prediction --------------------------------------------------


def tagged(sentences) -> list[TokenizedSentence]:
    inputs = []
    for sentence in sentences:
        starts, position = [], 0
        for word in sentence.words:
            starts.append(position)
            position += len(word) + 1
        ends = [start + len(word) for start, word in zip(starts, sentence.words, strict=True)]
        inputs.append(TokenizedSentence(sentence.words, tuple(starts), tuple(ends), sentence.upos))
    return inputs


def test_evaluation_and_prediction_are_the_mixtures(folded) -> None:
    root, _, _ = folded
    model = read_fold_model(root / "teacher")
    sentences = load_dep_source(str(root / "dev.conllu")).sentences
    arcs, rels = [], []
    for directory in model.models:
        parser, info = load_dep_model(directory)
        batch = DepCollator(info.vocab, labeled=False)(list(enumerate(sentences)))
        with torch.no_grad():
            scores = parser(batch)
            arcs.append(parser.arc_marginals(scores, batch.lengths))
            rels.append(parser.rel_log_probs(scores))
    heads, rel_ids, head_scores = mixture_parse(arcs, rels, batch.lengths, projective=False)
    relations = info.vocab.relations
    scored = right_heads = right_labels = 0
    for row, sentence in enumerate(sentences):
        for d in range(1, len(sentence) + 1):
            if sentence.upos[d - 1] == "PUNCT":
                continue
            scored += 1
            if int(heads[row, d]) == sentence.heads[d - 1]:
                right_heads += 1
                right_labels += relations[int(rel_ids[row, d])] == sentence.relations[d - 1]
    result = evaluate(root / "teacher", str(root / "dev.conllu"))
    assert result["uas"] == pytest.approx(right_heads / scored)
    assert result["las"] == pytest.approx(right_labels / scored)
    predictor = structkd.load(root / "teacher", num_threads=1, batch_size=4)
    assert predictor.task == "dep" and predictor.backend == "torch"
    documents = predictor.predict(tagged(sentences))
    for row, document in enumerate(documents):
        tokens = document.tokens
        n = len(tokens)
        assert [t.head for t in tokens] == heads[row, 1 : n + 1].tolist()
        assert [t.deprel for t in tokens] == [relations[r] for r in rel_ids[row, 1 : n + 1]]
        assert [t.head_score for t in tokens] == pytest.approx(
            head_scores[row, 1 : n + 1].tolist(), abs=1e-6
        )
        assert tree_problem([t.head for t in tokens]) is None


# -- the command line -------------------------------------------------------------------------


def test_command_line_end_to_end(tmp_path, capsys) -> None:
    (tmp_path / "train.conllu").write_text(treebank(16, seed=5), encoding="utf-8")
    (tmp_path / "dev.conllu").write_text(treebank(6, seed=6), encoding="utf-8")
    shared = ["--task", "dep", "--train", str(tmp_path / "train.conllu"),
              "--dev", str(tmp_path / "dev.conllu"), "--epochs", "1", "--batch-size", "8",
              "--cache-dir", str(tmp_path / "cache"), "--no-progress",
              "--num-threads", "1"]  # fmt: skip
    tiny = [f"--arch-override={key}={value}" for key, value in TINY.items()]
    teacher = tmp_path / "teacher"
    assert main(["train", *shared, "--arch", "parser-head-selection", "--folds", "2",
                 "--out", str(teacher), *tiny, "--arch-override=arc_dim=8",
                 "--arch-override=rel_dim=8"]) == 0  # fmt: skip
    assert (teacher / "fold-1" / "model.pt").is_file() and (teacher / "fold-2").is_dir()
    assert "UAS" in capsys.readouterr().out
    for mode in ("out-of-fold", "in-fold"):
        student = tmp_path / f"student-{mode}"
        assert main(["distill", *shared, "--arch", "student-dep-offset", "--out", str(student),
                     "--teacher", str(teacher), "--method", "struct",
                     "--teacher-targets", mode, *tiny]) == 0  # fmt: skip
        metrics = json.loads((student / "metrics.json").read_text())
        assert metrics["distillation"]["teacher_targets"] == mode
    capsys.readouterr()
    assert main(["evaluate", "--model", str(teacher), "--data", str(tmp_path / "dev.conllu"),
                 "--task", "dep"]) == 0  # fmt: skip
    assert "UAS" in capsys.readouterr().out
    out = tmp_path / "parsed.conllu"
    assert main(["predict", "--model", str(teacher), "--input", str(tmp_path / "dev.conllu"),
                 "--output", str(out)]) == 0  # fmt: skip
    assert len(load_dep_source(str(out))) == 6


# -- errors -----------------------------------------------------------------------------------


def test_errors(folded, tmp_path, capsys) -> None:
    root, _, _ = folded
    train_args = ["train", "--task", "dep", "--train", str(root / "train.conllu"),
                  "--dev", str(root / "dev.conllu"), "--out", str(tmp_path / "x")]  # fmt: skip
    assert main([*train_args, "--arch", "student-dep-offset", "--folds", "2"]) == 2
    err = capsys.readouterr().err
    assert "is a student: use a parser-* architecture" in err and "Traceback" not in err
    sentences = load_dep_source(str(root / "train.conllu")).sentences
    distinct = len({sentence_key(s.words) for s in sentences})
    assert main([*train_args, "--folds", str(distinct + 1)]) == 2
    assert f"only {distinct} distinct sentences" in capsys.readouterr().err

    missing = tmp_path / "missing"
    shutil.copytree(root / "teacher", missing)
    shutil.rmtree(missing / "fold-2")
    with pytest.raises(ValueError, match=r"fold teacher 2 of 2 is missing \(fold-2/model.pt"):
        evaluate(missing, str(root / "dev.conllu"))
    with pytest.raises(ValueError, match="fold teacher 2 of 2 is missing"):
        prepare_distill(distill_options(root, tmp_path, teachers=[str(missing)]))
    assert main(["evaluate", "--model", str(missing), "--data", str(root / "dev.conllu")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "Traceback" not in err

    other = tmp_path / "other-task"
    shutil.copytree(root / "teacher", other)
    index = json.loads((other / FOLDS_FILE).read_text())
    (other / FOLDS_FILE).write_text(json.dumps({**index, "task": "ner"}))
    with pytest.raises(ValueError, match="holds 'ner' fold teachers, not 'dep' ones"):
        prepare_distill(distill_options(root, tmp_path, teachers=[str(other)]))

    with pytest.raises(ValueError, match="--teacher-targets out-of-fold needs a fold teacher"):
        prepare_distill(
            distill_options(
                root, tmp_path, teachers=[str(root / "teacher" / "fold-1")],
                teacher_targets="out-of-fold",
            )
        )  # fmt: skip
    with pytest.raises(ValueError, match="holds fold teachers"):
        export(root / "teacher", tmp_path / "onnx")
