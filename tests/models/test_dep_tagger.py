"""The sequence-labeling dependency student: shapes, the gold loss against a hand computation,
decoding into trees (always), its well-formedness flag, and overfitting tiny sentences."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from structkd.data.conllu_io import parse_conllu
from structkd.data.dep_batching import DepCollator, DepVocab
from structkd.data.dep_encodings import ENCODINGS, DepLabelScheme
from structkd.models.dep_encoder import DepEncoderConfig
from structkd.models.dep_tagger import DepPrediction, DepTaggerConfig, SequenceLabelingParser
from structkd.structures import is_tree

# (word, UPOS, head, relation) per word; heads 0 = root
TREES = [
    [("Ali", "PROPN", 2, "nsubj"), ("geldi", "VERB", 0, "root"), (".", "PUNCT", 2, "punct")],
    [
        ("Küçük", "ADJ", 2, "amod"),
        ("kedi", "NOUN", 4, "nsubj"),
        ("süt", "NOUN", 4, "obj"),
        ("içti", "VERB", 0, "root"),
        (".", "PUNCT", 4, "punct"),
    ],
    [("Ayşe", "PROPN", 3, "nsubj"), ("kitap", "NOUN", 3, "obj"), ("okudu", "VERB", 0, "root")],
    [
        ("Bu", "DET", 2, "det"),
        ("ev", "NOUN", 6, "obl"),
        ("çok", "ADV", 4, "advmod"),
        ("güzel", "ADJ", 6, "amod"),
        ("bir", "DET", 6, "det"),
        ("bahçe", "NOUN", 7, "nsubj"),
        ("var", "VERB", 0, "root"),
    ],
]
# a non-projective tree whose labels are partly outside a scheme built from TREES
EXTRA_TREE = [
    ("Dün", "ADV", 3, "advmod"),
    ("adam", "NOUN", 3, "nsubj"),
    ("gördüm", "VERB", 0, "root"),
    ("ki", "CCONJ", 1, "mark"),
]

TINY = DepTaggerConfig(
    encoder=DepEncoderConfig(
        word_dim=16,
        char_dim=8,
        char_filters=16,
        upos_dim=8,
        lstm_hidden=24,
        lstm_layers=1,
        dropout=0.0,
    ),
    hidden_dim=0,
)


def _conllu(trees) -> str:
    blocks = []
    for tree in trees:
        lines = [
            f"{i}\t{word}\t_\t{upos}\t_\t_\t{head}\t{rel}\t_\t_"
            for i, (word, upos, head, rel) in enumerate(tree, start=1)
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


SENTENCES = parse_conllu(_conllu(TREES))
EXTRA = parse_conllu(_conllu([EXTRA_TREE]))[0]
VOCAB = DepVocab.build([*SENTENCES, EXTRA])


def _parser(encoding: str, config: DepTaggerConfig = TINY, seed: int = 0):
    scheme = DepLabelScheme.from_sentences(SENTENCES, encoding=encoding)
    torch.manual_seed(seed)
    return SequenceLabelingParser(VOCAB, scheme, config)


def _batch(parser, sentences):
    return DepCollator(parser.vocab, parser.scheme)(list(enumerate(sentences)))


# --------------------------------------------------------------------------------- config


def test_config_round_trip_and_validation():
    config = DepTaggerConfig(hidden_dim=32)
    assert DepTaggerConfig.from_dict(config.to_dict()) == config
    assert DepTaggerConfig.from_dict({}) == DepTaggerConfig()
    default = DepTaggerConfig().encoder
    assert (default.word_dim, default.char_filters, default.lstm_hidden) == (50, 50, 100)
    assert (default.lstm_layers, default.upos_dim, default.char_dim) == (1, 25, 25)
    with pytest.raises(ValueError, match="unknown DepTaggerConfig fields"):
        DepTaggerConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="unknown DepEncoderConfig fields"):
        DepTaggerConfig.from_dict({"encoder": {"lstm_size": 3}})
    with pytest.raises(ValueError, match="hidden_dim"):
        DepTaggerConfig(hidden_dim=-1)


# --------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("hidden_dim", [0, 12])
def test_shapes(encoding, hidden_dim):
    parser = _parser(encoding, dataclasses.replace(TINY, hidden_dim=hidden_dim))
    batch = _batch(parser, [*SENTENCES, EXTRA])
    logits = parser(batch)
    assert logits.shape == (5, 7, parser.scheme.n_labels)
    loss = parser.gold_loss(batch, logits)
    assert loss.dim() == 0 and loss.item() > 0
    loss.backward()
    assert parser.output.weight.grad is not None
    prediction = parser.decode(batch, logits)
    assert isinstance(prediction, DepPrediction)
    assert prediction.heads.shape == prediction.rel_ids.shape == (5, 8)
    assert prediction.heads.dtype == prediction.rel_ids.dtype == torch.long
    assert prediction.well_formed.shape == (5,) and prediction.well_formed.dtype == torch.bool
    assert len(prediction.problems) == 5
    padding = ~torch.cat([torch.zeros(5, 1, dtype=torch.bool), batch.mask], dim=1)
    assert (prediction.heads[padding] == -1).all() and (prediction.rel_ids[padding] == -1).all()
    assert (prediction.rel_ids[~padding] >= 0).all()


def test_bad_inputs():
    parser = _parser("offset")
    batch = _batch(parser, SENTENCES)
    logits = parser(batch)
    unlabeled = DepCollator(VOCAB, parser.scheme, labeled=False)(list(enumerate(SENTENCES)))
    with pytest.raises(ValueError, match="no label_ids"):
        parser.gold_loss(unlabeled, parser(unlabeled))
    with pytest.raises(ValueError, match="n_labels"):
        parser.gold_loss(batch, logits[..., :-1])
    with pytest.raises(ValueError, match="do not match the batch"):
        parser.decode(batch, logits[:2])
    other_scheme = dataclasses.replace(batch, label_heads=batch.label_heads[..., :-1])
    with pytest.raises(ValueError, match="collated with a scheme of"):
        parser.gold_loss(other_scheme, logits)
    pos_parser = _parser("pos")
    no_scheme = DepCollator(VOCAB)(list(enumerate(SENTENCES)))
    with pytest.raises(ValueError, match="scheme_upos_ids"):
        pos_parser.decode(no_scheme, pos_parser(no_scheme))


# ------------------------------------------------------------------------------- gold loss


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_gold_loss_is_hand_computed_cross_entropy(encoding):
    parser = _parser(encoding)
    batch = _batch(parser, [*SENTENCES, EXTRA])
    logits = torch.randn(batch.batch_size, batch.max_len, parser.scheme.n_labels) * 3
    label_ids = batch.label_ids
    # the extra tree's labels are partly unknown to the scheme: -1 there, padding -1
    assert (label_ids[4, :4] == -1).any() and (label_ids[4, :4] >= 0).any()
    assert (label_ids[0, 3:] == -1).all()

    def hand(labels) -> float:
        terms = []
        for b, length in enumerate(batch.lengths.tolist()):
            for i in range(length):
                gold = int(labels[b, i])
                if gold < 0:
                    continue
                row = logits[b, i].tolist()
                log_z = math.log(sum(math.exp(value) for value in row))
                terms.append(log_z - row[gold])
        return sum(terms) / len(terms)

    assert parser.gold_loss(batch, logits).item() == pytest.approx(hand(label_ids), rel=1e-5)

    # -1 words are ignored: changing their logits changes nothing, dropping more labels changes
    # the mean to the one over the remaining words
    ignored = label_ids < 0
    shaken = torch.where(ignored[..., None], logits + 100 * torch.randn_like(logits), logits)
    assert parser.gold_loss(batch, shaken).item() == pytest.approx(hand(label_ids), rel=1e-5)
    fewer = label_ids.clone()
    fewer[1, :3] = -1
    fewer_batch = dataclasses.replace(batch, label_ids=fewer)
    assert parser.gold_loss(fewer_batch, logits).item() == pytest.approx(hand(fewer), rel=1e-5)
    assert hand(fewer) != pytest.approx(hand(label_ids), rel=1e-7)
    # a label id outside the padding region's -1 convention is still masked by the lengths
    padded = label_ids.clone()
    padded[0, 5] = 0
    padded_batch = dataclasses.replace(batch, label_ids=padded)
    assert parser.gold_loss(padded_batch, logits).item() == pytest.approx(hand(label_ids), rel=1e-5)
    none_batch = dataclasses.replace(batch, label_ids=torch.full_like(label_ids, -1))
    assert parser.gold_loss(none_batch, logits).item() == 0.0


def test_distribution_marginals_are_softmax():
    parser = _parser("offset")
    batch = _batch(parser, [*SENTENCES, EXTRA])
    logits = parser(batch)
    marginals = parser.distribution(logits, batch.lengths).marginals
    mask = batch.mask[..., None]
    expected = torch.where(mask, torch.softmax(logits, -1), 0.0)
    assert torch.allclose(marginals, expected, rtol=1e-5, atol=1e-7)
    assert (marginals[~batch.mask] == 0).all()


# ---------------------------------------------------------------------------------- decoding


def _argmax_heads(parser, batch, logits) -> torch.Tensor:
    """``[B, N + 1]`` heads of the argmax labels without any repair (-1: none / padding)."""
    top = logits.argmax(-1)  # [B, N]
    heads = batch.label_heads.gather(2, top[..., None]).squeeze(2)
    heads = heads.masked_fill(~batch.mask, -1)
    return torch.cat([torch.full((batch.batch_size, 1), -1), heads], dim=1)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_decode_gold_logits_reproduces_gold_trees(encoding):
    parser = _parser(encoding)
    batch = _batch(parser, SENTENCES)
    logits = torch.randn(batch.batch_size, batch.max_len, parser.scheme.n_labels)
    gold = batch.label_ids.clamp(min=0)
    logits = logits.scatter(2, gold[..., None], 20.0)
    prediction = parser.decode(batch, logits)
    assert torch.equal(prediction.heads, batch.heads)
    assert torch.equal(prediction.rel_ids, batch.rel_ids)
    assert prediction.well_formed.all()
    assert prediction.problems == [()] * 4


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_decode_always_returns_trees(encoding):
    parser = _parser(encoding)
    batch = _batch(parser, [*SENTENCES, EXTRA])
    generator = torch.Generator().manual_seed(1)
    n_ill_formed = n_well_formed = 0
    for trial in range(60):
        scale = (0.5, 3.0, 10.0)[trial % 3]
        logits = torch.randn(*batch.label_heads.shape, generator=generator) * scale
        if trial % 4 == 0:  # favour the root labels: several roots
            logits[..., parser.scheme.root_labels] += 3.0
        if trial % 5 == 0:  # make a random sentence's argmax labels a valid tree
            gold = batch.label_ids.clamp(min=0)
            logits[:4] = logits[:4].scatter(2, gold[:4, :, None], 50.0)
        prediction = parser.decode(batch, logits)
        assert is_tree(prediction.heads, batch.lengths).all()
        before = is_tree(_argmax_heads(parser, batch, logits), batch.lengths)
        assert torch.equal(prediction.well_formed, before)
        assert [not problems for problems in prediction.problems] == before.tolist()
        n_well_formed += int(before.sum())
        n_ill_formed += int((~before).sum())
    assert n_well_formed >= 10 and n_ill_formed >= 10  # both cases were exercised


# ---------------------------------------------------------------------------------- overfit


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_overfits_four_sentences(encoding):
    parser = _parser(encoding, dataclasses.replace(TINY, hidden_dim=16), seed=3)
    batch = _batch(parser, SENTENCES)
    optimizer = torch.optim.Adam(parser.parameters(), lr=0.03)
    parser.train()
    for _ in range(40):
        optimizer.zero_grad()
        loss = parser.gold_loss(batch, parser(batch))
        loss.backward()
        optimizer.step()
    parser.eval()
    with torch.no_grad():
        logits = parser(batch)
    assert parser.gold_loss(batch, logits).item() < 0.1
    prediction = parser.decode(batch, logits)
    assert torch.equal(prediction.heads, batch.heads)
    assert torch.equal(prediction.rel_ids, batch.rel_ids)
    assert prediction.well_formed.all()
