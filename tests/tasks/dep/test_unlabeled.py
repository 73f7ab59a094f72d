"""Dependency distillation on text without trees: ``distill --task dep --labeled-fraction F``
(the trees of the rest are never read: a student trained with them corrupted is identical),
``--unlabeled FILE`` (CoNLL-U with HEAD and DEPREL ``_``; UPOS required), teacher targets for
every sentence, the no-KD student on the labeled part only, and the experiment runner's
``labeled_fractions`` and ``unlabeled`` for dep (teachers on the labeled part)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from structkd.api import DistillOptions, TrainOptions, distill, train
from structkd.cli import main
from structkd.data.conllu_io import read_conllu, split_labeled_trees
from structkd.experiment import TrainingLayerRun, load_config, parse_config, plan_experiment
from structkd.tasks import get_task
from structkd.train.data import StepCollator

prepare_distill = get_task("dep").prepare_distill

TEMPLATES = [
    (["DET", "NOUN", "VERB", "PUNCT"], [2, 3, 0, 3], ["det", "nsubj", "root", "punct"]),
    (["NOUN", "VERB", "NOUN", "ADV"], [2, 0, 2, 2], ["nsubj", "root", "obj", "advmod"]),
    (["PRON", "VERB", "ADV", "PUNCT"], [2, 0, 2, 2], ["nsubj", "root", "advmod", "punct"]),
]
WORDS = {
    "DET": ["bir", "bu"],
    "NOUN": ["Ev", "kedi", "okul"],
    "VERB": ["gel", "gördü"],
    "ADV": ["hızla", "çok"],
    "PRON": ["o", "Ben"],
    "PUNCT": [".", "!"],
}
TINY = {"word_dim": 8, "char_dim": 4, "char_filters": 8, "upos_dim": 4, "lstm_hidden": 8}
N_TRAIN = 24


def _sentences(n: int, seed: int) -> list[list[tuple[str, str, int, str]]]:
    rng = random.Random(seed)
    found = []
    for index in range(n):
        upos, heads, relations = TEMPLATES[index % len(TEMPLATES)]
        words = [rng.choice(WORDS[tag]) for tag in upos]
        found.append(list(zip(words, upos, heads, relations, strict=True)))
    return found


def _conllu(sentences, *, tree=lambda i, word: word[3:5], upos=True) -> str:
    blocks = []
    for index, sentence in enumerate(sentences):
        lines = [f"# sent_id = s{index}"]
        for number, word in enumerate(sentence, 1):
            head, relation = tree(index, (number, *word))
            tag = word[1] if upos else "_"
            lines.append(f"{number}\t{word[0]}\t_\t{tag}\t_\t_\t{head}\t{relation}\t_\t_")
        blocks.append("\n".join(lines) + "\n\n")
    return "".join(blocks)


def _corrupt(index: int, word: tuple) -> tuple:
    """Another valid tree (every word on word 1) with a relation the labeled half lacks."""
    if index < N_TRAIN // 2:
        return word[3:5]
    return (0, "root") if word[0] == 1 else (1, "junk")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("unlabeled")
    train_sentences = _sentences(N_TRAIN, 1)
    half = N_TRAIN // 2
    files = {
        "train": _conllu(train_sentences, tree=lambda i, w: w[3:5]),
        "corrupted": _conllu(train_sentences, tree=_corrupt),
        "first_half": _conllu(train_sentences[:half], tree=lambda i, w: w[3:5]),
        "unlabeled": _conllu(train_sentences[half:], tree=lambda i, w: ("_", "_")),
        "no_upos": _conllu(train_sentences[half:], tree=lambda i, w: ("_", "_"), upos=False),
        "dev": _conllu(_sentences(6, 2), tree=lambda i, w: w[3:5]),
    }
    paths = {}
    for name, text in files.items():
        paths[name] = root / f"{name}.conllu"
        paths[name].write_text(text, encoding="utf-8")
    paths["tokens"] = root / "tokens.txt"
    paths["tokens"].write_text(
        "\n".join(" ".join(w[0] for w in s) for s in train_sentences) + "\n", encoding="utf-8"
    )
    paths["root"] = root
    return paths


def _options(data, tmp_path, name, kind="student", **changes):
    fields = dict(
        train=str(data["train"]),
        dev=str(data["dev"]),
        out=str(tmp_path / name),
        task="dep",
        arch="student-dep-offset" if kind == "student" else "parser-head-selection",
        arch_overrides=dict(TINY if kind == "student" else {**TINY, "arc_dim": 8, "rel_dim": 4}),
        epochs=2,
        batch_size=6,
        learning_rate=5e-3,
        patience=None,
        progress=False,
        cache_dir=str(data["root"] / "cache"),
    )
    fields.update(changes)
    return fields


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory):
    """A parser trained on the labeled half only (what ``teacher_data = "labeled"`` gives)."""
    tmp_path = tmp_path_factory.mktemp("teacher")
    options = _options(data, tmp_path, "teacher", "teacher", max_train_sentences=N_TRAIN // 2)
    metrics = train(TrainOptions(**options))
    assert metrics["data"]["n_train_sentences"] == N_TRAIN // 2
    return str(tmp_path / "teacher")


def _student(data, tmp_path, teacher, name, **changes):
    changes = {"teachers": [teacher], "method": "struct", "labeled_fraction": 0.5, **changes}
    return DistillOptions(**_options(data, tmp_path, name, **changes))


def test_split_labeled_trees_drops_the_trees_of_the_rest(data) -> None:
    sentences = read_conllu(data["corrupted"])
    labeled, rest = split_labeled_trees(sentences, 0.5)
    assert labeled == sentences[: N_TRAIN // 2] and len(rest) == N_TRAIN // 2
    for original, text in zip(sentences[N_TRAIN // 2 :], rest, strict=True):
        assert text.words == original.words and text.upos == original.upos
        assert not text.has_tree and set(text.heads) == {-1} and set(text.relations) == {"_"}
        columns = [(t["head"], t["deprel"]) for t in text.tokens if isinstance(t["id"], int)]
        assert set(columns) == {(None, "_")}  # no tree left in the tokens either
    with pytest.raises(ValueError, match="has no tree"):
        split_labeled_trees(rest, 0.5)


def test_the_gold_loss_never_sees_the_trees_of_the_unlabeled_half(data, tmp_path, teacher):
    run = prepare_distill(_student(data, tmp_path, teacher, "prepared"))
    labeled, unlabeled = run.train_parts
    assert labeled.labeled and [i for i, _ in labeled.items] == list(range(12))
    assert not unlabeled.labeled and [i for i, _ in unlabeled.items] == list(range(12, 24))
    assert all(not sentence.has_tree for _, sentence in unlabeled.items)
    assert "junk" not in run.model.vocab.relations
    collate = StepCollator(run.train_parts, run.collators, run.target_readers)
    step = collate([(1, i, s) for i, s in unlabeled.items[:4]])
    assert not step.labeled and step.batch.heads is None and step.batch.label_ids is None
    assert step.targets is not None
    assert run.extra["data"]["n_labeled"] == 12 and run.extra["data"]["n_unlabeled"] == 12

    # the same seed with the unlabeled half's trees corrupted: the very same student
    first = distill(_student(data, tmp_path, teacher, "clean"))
    second = distill(_student(data, tmp_path, teacher, "corrupt", train=str(data["corrupted"])))
    assert first["data"]["n_labeled"] == second["data"]["n_labeled"] == 12
    assert first["data"]["n_unlabeled"] == 12 and len(first["history"]) == 2
    assert all(row["train_gold_loss"] > 0 and row["train_kd_loss"] > 0 for row in first["history"])
    states = [
        torch.load(tmp_path / name / "model.pt", weights_only=True)["state_dict"]
        for name in ("clean", "corrupt")
    ]
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    assert first["dev"]["las"] == second["dev"]["las"]
    # ...and not the student of the full trees (the gold loss would have read them)
    full = distill(_student(data, tmp_path, teacher, "full", labeled_fraction=None))
    assert full["data"]["n_labeled"] == 24 and full["data"]["n_unlabeled"] == 0
    state = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(state[key], states[0][key]) for key in state)


def test_teacher_targets_cover_every_sentence(data, tmp_path, teacher):
    options = _student(data, tmp_path, teacher, "targets", unlabeled=str(data["unlabeled"]))
    run = prepare_distill(options)
    assert [part.source for part in run.train_parts] == ["train", "train", "unlabeled"]
    for key, n in (("train", N_TRAIN), ("unlabeled", N_TRAIN // 2)):
        sentences = read_conllu(data["train"])[:n]
        ids = torch.arange(n)
        lengths = torch.tensor([len(s) for s in sentences])
        targets = run.target_readers[key](ids, lengths)
        mask = torch.arange(int(lengths.max()))[None] < lengths[:, None]
        assert torch.equal(targets.has_target, mask)
        sums = targets.probs.sum(-1)[mask]
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
    # the unlabeled text is the unlabeled half: its targets are those of the rest of train
    lengths = torch.tensor([len(s) for s in read_conllu(data["train"])])
    rest = run.target_readers["train"](torch.arange(12, 24), lengths[12:])
    text = run.target_readers["unlabeled"](torch.arange(12), lengths[12:])
    assert torch.allclose(rest.probs, text.probs, atol=1e-5)
    record = run.extra["distillation"]["teachers"][0]
    assert Path(record["cache"]).is_dir() and Path(record["unlabeled"]["cache"]).is_dir()


def test_unlabeled_conllu_with_blank_heads_from_the_command_line(data, tmp_path, teacher):
    out = tmp_path / "cli"
    arguments = ["distill", "--task", "dep", "--arch", "student-dep-offset"]
    arguments += ["--train", str(data["first_half"]), "--dev", str(data["dev"])]
    arguments += ["--out", str(out), "--teacher", teacher, "--method", "struct"]
    arguments += ["--unlabeled", str(data["unlabeled"]), "--epochs", "1", "--no-progress"]
    arguments += ["--cache-dir", str(data["root"] / "cache")]
    for name, value in TINY.items():
        arguments += ["--arch-override", f"{name}={value}"]
    assert main(arguments) == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["data"]["n_labeled"] == 12 and metrics["data"]["n_unlabeled"] == 12
    assert metrics["data"]["unlabeled"] == str(data["unlabeled"])
    assert metrics["history"][0]["train_kd_loss"] > 0


def test_the_no_kd_student_trains_on_the_labeled_part_only(data, tmp_path, teacher):
    options = _student(data, tmp_path, teacher, "none", method="none", teachers=[])
    run = prepare_distill(options)
    assert len(run.train_parts) == 1 and run.train_parts[0].labeled
    assert [i for i, _ in run.train_parts[0].items] == list(range(12))
    assert run.target_readers == {} and run.kd is None
    assert run.extra["data"]["n_labeled"] == 12 and run.extra["data"]["n_unlabeled"] == 0
    # its vocabulary is that of every student (all the training text), so one seed gives one
    # initialization
    kd = prepare_distill(_student(data, tmp_path, teacher, "kd"))
    assert run.model.vocab.to_dict() == kd.model.vocab.to_dict()
    with pytest.raises(ValueError, match="--unlabeled needs a KD method"):
        distill(DistillOptions(**{**options.__dict__, "unlabeled": str(data["unlabeled"])}))


def test_unlabeled_text_without_upos_is_refused_naming_the_file(data, tmp_path, teacher):
    for name, message in (("no_upos", "has no UPOS"), ("tokens", "is not CoNLL-U")):
        options = _student(data, tmp_path, teacher, name, unlabeled=str(data[name]))
        with pytest.raises(ValueError, match=message) as error:
            prepare_distill(options)
        assert str(data[name]) in str(error.value) and "UPOS" in str(error.value)
        assert not (tmp_path / name).exists()


DEP_CONFIG = """
[experiment]
name = "dep semi"
task = "dep"
output_dir = "{out}"

