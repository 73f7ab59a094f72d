"""Serving NER models (``structkd.load``, ``structkd predict``): documents with character offsets,
entities with their exact probabilities (checked against enumeration of every tag sequence), the
same tags as the tagger's decoding, the input and output formats, one-line errors."""

from __future__ import annotations

import io
import itertools
import json
import math
import shutil
import sys
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import structkd
from structkd.api import predict, read_inputs, train
from structkd.cli import main
from structkd.data.batching import TaggingCollator
from structkd.data.conll import DataError, Sentence, read_tokenized
from structkd.serve.results import Document
from structkd.serve.text import TokenizedSentence
from structkd.structures.factorized import Factorized
from structkd.structures.linear_chain import LinearChainCRF, transition_constraints
from structkd.structures.semimarkov import SemiMarkovSpans
from structkd.tasks.ner import serving
from structkd.tasks.ner.metrics import label_spans
from structkd.tasks.ner.model import load_tagger
from structkd.tasks.ner.serving import entity_spans, span_probabilities
from structkd.train.checkpoint import COMPLETE_FILE
from tests.distill.enumeration import bioes_parse
from tests.structures.brute_chains import enumerate_chain
from tests.tasks.ner import TINY, tiny_options, write_conll, write_tokens

TEXT = "Alice Smith visited Paris today. Bob works at Acme Inc in Rome.\n\nCarol met Dave."


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny taggers of each head on 40 sentences: a CRF overfitted (12 epochs), a softmax and a
    span tagger trained briefly (their predictions need only be what the model says)."""
    tmp_path = tmp_path_factory.mktemp("serving")
    write_conll(tmp_path / "train.conll", 40, seed=1)
    train(tiny_options(tmp_path, "crf"))
    train(tiny_options(tmp_path, "softmax", arch="student-softmax", epochs=2))
    span = {**TINY, "head": "span", "span_ffnn_dim": 8, "span_dropout": 0.0}
    train(tiny_options(tmp_path, "span", arch_overrides=span, epochs=2))
    return tmp_path


def _decoded(model_dir, sentences: list[list[str]]):
    """The tagger's own decoding of ``sentences``: BIOES tags, their marginals, the labels."""
    tagger, info = load_tagger(model_dir)
    batch = TaggingCollator(info.vocab)([(i, Sentence(s)) for i, s in enumerate(sentences)])
    best = tagger.decode(batch)
    marginals = tagger.token_marginals(batch)
    return best, marginals, info.vocab.labels


# -- the documents ------------------------------------------------------------------------------


def test_load_predicts_raw_text_with_character_offsets(models) -> None:
    predictor = structkd.load(models / "crf")
    assert predictor.task == "ner" and predictor.backend == "torch"
    document = predictor.predict(TEXT)
    assert isinstance(document, Document) and document.text == TEXT
    assert len(document.sentences) == 3
    for token in document.tokens:
        assert TEXT[token.start : token.end] == token.text
        assert token.tag is not None and 0.0 <= token.tag_score <= 1.0
    assert document.entities, "the overfitted tagger finds the names it was trained on"
    for entity in document.entities:
        assert document.text[entity.start : entity.end] == entity.text
        assert entity.label in ("LOC", "ORG", "PER") and 0.0 < entity.score <= 1.0
        sentence = document.sentences[entity.sentence]
        assert sentence.tokens[entity.token_start].start == entity.start
        assert sentence.tokens[entity.token_end - 1].end == entity.end
    found = {(entity.text, entity.label) for entity in document.entities}
    assert {("Alice Smith", "PER"), ("Acme Inc", "ORG")} <= found
    several = predictor.predict([TEXT, "", "Bob met Alice ."])
    assert [len(d.sentences) for d in several] == [3, 0, 1]
    # batched with other texts (more padding): the same labels, scores up to rounding
    again = several[0]
    assert [t.tag for t in again.tokens] == [t.tag for t in document.tokens]
    assert [t.tag_score for t in again.tokens] == pytest.approx(
        [t.tag_score for t in document.tokens], abs=1e-5
    )
    assert [(e.start, e.end, e.label) for e in again.entities] == [
        (e.start, e.end, e.label) for e in document.entities
    ]


