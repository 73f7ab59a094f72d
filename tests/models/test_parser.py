"""The biaffine / second-order parser teachers on tiny sentences, checked by brute-force enumeration
of every tree (``tests/structures/brute_trees.py``)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from structkd.data.conllu_io import parse_conllu
from structkd.data.dep_batching import DepCollator, DepVocab
from structkd.models.dep_encoder import DepEncoderConfig
from structkd.models.parser import PARSER_MODES, BiaffineParser, ParserConfig, ParserScores
from structkd.structures import is_tree, mean_field_arcs
from tests.structures.brute_trees import all_trees

# (form, upos, head, relation) per word; all projective, one root each
SENTENCES = [
    [("Ali", "PROPN", 3, "nsubj"), ("eve", "NOUN", 3, "obl"), ("gitti", "VERB", 0, "root")],
    [
        ("Bu", "DET", 2, "det"),
        ("kitap", "NOUN", 4, "nsubj"),
        ("çok", "ADV", 4, "advmod"),
        ("güzel", "ADJ", 0, "root"),
    ],
    [
        ("Ben", "PRON", 4, "nsubj"),
        ("dün", "ADV", 4, "obl"),
        ("okula", "NOUN", 4, "obl"),
        ("gittim", "VERB", 0, "root"),
        (".", "PUNCT", 4, "punct"),
    ],
    [("Kedi", "NOUN", 3, "nsubj"), ("süt", "NOUN", 3, "obj"), ("içti", "VERB", 0, "root")],
]
# arcs 3 -> 1 and 0 -> 2 cross
NON_PROJECTIVE = [
    ("Süt", "NOUN", 3, "obj"),
    ("kedi", "NOUN", 0, "root"),
    ("içti", "VERB", 2, "advmod"),
    ("dün", "ADV", 1, "obl"),
]

TINY_ENCODER = DepEncoderConfig(
    word_dim=8, char_dim=4, char_filters=6, upos_dim=4, lstm_hidden=8, lstm_layers=1, dropout=0.0
)


def _conllu(sentences) -> str:
    blocks = []
    for words in sentences:
        lines = [
            f"{i}\t{form}\t_\t{upos}\t_\t_\t{head}\t{rel}\t_\t_"
            for i, (form, upos, head, rel) in enumerate(words, start=1)
        ]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


@pytest.fixture(scope="module")
def data():
    sentences = parse_conllu(_conllu([*SENTENCES, NON_PROJECTIVE]))
    vocab = DepVocab.build(sentences)
    collate = DepCollator(vocab)
    batch = collate(list(enumerate(sentences[:4])))
    non_projective = collate(list(enumerate(sentences[2:], start=2)))  # id 4: non-projective
    return vocab, batch, non_projective


def _config(mode: str, **changes) -> ParserConfig:
    values = dict(
        mode=mode, encoder=TINY_ENCODER, arc_dim=8, rel_dim=6, second_order_dim=5, dropout=0.0
    )
    values.update(changes)
    return ParserConfig(**values)


def _random_parser(vocab: DepVocab, mode: str, seed: int = 0) -> BiaffineParser:
    """A parser with every parameter random (zero-initialized scorers would make scores 0), in
    eval mode."""
    torch.manual_seed(seed)
    parser = BiaffineParser(vocab, _config(mode))
    with torch.no_grad():
        for name, parameter in parser.named_parameters():
            scale = 0.2 if name.endswith("scorer.weight") else 0.5
            parameter.normal_(0.0, scale)
    return parser.eval()


def _scaled(scores: ParserScores, factor: float) -> ParserScores:
    return ParserScores(*(None if part is None else part * factor for part in scores))


def _inner_siblings(heads: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """``(h, d, s)``: ``s`` the dependent of ``h`` between ``h`` and ``d`` closest to ``d``."""
    triples = []
    for d in range(1, len(heads)):
        h = heads[d]
        between = [s for s in range(1, len(heads)) if heads[s] == h and min(h, d) < s < max(h, d)]
        if between:
            triples.append((h, d, max(between) if d > h else min(between)))
    return triples


def _tree_score(heads, arcs, siblings=None) -> torch.Tensor:
    """Brute force ``sum_d arcs[h_d, d] (+ sum sib[h, d, s])`` of one sentence."""
    total = sum(arcs[heads[d], d] for d in range(1, len(heads)))
    if siblings is not None:
        total = total + sum(siblings[h, d, s] for h, d, s in _inner_siblings(heads))
    return total


def _mode_trees(mode: str, n: int) -> list[tuple[int, ...]]:
    return all_trees(n, projective=mode in ("projective", "sibling-exact"), multiroot=False)


def _relation_nll(scores: ParserScores, batch) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for b, length in enumerate(batch.lengths.tolist()):
        for d in range(1, length + 1):
            head, rel = int(batch.heads[b, d]), int(batch.rel_ids[b, d])
            total -= torch.log_softmax(scores.rels[b, head, d].double(), -1)[rel]
    return total


# ----------------------------------------------------------------------------------------------


def test_config_round_trip_and_validation():
    config = _config("mean-field", mean_field_iterations=2)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["encoder"]["lstm_hidden"] == 8
    assert ParserConfig.from_dict(data) == config
    assert ParserConfig.from_dict({}) == ParserConfig()
    assert ParserConfig().encoder == DepEncoderConfig()
    with pytest.raises(ValueError, match="mode must be one of"):
        ParserConfig(mode="eisner")
    with pytest.raises(ValueError, match="unknown ParserConfig fields"):
        ParserConfig.from_dict({"arc_size": 3})
    with pytest.raises(ValueError, match="unknown DepEncoderConfig fields"):
        ParserConfig.from_dict({"encoder": {"hidden": 3}})
    with pytest.raises(ValueError, match="arc_dim"):
        ParserConfig(arc_dim=0)
    with pytest.raises(ValueError, match="dropout"):
        ParserConfig(dropout=1.0)


@pytest.mark.parametrize("mode", PARSER_MODES)
def test_shapes_and_marginals(data, mode):
    vocab, batch, _ = data
    parser = _random_parser(vocab, mode)
    assert parser.is_projective_mode == (mode in ("projective", "sibling-exact"))
    with torch.no_grad():
        scores = parser(batch)
        size, n_rel = batch.max_len + 1, len(vocab.relations)
        assert scores.arcs.shape == (4, size, size)
        assert scores.rels.shape == (4, size, size, n_rel)
        cube = (4, size, size, size)
        expect_siblings = mode in ("mean-field", "sibling-exact")
        assert (scores.siblings is not None) == expect_siblings
        assert (scores.grandparents is not None) == (mode == "mean-field")
        if expect_siblings:
            assert scores.siblings.shape == cube
        if mode == "mean-field":
            assert scores.grandparents.shape == cube
            # sibling pairs are unordered for mean field
            assert torch.allclose(scores.siblings, scores.siblings.transpose(2, 3), atol=1e-5)
            assert not torch.allclose(scores.grandparents, scores.grandparents.transpose(1, 3))
        for part in scores:
            assert part is None or torch.isfinite(part).all()
        marginals = parser.arc_marginals(scores, batch.lengths)
    assert marginals.shape == (4, size, size)
    words = torch.arange(size) <= batch.lengths.unsqueeze(-1)
    words[:, 0] = False
    column_sums = marginals.sum(1)
    assert torch.allclose(column_sums[words], torch.ones(int(batch.lengths.sum())), atol=1e-5)
    assert (column_sums[~words] == 0).all()
    assert (marginals >= 0).all()
    # random scores: some word's heads are far from uniform (1 / length each)
    columns = marginals.transpose(1, 2)[words]  # [words, size]
    uniform = 1.0 / batch.lengths.repeat_interleave(batch.lengths).unsqueeze(-1)
    assert ((columns - uniform).abs() * (columns > 0)).max() > 0.05


@pytest.mark.parametrize("mode", ["projective", "matrix-tree", "sibling-exact"])
def test_tree_marginals_match_enumeration(data, mode):
    """``P(head_d = h)`` of the tree modes is the mass of the single-root trees (projective
    where the mode is) that contain the arc."""
    vocab, batch, _ = data
    parser = _random_parser(vocab, mode, seed=6)
    with torch.no_grad():
        scores = ParserScores(*(None if p is None else p.double() for p in parser(batch)))
        marginals = parser.arc_marginals(scores, batch.lengths, temperature=1.5)
    for b, length in enumerate(batch.lengths.tolist()):
        siblings = scores.siblings[b] / 1.5 if mode == "sibling-exact" else None
        trees = _mode_trees(mode, length)
        weights = torch.softmax(
            torch.stack([_tree_score(t, scores.arcs[b] / 1.5, siblings) for t in trees]), 0
        )
        expected = torch.zeros_like(marginals[b])
        for tree, weight in zip(trees, weights, strict=True):
            for d in range(1, length + 1):
                expected[tree[d], d] += weight
        assert torch.allclose(marginals[b], expected, atol=1e-8)


@pytest.mark.parametrize("mode", ["matrix-tree", "mean-field", "sibling-exact"])
def test_scorers_follow_their_formulas(data, mode):
    """arcs = a_d^T U a_h + u^T a_h; rels = [l_d; 1]^T W_r [l_h; 1]; second order: triaffine over
    ``[x; 1]`` of the three roles (written here with one einsum each)."""
    vocab, batch, _ = data
    parser = _random_parser(vocab, mode, seed=7)
    with torch.no_grad():
        scores = parser(batch)
        states = parser.encoder.with_root(batch)

        def one(x):
            return torch.cat([x, torch.ones(*x.shape[:-1], 1)], -1)

        arc = parser.arc_scorer
        head, dep = arc.head_mlp(states), arc.dependent_mlp(states)
        u_matrix, u_vector = arc.weight[:-1], arc.weight[-1]
        arcs = torch.einsum("bdi,ij,bhj->bhd", dep, u_matrix, head) + (head @ u_vector)[:, :, None]
        assert torch.allclose(scores.arcs, arcs, atol=1e-5)
        rel = parser.relation_scorer
        rels = torch.einsum(
            "bdi,rij,bhj->bhdr",
            one(rel.dependent_mlp(states)),
            rel.weight,
            one(rel.head_mlp(states)),
        )
        assert torch.allclose(scores.rels, rels, atol=1e-5)
        if mode == "matrix-tree":
            return
        sib = parser.sibling_scorer
        head, dep = one(sib.head_mlp(states)), one(sib.dependent_mlp(states))
        if mode == "mean-field":
            weight = (sib.weight + sib.weight.transpose(1, 2)) / 2
            siblings = torch.einsum("bhi,bdj,bsk,ijk->bhds", head, dep, dep, weight)
            grand = parser.grandparent_scorer
            grandparents = torch.einsum(
                "bgi,bhj,bdk,ijk->bghd",
                one(grand.grandparent_mlp(states)),
                one(grand.head_mlp(states)),
                one(grand.dependent_mlp(states)),
                grand.weight,
            )
            assert torch.allclose(scores.grandparents, grandparents, atol=1e-4)
        else:
            siblings = torch.einsum(
                "bhi,bdj,bsk,ijk->bhds", head, dep, one(sib.sibling_mlp(states)), sib.weight
            )
        assert torch.allclose(scores.siblings, siblings, atol=1e-4)


@pytest.mark.parametrize("mode", PARSER_MODES)
def test_gold_loss_matches_enumeration(data, mode):
    """Every mode's arc NLL by brute force: all trees (tree CRFs), the per-word softmax, or the
    mean-field posteriors; plus the relation NLL at the gold arcs; over the number of words."""
    vocab, batch, _ = data
    parser = _random_parser(vocab, mode, seed=1)
    scores = parser(batch)
    loss = parser.gold_loss(batch, scores)
    assert loss.dim() == 0 and loss.requires_grad
    scores = ParserScores(*(None if p is None else p.detach().double() for p in scores))
    arc_nll = torch.zeros((), dtype=torch.float64)
    for b, length in enumerate(batch.lengths.tolist()):
        gold = tuple(batch.heads[b, : length + 1].tolist())
        arcs = scores.arcs[b]
        if mode == "head-selection":
            for d in range(1, length + 1):
                allowed = [h for h in range(length + 1) if h != d]
                column = arcs[allowed, d]
                arc_nll -= arcs[gold[d], d] - torch.logsumexp(column, 0)
        elif mode == "mean-field":
            posteriors = mean_field_arcs(
                scores.arcs,
                scores.siblings,
                scores.grandparents,
                lengths=batch.lengths,
                iterations=parser.config.mean_field_iterations,
            )
            arc_nll -= sum(math.log(posteriors[b, gold[d], d]) for d in range(1, length + 1))
        else:
            siblings = scores.siblings[b] if mode == "sibling-exact" else None
            trees = _mode_trees(mode, length)
            assert gold in trees
            tree_scores = torch.stack([_tree_score(t, arcs, siblings) for t in trees])
            arc_nll += torch.logsumexp(tree_scores, 0) - _tree_score(gold, arcs, siblings)
    expected = (arc_nll + _relation_nll(scores, batch)) / int(batch.lengths.sum())
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-4)


def test_gold_loss_equals_structure_log_prob(data):
    """Projective / matrix-tree: the loss is -log_prob of the gold trees under ``DependencyCRF``
    built here from the arc scores, plus the relation NLL."""
    from structkd.structures import DependencyCRF

    vocab, batch, _ = data
    for mode in ("projective", "matrix-tree"):
        parser = _random_parser(vocab, mode, seed=2)
        with torch.no_grad():
            scores = parser(batch)
            loss = parser.gold_loss(batch, scores)
        crf = DependencyCRF(scores.arcs, batch.lengths, projective=mode == "projective")
        expected = (-crf.log_prob(batch.heads).sum() + _relation_nll(scores, batch)) / int(
            batch.lengths.sum()
        )
        assert float(loss) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("mode", PARSER_MODES)
def test_decode_is_the_best_tree(data, mode):
    """Decoding returns single-root trees (projective for projective modes), the best one by
    enumeration, and the best relation of each chosen arc."""
    vocab, batch, _ = data
    parser = _random_parser(vocab, mode, seed=3)
    with torch.no_grad():
        scores = parser(batch)
        heads, rel_ids = parser.decode(batch, scores)
        if mode == "mean-field":
            log_q = parser.mean_field_log_posteriors(scores, batch.lengths)
            assert torch.allclose(log_q.exp(), parser.arc_marginals(scores, batch.lengths))
    assert heads.shape == rel_ids.shape == batch.heads.shape
    assert is_tree(heads, batch.lengths).all()
    if parser.is_projective_mode:
        assert is_tree(heads, batch.lengths, projective=True).all()
    assert ((heads == -1) == (batch.heads == -1)).all()
    assert ((rel_ids == -1) == (batch.heads == -1)).all()
    for b, length in enumerate(batch.lengths.tolist()):
        arcs = log_q[b] if mode == "mean-field" else scores.arcs[b]
        siblings = scores.siblings[b] if mode == "sibling-exact" else None
        trees = _mode_trees(mode, length)
        values = torch.stack([_tree_score(t, arcs, siblings) for t in trees])
        assert tuple(heads[b, : length + 1].tolist()) == trees[int(values.argmax())]
        for d in range(1, length + 1):
            assert rel_ids[b, d] == scores.rels[b, heads[b, d], d].argmax()


@pytest.mark.parametrize("mode", PARSER_MODES)
def test_temperature_divides_every_score(data, mode):
    vocab, batch, _ = data
    parser = _random_parser(vocab, mode, seed=4)
    with torch.no_grad():
        scores = parser(batch)
        hot = parser.arc_marginals(scores, batch.lengths, temperature=2.5)
        divided = parser.arc_marginals(_scaled(scores, 1 / 2.5), batch.lengths)
        cold = parser.arc_marginals(scores, batch.lengths)
        local = parser.local_head_probs(scores, batch.lengths, temperature=2.5)
        rel_log_probs = parser.rel_log_probs(scores, temperature=2.5)
    assert torch.allclose(hot, divided, atol=1e-5)
    assert not torch.allclose(hot, cold, atol=1e-3)
    size = batch.max_len + 1
    allowed = torch.ones(4, size, size, dtype=torch.bool)
    allowed &= (torch.arange(size) <= batch.lengths.view(-1, 1)).unsqueeze(-1)
    allowed &= ~torch.eye(size, dtype=torch.bool)
    masked = (scores.arcs / 2.5).masked_fill(~allowed, float("-inf"))
    expected_local = torch.softmax(masked, dim=1)[:, :, 1:]
    words = (torch.arange(1, size) <= batch.lengths.view(-1, 1)).unsqueeze(1)
    assert torch.allclose(local[:, :, 1:], expected_local * words, atol=1e-6)
    assert (local[:, :, 0] == 0).all()
    assert torch.allclose(rel_log_probs, torch.log_softmax(scores.rels / 2.5, dim=-1))
    if mode == "head-selection":
        assert torch.allclose(hot, local, atol=1e-6)


@pytest.mark.parametrize("mode", ["projective", "sibling-exact"])
def test_projective_modes_reject_non_projective_gold(data, mode):
    vocab, _, non_projective = data
    parser = _random_parser(vocab, mode)
    scores = parser(non_projective)
    with pytest.raises(ValueError, match=r"trains on projective .*sentences \[4\]"):
        parser.gold_loss(non_projective, scores)


def test_non_projective_modes_accept_non_projective_gold(data):
    vocab, _, non_projective = data
    for mode in ("head-selection", "matrix-tree", "mean-field"):
        parser = _random_parser(vocab, mode)
        loss = parser.gold_loss(non_projective, parser(non_projective))
        assert torch.isfinite(loss) and loss > 0


def test_errors(data):
    vocab, batch, _ = data
    parser = _random_parser(vocab, "matrix-tree")
    unlabeled = DepCollator(vocab, labeled=False)(list(enumerate(parse_conllu(_conllu(SENTENCES)))))
    with pytest.raises(ValueError, match="labeled batch"):
        parser.gold_loss(unlabeled, parser(unlabeled))
    with pytest.raises(ValueError, match="mean-field"):
        parser.mean_field_log_posteriors(parser(batch), batch.lengths)
    sibling_parser = _random_parser(vocab, "sibling-exact")
    scores = sibling_parser(batch)._replace(siblings=None)
    with pytest.raises(ValueError, match=r"needs scores\.siblings"):
        sibling_parser.arc_marginals(scores, batch.lengths)
    with pytest.raises(ValueError, match="temperature"):
        parser.rel_log_probs(parser(batch), temperature=0.0)


@pytest.mark.parametrize("mode", PARSER_MODES)
def test_training_overfits_tiny_data(data, mode):
    """Adam on 4 sentences: the loss falls and decoding reaches the gold trees and relations."""
    vocab, batch, _ = data
    torch.manual_seed(5)
    parser = BiaffineParser(vocab, _config(mode))
    optimizer = torch.optim.Adam(parser.parameters(), lr=0.05)
    parser.train()
    first = float(parser.gold_loss(batch, parser(batch)).detach())
    for _ in range(25):
        optimizer.zero_grad()
        loss = parser.gold_loss(batch, parser(batch))
        loss.backward()
        nn.utils.clip_grad_norm_(parser.parameters(), 5.0)
        optimizer.step()
    parser.eval()
    with torch.no_grad():
        scores = parser(batch)
        last = float(parser.gold_loss(batch, scores))
        heads, rel_ids = parser.decode(batch, scores)
    assert last < 0.1 * first
    assert torch.equal(heads, batch.heads)
    assert torch.equal(rel_ids, batch.rel_ids)