[data]
dataset = "toy"
train = "{train}"
dev = "{dev}"
test = "{dev}"
unlabeled = "{unlabeled}"

[defaults]
epochs = 1

[teachers.hs]
arch = "parser-head-selection"

[students.offset]
arch = "student-dep-offset"

[cases.dep]
teacher = "hs"
student = "offset"

[[grid]]
cases = ["dep"]
methods = ["none", "struct"]
seeds = [1]
labeled_fractions = [0.5]
"""


def test_experiment_plans_dep_teachers_on_the_labeled_part(data, tmp_path, capsys, monkeypatch):
    from structkd import api
    from structkd.experiment import run_experiment

    path = tmp_path / "dep.toml"
    path.write_text(
        DEP_CONFIG.format(
            out=tmp_path / "out", train=data["train"], dev=data["dev"], unlabeled=data["unlabeled"]
        ),
        encoding="utf-8",
    )
    assert main(["experiment", str(path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "teacher-hs-s1-f0.5" in printed and "3 runs (1 teachers, 2 students)" in printed
    config = load_config(path)
    plan = plan_experiment(config)
    runs = {run.options.get("method", "teacher"): run for run in plan.runs}
    assert {run.options["labeled_fraction"] for run in plan.runs} == {0.5}
    assert runs["struct"].options["unlabeled"] == str(data["unlabeled"])
    assert "unlabeled" not in runs["none"].options
    assert runs["teacher"].options["vocab_text"] == [str(data["unlabeled"])]

    passed = []
    score = {"uas": 0.5, "las": 0.4, "well_formed_rate": 1.0, "sentences_per_second": 1.0}

    def fake(options):
        passed.append(options)
        return {"dev": score, "test": score}

    monkeypatch.setattr(api, "train", fake)
    monkeypatch.setattr(api, "distill", fake)
    run_experiment(config, TrainingLayerRun(config.cache_dir), log=lambda m: None, command="c")
    by_kind = {type(options).__name__: options for options in passed}
    assert by_kind["TrainOptions"].max_train_sentences == N_TRAIN // 2  # the labeled half
    students = [options for options in passed if isinstance(options, DistillOptions)]
    assert {options.labeled_fraction for options in students} == {0.5}
    # the dep config without the refusals of old: fraction 0.1 and unlabeled text parse
    raw = {
        "experiment": {"name": "x", "task": "dep", "output_dir": str(tmp_path / "x")},
        "data": {
            "dataset": "toy",
            "train": "t.conllu",
            "dev": "d.conllu",
            "test": "d.conllu",
            "unlabeled": "u",
        },
        "teachers": {"hs": {"arch": "parser-head-selection"}},
        "students": {"offset": {"arch": "student-dep-offset"}},
        "cases": {"dep": {"teacher": "hs", "student": "offset"}},
        "grid": [
            {"cases": ["dep"], "methods": ["struct"], "seeds": [1], "labeled_fractions": [0.1]}
        ],
    }
    assert parse_config(raw).unlabeled == "u"
