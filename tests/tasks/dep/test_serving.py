"""Serving dependency models (``structkd.load``, ``structkd.api.predict``, ``export``): parses of
raw text, tokens and CoNLL-U (HEAD ``_`` allowed), the heads' probabilities (a student's label
probabilities summed per head, a tree CRF's arc marginals), the UPOS rules, CoNLL-U and JSON out,
and the ONNX export: the same parses as the torch student, served without importing torch."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import structkd
from structkd.api import DistillOptions, TrainOptions, distill, export, predict, train
from structkd.data.conllu_io import read_conllu
from structkd.data.dep_batching import DepCollator
from structkd.serve.text import TokenizedSentence
from structkd.tasks.dep import serving
from structkd.tasks.dep.data import load_dep_source
from structkd.tasks.dep.model import load_dep_model
from structkd.tasks.dep.onnx_serving import OnnxDepPredictor

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
WORDS = {
    "DET": ["bir", "bu"],
    "NOUN": ["Ev", "kedi", "Kitap", "okul"],
    "VERB": ["gel", "gördü", "Okudu"],
    "ADJ": ["büyük", "güzel"],
    "ADV": ["hızla", "çok"],
    "PRON": ["o", "Ben"],
    "PUNCT": [".", "!"],
}
TINY = {
    "word_dim": 8,
    "char_dim": 4,
    "char_filters": 8,
    "upos_dim": 4,
    "lstm_hidden": 12,
    "lstm_layers": 2,
}
RAW = "Bu kedi geldi. Ben çok okudu!\n\nKitap güzel."


def _treebank(n_sentences: int, seed: int, *, unparsed: bool = False) -> str:
    rng = random.Random(seed)
    blocks = []
    for index in range(n_sentences):
        upos, heads, relations = TEMPLATES[index % len(TEMPLATES)]
        lines = [f"# sent_id = s{seed}-{index}"]
        for word, (tag, head, rel) in enumerate(zip(upos, heads, relations, strict=True), 1):
            form = rng.choice(WORDS[tag])
            head_column, relation = ("_", "_") if unparsed else (str(head), rel)
            lines.append(f"{word}\t{form}\t_\t{tag}\t_\t_\t{head_column}\t{relation}\t_\t_")
        blocks.append("\n".join(lines) + "\n\n")
    return "".join(blocks)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny models trained on a toy treebank: the offset and PoS students, a matrix-tree and a
    head-selection parser; and the treebank's files."""
    root = tmp_path_factory.mktemp("dep-serving")
    paths = {}
    for split, (count, seed) in {"train": (40, 1), "dev": (12, 2), "test": (16, 3)}.items():
        paths[split] = root / f"{split}.conllu"
        paths[split].write_text(_treebank(count, seed), encoding="utf-8")
    paths["unparsed"] = root / "unparsed.conllu"
    paths["unparsed"].write_text(_treebank(16, 3, unparsed=True), encoding="utf-8")
    common = {
        "train": str(paths["train"]),
        "dev": str(paths["dev"]),
        "task": "dep",
        "epochs": 4,
        "batch_size": 8,
        "learning_rate": 1e-2,
        "patience": None,
        "progress": False,
        "num_threads": 1,
    }
    dirs = dict(paths)
    for name, arch in (("offset", "student-dep-offset"), ("pos", "student-dep-pos")):
        dirs[name] = root / name
        distill(
            DistillOptions(
                **common, out=str(dirs[name]), arch=arch, arch_overrides=TINY, method="none"
            )
        )
    parser_sizes = {**TINY, "arc_dim": 16, "rel_dim": 8}
    for name, arch in (("mtt", "parser-matrix-tree"), ("heads", "parser-head-selection")):
        dirs[name] = root / name
        train(TrainOptions(**common, out=str(dirs[name]), arch=arch, arch_overrides=parser_sizes))
    for name in ("offset", "pos"):
        dirs[f"{name}-onnx"] = root / f"{name}-onnx"
        export(dirs[name], dirs[f"{name}-onnx"])
    return dirs


def _tagged(path) -> list[TokenizedSentence]:
    """The sentences of a CoNLL-U file as tokenized input with their UPOS."""
    inputs = []
    for sentence in read_conllu(path, require_trees=False):
        starts, position = [], 0
        for word in sentence.words:
            starts.append(position)
            position += len(word) + 1
        ends = [start + len(word) for start, word in zip(starts, sentence.words, strict=True)]
        inputs.append(TokenizedSentence(sentence.words, tuple(starts), tuple(ends), sentence.upos))
    return inputs


def _is_tree(heads: list[int]) -> bool:
    from structkd.data.conllu_io import tree_problem

    return tree_problem(heads) is None


def _parses(documents) -> list[list[tuple]]:
    return [
        [(t.head, t.deprel, t.head_score) for t in s.tokens] for d in documents for s in d.sentences
    ]


# ------------------------------------------------------------------------------- torch


