"""``--task dep`` end to end on a tiny treebank written here: train parsers (every mode) and a
sequence-labeling student, distill it (struct and token KD, an ensemble), evaluate, predict, and
the CLI; plus the KD loss and the cache of teacher label distributions."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from structkd.api import DistillOptions, TrainOptions, distill, evaluate, predict, train
from structkd.cli import main
from structkd.data.conllu_io import read_conllu
from structkd.structures.base import NumericalError
from structkd.tasks.dep.data import load_dep_source
from structkd.tasks.dep.model import DEP_ARCHITECTURES, load_dep_model
from structkd.tasks.dep.targets import DepTargets, dep_kd_loss, ensure_dep_targets

# (words with UPOS, heads, relations): small templates whose trees a model can learn; the last
# one is non-projective (arc 2 -> 5 crosses 1 -> 4... see NONPROJECTIVE below).
TEMPLATES = [
    (["DET", "NOUN", "VERB", "PUNCT"], [2, 3, 0, 3], ["det", "nsubj", "root", "punct"]),
    (
        ["DET", "ADJ", "NOUN", "VERB", "DET", "NOUN", "PUNCT"],
        [3, 3, 4, 0, 6, 4, 4],
        ["det", "amod", "nsubj", "root", "det", "obj", "punct"],
    ),
    (["NOUN", "VERB", "NOUN", "ADV"], [2, 0, 2, 2], ["nsubj", "root", "obj", "advmod"]),
    (["PRON", "VERB", "ADV", "PUNCT"], [2, 0, 2, 2], ["nsubj", "root", "advmod", "punct"]),
]
NONPROJECTIVE = (
    ["NOUN", "VERB", "NOUN", "ADV", "ADJ"],
    [2, 0, 2, 2, 1],
    ["nsubj", "root", "obj", "advmod", "amod"],
)
WORDS = {
    "DET": ["bir", "bu", "şu"],
    "NOUN": ["Ev", "kedi", "Kitap", "okul", "su"],
    "VERB": ["gel", "gördü", "Okudu"],
    "ADJ": ["büyük", "güzel"],
    "ADV": ["hızla", "çok"],
    "PRON": ["o", "Ben"],
    "PUNCT": [".", "!"],
}


def _treebank(n_sentences: int, seed: int, with_nonprojective: bool = True) -> str:
    rng = random.Random(seed)
    blocks = []
    for index in range(n_sentences):
        if with_nonprojective and index % 7 == 6:
            upos, heads, relations = NONPROJECTIVE
        else:
            upos, heads, relations = TEMPLATES[index % len(TEMPLATES)]
        lines = [f"# sent_id = s{seed}-{index}"]
        for word, (tag, head, rel) in enumerate(zip(upos, heads, relations, strict=True), 1):
            form = rng.choice(WORDS[tag])
            lines.append(f"{word}\t{form}\t{form.lower()}\t{tag}\t_\t_\t{head}\t{rel}\t_\t_")
        blocks.append("\n".join(lines) + "\n\n")
    return "".join(blocks)


@pytest.fixture(scope="module")
def treebank(tmp_path_factory):
    root = tmp_path_factory.mktemp("treebank")
    paths = {}
    for split, (count, seed) in {"train": (42, 1), "dev": (14, 2), "test": (14, 3)}.items():
        paths[split] = root / f"{split}.conllu"
        paths[split].write_text(_treebank(count, seed), encoding="utf-8")
    return paths


TINY = {
    "word_dim": 8,
    "char_dim": 4,
    "char_filters": 8,
    "upos_dim": 4,
    "lstm_hidden": 12,
    "lstm_layers": 1,
}
TINY_PARSER = {**TINY, "arc_dim": 16, "rel_dim": 8, "second_order_dim": 8}


def _options(treebank, tmp_path, arch, name, **changes):
    kind = DEP_ARCHITECTURES[arch]["kind"]
    fields = dict(
        train=str(treebank["train"]),
        dev=str(treebank["dev"]),
        test=str(treebank["test"]),
        out=str(tmp_path / name),
        task="dep",
        arch=arch,
        arch_overrides=dict(TINY_PARSER if kind == "parser" else TINY),
        epochs=3,
        batch_size=8,
        learning_rate=5e-3,
        patience=None,
        progress=False,
        cache_dir=str(tmp_path / "cache"),
    )
    fields.update(changes)
    return fields


@pytest.fixture(scope="module")
def teacher(treebank, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("teacher")
    metrics = train(TrainOptions(**_options(treebank, tmp_path, "parser-matrix-tree", "mtt")))
    return metrics


@pytest.mark.parametrize(
    "arch", [arch for arch, spec in DEP_ARCHITECTURES.items() if spec["kind"] == "parser"]
)
def test_every_parser_trains_evaluates_and_reloads(treebank, tmp_path, arch):
    metrics = train(TrainOptions(**_options(treebank, tmp_path, arch, "model", epochs=2)))
    assert metrics["task"] == "dep" and metrics["arch"] == arch
    for split in ("dev", "test"):
        scores = metrics[split]
        assert 0.0 <= scores["las"] <= scores["uas"] <= 1.0
        assert scores["well_formed_rate"] == 1.0  # parsers decode trees
        assert scores["sentences_per_second"] > 0
    if arch in ("parser-projective", "parser-sibling-exact"):
        assert metrics["data"]["training_trees"] == "projective subset"
        assert metrics["data"]["non_projective_dropped"] == 6
    written = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert written["dev"]["las"] == metrics["dev"]["las"]
    _, info = load_dep_model(tmp_path / "model")
    assert info.arch == arch and info.kind == "parser"
    again = evaluate(tmp_path / "model", str(treebank["dev"]))
    assert again["las"] == pytest.approx(metrics["dev"]["las"])


def test_teacher_learns_the_toy_grammar(teacher):
    assert teacher["dev"]["uas"] > 0.6


def test_student_without_kd_and_with_struct_kd(treebank, tmp_path, teacher):
    base = _options(treebank, tmp_path, "student-dep-offset", "none", epochs=3)
    plain = distill(DistillOptions(**base, method="none"))
    assert plain["task"] == "dep" and plain["encoding"] == "offset"
    assert 0 <= plain["test"]["well_formed_rate"] <= 1.0
    struct_options = {**base, "out": str(tmp_path / "struct")}
    struct = distill(
        DistillOptions(**struct_options, teachers=[teacher["model_dir"]], method="struct")
    )
    distillation = struct["distillation"]
    assert distillation["teachers"][0]["built"] is True
    assert 0.0 <= struct["teacher_lost_mass"] < 1.0
    assert struct["history"][0]["train_loss"] > 0
    # a rerun reuses the cache
    again = distill(
        DistillOptions(
            **{**struct_options, "out": str(tmp_path / "again")},
            teachers=[teacher["model_dir"]],
            method="struct",
        )
    )
    assert again["distillation"]["teachers"][0]["built"] is False


def test_token_kd_pos_encoding_and_an_ensemble(treebank, tmp_path, teacher):
    options = _options(treebank, tmp_path, "student-dep-pos", "token", epochs=1)
    metrics = distill(
        DistillOptions(
            **options,
            teachers=[teacher["model_dir"], teacher["model_dir"]],
            teacher_weights=[0.25, 0.75],
            method="token",
            temperature=2.0,
        )
    )
    assert metrics["encoding"] == "pos"
    assert metrics["distillation"]["teacher_weights"] == pytest.approx([0.25, 0.75])


def test_struct_targets_are_the_teacher_tree_marginals_on_labels(treebank, tmp_path, teacher):
    """Each word's cached label distribution sums to 1 (renormalized) and its argmax label's head
    is the teacher's most probable head when that head is expressible."""
    from structkd.data.dep_encodings import DepLabelScheme
    from structkd.train.store import ShardedArray, ShardPlan

    source = load_dep_source(str(treebank["train"]))
    scheme = DepLabelScheme.from_sentences(source.sentences, encoding="offset")
    directory, built = ensure_dep_targets(
        teacher["model_dir"],
        source,
        scheme,
        method="struct",
        temperature=1.0,
        cache_dir=tmp_path / "cache",
    )
    assert built
    probs = ShardedArray.open(directory, "probs")
    first = torch.from_numpy(probs[0].copy())  # [n_words, n_labels]
    assert first.shape == (len(source.sentences[0]), scheme.n_labels)
    assert torch.allclose(first.sum(-1), torch.ones(first.shape[0]), atol=1e-4)
    meta = json.loads((directory / "meta.json").read_text())
    assert 0.0 <= meta["mean_lost_mass"] < 1.0

    # built in shards of 10 sentences: the same targets for every sentence (up to rounding)
    sharded, built = ensure_dep_targets(
        teacher["model_dir"],
        source,
        scheme,
        method="struct",
        temperature=1.0,
        cache_dir=tmp_path / "sharded",
        plan=ShardPlan(shard_size=10),
    )
    assert built and sharded is not None and sharded.name == directory.name
    sharded_meta = json.loads((sharded / "meta.json").read_text())
    assert sharded_meta["shards"]["starts"] == list(range(0, len(source), 10))
    assert sharded_meta["mean_lost_mass"] == pytest.approx(meta["mean_lost_mass"], abs=1e-6)
    sharded_probs = ShardedArray.open(sharded, "probs")
    for item in range(len(source)):
        assert np.allclose(sharded_probs[item], probs[item], atol=1e-6)


