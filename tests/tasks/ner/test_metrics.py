"""Entity metrics: strict BIOES decoding and per-type counts agree with seqeval's strict mode."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from seqeval.scheme import IOBES, Entities

from structkd.data.tag_schemes import convert_tags, label_names
from structkd.tasks.ner.metrics import (
    entity_counts,
    label_spans,
    scores_from_counts,
    seqeval_scores,
)

TYPES = ["LOC", "MISC", "PER"]
LABELS = label_names(TYPES, "bioes")

label_rows = st.lists(
    st.lists(st.integers(0, len(LABELS) - 1), min_size=1, max_size=9), min_size=1, max_size=6
)


@settings(max_examples=150, deadline=None)
@given(label_rows)
def test_label_spans_equal_seqeval_strict_iobes(rows: list[list[int]]) -> None:
    """Any label sequence, valid BIOES or broken: the same entities as seqeval's strict IOBES."""
    tags = [[LABELS[label] for label in row] for row in rows]
    expected = Entities(tags, IOBES).entities
    for row, entities in zip(rows, expected, strict=True):
        ours = {(start, end, TYPES[t]) for start, end, t in label_spans(row, len(TYPES))}
        theirs = {(e.start, e.end - 1, e.tag) for e in entities}
        assert ours == theirs, [LABELS[label] for label in row]


def test_label_spans_examples() -> None:
    def spans(tags: list[str]) -> list[tuple[int, int, int]]:
        return label_spans([LABELS.index(tag) for tag in tags], len(TYPES))

    assert spans(["B-PER", "I-PER", "E-PER", "O", "S-LOC"]) == [(0, 2, 2), (4, 4, 0)]
    assert spans(["I-PER", "E-PER"]) == []  # no opening label
    assert spans(["B-PER", "I-PER", "O"]) == []  # never closed
    assert spans(["B-PER", "E-LOC"]) == []  # type changes
    assert spans(["B-PER", "B-PER", "E-PER"]) == [(1, 2, 2)]
    with pytest.raises(ValueError, match="outside"):
        label_spans([13], len(TYPES))


@settings(max_examples=60, deadline=None)
@given(label_rows, st.integers(0, 2**31 - 1))
def test_counts_give_seqeval_scores(rows: list[list[int]], seed: int) -> None:
    """Counts summed over sentences give seqeval's micro and per-type P, R, F1 (strict, gold
    converted from IOB2); the predictions here are arbitrary label sequences."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([len(row) for row in rows])
    max_len = int(lengths.max())
    predicted = torch.full((len(rows), max_len), -1)
    gold = torch.full((len(rows), max_len), -1)
    gold_tags, predicted_tags = [], []
    for index, row in enumerate(rows):
        predicted[index, : len(row)] = torch.tensor(row)
        # valid gold: random IOB2 converted exactly to BIOES
        iob2, inside = [], None
        for draw in torch.randint(0, 5, (len(row),), generator=generator).tolist():
            if draw < 2:
                iob2.append("O")
                inside = None
            elif draw == 2 and inside is not None:
                iob2.append(f"I-{inside}")
            else:
                inside = TYPES[draw % len(TYPES)]
                iob2.append(f"B-{inside}")
        bioes = convert_tags(iob2, "iob2", "bioes")
        gold[index, : len(row)] = torch.tensor([LABELS.index(tag) for tag in bioes])
        gold_tags.append(bioes)
        predicted_tags.append([LABELS[label] for label in row])
    counts = entity_counts(predicted, gold, lengths, len(TYPES))
    ours = scores_from_counts(counts, TYPES)
    theirs = seqeval_scores(gold_tags, predicted_tags, TYPES)
    for key in ("precision", "recall", "f1"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12)
    for entity_type in TYPES:
        for key in ("precision", "recall", "f1", "support"):
            assert ours["per_type"][entity_type][key] == pytest.approx(
                theirs["per_type"][entity_type][key], abs=1e-12
            )


def test_scores_from_counts() -> None:
    counts = torch.tensor([[4, 2, 2], [0, 0, 0], [2, 4, 1]])  # gold, predicted, correct
    scores = scores_from_counts(counts, TYPES)
    assert scores["precision"] == pytest.approx(3 / 6)
    assert scores["recall"] == pytest.approx(3 / 6)
    assert scores["f1"] == pytest.approx(0.5)
    assert scores["per_type"]["LOC"] == {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 4}
    assert scores["per_type"]["MISC"]["f1"] == 0.0
    with pytest.raises(ValueError, match="shape"):
        scores_from_counts(counts[:2], TYPES)