@pytest.mark.parametrize("name", ["offset", "mtt"])
def test_parses_equal_the_models_decoding(models, name):
    """Tagged input: the predictor's heads and relations are the model's decoding of the same
    sentences collated for evaluation."""
    predictor = structkd.load(models[name], num_threads=1, batch_size=5)
    assert predictor.backend == "torch" and predictor.task == "dep"
    documents = predictor.predict(_tagged(models["test"]))
    model, info = load_dep_model(models[name])
    sentences = load_dep_source(str(models["test"])).sentences
    batch = DepCollator(info.vocab, info.scheme, labeled=False)(list(enumerate(sentences)))
    with torch.no_grad():
        decoded = model.decode(batch, model(batch))
    heads, rel_ids = (decoded.heads, decoded.rel_ids) if info.kind == "student" else decoded
    for row, document in enumerate(documents):
        tokens = document.tokens
        n = len(tokens)
        assert [t.head for t in tokens] == heads[row, 1 : n + 1].tolist()
        assert [t.deprel for t in tokens] == [
            info.vocab.relations[r] for r in rel_ids[row, 1 : n + 1]
        ]
        assert [t.upos for t in tokens] == list(sentences[row].upos)
        assert all(0.0 <= t.head_score <= 1.0 for t in tokens)


def test_student_head_scores_sum_the_label_probabilities(models):
    predictor = structkd.load(models["offset"], num_threads=1)
    documents = predictor.predict(_tagged(models["test"]))
    model, info = load_dep_model(models["offset"])
    sentences = load_dep_source(str(models["test"])).sentences
    batch = DepCollator(info.vocab, info.scheme, labeled=False)(list(enumerate(sentences)))
    with torch.no_grad():
        probabilities = torch.softmax(model(batch).double(), -1)  # [B, N, L]
    for row, document in enumerate(documents):
        for i, token in enumerate(document.tokens):
            denotes = batch.label_heads[row, i] == token.head
            expected = float(probabilities[row, i][denotes].sum())
            assert token.head_score == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("name", ["mtt", "heads"])
def test_parser_head_scores_are_its_arc_marginals(models, name):
    predictor = structkd.load(models[name], num_threads=1)
    documents = predictor.predict(_tagged(models["test"]))
    model, info = load_dep_model(models[name])
    sentences = load_dep_source(str(models["test"])).sentences
    batch = DepCollator(info.vocab, labeled=False)(list(enumerate(sentences)))
    with torch.no_grad():
        marginals = model.arc_marginals(model(batch), batch.lengths)  # [B, head, dependent]
    for row, document in enumerate(documents):
        for i, token in enumerate(document.tokens, start=1):
            assert token.head_score == pytest.approx(float(marginals[row, token.head, i]), abs=1e-6)
        heads = [t.head for t in document.tokens]
        assert _is_tree(heads)