def test_dep_kd_loss_is_the_cross_entropy_and_refuses_nan():
    logits = torch.randn(2, 3, 5)
    probs = torch.softmax(torch.randn(2, 3, 5), -1)
    has_target = torch.tensor([[True, True, False], [True, False, False]])
    loss = dep_kd_loss(logits, DepTargets(probs, has_target), temperature=2.0)
    expected = -(probs * torch.log_softmax(logits / 2.0, -1)).sum(-1)[has_target].mean()
    assert loss == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(NumericalError):
        dep_kd_loss(
            torch.full((1, 1, 5), float("nan")), DepTargets(probs[:1, :1], has_target[:1, :1])
        )


def test_predict_writes_conllu_with_every_word_attached(treebank, tmp_path, teacher):
    out = tmp_path / "parsed.conllu"
    count = predict(teacher["model_dir"], str(treebank["test"]), str(out))
    parsed = read_conllu(out)  # raises on a malformed tree
    assert count == len(parsed) == 14


def test_cli_train_evaluate_punct_and_errors(treebank, tmp_path, capsys):
    tiny = [f"--arch-override={key}={value}" for key, value in TINY.items()]
    code = main(
        [
            "train", "--task", "dep", "--arch", "student-dep-offset",
            "--train", str(treebank["train"]), "--dev", str(treebank["dev"]),
            "--out", str(tmp_path / "cli"), "--epochs", "1", "--no-progress", *tiny,
        ]
    )  # fmt: skip
    assert code == 0
    assert "UAS" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(tmp_path / "cli"), "--data", str(treebank["dev"])]) == 0
    without = capsys.readouterr().out
    assert "punctuation excluded" in without
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tmp_path / "cli"),
                "--data",
                str(treebank["dev"]),
                "--punct",
            ]
        )
        == 0
    )
    assert "punctuation included" in capsys.readouterr().out
    code = main(
        [
            "distill", "--task", "dep", "--train", str(treebank["train"]),
            "--dev", str(treebank["dev"]), "--out", str(tmp_path / "bad"), "--method", "topk",
            "--teacher", str(tmp_path / "cli"),
        ]
    )  # fmt: skip
    assert code == 2
    assert "topk" in capsys.readouterr().err


