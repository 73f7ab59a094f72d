"""NER sources: labeled data, text to tag, format detection."""

from __future__ import annotations

import pytest

from structkd.data.conll import DataError, Sentence
from structkd.tasks.ner.data import guess_text_format, load_labeled, load_text
from structkd.tasks.ner.training import labeled_part
from tests.tasks.ner import write_conll, write_tokens


def test_load_labeled_and_text(tmp_path) -> None:
    conll = write_conll(tmp_path / "a.conll", 7, seed=1)
    tokens = write_tokens(tmp_path / "a.txt", 5, seed=1)
    source = load_labeled(str(conll), max_sentences=4)
    assert len(source) == 4 and source.scheme == "iob2" and all(s.tags for s in source.sentences)
    assert source.fingerprint == load_labeled(str(conll), max_sentences=4).fingerprint
    assert source.fingerprint != load_labeled(str(conll)).fingerprint
    assert guess_text_format(conll) == "conll" and guess_text_format(tokens) == "tokens"
    text = load_text(str(tokens))
    assert len(text) == 5 and text.scheme is None and text.sentences[0].tags is None
    # the tokens of the same sentences give the same fingerprint whatever the format or tags
    untagged = load_text(str(conll), keep_tags=False)
    assert untagged.fingerprint == load_labeled(str(conll)).fingerprint
    single = tmp_path / "one.conll"
    single.write_text("Alice B-PER\nmet O\nBob B-PER\n", encoding="utf-8")
    assert guess_text_format(single) == "conll"
    assert load_text(str(single)).sentences[0].tags == ["B-PER", "O", "B-PER"]
    with pytest.raises(ValueError, match="neither a known data set"):
        load_labeled(str(tmp_path / "missing.conll"))
    with pytest.raises(DataError, match="bad tag"):
        load_labeled(str(tokens))


def test_labeled_part_needs_tags() -> None:
    labeled = [(0, Sentence(["a"], ["O"])), (1, Sentence(["b", "c"], ["O", "O"]))]
    assert labeled_part("train", labeled).labeled
    with pytest.raises(ValueError, match="without tags"):
        labeled_part("train", [(2, Sentence(["d"]))])