def test_raw_text_and_tokens_parse_with_unknown_upos_and_warn_once(models):
    predictor = structkd.load(models["offset"], num_threads=1)
    with pytest.warns(UserWarning, match="without UPOS"):
        document = predictor.predict(RAW)
    assert [len(s.tokens) for s in document.sentences] == [4, 4, 3]
    for sentence in document.sentences:
        assert _is_tree([t.head for t in sentence.tokens])
        assert all(t.upos is None and t.deprel for t in sentence.tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per predictor
        (tokens,) = predictor.predict([["Ben", "çok", "okudu", "."]])
    assert _is_tree([t.head for t in tokens.tokens])
    # without UPOS every word reads the UPOS embedding's zero (padding) row
    model, info = load_dep_model(models["offset"])
    item = serving.ParserInput(("Ben", "çok", "okudu", "."), None)
    batch = DepCollator(info.vocab, info.scheme, labeled=False)([(0, item)])
    assert batch.upos_ids.tolist() == [[0, 0, 0, 0]] and not batch.punct_mask.any()
    with torch.no_grad():
        decoded = model.decode(batch, model(batch))
    assert decoded.heads[0, 1:].tolist() == [t.head for t in tokens.tokens]


def test_the_pos_student_needs_upos(models):
    predictor = structkd.load(models["pos"], num_threads=1)
    with pytest.raises(ValueError, match="decodes heads from UPOS tags"):
        predictor.predict(RAW)
    documents = predictor.predict(_tagged(models["test"]))
    assert all(_is_tree([t.head for t in d.tokens]) for d in documents)
    exported = structkd.load(models["pos-onnx"])
    with pytest.raises(ValueError, match="give CoNLL-U input with the UPOS column"):
        exported.predict([["Ben", "geldi"]])


def test_predict_unparsed_conllu(models, tmp_path):
    """CoNLL-U whose HEAD and DEPREL are ``_`` is parsed (the UPOS column read)."""
    out = tmp_path / "parsed.conllu"
    assert predict(models["offset"], str(models["unparsed"]), str(out)) == 16
    parsed = read_conllu(out)  # trees now
    gold = load_dep_source(str(models["test"])).sentences
    assert [s.words for s in parsed] == [s.words for s in gold]
    assert [s.upos for s in parsed] == [s.upos for s in gold]
    tagged = structkd.load(models["offset"]).predict(_tagged(models["unparsed"]))
    assert [list(s.heads) for s in parsed] == [[t.head for t in d.tokens] for d in tagged]
    text = out.read_text(encoding="utf-8")
    assert "HeadProb=" in text and text.endswith("\n\n")
    jsonl = tmp_path / "parsed.jsonl"
    predict(models["mtt"], str(models["unparsed"]), str(jsonl), output_format="json")
    first = json.loads(jsonl.read_text(encoding="utf-8").splitlines()[0])
    assert {"head", "deprel", "head_score", "upos"} <= set(first["sentences"][0]["tokens"][0])


def test_write_documents(models):
    predictor = structkd.load(models["offset"], num_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        documents = predictor.predict(["Ben geldi.", "Kitap güzel!"])
    stream = io.StringIO()
    assert serving.write_documents(stream, documents, format="conllu") == 2
    blocks = stream.getvalue().split("\n\n")
    assert blocks[-1] == "" and len(blocks) == 3
    lines = blocks[0].split("\n")
    assert lines[0] == "# text = Ben geldi."
    columns = [line.split("\t") for line in lines[1:]]
    assert [c[0] for c in columns] == ["1", "2", "3"] and [c[1] for c in columns] == [
        "Ben",
        "geldi",
        ".",
    ]
    assert all(len(c) == 10 and c[2] == c[3] == c[4] == c[5] == c[8] == "_" for c in columns)
    assert columns[1][9].startswith("HeadProb=") and columns[1][9].endswith("|SpaceAfter=No")
    assert "SpaceAfter" not in columns[0][9] and "SpaceAfter" not in columns[2][9]
    stream = io.StringIO()
    assert serving.write_documents(stream, documents, format="json") == 2
    assert json.loads(stream.getvalue().splitlines()[1])["text"] == "Kitap güzel!"
    with pytest.raises(ValueError, match="conllu, json"):
        serving.write_documents(io.StringIO(), documents, format="conll")
    with pytest.raises(ValueError, match="has no tags"):
        serving.write_documents(io.StringIO(), documents, format="json", scheme="iob2")
    with pytest.raises(ValueError, match="has no tags"):
        structkd.load(models["offset"], scheme="iob2")


# ------------------------------------------------------------------------------- export


@pytest.mark.parametrize("name", ["offset", "pos"])
def test_the_export_parses_as_the_torch_student(models, name):
    manifest = json.loads((models[f"{name}-onnx"] / "export.json").read_text())
    assert manifest["task"] == "dep" and manifest["format"] == "onnx"
    assert manifest["encoding"] == name and manifest["needs_upos"] == (name == "pos")
    assert manifest["check"]["max_abs_diff"] <= 1e-4
    exported = structkd.load(models[f"{name}-onnx"], num_threads=1, batch_size=3)
    assert isinstance(exported, OnnxDepPredictor) and exported.backend == "onnx"
    torch_predictor = structkd.load(models[name], num_threads=1, batch_size=7)
    inputs = _tagged(models["test"]) + _tagged(models["dev"])
    expected, found = _parses(torch_predictor.predict(inputs)), _parses(exported.predict(inputs))
    for torch_sentence, onnx_sentence in zip(expected, found, strict=True):
        assert [t[:2] for t in onnx_sentence] == [t[:2] for t in torch_sentence]
        assert np.allclose([t[2] for t in onnx_sentence], [t[2] for t in torch_sentence], atol=1e-4)
    if name == "offset":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw_torch = _parses([torch_predictor.predict(RAW)])
            raw_onnx = _parses([exported.predict(RAW)])
        assert [[t[:2] for t in s] for s in raw_onnx] == [[t[:2] for t in s] for s in raw_torch]


def test_serving_an_export_imports_no_torch(models):
    code = (
        "import io, sys, structkd\n"
        "from structkd.tasks import get_task\n"
        f"p = structkd.load({str(models['offset-onnx'])!r}, num_threads=1)\n"
        "import warnings; warnings.simplefilter('ignore')\n"
        "docs = p.predict(['Bu kedi geldi.', 'Ben okudu.'])\n"
        "stream = io.StringIO()\n"
        "get_task('dep').write_documents(stream, docs, format='conllu')\n"
        "assert 'HeadProb=' in stream.getvalue()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_parsers_do_not_export_and_nothing_is_overwritten(models, tmp_path):
    with pytest.raises(ValueError, match="only the sequence-labeling students"):
        export(models["mtt"], tmp_path / "mtt-onnx")
    assert not (tmp_path / "mtt-onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == []
    with pytest.raises(ValueError, match="not empty"):
        export(models["offset"], models["pos-onnx"])
    with pytest.raises(ValueError, match="runs on the CPU"):
        structkd.load(models["offset-onnx"], device="cuda")