def test_a_malformed_tree_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.conllu"
    bad.write_text("1\ta\ta\tNOUN\t_\t_\t2\tnsubj\t_\t_\n2\tb\tb\tVERB\t_\t_\t1\troot\t_\t_\n\n")
    with pytest.raises(ValueError, match=r"bad\.conllu"):
        load_dep_source(str(bad))


@pytest.mark.parametrize("arch", ["parser-sibling-exact", "parser-mean-field"])
def test_second_order_teachers_give_targets(treebank, tmp_path, arch):
    """The exact sibling CRF's marginals are gradients of log Z: building the cache must not run
    under inference mode (a regression: it raised 'does not require grad')."""
    from structkd.data.dep_encodings import DepLabelScheme

    model_dir = train(TrainOptions(**_options(treebank, tmp_path, arch, "teacher", epochs=1)))[
        "model_dir"
    ]
    source = load_dep_source(str(treebank["train"]))
    scheme = DepLabelScheme.from_sentences(source.sentences, encoding="pos")
    directory, built = ensure_dep_targets(
        model_dir, source, scheme, method="struct", temperature=2.0, cache_dir=tmp_path / "c"
    )
    meta = json.loads((directory / "meta.json").read_text())
    assert built and 0.0 <= meta["mean_lost_mass"] < 1.0