@pytest.mark.parametrize("head", ["crf", "softmax", "span"])
def test_predictions_are_the_taggers_decoding_and_marginals(models, head) -> None:
    """The tags are the tagger's argmax (what ``structkd predict`` has always written), their
    scores its token marginals, the entities the strict chunks of the argmax."""
    text = write_tokens(models / f"input-{head}.txt", 12, seed=5)
    sentences = [sentence.tokens for sentence in read_tokenized(text)]
    best, marginals, labels = _decoded(models / head, sentences)
    documents = structkd.load(models / head, batch_size=5).predict(sentences)
    types_ = ("LOC", "ORG", "PER")
    for index, (tokens, document) in enumerate(zip(sentences, documents, strict=True)):
        row = best[index, : len(tokens)].tolist()
        assert [token.tag for token in document.tokens] == [labels[label] for label in row]
        expected = marginals[index, torch.arange(len(tokens)), best[index, : len(tokens)]]
        assert [token.tag_score for token in document.tokens] == pytest.approx(
            expected.tolist(), abs=1e-6
        )
        spans = [(e.token_start, e.token_end - 1, e.label) for e in document.entities]
        assert spans == [(i, j, types_[r]) for i, j, r in label_spans(row, 3)]


def test_iob2_tags_and_their_summed_marginals(models) -> None:
    sentences = [["Alice", "Smith", "met", "Bob"], ["Acme", "Inc", "in", "Paris", "today"]]
    _, marginals, labels = _decoded(models / "crf", sentences)
    bioes = structkd.load(models / "crf").predict(sentences)
    iob2 = structkd.load(models / "crf", scheme="iob2").predict(sentences)
    for index, (one, other) in enumerate(zip(bioes, iob2, strict=True)):
        for position, (token, mapped) in enumerate(zip(one.tokens, other.tokens, strict=True)):
            prefix = token.tag[0]
            expected = "O" if token.tag == "O" else {"S": "B", "E": "I"}.get(prefix, prefix)
            assert mapped.tag == expected + token.tag[1:]
            same = [k for k, label in enumerate(labels) if label[2:] == token.tag[2:]]
            same = [k for k in same if (labels[k][0] in "BS") == (prefix in "BS")]
            total = float(marginals[index, position, same].sum())
            assert mapped.tag_score == pytest.approx(total, abs=1e-6)
        assert [e.to_dict() for e in other.entities] == [e.to_dict() for e in one.entities]
    with pytest.raises(ValueError, match="scheme must be one of bioes, iob2"):
        structkd.load(models / "crf", scheme="iob1")


# -- exact entity probabilities -----------------------------------------------------------------


def _paths(n_tokens: int, n_types: int):
    """Every labeled span of a sentence: ``(first, last, type, BIOES labels on first..last)``."""
    for first, last, entity_type in itertools.product(
        range(n_tokens), range(n_tokens), range(n_types)
    ):
        if last < first:
            continue
        base = 1 + 4 * entity_type
        if first == last:
            yield first, last, entity_type, [base + 3]
        else:
            yield first, last, entity_type, [base] + [base + 1] * (last - first - 1) + [base + 2]


