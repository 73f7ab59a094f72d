"""Tag schemes: validation, detection, conversion round trips, spans, label layouts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from seqeval.metrics.sequence_labeling import get_entities

from structkd.data.tag_schemes import (
    SCHEMES,
    check_spans,
    convert_tags,
    detect_scheme,
    entity_types,
    find_scheme_violation,
    label_indices_to_tags,
    label_names,
    spans_to_tags,
    split_tag,
    tags_to_label_indices,
    tags_to_spans,
    validate_tags,
)

TYPES = ("LOC", "MISC", "PER")
SETTINGS = settings(max_examples=100, deadline=None)


@st.composite
def sentences_with_spans(draw: st.DrawFn) -> tuple[int, list[tuple[int, int, str]]]:
    """A sentence length and random non-overlapping spans, adjacent spans of one type included."""
    pieces = draw(
        st.lists(
            st.one_of(
                st.just(None),  # an O token
                st.tuples(st.integers(1, 4), st.sampled_from(TYPES)),  # a span: width, type
            ),
            max_size=8,
        )
    )
    spans, position = [], 0
    for piece in pieces:
        if piece is None:
            position += 1
        else:
            width, entity_type = piece
            spans.append((position, position + width - 1, entity_type))
            position += width
    return position, spans


# --- split_tag ------------------------------------------------------------------------------------


def test_split_tag_accepts_o_and_prefix_type() -> None:
    assert split_tag("O") == ("O", None)
    assert split_tag("B-PER") == ("B", "PER")
    assert split_tag("S-GPE-LOC") == ("S", "GPE-LOC")  # the type is everything after the first -


@pytest.mark.parametrize(
    "tag", ["", "PER", "B-", "BB-PER", "O-PER", "B PER", "B-P ER", "-PER", "o"]
)
def test_split_tag_rejects_malformed_tags(tag: str) -> None:
    with pytest.raises(ValueError, match="neither 'O' nor PREFIX-TYPE"):
        split_tag(tag)


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "scheme", "index", "fragment"),
    [
        (["O", "I-PER"], "iob2", 1, "follows 'O'; IOB2 requires I-PER to follow B-PER or I-PER"),
        (["I-PER"], "iob2", 0, "follows the start of the sentence"),
        (["B-LOC", "I-PER"], "iob2", 1, "follows 'B-LOC'"),
        (["B-PER", "E-PER"], "iob2", 1, "prefix 'E', which IOB2 does not use"),
        (["S-PER"], "iob1", 0, "prefix 'S', which IOB1 does not use"),
        (["B-PER", "O"], "bioes", 1, "to be followed by I-PER or E-PER"),
        (["B-PER"], "bioes", 0, "ends the sentence"),
        (["B-PER", "I-PER"], "bioes", 1, "ends the sentence"),
        (["O", "E-PER"], "bioes", 1, "BIOES requires E-PER to follow B-PER or I-PER"),
        (["B-PER", "I-LOC", "E-LOC"], "bioes", 1, "follows 'B-PER'"),
        (["S-PER", "I-PER"], "bioes", 1, "follows 'S-PER'"),
        (["B-PER", "S-PER"], "bioes", 1, "to be followed by I-PER or E-PER"),
        (["O", "PER"], "iob2", 1, "neither 'O' nor PREFIX-TYPE"),
    ],
)
def test_violations_name_position_and_rule(
    tags: list[str], scheme: str, index: int, fragment: str
) -> None:
    found_index, reason = find_scheme_violation(tags, scheme)
    assert found_index == index
    assert fragment in reason
    with pytest.raises(ValueError, match=rf"tags\[{index}\]"):
        validate_tags(tags, scheme)


def test_iob1_validation_is_lenient_about_b() -> None:
    for tags in (["B-PER"], ["O", "B-PER", "I-PER"], ["I-PER", "B-LOC"], ["I-PER", "B-PER"]):
        assert find_scheme_violation(tags, "iob1") is None


def test_unknown_scheme_is_rejected() -> None:
    with pytest.raises(ValueError, match="scheme must be one of iob1, iob2, bioes; got 'bilou'"):
        validate_tags(["O"], "bilou")
    with pytest.raises(ValueError, match="target must be one of"):
        convert_tags(["O"], "iob2", "BIO")


# --- known conversions ----------------------------------------------------------------------------


def test_known_conversions_between_all_schemes() -> None:
    iob1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-MISC", "I-MISC", "O"]
    iob2 = ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-MISC", "I-MISC", "O"]
    bioes = ["B-PER", "E-PER", "S-PER", "O", "S-LOC", "B-MISC", "E-MISC", "O"]
    spans = [(0, 1, "PER"), (2, 2, "PER"), (4, 4, "LOC"), (5, 6, "MISC")]
    by_scheme = {"iob1": iob1, "iob2": iob2, "bioes": bioes}
    for source, source_tags in by_scheme.items():
        assert tags_to_spans(source_tags, source) == spans
        for target, target_tags in by_scheme.items():
            assert convert_tags(source_tags, source, target) == target_tags


def test_non_canonical_iob1_converts_to_the_same_spans() -> None:
    # a B- after O is not canonical IOB1, but it is accepted and means a span start
    assert convert_tags(["O", "B-PER", "I-PER"], "iob1", "iob2") == ["O", "B-PER", "I-PER"]
    assert convert_tags(["O", "B-PER", "I-PER"], "iob1", "iob1") == ["O", "I-PER", "I-PER"]


def test_conversion_validates_its_source() -> None:
    with pytest.raises(ValueError, match=r"tags\[1\].*IOB2 requires"):
        convert_tags(["O", "I-PER"], "iob2", "bioes")


# --- property tests -------------------------------------------------------------------------------


@SETTINGS
@given(sentences_with_spans())
def test_spans_encode_validly_and_decode_back_in_every_scheme(sentence) -> None:
    length, spans = sentence
    for scheme in SCHEMES:
        tags = spans_to_tags(spans, length, scheme)
        assert len(tags) == length
        assert find_scheme_violation(tags, scheme) is None
        assert tags_to_spans(tags, scheme) == spans
        assert tags_to_spans(tags, scheme, strict=False) == spans


@SETTINGS
@given(sentences_with_spans())
def test_conversions_round_trip_between_every_pair(sentence) -> None:
    length, spans = sentence
    tags = {scheme: spans_to_tags(spans, length, scheme) for scheme in SCHEMES}
    for source in SCHEMES:
        for target in SCHEMES:
            converted = convert_tags(tags[source], source, target)
            assert converted == tags[target]
            assert convert_tags(converted, target, source) == tags[source]


@SETTINGS
@given(sentences_with_spans())
def test_detect_scheme_recognizes_each_encoding(sentence) -> None:
    length, spans = sentence
    expected_with_spans = {"iob1": "iob1", "iob2": "iob2", "bioes": "bioes"}
    for scheme in SCHEMES:
        detected = detect_scheme([spans_to_tags(spans, length, scheme)])
        # without spans every encoding is all O, which reads as IOB2
        assert detected == (expected_with_spans[scheme] if spans else "iob2")


@SETTINGS
@given(
    st.lists(
        st.sampled_from(["O"] + [f"{prefix}-{name}" for prefix in "BIES" for name in TYPES[:2]]),
        max_size=12,
    )
)
def test_lenient_decoding_matches_seqeval(tags: list[str]) -> None:
    expected = sorted((start, end, name) for name, start, end in get_entities(list(tags)))
    assert tags_to_spans(tags, "bioes", strict=False) == expected


@SETTINGS
@given(sentences_with_spans())
def test_bioes_label_indices_follow_the_structures_layout(sentence) -> None:
    length, spans = sentence
    tags = spans_to_tags(spans, length, "bioes")
    types = sorted(TYPES)
    indices = tags_to_label_indices(tags, types, "bioes")
    for tag, index in zip(tags, indices, strict=True):
        prefix, name = split_tag(tag)
        if prefix == "O":
            assert index == 0
        else:
            assert index == "BIES".index(prefix) + 1 + 4 * types.index(name)
    assert label_indices_to_tags(indices, types, "bioes") == tags


# --- label layouts and types ----------------------------------------------------------------------


def test_label_names_layouts() -> None:
    assert label_names(["LOC", "PER"], "bioes") == [
        "O", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "B-PER", "I-PER", "E-PER", "S-PER",
    ]  # fmt: skip
    assert label_names(["LOC", "PER"], "iob2") == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert label_names([], "bioes") == ["O"]


def test_label_names_need_sorted_unique_types() -> None:
    with pytest.raises(ValueError, match="sorted and unique"):
        label_names(["PER", "LOC"])
    with pytest.raises(ValueError, match="sorted and unique"):
        label_names(["LOC", "LOC"])
    with pytest.raises(ValueError, match="does not make a valid tag"):
        label_names(["A B"])


def test_label_index_errors() -> None:
    with pytest.raises(ValueError, match=r"tags\[1\]: 'B-ORG' has a type not in types"):
        tags_to_label_indices(["O", "B-ORG", "E-ORG"], ["LOC", "PER"])
    with pytest.raises(ValueError, match=r"indices\[0\] = 9 is outside 0..8"):
        label_indices_to_tags([9], ["LOC", "PER"])
    with pytest.raises(ValueError, match=r"indices\[1\] = -1"):
        label_indices_to_tags([0, -1], ["LOC", "PER"])


def test_entity_types_are_sorted_and_unique() -> None:
    assert entity_types([["B-PER", "O"], ["S-LOC", "B-PER", "E-PER"], []]) == ["LOC", "PER"]
    assert entity_types([]) == []


def test_check_spans_errors() -> None:
    with pytest.raises(ValueError, match="overlaps a span ending at 2"):
        check_spans([(0, 2, "PER"), (2, 3, "LOC")], 5)
    with pytest.raises(ValueError, match="0 <= start <= end < length = 3"):
        check_spans([(1, 3, "PER")], 3)
    with pytest.raises(ValueError, match="0 <= start <= end < length"):
        check_spans([(2, 1, "PER")], 3)
    with pytest.raises(ValueError, match="invalid type"):
        spans_to_tags([(0, 0, "")], 1)
    assert check_spans([(3, 3, "B"), (0, 1, "A")], 4) == [(0, 1, "A"), (3, 3, "B")]
