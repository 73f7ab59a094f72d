"""Attachment scores: hand-computed cases, punctuation on and off, padding, bad input."""

from __future__ import annotations

import random

import pytest
import torch

from structkd.tasks.dep.metrics import (
    ATTACHMENT_COLUMNS,
    attachment_counts,
    attachment_scores,
    punctuation_mask,
    punctuation_mask_from_tags,
    scored_word_mask,
)

# Two sentences padded to 4 words (positions 0..4, 0 the root). Relation ids: 0 root, 1 nsubj,
# 2 obj, 3 punct. Padding and the root hold -1 in prediction and gold alike, so scoring them
# by mistake would inflate the counts.
UPOS = [["NOUN", "VERB", "NOUN", "PUNCT"], ["PUNCT", "VERB"]]
UPOS_IDS = {"NOUN": 0, "VERB": 1, "PUNCT": 2}
LENGTHS = torch.tensor([4, 2])
GOLD_HEADS = torch.tensor([[-1, 2, 0, 2, 2], [-1, 2, 0, -1, -1]])
GOLD_RELS = torch.tensor([[-1, 1, 0, 2, 3], [-1, 3, 0, -1, -1]])
PRED_HEADS = torch.tensor([[-1, 2, 0, 4, 2], [-1, 0, 0, -1, -1]])
PRED_RELS = torch.tensor([[-1, 1, 0, 2, 1], [-1, 3, 1, -1, -1]])
# sentence 0: word 1 head+rel ok; word 2 head+rel ok; word 3 head wrong; word 4 (PUNCT) head ok,
# relation wrong. sentence 1: word 1 (PUNCT) head wrong; word 2 head ok, relation wrong.
WITH_PUNCT = [6, 4, 2]
WITHOUT_PUNCT = [4, 3, 2]


def _counts(mask):
    return attachment_counts(PRED_HEADS, PRED_RELS, GOLD_HEADS, GOLD_RELS, LENGTHS, mask).tolist()


def test_hand_computed_with_and_without_punctuation():
    punct = punctuation_mask_from_tags(UPOS, max_len=4)
    assert punct.tolist() == [[False, False, False, True], [True, False, False, False]]
    assert _counts(None) == WITH_PUNCT
    assert _counts(scored_word_mask(LENGTHS, 5, punct, include_punct=True)) == WITH_PUNCT
    assert _counts(scored_word_mask(LENGTHS, 5)) == WITH_PUNCT
    assert _counts(scored_word_mask(LENGTHS, 5, punct)) == WITHOUT_PUNCT
    scores = attachment_scores(torch.tensor(WITHOUT_PUNCT))
    assert scores == {
        "uas": pytest.approx(3 / 4),
        "las": pytest.approx(2 / 4),
        "words": 4,
        "heads_correct": 3,
        "labeled_correct": 2,
    }
    scores = attachment_scores(torch.tensor(WITH_PUNCT), well_formed=1, n_trees=2)
    assert scores["uas"] == pytest.approx(4 / 6) and scores["las"] == pytest.approx(2 / 6)
    assert scores["well_formed_rate"] == pytest.approx(0.5)
    assert ATTACHMENT_COLUMNS == ("words", "heads_correct", "labeled_correct")


def test_mask_layouts_and_ids_agree():
    """Punctuation from UPOS ids or strings, words-only or root-aligned, gives the same mask."""
    ids = torch.tensor([[UPOS_IDS[tag] for tag in tags] + [-1] * (4 - len(tags)) for tags in UPOS])
    words_only = punctuation_mask(ids, UPOS_IDS["PUNCT"])
    assert torch.equal(words_only, punctuation_mask_from_tags(UPOS, max_len=4))
    root_aligned = torch.cat([torch.full((2, 1), UPOS_IDS["PUNCT"]), ids], 1)  # root "PUNCT" too
    from_aligned = scored_word_mask(LENGTHS, 5, punctuation_mask(root_aligned, [2]))
    assert torch.equal(from_aligned, scored_word_mask(LENGTHS, 5, words_only))
    assert from_aligned.tolist() == [
        [False, True, True, True, False],
        [False, False, True, False, False],
    ]
    # several punctuation ids
    assert punctuation_mask(ids, [0, 2]).sum() == 4
    assert punctuation_mask_from_tags([["SYM", "PUNCT"]], punct_tags=("SYM",)).tolist() == [
        [True, False]
    ]


def test_padding_content_does_not_count():
    pred = PRED_HEADS.clone()
    pred[1, 3:] = torch.tensor([0, 1])  # garbage where the gold padding holds -1
    gold = GOLD_HEADS.clone()
    gold[1, 3:] = torch.tensor([0, 1])  # equal garbage: still not a word
    pred[:, 0] = gold[:, 0] = 5
    counts = attachment_counts(pred, PRED_RELS, gold, GOLD_RELS, LENGTHS).tolist()
    assert counts == WITH_PUNCT