def _check_against_enumeration(distribution, lengths, probabilities_of) -> None:
    """``span_probabilities`` of every labeled span of every sentence equals the summed
    probability of the tag sequences that carry its labels (``probabilities_of(b)``:
    ``(sequences, probabilities)`` of sentence ``b``)."""
    n_types = 2
    rows, labels = [], torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    expected = []
    for sentence, length in enumerate(lengths):
        sequences, probabilities = probabilities_of(sentence)
        for first, last, entity_type, path in _paths(length, n_types):
            label_row = torch.zeros(max(lengths), dtype=torch.long)
            label_row[first : last + 1] = torch.tensor(path)
            rows.append((sentence, first, last, entity_type, label_row))
            carries = (sequences[:, first : last + 1] == torch.tensor(path)).all(-1)
            expected.append(float(probabilities[carries].sum()))
    # one call per span (each span has its own label row); batched over spans of equal labels
    for (sentence, first, last, entity_type, label_row), want in zip(rows, expected, strict=True):
        labels[sentence] = label_row
        spans = torch.tensor([[sentence, first, last, entity_type]])
        got = span_probabilities(distribution, labels, spans)
        assert got.dtype == torch.float64
        assert float(got[0]) == pytest.approx(want, abs=1e-9), (sentence, first, last, entity_type)


@pytest.mark.parametrize("constrained", [True, False])
def test_crf_entity_probability_is_exact(constrained) -> None:
    torch.manual_seed(0)
    lengths = [4, 3, 1]
    names = ["O", "B-A", "I-A", "E-A", "S-A", "B-B", "I-B", "E-B", "S-B"]
    emissions = torch.randn(3, 4, 9, dtype=torch.float64) * 2
    transitions = torch.randn(9, 9, dtype=torch.float64)
    start, end = torch.randn(9, dtype=torch.float64), torch.randn(9, dtype=torch.float64)
    allowed = transition_constraints(names, "bioes") if constrained else (None, None, None)
    crf = LinearChainCRF(
        emissions,
        transitions,
        start,
        end,
        lengths=torch.tensor(lengths),
        allowed_transitions=allowed[0],
        allowed_start=allowed[1],
        allowed_end=allowed[2],
    )

    def enumerated(sentence: int):
        found = enumerate_chain(
            emissions[sentence], transitions, lengths[sentence], start, end, 1.0, *allowed
        )
        return torch.tensor(found.sequences), found.probabilities

    _check_against_enumeration(crf, lengths, enumerated)


def test_softmax_entity_probability_is_the_product_of_token_marginals() -> None:
    torch.manual_seed(1)
    lengths = [4, 2]
    logits = torch.randn(2, 4, 9, dtype=torch.float64) * 2
    tagger = Factorized(logits, torch.tensor(lengths))

    def enumerated(sentence: int):
        found = enumerate_chain(logits[sentence], None, lengths[sentence])
        return torch.tensor(found.sequences), found.probabilities

    _check_against_enumeration(tagger, lengths, enumerated)


def test_span_entity_probability_is_the_span_marginal() -> None:
    torch.manual_seed(2)
    lengths = [4, 3]
    scores = torch.randn(2, 4, 4, 2, dtype=torch.float64) * 2
    spans = SemiMarkovSpans(scores, torch.tensor(lengths))

    def enumerated(sentence: int):
        length = lengths[sentence]
        valid, parsed = bioes_parse(length, 2)
        sequences = torch.tensor(list(itertools.product(range(9), repeat=length)))[valid]
        totals = []
        for rows in parsed[valid].tolist():
            totals.append(sum(float(scores[sentence, i, j, r]) for i, j, r in rows if i >= 0))
        totals = torch.tensor(totals, dtype=torch.float64)
        return sequences, torch.exp(totals - torch.logsumexp(totals, 0))

    _check_against_enumeration(spans, lengths, enumerated)


