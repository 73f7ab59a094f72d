"""Exported NER students (structkd.tasks.ner.export, .onnx_serving): the ONNX emissions, tags,
marginals and entity probabilities equal the torch tagger's; serving imports no torch; bad
directories give clear errors."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import structkd.tasks.ner.export as export_module
from structkd.api import TrainOptions, train
from structkd.data.batching import TaggingCollator, TaggingVocab
from structkd.data.conll import Sentence
from structkd.models.tagger import ARCHITECTURES, Tagger, architecture
from structkd.serve.manifest import EXPORT_FILE
from structkd.serve.text import TokenizedSentence, from_tokens
from structkd.structures.linear_chain import LinearChainCRF
from structkd.tasks.ner import onnx_serving
from structkd.tasks.ner.export import check_exportable, export_onnx
from structkd.tasks.ner.metrics import label_spans
from structkd.tasks.ner.model import ModelInfo, load_tagger, save_tagger
from structkd.tasks.ner.onnx_serving import OnnxNerPredictor
from structkd.train.checkpoint import METRICS_FILE, mark_complete, write_json
from tests.tasks.ner import TINY, tagged_sentences, write_conll

REPO = Path(__file__).resolve().parents[3]
KINDS = ("trained-crf", "softmax", "crf-unconstrained-nochars", "crf-2-layers")


def random_model(directory: Path, arch: str, seed: int, **changes) -> Path:
    """A randomly initialized tagger saved as a complete model directory (spread-out marginals,
    random CRF transitions: a sharper comparison than an overfitted model's)."""
    sentences = [Sentence(tokens, tags) for tokens, tags in tagged_sentences(30, seed=1)]
    vocab = TaggingVocab.build(sentences)
    torch.manual_seed(seed)
    tagger = Tagger(architecture(arch, **{**TINY, **changes}), vocab)
    with torch.no_grad():
        for parameter in tagger.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
        # padding rows stay 0, as training keeps them (padding_idx): a word's character features
        # then do not depend on the longest word of its batch
        tagger.encoder.word_embedding.trainable.weight[0] = 0.0
        if tagger.encoder.char_cnn is not None:
            tagger.encoder.char_cnn.embedding.weight[0] = 0.0
    save_tagger(directory, tagger, arch=arch, tag_scheme="iob2")
    write_json(directory / METRICS_FILE, {})
    mark_complete(directory)
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """``kind -> (model directory, exported directory)``: a tiny CRF student trained through the
    API, and random softmax, unconstrained-CRF (no character CNN) and 2-layer-BiLSTM taggers."""
    root = tmp_path_factory.mktemp("export")
    write_conll(root / "train.conll", 30, seed=1)
    options = TrainOptions(
        train=str(root / "train.conll"),
        dev=str(root / "train.conll"),
        out=str(root / "trained-crf"),
        arch="student-crf",
        arch_overrides=dict(TINY),
        epochs=3,
        batch_size=8,
        learning_rate=0.02,
        patience=None,
        cache_dir=str(root / "cache"),
        progress=False,
    )
    train(options)
    random_model(root / "softmax", "student-softmax", seed=2)
    random_model(root / "crf-unconstrained-nochars", "student-crf-unconstrained", 3, char_filters=0)
    random_model(root / "crf-2-layers", "student-crf", seed=4, lstm_layers=2)
    result = {}
    for kind in KINDS:
        export_onnx(root / kind, root / f"{kind}-onnx")
        result[kind] = (root / kind, root / f"{kind}-onnx")
    return result


def token_lists(n: int, seed: int) -> list[list[str]]:
    """Sentences of random lengths, with unseen words and characters, mixed case and a word
    longer than the 50 characters a word keeps."""
    sentences = [tokens for tokens, _ in tagged_sentences(n, seed)]
    rng = np.random.default_rng(seed)
    for tokens in sentences[::3]:
        tokens.insert(int(rng.integers(0, len(tokens) + 1)), "PARIS")
    sentences += [["Ünseen", "wörd", "x" * 80, "ALICE"], ["Bob"], ["Zoë", "visited", "Osaka"]]
    return sentences


def torch_outputs(model_dir: Path, sentences: list[list[str]]):
    tagger, info = load_tagger(model_dir)
    tagger.requires_grad_(False)  # the distribution's lazy results need no graph either
    batch = TaggingCollator(info.vocab)(list(enumerate(Sentence(tokens) for tokens in sentences)))
    distribution = tagger(batch)
    return tagger, info, batch, distribution


def tokenized(sentences: list[list[str]]) -> list[TokenizedSentence]:
    return [from_tokens(tokens)[1] for tokens in sentences]


# -- the export ------------------------------------------------------------------------------------


def test_export_writes_the_files_and_the_manifest(models) -> None:
    model_dir, out = models["trained-crf"]
    manifest = json.loads((out / EXPORT_FILE).read_text())
    _, info = load_tagger(model_dir)
    assert manifest["task"] == "ner" and manifest["format"] == "onnx"
    assert manifest["head"] == "crf" and manifest["crf_constraints"] is True
    assert manifest["files"] == {"model": "model.onnx", "vocab": "vocab.json", "crf": "crf.npz"}
    written = sorted(path.name for path in out.iterdir())
    assert written == sorted([*manifest["files"].values(), EXPORT_FILE])
    assert manifest["labels"] == info.vocab.labels and manifest["types"] == ["LOC", "ORG", "PER"]
    assert manifest["source"]["sha256"] == info.file_hash
    assert manifest["source"]["model_dir"] == os.fspath(model_dir.resolve())
    assert manifest["structkd_version"] and manifest["check"]["max_abs_diff"] <= 1e-4
    softmax = json.loads((models["softmax"][1] / EXPORT_FILE).read_text())
    assert softmax["head"] == "softmax" and "crf" not in softmax["files"]
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["words"] == list(info.vocab.words.items)
    assert vocab["chars"] == list(info.vocab.chars.items)
    with np.load(out / "crf.npz") as crf:
        head = load_tagger(model_dir)[0].head
        np.testing.assert_array_equal(crf["transitions"], head.transitions.detach().numpy())
        np.testing.assert_array_equal(crf["allowed_transitions"], head.allowed_transitions.numpy())


def test_encoding_equals_the_collators(models) -> None:
    _, out = models["trained-crf"]
    _, info = load_tagger(models["trained-crf"][0])
    sentences = token_lists(20, seed=11)
    batch = TaggingCollator(info.vocab)(list(enumerate(Sentence(tokens) for tokens in sentences)))
    word_ids, char_ids, lengths = OnnxNerPredictor(out).vocab.encode(sentences)
    np.testing.assert_array_equal(word_ids, batch.word_ids.numpy())
    np.testing.assert_array_equal(char_ids, batch.char_ids.numpy())
    np.testing.assert_array_equal(lengths, batch.lengths.numpy())


def test_encoding_of_any_characters_equals_the_collators(models, monkeypatch) -> None:
    """Characters outside the vocabulary of every kind (accents, astral, a lone surrogate, NUL),
    words longer than the characters kept, repeated tokens (cached ids), a cache emptied
    mid-batch: the collator's layout all the same."""
    _, out = models["trained-crf"]
    _, info = load_tagger(models["trained-crf"][0])
    sentences = [
        ["Ünïcödé", "x" * 70 + "é", "😀", chr(0xD800) + "a", "a\x00b", "ΣΑΣ", "İstanbul", "PARIS"],
        ["PARIS", "paris", "Paris", "😀", "ŉ" * 3],
        ["a"],
    ]
    collated = TaggingCollator(info.vocab)(
        list(enumerate(Sentence(tokens) for tokens in sentences))
    )
    vocab = OnnxNerPredictor(out).vocab
    monkeypatch.setattr(onnx_serving, "_CACHE_SIZE", 3)  # caches emptied every few new items
    for _ in range(2):  # the second time from the cache
        word_ids, char_ids, lengths = vocab.encode(sentences)
        np.testing.assert_array_equal(word_ids, collated.word_ids.numpy())
        np.testing.assert_array_equal(char_ids, collated.char_ids.numpy())
        np.testing.assert_array_equal(lengths, collated.lengths.numpy())
        assert word_ids.dtype == char_ids.dtype == lengths.dtype == np.int64
    with pytest.raises(ValueError, match="no empty sentence"):
        vocab.encode([["a"], []])


@pytest.mark.parametrize("context", [0, 1, 3])
def test_flat_encoding_holds_the_collators_characters_once_per_distinct_token(
    models, context, monkeypatch
) -> None:
    _, out = models["trained-crf"]
    vocab = OnnxNerPredictor(out).vocab
    sentences = [*token_lists(12, seed=13), ["😀", "a\x00b", "x" * 70, "PARIS", "PARIS"]]
    monkeypatch.setattr(onnx_serving, "_CACHE_SIZE", 5)
    word_ids, char_ids, lengths = vocab.encode(sentences)
    arrays = vocab.encode_flat(sentences, context)
    np.testing.assert_array_equal(arrays["word_ids"], word_ids)
    np.testing.assert_array_equal(arrays["lengths"], lengths)
    inside = np.arange(word_ids.shape[1]) < lengths[:, None]
    tokens = [token for sentence in sentences for token in sentence]
    rows = arrays["word_chars"][inside]
    assert len(arrays["char_index"]) == len(set(tokens)) == rows.max() + 1
    assert [rows[tokens.index(token)] for token in tokens] == rows.tolist()  # one row a token
    chars = np.append(arrays["chars"], 0)  # index T: no character
    words = chars[arrays["char_index"][rows]]  # [tokens, C]
    width = char_ids.shape[2]
    assert words.shape[1] == width
    np.testing.assert_array_equal(words, char_ids[inside])
    total = int((char_ids[inside] != 0).sum(-1)[np.unique(rows, return_index=True)[1]].sum())
    assert len(arrays["chars"]) == total + context * (len(set(tokens)) + 1)


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_emissions_equal_the_torch_taggers(models, kind) -> None:
    model_dir, out = models[kind]
    sentences = token_lists(40, seed=12)
    tagger, _, batch, _ = torch_outputs(model_dir, sentences)
    with torch.no_grad():
        expected = tagger.scores(batch).numpy()
    # the model runs on chunks of onnx_chunk sentences (unsorted here), each padded on its own
    for onnx_chunk in (16, 1, 7, 64):
        predictor = OnnxNerPredictor(out, num_threads=1, onnx_chunk=onnx_chunk)
        for chunk in (slice(None), slice(17, None), slice(-1, None)):  # other shapes, one
            emissions, lengths = predictor.emissions(tokenized(sentences[chunk]))
            assert emissions.dtype == np.float64
            inside = np.arange(emissions.shape[1]) < lengths[:, None]
            width = emissions.shape[1]
            difference = np.abs(emissions - expected[chunk, :width])[inside].max()
            assert difference <= 1e-5, difference
    with pytest.raises(ValueError, match="onnx_chunk must be an integer >= 1"):
        OnnxNerPredictor(out, onnx_chunk=0)


@pytest.mark.parametrize("scheme", ["bioes", "iob2"])
@pytest.mark.parametrize("kind", KINDS)
def test_tags_marginals_and_entities_equal_the_torch_taggers(models, kind, scheme) -> None:
    model_dir, out = models[kind]
    sentences = token_lists(30, seed=13)
    _, info, _, distribution = torch_outputs(model_dir, sentences)
    best, marginals = distribution.argmax.numpy(), distribution.marginals.double().numpy()
    predictor = OnnxNerPredictor(out, batch_size=7, num_threads=1, scheme=scheme)
    results = predictor.label_sentences(tokenized(sentences))
    labels = info.vocab.labels
    for row, (tokens, result) in enumerate(zip(sentences, results, strict=True)):
        n = len(tokens)
        expected_tags = [labels[label] for label in best[row, :n]]
        expected_scores = marginals[row, np.arange(n), best[row, :n]]
        if scheme == "iob2":
            to_iob2 = {"B": "B", "S": "B", "I": "I", "E": "I"}
            expected_tags = [
                tag if tag == "O" else to_iob2[tag[0]] + tag[1:] for tag in expected_tags
            ]
            partner = {"B": "S", "S": "B", "I": "E", "E": "I"}
            for position, label in enumerate(best[row, :n]):
                tag = labels[label]
                if tag != "O":
                    other = labels.index(partner[tag[0]] + tag[1:])
                    expected_scores[position] += marginals[row, position, other]
        assert list(result.tags) == expected_tags
        np.testing.assert_allclose(result.tag_scores, expected_scores, atol=1e-4)
        spans = label_spans(best[row, :n].tolist(), len(info.types))
        assert [(s, e - 1, t) for s, e, t, _ in result.spans] == [
            (start, end, info.types[kind_]) for start, end, kind_ in spans
        ]
        for start, end, _, probability in result.spans:
            path = best[row, start:end]
            expected = span_probability(distribution, row, start, path)
            assert probability == pytest.approx(expected, abs=1e-4)


def span_probability(distribution, row: int, start: int, path: np.ndarray) -> float:
    """P(labels of ``start..`` = ``path``) by torch: a CRF's log Z with every other label of those
    tokens forbidden, minus log Z; a softmax tagger's product of marginals."""
    positions = np.arange(start, start + len(path))
    if not isinstance(distribution, LinearChainCRF):
        return float(np.prod(distribution.marginals.double().numpy()[row, positions, path]))
    emissions = distribution.emissions[row : row + 1].clone()
    keep = torch.zeros_like(emissions, dtype=torch.bool)
    keep[0, torch.from_numpy(positions), torch.from_numpy(path)] = True
    keep[0, :start] = True
    keep[0, start + len(path) :] = True
    clamped = LinearChainCRF(
        torch.where(keep, emissions, -torch.inf),
        distribution.transitions,
        distribution.start,
        distribution.end,
        lengths=distribution.lengths[row : row + 1],
        allowed_transitions=distribution.allowed_transitions,
        allowed_start=distribution.allowed_start,
        allowed_end=distribution.allowed_end,
    )
    log_z = float(distribution.log_partition[row])
    return math.exp(float(clamped.log_partition[0]) - log_z)


def test_predict_raw_text(models) -> None:
    _, out = models["trained-crf"]
    predictor = OnnxNerPredictor(out)
    assert predictor.backend == "onnx" and predictor.task == "ner"
    document = predictor.predict("Alice met Bob in Paris. Acme Inc visited Rome.")
    assert [len(sentence.tokens) for sentence in document.sentences] == [6, 5]
    assert all(0.0 <= token.tag_score <= 1.0 for token in document.tokens)
    for entity in document.entities:
        assert document.text[entity.start : entity.end] == entity.text
        assert 0.0 <= entity.score <= 1.0
    assert predictor.predict([]) == []


@pytest.mark.skipif(
    importlib.util.find_spec("structkd.tasks.ner.serving") is None,
    reason="structkd.tasks.ner.serving (the NER wiring of structkd.load) is not there yet",
)
@pytest.mark.parametrize("kind", ["trained-crf", "softmax"])
def test_structkd_load_serves_the_export_like_the_torch_model(models, kind) -> None:
    import structkd

    model_dir, out = models[kind]
    sentences = tokenized(token_lists(25, seed=14))
    exported = structkd.load(out, num_threads=1)
    assert isinstance(exported, OnnxNerPredictor)
    trained = structkd.load(model_dir)
    assert trained.backend == "torch"
    for onnx_result, torch_result in zip(
        exported.label_sentences(sentences), trained.label_sentences(sentences), strict=True
    ):
        assert onnx_result.tags == torch_result.tags
        np.testing.assert_allclose(onnx_result.tag_scores, torch_result.tag_scores, atol=1e-4)
        assert [s[:3] for s in onnx_result.spans] == [s[:3] for s in torch_result.spans]
        np.testing.assert_allclose(
            [s[3] for s in onnx_result.spans], [s[3] for s in torch_result.spans], atol=1e-4
        )


SERVE_WITHOUT_TORCH = textwrap.dedent(
    """
    import json, sys, time
    start = time.perf_counter()
    import structkd
    from structkd.tasks.ner.onnx_serving import OnnxNerPredictor
    predictor = OnnxNerPredictor(sys.argv[1], num_threads=1)
    loaded = time.perf_counter() - start
    document = predictor.predict("Alice met Bob in Paris.")
    via_load = None
    if __import__("importlib.util").util.find_spec("structkd.tasks.ner.serving") is not None:
        start = time.perf_counter()
        structkd.load(sys.argv[1], num_threads=1).predict("Acme Inc visited Rome.")
        via_load = time.perf_counter() - start
    print(json.dumps({"torch": "torch" in sys.modules, "load_seconds": loaded,
                      "structkd_load_seconds": via_load, "tokens": len(document.tokens)}))
    """
)


def test_serving_an_export_imports_no_torch(models) -> None:
    _, out = models["trained-crf"]
    result = subprocess.run(
        [sys.executable, "-c", SERVE_WITHOUT_TORCH, os.fspath(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["torch"] is False and report["tokens"] == 6
    print(f"import structkd + load the export: {report['load_seconds']:.2f} s", file=sys.stderr)


# -- errors ---------------------------------------------------------------------------------------


def test_a_bad_export_directory_gives_a_clear_error(models, tmp_path) -> None:
    _, out = models["trained-crf"]

    def broken(name: str) -> Path:
        copy = tmp_path / name
        shutil.copytree(out, copy)
        return copy

    with pytest.raises(ValueError, match="not an exported model directory"):
        OnnxNerPredictor(tmp_path)
    missing = broken("missing")
    (missing / "vocab.json").unlink()
    with pytest.raises(ValueError, match=r"names 'vocab\.json', which is missing"):
        OnnxNerPredictor(missing)
    corrupt = broken("corrupt-manifest")
    (corrupt / EXPORT_FILE).write_text('{"task": "ner",')
    with pytest.raises(ValueError, match=r"export\.json: not valid JSON"):
        OnnxNerPredictor(corrupt)
    corrupt_vocab = broken("corrupt-vocab")
    (corrupt_vocab / "vocab.json").write_text("[1, 2")
    with pytest.raises(ValueError, match=r"vocab\.json: cannot read the vocabulary"):
        OnnxNerPredictor(corrupt_vocab)
    corrupt_model = broken("corrupt-model")
    (corrupt_model / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"model\.onnx: onnxruntime cannot load it"):
        OnnxNerPredictor(corrupt_model)
    corrupt_crf = broken("corrupt-crf")
    (corrupt_crf / "crf.npz").write_bytes(b"nothing")
    with pytest.raises(ValueError, match=r"crf\.npz: cannot read the CRF parameters"):
        OnnxNerPredictor(corrupt_crf)
    for name, change in (("old", {"format_version": 1}), ("context", {"char_context": -1})):
        edited = broken(name)
        manifest = json.loads((edited / EXPORT_FILE).read_text())
        (edited / EXPORT_FILE).write_text(json.dumps({**manifest, **change}))
        message = "export the model again" if name == "old" else "char_context must be"
        with pytest.raises(ValueError, match=message):
            OnnxNerPredictor(edited)
    with pytest.raises(ValueError, match="runs on the CPU"):
        OnnxNerPredictor(out, device="cuda")
    with pytest.raises(ValueError, match="scheme must be one of"):
        OnnxNerPredictor(out, scheme="iob1")


def test_export_refuses_to_overwrite_and_leaves_nothing_on_failure(models, tmp_path, monkeypatch):
    model_dir, _ = models["softmax"]
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not empty: refusing to overwrite"):
        export_onnx(model_dir, taken)
    assert [path.name for path in taken.iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is not a directory"):
        export_onnx(model_dir, tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_onnx(model_dir, empty)["head"] == "softmax"  # an empty directory is replaced
    monkeypatch.setattr(export_module, "EXPORT_TOLERANCE", -1.0)
    with pytest.raises(RuntimeError, match="differ from the torch tagger's"):
        export_onnx(model_dir, tmp_path / "failed")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty", "file", "taken"]


def test_transformers_and_span_heads_are_not_exported(tmp_path) -> None:
    vocab = TaggingVocab.build([Sentence(["Paris"], ["B-LOC"])])
    for arch, reason in (("teacher-crf", "transformer"), ("teacher-span", "transformer")):
        info = ModelInfo(tmp_path, "ner", arch, ARCHITECTURES[arch], vocab, "iob2", "0" * 64)
        with pytest.raises(ValueError, match=f"exporting .* is not supported: .*{reason}"):
            check_exportable(info)
    random_model(tmp_path / "span", "student-softmax", seed=5, head="span")
    with pytest.raises(ValueError, match="is not supported: its 'span' head"):
        export_onnx(tmp_path / "span", tmp_path / "span-onnx")
    assert not (tmp_path / "span-onnx").exists()
