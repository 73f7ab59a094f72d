"""`structkd train`, `evaluate`, `predict`: model directories, metrics, marginals, errors."""

from __future__ import annotations

import json

import pytest
import torch

from structkd.api import evaluate, predict, train
from structkd.cli import main
from structkd.data.batching import TaggingCollator
from structkd.data.conll import read_tokenized
from structkd.tasks.ner.model import load_tagger
from structkd.train.checkpoint import MODEL_FILE
from tests.tasks.ner import TINY, tiny_options, write_conll, write_tokens


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CRF tagger overfitted on 40 sentences (dev = train), with a test set."""
    tmp_path = tmp_path_factory.mktemp("train")
    write_conll(tmp_path / "train.conll", 40, seed=1)
    write_conll(tmp_path / "test.conll", 15, seed=2)
    metrics = train(tiny_options(tmp_path, "model", test=str(tmp_path / "test.conll")))
    return tmp_path, metrics


def test_train_writes_a_weights_only_model_and_metrics(trained) -> None:
    tmp_path, metrics = trained
    model_dir = tmp_path / "model"
    data = torch.load(model_dir / MODEL_FILE, weights_only=True)
    assert data["arch"] == "student-crf" and data["config"]["lstm_hidden"] == TINY["lstm_hidden"]
    assert all(isinstance(value, torch.Tensor) for value in data["state_dict"].values())
    on_disk = json.loads((model_dir / "metrics.json").read_text())
    assert json.loads((model_dir / "config.json").read_text())["types"] == ["LOC", "ORG", "PER"]
    for key in ("best_epoch", "n_parameters", "sentences_per_second", "training_seconds"):
        assert on_disk[key] == metrics[key]
    for split in ("dev", "test"):
        scores = on_disk[split]
        assert {"precision", "recall", "f1", "per_type", "sentences_per_second"} <= set(scores)
        assert set(scores["per_type"]) == {"LOC", "ORG", "PER"}
    assert on_disk["n_parameters"] == load_tagger(model_dir)[0].n_parameters() > 0
    assert len(on_disk["history"]) == 12 and on_disk["world_size"] == 1
    best = on_disk["history"][on_disk["best_epoch"]]
    assert best["dev_f1"] == pytest.approx(on_disk["dev"]["f1"])  # the best model was kept


def test_evaluate_overfitted_model_on_its_training_data(trained) -> None:
    tmp_path, _ = trained
    result = evaluate(tmp_path / "model", str(tmp_path / "train.conll"))
    assert result["f1"] == 1.0 and result["precision"] == 1.0 and result["recall"] == 1.0
    assert result["per_type"]["PER"]["f1"] == 1.0 and result["per_type"]["PER"]["support"] > 0
    assert result["sentences_per_second"] > 0 and result["n_sentences"] == 40


def test_predict_writes_the_token_marginals(trained, capsys) -> None:
    tmp_path, _ = trained
    text = write_tokens(tmp_path / "input.txt", 6, seed=5)
    output = tmp_path / "predicted.conll"
    assert predict(tmp_path / "model", str(text), str(output)) == 6
    blocks = [block.splitlines() for block in output.read_text().strip().split("\n\n")]
    tagger, info = load_tagger(tmp_path / "model")
    sentences = read_tokenized(text)
    batch = TaggingCollator(info.vocab)(list(enumerate(sentences)))
    marginals = tagger.token_marginals(batch)
    best = tagger.decode(batch)
    labels = info.vocab.labels
    for index, block in enumerate(blocks):
        rows = [line.split() for line in block]
        assert [row[0] for row in rows] == sentences[index].tokens
        for position, (_, tag, probability) in enumerate(rows):
            label = int(best[index, position])
            assert tag == labels[label]
            assert float(probability) == pytest.approx(
                float(marginals[index, position, label]), abs=6e-5
            )
    # IOB2 output: the probability of B-x is the marginal of B-x plus S-x, and so on
    assert main(["predict", "--model", str(tmp_path / "model"), "--input", str(text),
                 "--scheme", "iob2"]) == 0  # fmt: skip
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line]
    first = [line.split() for line in blocks[0]]
    for (_, tag, probability), (_, bioes, _) in zip(rows, first, strict=False):
        assert tag == ("O" if bioes == "O" else {"S": "B", "E": "I"}.get(bioes[0], bioes[0]) +
                       bioes[1:])  # fmt: skip
        assert 0.0 <= float(probability) <= 1.0


def test_same_seed_same_model(tmp_path) -> None:
    write_conll(tmp_path / "train.conll", 12, seed=3)
    first = train(tiny_options(tmp_path, "a", epochs=2, arch_overrides={**TINY, "dropout": 0.3}))
    second = train(tiny_options(tmp_path, "b", epochs=2, arch_overrides={**TINY, "dropout": 0.3}))
    one = load_tagger(first["model_dir"])[0].state_dict()
    two = load_tagger(second["model_dir"])[0].state_dict()
    assert all(torch.equal(one[name], two[name]) for name in one)
    assert first["history"] == [
        {**row, "seconds": first["history"][i]["seconds"]}
        for i, row in enumerate(second["history"])
    ]


def _error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_cli_errors_are_one_line(trained, tmp_path, capsys) -> None:
    data_dir, _ = trained
    train_file = str(data_dir / "train.conll")
    model = str(data_dir / "model")

    def evaluate_error(model_dir: str, data: str) -> str:
        return _error_line(capsys, ["evaluate", "--model", model_dir, "--data", data])

    assert "does not exist" in evaluate_error(str(tmp_path / "nope"), train_file)
    (tmp_path / "empty").mkdir()
    assert "has no model.pt" in evaluate_error(str(tmp_path / "empty"), train_file)
    broken = tmp_path / "broken.conll"
    broken.write_text("Alice B-PER\nBob I-PER extra\n", encoding="utf-8")
    assert "broken.conll, line 2" in evaluate_error(model, str(broken))
    misc = write_conll(tmp_path / "misc.conll", 10, seed=4, types=("MISC", "PER"))
    assert "MISC" in evaluate_error(model, str(misc))
    line = _error_line(
        capsys,
        ["distill", "--teacher", str(data_dir / "model"), "--train", str(misc), "--dev", str(misc),
         "--out", str(tmp_path / "student"), "--cache-dir", str(tmp_path / "cache")],
    )  # fmt: skip
    assert "MISC" in line and "label set" in line
    line = _error_line(
        capsys,
        ["train", "--train", str(tmp_path / "missing.conll"), "--dev", train_file,
         "--out", str(tmp_path / "x")],
    )  # fmt: skip
    assert "neither a known data set" in line
    line = _error_line(
        capsys,
        ["train", "--train", train_file, "--dev", train_file, "--out", str(tmp_path / "x"),
         "--arch", "student-crf", "--arch-override", "no_such_field=1"],
    )  # fmt: skip
    assert "no_such_field" in line


def test_predict_refuses_to_overwrite_its_input(trained, tmp_path, capsys) -> None:
    data_dir, _ = trained
    source = tmp_path / "input.conll"
    text = "-DOCSTART- O\n\nAlice B-PER\nmet O\n"
    source.write_text(text, encoding="utf-8")
    model = str(data_dir / "model")
    with pytest.raises(ValueError, match="is the input file"):
        predict(model, str(source), str(source))
    line = _error_line(capsys, ["predict", "--model", model, "--input", str(source),
                                "--output", str(tmp_path / "." / "input.conll")])  # fmt: skip
    assert "is the input file" in line and "would destroy the input" in line
    (tmp_path / "link.conll").symlink_to(source)
    with pytest.raises(ValueError, match="is the input file"):
        predict(model, str(tmp_path / "link.conll"), str(source))
    assert source.read_text(encoding="utf-8") == text


def test_predict_checks_the_output_before_any_work(trained, tmp_path, monkeypatch) -> None:
    data_dir, _ = trained
    text = write_tokens(tmp_path / "input.txt", 3, seed=5)
    import structkd.api as api

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(api, "load", no_work)
    monkeypatch.setattr(api, "read_inputs", no_work)
    with pytest.raises(ValueError, match="does not exist"):
        predict(data_dir / "model", str(text), str(tmp_path / "missing" / "out.conll"))
    with pytest.raises(ValueError, match="is a directory"):
        predict(data_dir / "model", str(text), str(tmp_path))


def test_predict_writes_its_output_atomically(trained, tmp_path, monkeypatch) -> None:
    data_dir, _ = trained
    text = write_tokens(tmp_path / "input.txt", 4, seed=5)
    output = tmp_path / "out.conll"
    output.write_text("an earlier result\n", encoding="utf-8")
    import structkd.tasks.ner.serving as serving

    write_conll_ = serving.write_conll

    def interrupted(stream, *args, **kwargs):
        stream.write("half a line")
        raise KeyboardInterrupt

    monkeypatch.setattr(serving, "write_conll", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict(data_dir / "model", str(text), str(output))
    assert output.read_text(encoding="utf-8") == "an earlier result\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["input.txt", "out.conll"]
    monkeypatch.setattr(serving, "write_conll", write_conll_)
    assert predict(data_dir / "model", str(text), str(output)) == 4
    assert len(output.read_text(encoding="utf-8").strip().split("\n\n")) == 4
    assert sorted(path.name for path in tmp_path.iterdir()) == ["input.txt", "out.conll"]