def test_entity_probabilities_of_a_batch_in_one_call() -> None:
    """The argmax's entities of a whole batch at once equal the probabilities of the paths."""
    torch.manual_seed(3)
    names = ["O", "B-A", "I-A", "E-A", "S-A", "B-B", "I-B", "E-B", "S-B"]
    allowed, allowed_start, allowed_end = transition_constraints(names, "bioes")
    lengths = torch.tensor([4, 3, 2, 4])
    crf = LinearChainCRF(
        torch.randn(4, 4, 9, dtype=torch.float64) * 3,
        torch.randn(9, 9, dtype=torch.float64),
        lengths=lengths,
        allowed_transitions=allowed,
        allowed_start=allowed_start,
        allowed_end=allowed_end,
    )
    best = crf.argmax
    spans = entity_spans(best)
    assert len(spans) > 0
    probabilities = span_probabilities(crf, best, spans)
    enumerated = [
        enumerate_chain(
            crf.emissions[sentence], crf.transitions, int(length), None, None, 1.0,
            allowed, allowed_start, allowed_end,
        )
        for sentence, length in enumerate(lengths)
    ]  # fmt: skip
    for (sentence, first, last, _), probability in zip(
        spans.tolist(), probabilities.tolist(), strict=True
    ):
        # P(labels on first..last) = sum over the other positions of P(y) with those labels
        sequences = torch.tensor(enumerated[sentence].sequences)
        carries = (sequences[:, first : last + 1] == best[sentence, first : last + 1]).all(-1)
        expected = float(enumerated[sentence].probabilities[carries].sum())
        assert probability == pytest.approx(expected, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 8), min_size=1, max_size=9), min_size=1, max_size=5))
def test_entity_spans_are_the_strict_chunks(rows) -> None:
    width = max(len(row) for row in rows)
    labels = torch.tensor([row + [-1] * (width - len(row)) for row in rows])
    found = entity_spans(labels).tolist()
    expected = [
        [sentence, first, last, entity_type]
        for sentence, row in enumerate(rows)
        for first, last, entity_type in label_spans(row, 2)
    ]
    assert found == expected


# -- predict: formats and errors ----------------------------------------------------------------


def test_predict_raw_text_writes_one_json_document_per_line(models, tmp_path) -> None:
    source = tmp_path / "news.txt"
    source.write_text("Alice Smith visited Paris. Bob met Carol.\n\n  \nAcme Inc works.\n")
    output = tmp_path / "news.jsonl"
    count = predict(models / "crf", str(source), str(output), input_format="raw",
                    output_format="json")  # fmt: skip
    lines = output.read_text(encoding="utf-8").splitlines()
    assert count == 3 and len(lines) == 2
    documents = [json.loads(line) for line in lines]
    assert documents[0]["text"] == "Alice Smith visited Paris. Bob met Carol."
    for document in documents:
        for entity in document["entities"]:
            assert document["text"][entity["start"] : entity["end"]] == entity["text"]
        for sentence in document["sentences"]:
            for token in sentence["tokens"]:
                assert document["text"][token["start"] : token["end"]] == token["text"]
    # the same through the command line, from standard input
    assert main(["predict", "--model", str(models / "crf"), "--input", str(source),
                 "--input-format", "raw", "--format", "json",
                 "--output", str(tmp_path / "cli.jsonl")]) == 0  # fmt: skip
    assert (tmp_path / "cli.jsonl").read_text(encoding="utf-8") == output.read_text("utf-8")