def test_counts_add_across_batches_and_match_a_plain_loop():
    rng = random.Random(0)
    lengths = [rng.randint(1, 6) for _ in range(7)]
    size = max(lengths) + 1
    gold_heads = torch.full((7, size), -1)
    pred_heads, gold_rels, pred_rels = (torch.full((7, size), -1) for _ in range(3))
    punct = torch.zeros(7, size, dtype=torch.bool)
    expected = [0, 0, 0]
    for b, n in enumerate(lengths):
        for d in range(1, n + 1):
            gold_heads[b, d] = rng.choice([h for h in range(n + 1) if h != d])
            pred_heads[b, d] = rng.choice([-1, *range(n + 1)])
            gold_rels[b, d], pred_rels[b, d] = rng.randint(0, 2), rng.randint(0, 2)
            punct[b, d] = rng.random() < 0.3
            if not punct[b, d]:
                expected[0] += 1
                head_ok = int(pred_heads[b, d]) == int(gold_heads[b, d])
                expected[1] += head_ok
                expected[2] += head_ok and int(pred_rels[b, d]) == int(gold_rels[b, d])
    lengths_t = torch.tensor(lengths)
    mask = scored_word_mask(lengths_t, size, punct)
    whole = attachment_counts(pred_heads, pred_rels, gold_heads, gold_rels, lengths_t, mask)
    assert whole.dtype == torch.long and whole.tolist() == expected
    halves = sum(
        attachment_counts(
            pred_heads[part],
            pred_rels[part],
            gold_heads[part],
            gold_rels[part],
            lengths_t[part],
            mask[part],
        )
        for part in (slice(0, 3), slice(3, 7))
    )
    assert halves.tolist() == expected
    assert expected[1] > expected[2] > 0  # the data exercise both kinds of error


def test_empty_scores_are_zero():
    assert attachment_scores(torch.zeros(3, dtype=torch.long)) == {
        "uas": 0.0,
        "las": 0.0,
        "words": 0,
        "heads_correct": 0,
        "labeled_correct": 0,
    }
    assert attachment_scores(torch.zeros(3, dtype=torch.long), 0, 0)["well_formed_rate"] == 0.0
    # every word punctuation: nothing scored
    counts = attachment_counts(
        PRED_HEADS, PRED_RELS, GOLD_HEADS, GOLD_RELS, LENGTHS, torch.zeros(2, 5, dtype=torch.bool)
    )
    assert counts.tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"pred_heads": PRED_HEADS[:, :4]}, "pred_heads must have shape"),
        ({"gold_rels": GOLD_RELS[0]}, "gold_rels must have shape"),
        ({"pred_heads": PRED_HEADS.float()}, "integer"),
        ({"lengths": torch.tensor([4, 5])}, "lengths"),
        ({"lengths": torch.tensor([4])}, "lengths"),
        ({"gold_heads": GOLD_HEADS.masked_fill(GOLD_HEADS == 0, 9)}, "is not a head"),
        ({"mask": torch.ones(2, 5, dtype=torch.bool)}, "the root"),
        ({"mask": scored_word_mask(torch.tensor([4, 3]), 5)}, "padding"),
        ({"mask": torch.ones(2, 5)}, "bool"),
        ({"mask": torch.zeros(2, 4, dtype=torch.bool)}, "scored_mask must have shape"),
    ],
)
def test_counts_bad_input(change, match):
    args = {
        "pred_heads": PRED_HEADS,
        "pred_rels": PRED_RELS,
        "gold_heads": GOLD_HEADS,
        "gold_rels": GOLD_RELS,
        "lengths": LENGTHS,
        "mask": None,
        **change,
    }
    with pytest.raises(ValueError, match=match):
        attachment_counts(
            args["pred_heads"],
            args["pred_rels"],
            args["gold_heads"],
            args["gold_rels"],
            args["lengths"],
            args["mask"],
        )


def test_other_bad_input():
    with pytest.raises(ValueError, match="shape"):
        attachment_scores(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="labeled_correct <= heads_correct <= words"):
        attachment_scores(torch.tensor([3, 4, 1]))
    with pytest.raises(ValueError, match="both"):
        attachment_scores(torch.tensor([3, 2, 1]), well_formed=1)
    with pytest.raises(ValueError, match="well_formed"):
        attachment_scores(torch.tensor([3, 2, 1]), well_formed=3, n_trees=2)
    with pytest.raises(ValueError, match="punct must have shape"):
        scored_word_mask(LENGTHS, 5, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        scored_word_mask(LENGTHS, 5, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="lengths"):
        scored_word_mask(LENGTHS, 4)
    with pytest.raises(ValueError, match="integer"):
        punctuation_mask(torch.zeros(2, 3), 1)
    with pytest.raises(ValueError, match="at least one"):
        punctuation_mask(torch.zeros(2, 3, dtype=torch.long), [])
    with pytest.raises(ValueError, match="longer than max_len"):
        punctuation_mask_from_tags(UPOS, max_len=3)