@pytest.mark.ddp
def test_dep_distillation_in_two_cpu_processes(treebank, tmp_path, teacher):
    """DDP (gloo, 2 processes): shards of the batches, dev counts summed over ranks, so the dev
    LAS seen in training is the whole dev set's."""
    import os
    import subprocess
    import sys

    tiny = [f"--arch-override={key}={value}" for key, value in TINY.items()]
    command = [
        sys.executable, "-m", "structkd", "distill", "--task", "dep",
        "--arch", "student-dep-offset", "--teacher", teacher["model_dir"], "--method", "struct",
        "--train", str(treebank["train"]), "--dev", str(treebank["dev"]),
        "--out", str(tmp_path / "student"), "--cache-dir", str(tmp_path / "cache"), *tiny,
        "--epochs", "2", "--batch-size", "7", "--no-early-stopping", "--no-progress",
        "--num-threads", "1", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    environment.pop("MASTER_PORT", None)
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=environment
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    # 42 sentences in batches of 7: 6 batches, 3 per rank and epoch
    assert metrics["optimizer_steps"] == 6 and len(metrics["history"]) == 2
    best = metrics["history"][metrics["best_epoch"]]
    assert best["dev_las"] == pytest.approx(metrics["dev"]["las"])


def test_evaluation_data_may_hold_a_relation_unseen_in_training(treebank, tmp_path, teacher):
    """An unseen gold relation is scored as a wrong label (never a crash); training data with
    one is an error naming the file and line."""
    text = treebank["dev"].read_text(encoding="utf-8").replace("\tdet\t", "\tremnant\t")
    other = tmp_path / "other.conllu"
    other.write_text(text, encoding="utf-8")
    result = evaluate(teacher["model_dir"], str(other))
    same = evaluate(teacher["model_dir"], str(treebank["dev"]))
    assert result["uas"] == pytest.approx(same["uas"])
    assert result["las"] <= same["las"]  # the renamed words cannot be labeled right
    from structkd.data.dep_batching import DepCollator

    model, _ = load_dep_model(teacher["model_dir"])
    sentences = load_dep_source(str(other)).sentences
    with pytest.raises(ValueError, match=r"other\.conllu:\d+: relation 'remnant'"):
        DepCollator(model.vocab)(list(enumerate(sentences)))


def _unparsed(text: str) -> str:
    """The treebank ``text`` with HEAD and DEPREL replaced by ``_`` (text to parse)."""
    rows = []
    for line in text.split("\n"):
        columns = line.split("\t")
        if len(columns) == 10:
            columns[6] = columns[7] = "_"
        rows.append("\t".join(columns))
    return "\n".join(rows)


def test_unparsed_conllu_is_parsed_but_not_trained_or_scored_on(treebank, tmp_path, teacher):
    unparsed = tmp_path / "unparsed.conllu"
    unparsed.write_text(_unparsed(treebank["dev"].read_text(encoding="utf-8")), encoding="utf-8")
    source = load_dep_source(str(unparsed), role="input")
    assert len(source) == 14 and not any(s.has_tree for s in source.sentences)
    for role in ("train", "evaluation"):
        with pytest.raises(ValueError, match=r"unparsed\.conllu, line 2: word 1 has no HEAD"):
            load_dep_source(str(unparsed), role=role)
    out = tmp_path / "parsed.conllu"
    assert predict(teacher["model_dir"], str(unparsed), str(out)) == 14
    parsed = read_conllu(out)  # trees now
    assert [s.words for s in parsed] == [s.words for s in source.sentences]
    assert all(s.has_tree for s in parsed)
    with pytest.raises(ValueError, match="need gold trees"):
        evaluate(teacher["model_dir"], str(unparsed))


def test_predict_refuses_to_overwrite_its_input_and_writes_atomically(treebank, tmp_path, teacher):
    source = tmp_path / "gold.conllu"
    gold = treebank["test"].read_text(encoding="utf-8")
    source.write_text(gold, encoding="utf-8")
    with pytest.raises(ValueError, match="is the input file"):
        predict(teacher["model_dir"], str(source), str(source))
    assert source.read_text(encoding="utf-8") == gold  # gold HEAD/DEPREL kept
    with pytest.raises(ValueError, match="does not exist"):
        predict(teacher["model_dir"], str(source), str(tmp_path / "no" / "parsed.conllu"))
    out = tmp_path / "parsed.conllu"
    assert predict(teacher["model_dir"], str(source), str(out)) == 14
    assert len(read_conllu(out)) == 14
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gold.conllu", "parsed.conllu"]


def test_a_tag_scheme_is_refused_for_treebanks(treebank, tmp_path) -> None:
    options = TrainOptions(
        task="dep",
        train=str(treebank["train"]),
        dev=str(treebank["dev"]),
        out=str(tmp_path / "m"),
        arch="parser-head-selection",
        scheme="iob1",
    )
    with pytest.raises(ValueError, match="a treebank has no tag scheme"):
        train(options)


def test_vocab_text_joins_the_vocabulary(treebank, tmp_path) -> None:
    """Words of text the model will read (``vocab_text``, here unparsed CoNLL-U) get entries."""
    other = tmp_path / "other.conllu"
    other.write_text("1\tZebralar\t_\tNOUN\t_\t_\t_\t_\t_\t_\n\n", encoding="utf-8")
    plain = _options(treebank, tmp_path, "parser-head-selection", "plain", epochs=1)
    read = _options(
        treebank, tmp_path, "parser-head-selection", "read", epochs=1, vocab_text=[str(other)]
    )
    train(TrainOptions(**plain))
    train(TrainOptions(**read))
    assert "zebralar" not in load_dep_model(tmp_path / "plain")[0].vocab.words.items
    assert "zebralar" in load_dep_model(tmp_path / "read")[0].vocab.words.items
