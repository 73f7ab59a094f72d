"""NER sources: labeled data, text to tag, format detection."""

from __future__ import annotations

import pytest

from structkd.data.conll import DataError, Sentence
from structkd.data.formats import guess_text_format
from structkd.tasks.ner.data import load_labeled, load_text
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


# --- issue 10: format guessing never turns tags into words; --scheme -----------------------------


def test_one_sentence_conll_with_a_malformed_line_is_an_error_with_file_and_line(tmp_path) -> None:
    # it used to be guessed as tokenized text, and its tags became words (rc 0)
    path = tmp_path / "one.conll"
    path.write_text("Alice B-PER\nmet O\nBob\nin O\nParis B-LOC\n", encoding="utf-8")
    assert guess_text_format(path) == "conll"
    with pytest.raises(DataError) as caught:
        load_text(str(path))
    assert (caught.value.path, caught.value.line) == (str(path), 3)
    bad_tag = tmp_path / "bad_tag.conll"
    bad_tag.write_text("Alice NNP B-PER\nmet VBD O\nBob NNP PER\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad_tag\.conll, line 3: bad tag"):
        load_text(str(bad_tag))


def test_tokenized_paragraphs_are_tokenized_text(tmp_path) -> None:
    # blank lines between paragraphs made it "CoNLL" ("bad tag '.'")
    path = tmp_path / "paragraphs.txt"
    path.write_text(
        "EU rejects German call .\nPeter Blackburn spoke .\n\nBRUSSELS 1996-08-22\n\n"
        "The European Commission said on Thursday it disagreed .\n",
        encoding="utf-8",
    )
    assert guess_text_format(path) == "tokens"
    text = load_text(str(path))
    assert [s.tokens[0] for s in text.sentences] == ["EU", "Peter", "BRUSSELS", "The"]
    assert all(s.tags is None for s in text.sentences)


def test_hash_tokens_are_words_in_every_ner_source(tmp_path) -> None:
    path = tmp_path / "hash.conll"
    path.write_text("#Paris B-LOC\n# O\nrocks O\n\n#1 O\n", encoding="utf-8")
    assert guess_text_format(path) == "conll"
    assert load_labeled(str(path)).sentences[0].tokens == ["#Paris", "#", "rocks"]
    assert load_text(str(path)).sentences[1].tokens == ["#1"]
    assert load_text(str(path), keep_tags=False).sentences[0].tokens == ["#Paris", "#", "rocks"]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        # a third of the lines end with a tag: a column file or text?
        ("EU rejects German call O\nPeter Blackburn .\nBRUSSELS said .\n", 1),
        # two columns everywhere, blank lines between, no tag: word + POS, or two-word sentences?
        ("EU NNP\nrejects VBZ\n\nPeter NNP\n", 1),
    ],
)
def test_ambiguous_input_names_the_format_option(tmp_path, text, line) -> None:
    path = tmp_path / "ambiguous.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as caught:
        guess_text_format(path)
    assert (caught.value.path, caught.value.line) == (str(path), line)
    assert "--format conll" in str(caught.value) and "--format tokens" in str(caught.value)
    with pytest.raises(DataError, match="--format"):
        load_text(str(path))
    assert load_text(str(path), file_format="tokens").sentences[0].tags is None


def test_one_word_per_line_between_blank_lines_is_a_column_file_without_tags(tmp_path) -> None:
    path = tmp_path / "words.txt"
    path.write_text("EU\nrejects\n\nPeter\n", encoding="utf-8")
    assert guess_text_format(path) == "conll"
    assert [s.tokens for s in load_text(str(path)).sentences] == [["EU", "rejects"], ["Peter"]]