def test_predict_conll_matches_the_documents(models, tmp_path, capsys, monkeypatch) -> None:
    """CoNLL out: ``word tag probability``; a CoNLL input's gold column is not copied."""
    source = write_conll(tmp_path / "gold.conll", 5, seed=7)
    assert predict(models / "crf", str(source), str(tmp_path / "out.conll")) == 5
    blocks = (tmp_path / "out.conll").read_text(encoding="utf-8").strip().split("\n\n")
    sentences = [s.tokens for s in read_tokenized(write_tokens(tmp_path / "t.txt", 5, seed=7))]
    documents = structkd.load(models / "crf").predict(sentences)
    for block, document in zip(blocks, documents, strict=True):
        rows = [line.split(" ") for line in block.splitlines()]
        assert [row[0] for row in rows] == [token.text for token in document.tokens]
        assert [row[1] for row in rows] == [token.tag for token in document.tokens]
        assert [float(row[2]) for row in rows] == pytest.approx(
            [token.tag_score for token in document.tokens], abs=5e-5
        )
    # standard input, tokens by the auto rules, IOB2
    monkeypatch.setattr(sys, "stdin", io.StringIO("Alice met Bob\nAcme Inc\n"))
    assert main(["predict", "--model", str(models / "crf"), "--input", "-",
                 "--scheme", "iob2"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert [line.split(" ")[0] for line in out.splitlines() if line] == [
        "Alice", "met", "Bob", "Acme", "Inc",
    ]  # fmt: skip
    assert all(line.split(" ")[1][0] in "OBI" for line in out.splitlines() if line)


def test_read_inputs_formats(tmp_path) -> None:
    conllu = tmp_path / "trees.conllu"
    conllu.write_text(
        "# text = Alice met Bob\n1\tAlice\t_\tPROPN\t_\t_\t_\t_\t_\t_\n"
        "2\tmet\t_\tVERB\t_\t_\t_\t_\t_\t_\n3\tBob\t_\tPROPN\t_\t_\t_\t_\t_\t_\n",
        encoding="utf-8",
    )
    (sentence,) = read_inputs(conllu)
    assert isinstance(sentence, TokenizedSentence)
    assert sentence.tokens == ("Alice", "met", "Bob") and sentence.upos == (
        "PROPN",
        "VERB",
        "PROPN",
    )
    assert sentence.starts == (0, 6, 10) and sentence.ends == (5, 9, 13)
    plain = tmp_path / "trees.txt"  # CoNLL-U content without the suffix
    plain.write_text(conllu.read_text(encoding="utf-8"), encoding="utf-8")
    assert read_inputs(plain) == [sentence]
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("Alice met Bob .\n\nAcme Inc\n", encoding="utf-8")
    found = [s.tokens for s in read_inputs(tokens)]
    assert found == [("Alice", "met", "Bob", "."), ("Acme", "Inc")]
    assert read_inputs(tokens, "raw") == ["Alice met Bob .", "Acme Inc"]
    column = write_conll(tmp_path / "column.conll", 3, seed=1)
    assert len(read_inputs(column)) == 3 and read_inputs(column, "conll") == read_inputs(column)
    with pytest.raises(ValueError, match="input_format must be one of"):
        read_inputs(tokens, "csv")
    with pytest.raises(ValueError, match="neither a known data set"):
        read_inputs(tmp_path / "missing.txt")


def test_bad_input_is_one_line_naming_file_and_line(models, tmp_path, capsys) -> None:
    model = str(models / "crf")
    broken = tmp_path / "broken.conll"
    broken.write_bytes(b"Alice B-PER\nmet O\n\nBob\n\xff O\n")
    with pytest.raises(DataError, match=r"broken\.conll, line 5: not valid UTF-8"):
        predict(model, str(broken), str(tmp_path / "out.conll"), input_format="conll")
    assert not (tmp_path / "out.conll").exists()

    def error_line(argv: list[str]) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"structkd {argv[0]}: error: ") and err.count("\n") == 1, err
        return err

    bad = tmp_path / "bad.conllu"
    bad.write_text("1\tAlice\t_\tPROPN\t_\t_\t_\t_\t_\t_\n3\tBob\t_\t_\t_\t_\t_\t_\t_\t_\n")
    line = error_line(["predict", "--model", model, "--input", str(bad)])
    assert "bad.conllu, line 2" in line and "out of sequence" in line
    ambiguous = tmp_path / "ambiguous.txt"
    ambiguous.write_text("Alice B-PER\nthe cat sat\non the mat\n", encoding="utf-8")
    line = error_line(["predict", "--model", model, "--input", str(ambiguous)])
    assert "ambiguous.txt, line 1" in line and "--input-format conll" in line
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "empty.txt, line 1" in error_line(["predict", "--model", model, "--input", str(empty)])
    line = error_line(["predict", "--model", model, "--input", str(broken), "--format", "conllu"])
    assert "NER predictions can be written as conll, json; got 'conllu'" in line


def test_missing_or_unfinished_models_are_one_line_errors(models, tmp_path, capsys) -> None:
    text = write_tokens(tmp_path / "in.txt", 2, seed=1)
    assert main(["predict", "--model", str(tmp_path / "nope"), "--input", str(text)]) == 2
    assert "does not exist" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    shutil.copytree(models / "crf", unfinished)
    (unfinished / COMPLETE_FILE).unlink()
    assert main(["predict", "--model", str(unfinished), "--input", str(text)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training did not finish" in err
    with pytest.raises(ValueError, match="training did not finish"):
        structkd.load(unfinished)


def test_an_exported_directory_is_served_by_the_onnx_predictor(models, tmp_path, monkeypatch):
    """``load_predictor`` hands a directory with an ``export.json`` to ``OnnxNerPredictor`` with
    the same options (the module is another's; a stand-in records the call)."""
    calls = []

    class Stand:
        def __init__(self, model_dir, **options):
            calls.append((model_dir, options))

    module = types.ModuleType("structkd.tasks.ner.onnx_serving")
    module.OnnxNerPredictor = Stand
    monkeypatch.setitem(sys.modules, "structkd.tasks.ner.onnx_serving", module)
    (tmp_path / "export.json").write_text("{}", encoding="utf-8")
    predictor = serving.load_predictor(tmp_path, batch_size=3, num_threads=2, scheme="iob2")
    assert isinstance(predictor, Stand)
    options = {"batch_size": 3, "num_threads": 2, "device": "cpu", "scheme": "iob2"}
    assert calls == [(tmp_path, options)]
    assert isinstance(serving.load_predictor(models / "crf"), serving.TorchNerPredictor)


def test_serving_imports_no_torch() -> None:
    import subprocess

    code = (
        "import sys, structkd.tasks.ner.serving, structkd.api; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_entity_score_is_never_above_one_or_nan(models) -> None:
    documents = structkd.load(models / "span").predict(["Alice Smith met Bob in Paris ."] * 3)
    for document in documents:
        for entity in document.entities:
            assert not math.isnan(entity.score) and 0.0 <= entity.score <= 1.0


def test_export_then_predict_from_the_command_line(models, tmp_path, capsys) -> None:
    """``structkd export`` writes a directory that ``structkd.load`` and ``structkd predict``
    serve without torch, with the torch predictor's labels and probabilities."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "exported"
    assert main(["export", "--model", str(models / "crf"), "--out", str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    exported, trained = structkd.load(out), structkd.load(models / "crf")
    assert exported.backend == "onnx" and trained.backend == "torch"
    one, other = exported.predict(TEXT), trained.predict(TEXT)
    assert [t.tag for t in one.tokens] == [t.tag for t in other.tokens]
    assert [e.score for e in one.entities] == pytest.approx(
        [e.score for e in other.entities], abs=1e-5
    )
    text = write_tokens(tmp_path / "in.txt", 4, seed=3)
    for model, name in ((out, "exported.conll"), (models / "crf", "trained.conll")):
        argv = [
            "predict",
            "--model",
            str(model),
            "--input",
            str(text),
            "--output",
            str(tmp_path / name),
        ]
        assert main(argv) == 0
    rows = [
        [line.split(" ") for line in (tmp_path / name).read_text("utf-8").splitlines()]
        for name in ("exported.conll", "trained.conll")
    ]
    assert [row[:2] for row in rows[0]] == [row[:2] for row in rows[1]]
    assert main(["predict", "--task", "dep", "--model", str(out), "--input", str(text)]) == 2
    assert f"{str(out)!r} holds a 'ner' model, not a 'dep' model" in capsys.readouterr().err