def test_scheme_option_of_labeled_data(tmp_path) -> None:
    import warnings

    from structkd.data.conll import InferredIOB1Warning

    path = tmp_path / "iob1.conll"
    path.write_text("EU B-ORG\nrejects O\n\nPeter O\nBlackburn I-PER\n", encoding="utf-8")
    # auto: read as IOB1, with a warning naming the file (it was silent)
    with pytest.warns(InferredIOB1Warning, match="iob1.conll.*--scheme iob1 to confirm"):
        assert load_labeled(str(path)).scheme == "iob1"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_labeled(str(path), scheme="iob1").scheme == "iob1"
        # text to tag: its gold tags are only copied, no warning about a --scheme it lacks
        assert load_text(str(path)).sentences[1].tags == ["O", "I-PER"]
    with pytest.raises(DataError) as caught:
        load_labeled(str(path), scheme="iob2")
    assert (caught.value.path, caught.value.line) == (str(path), 5)
    with pytest.raises(DataError, match=r"line 2: .*BIOES requires"):
        load_labeled(str(path), scheme="bioes")
    with pytest.raises(ValueError, match="scheme must be one of auto, iob1, iob2, bioes"):
        load_labeled(str(path), scheme="bio")


def test_target_diagnostics_by_hand() -> None:
    """Two tokens, one teacher: q = (0.9, 0.1) and (0.2, 0.8) with gold labels 0 and 0."""
    import math
    from dataclasses import dataclass

    import torch

    from structkd.tasks.ner.diagnostics import target_diagnostics

    @dataclass
    class Batch:
        sentence_ids: torch.Tensor
        lengths: torch.Tensor
        label_ids: torch.Tensor
        mask: torch.Tensor

    @dataclass
    class Targets:
        per_teacher: list
        weights: torch.Tensor

    def collate(items):
        return Batch(
            torch.tensor([0]), torch.tensor([2]), torch.tensor([[0, 0]]), torch.tensor([[1, 1]]) > 0
        )

    def read(ids, lengths):
        return Targets([{"marginals": torch.tensor([[[0.9, 0.1], [0.2, 0.8]]])}], torch.ones(1))

    found = target_diagnostics([(0, None)], collate, read, labeled=True, temperature=1.0)
    entropy = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))  # noqa: E731
    assert found["n_tokens"] == 2
    assert found["mean_gold_probability"] == pytest.approx((0.9 + 0.2) / 2)
    assert found["argmax_error"] == pytest.approx(0.5)
    assert found["mean_max_probability"] == pytest.approx((0.9 + 0.8) / 2)
    assert found["mean_entropy"] == pytest.approx((entropy(0.9) + entropy(0.8)) / 2)


def test_a_treebank_given_as_ner_data_is_named(tmp_path) -> None:
    # it gave "bad tag '_'", or was tagged line by line as tokenized text
    path = tmp_path / "trees.conllu"
    path.write_text(
        "# sent_id = 1\n1\tEv\tev\tNOUN\t_\t_\t2\tnsubj\t_\t_\n"
        "2\tgel\tgel\tVERB\t_\t_\t0\troot\t_\t_\n",
        encoding="utf-8",
    )
    for read in (load_labeled, load_text, guess_text_format):
        with pytest.raises(DataError, match=r"trees\.conllu, line \d: .*looks like CoNLL-U"):
            read(str(path))


def test_vocab_text_is_read_for_the_vocabulary(tmp_path) -> None:
    from structkd.api import TrainOptions
    from structkd.tasks.ner.training import vocabulary_sources

    conll = write_conll(tmp_path / "a.conll", 3, seed=1)
    tokens = write_tokens(tmp_path / "a.txt", 4, seed=2)
    dev = load_labeled(str(conll))
    options = TrainOptions(train=str(conll), dev=str(conll), out="o", vocab_text=[str(tokens)])
    sources = vocabulary_sources(options, dev, None)
    assert [len(source) for source in sources] == [3, 4]
    assert sources[1].sentences[0].tags is None
    with pytest.raises(ValueError, match="vocab_text"):
        from structkd.train.options import check_options

        check_options(TrainOptions(train="t", dev="d", out="o", vocab_text="a.txt"))
