"""Tag schemes for flat named-entity spans: IOB1, IOB2 (BIO) and BIOES; pure Python, no torch.

A tag is ``"O"`` or ``PREFIX-TYPE`` (``"B-PER"``; the type is everything after the first ``-``, so
``"B-GPE-LOC"`` has type ``"GPE-LOC"``, as in seqeval). The three schemes encode the same thing, a
set of non-overlapping labeled spans ``(start, end, type)`` (token indices, ``end`` inclusive):

* ``"iob2"`` (BIO): the first token of every span is ``B-``, the others ``I-``.
* ``"iob1"``: a span starts with ``I-`` unless the token before it ends a span of the same type, in
  which case it starts with ``B-``. Validation is lenient (a ``B-`` anywhere is accepted, as most
  "IOB1" files and seqeval do); conversion *to* IOB1 writes the canonical form.
* ``"bioes"``: ``S-`` for a one-token span, else ``B-`` (first), ``I-`` (inside), ``E-`` (last).

Spans are decoded with seqeval's chunking convention (``seqeval.metrics.get_entities``): a span
starts at ``B-``/``S-``, or at an ``I-``/``E-`` that cannot continue the previous token, and ends
at ``E-``/``S-`` or before a token that does not continue it. For tags valid in their scheme this is
the exact decoding; ``strict=False`` applies it to invalid tags (a tagger's raw predictions) too.

Label layouts (what a model's label index means), for entity types ``t_0 < t_1 < ...`` sorted:
``"bioes"`` (the layout of ``structkd.structures``): ``0 = O``, ``B-t_r = 1 + 4r``,
``I-t_r = 2 + 4r``, ``E-t_r = 3 + 4r``, ``S-t_r = 4 + 4r``; ``"iob1"``/``"iob2"``: ``0 = O``,
``B-t_r = 1 + 2r``, ``I-t_r = 2 + 2r``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from numbers import Integral
from typing import Literal

Scheme = Literal["iob1", "iob2", "bioes"]
SCHEMES: tuple[str, ...] = ("iob1", "iob2", "bioes")

Span = tuple[int, int, str]
"""A labeled span ``(start, end, type)``: token indices, ``end`` inclusive."""

_PREFIXES: dict[str, frozenset[str]] = {
    "iob1": frozenset("BI"),
    "iob2": frozenset("BI"),
    "bioes": frozenset("BIES"),
}
_LAYOUT_PREFIXES: dict[str, str] = {"iob1": "BI", "iob2": "BI", "bioes": "BIES"}


def check_scheme(scheme: str, *, name: str = "scheme") -> str:
    """Return ``scheme`` if it is one of ``SCHEMES``; else raise ``ValueError`` naming ``name``."""
    if scheme not in _PREFIXES:
        raise ValueError(f"{name} must be one of {', '.join(SCHEMES)}; got {scheme!r}")
    return scheme


@functools.lru_cache(maxsize=4096)
def split_tag(tag: str) -> tuple[str, str | None]:
    """Split a tag into ``(prefix, type)``: ``"B-PER" -> ("B", "PER")``, ``"O" -> ("O", None)``.

    Raises ``ValueError`` for anything else (no ``-``, an empty prefix or type, whitespace, a
    prefix longer than one letter, ``"O-X"``). Which prefixes a scheme allows is checked elsewhere.
    """
    if tag == "O":
        return "O", None
    if not isinstance(tag, str):
        raise ValueError(f"a tag must be a string; got {tag!r}")
    prefix, sep, entity_type = tag.partition("-")
    if (
        not sep
        or len(prefix) != 1
        or prefix == "O"
        or not entity_type
        or any(char.isspace() for char in tag)
    ):
        raise ValueError(f"tag {tag!r} is neither 'O' nor PREFIX-TYPE (e.g. 'B-PER')")
    return prefix, entity_type


def find_scheme_violation(tags: Sequence[str], scheme: str) -> tuple[int, str] | None:
    """The first position where ``tags`` break ``scheme``: ``(index, reason)``, or ``None``.

    ``reason`` is a sentence naming the tag and the rule it breaks. The reader turns ``index`` into
    a file line number; ``validate_tags`` raises it as a ``ValueError``.
    """
    check_scheme(scheme)
    allowed = _PREFIXES[scheme]
    previous_prefix, previous_type = "O", None
    for index, tag in enumerate(tags):
        try:
            prefix, entity_type = split_tag(tag)
        except ValueError as error:
            return index, str(error)
        if prefix != "O" and prefix not in allowed:
            return index, (
                f"tag {tag!r} has prefix {prefix!r}, which {scheme.upper()} does not use "
                f"(it uses O and {', '.join(sorted(allowed))})"
            )
        continues = previous_prefix in "BI" and previous_type == entity_type
        if scheme == "iob2" and prefix == "I" and not continues:
            return index, (
                f"tag {tag!r} follows {_describe_previous(index, tags)}; IOB2 requires "
                f"I-{entity_type} to follow B-{entity_type} or I-{entity_type} (an I- after O "
                "or another type means the data is IOB1)"
            )
        if scheme == "bioes":
            if prefix in "IE" and not continues:
                return index, (
                    f"tag {tag!r} follows {_describe_previous(index, tags)}; BIOES requires "
                    f"{prefix}-{entity_type} to follow B-{entity_type} or I-{entity_type}"
                )
            if previous_prefix in "BI" and not (prefix in "IE" and previous_type == entity_type):
                return index, (
                    f"tag {tag!r} follows {tags[index - 1]!r}; BIOES requires "
                    f"{tags[index - 1]!r} to be followed by I-{previous_type} or E-{previous_type}"
                )
        previous_prefix, previous_type = prefix, entity_type
    if scheme == "bioes" and previous_prefix in "BI":
        return len(tags) - 1, (
            f"tag {tags[-1]!r} ends the sentence; BIOES requires a span to end with E- or S-"
        )
    return None


def _describe_previous(index: int, tags: Sequence[str]) -> str:
    return "the start of the sentence" if index == 0 else repr(tags[index - 1])


def validate_tags(tags: Sequence[str], scheme: str, *, name: str = "tags") -> None:
    """Raise ``ValueError`` (naming ``name``, position and rule) if ``tags`` break ``scheme``."""
    violation = find_scheme_violation(tags, scheme)
    if violation is not None:
        index, reason = violation
        raise ValueError(f"{name}[{index}]: {reason}")


def detect_scheme(tag_sequences: Iterable[Sequence[str]]) -> str:
    """Guess the scheme of a corpus ``[n_sentences][seq_len]`` of tags from how spans start and end.

    ``"bioes"`` if any tag has an ``E-`` or ``S-`` prefix; else ``"iob1"`` if some ``I-X`` follows
    ``O``, another type or the sentence start (a span opened by ``I-``); else ``"iob2"`` (also for a
    corpus with no spans, where the schemes coincide). The guess is not a validation: validate the
    corpus against the returned scheme (the reader does).
    """
    saw_iob1_start = False
    for tags in tag_sequences:
        previous_prefix, previous_type = "O", None
        for tag in tags:
            prefix, entity_type = split_tag(tag)
            if prefix in "ES":
                return "bioes"
            if prefix == "I" and not (previous_prefix in "BI" and previous_type == entity_type):
                saw_iob1_start = True
            previous_prefix, previous_type = prefix, entity_type
    return "iob1" if saw_iob1_start else "iob2"


def tags_to_spans(tags: Sequence[str], scheme: str = "iob2", *, strict: bool = True) -> list[Span]:
    """Decode tags ``[seq_len]`` into spans ``[(start, end, type), ...]`` ordered by start.

    ``strict=True`` first validates the tags against ``scheme`` (``ValueError`` on a violation).
    ``strict=False`` accepts any well-formed tags and repairs them seqeval's way: an ``I-``/``E-``
    that cannot continue the open span starts a new one; the result then equals
    ``seqeval.metrics.sequence_labeling.get_entities`` reordered as ``(start, end, type)``.
    """
    check_scheme(scheme)
    if strict:
        validate_tags(tags, scheme)
    spans: list[Span] = []
    open_start: int | None = None
    open_type: str | None = None
    for index, tag in enumerate(tags):
        prefix, entity_type = split_tag(tag)
        continues = open_start is not None and prefix in "IE" and entity_type == open_type
        if open_start is not None and not continues:
            spans.append((open_start, index - 1, open_type))  # type: ignore[arg-type]
            open_start = open_type = None
        if prefix != "O" and open_start is None:
            open_start, open_type = index, entity_type
        if prefix in "ES" and open_start is not None:
            spans.append((open_start, index, open_type))  # type: ignore[arg-type]
            open_start = open_type = None
    if open_start is not None:
        spans.append((open_start, len(tags) - 1, open_type))  # type: ignore[arg-type]
    return spans


def check_spans(spans: Iterable[Span], length: int, *, name: str = "spans") -> list[Span]:
    """Validate spans in a sentence of ``length`` tokens; return them sorted by start.

    Each span is ``(start, end, type)`` with ``0 <= start <= end < length`` and a type that makes a
    valid tag (non-empty, no whitespace); spans may not overlap. Raises ``ValueError`` naming
    ``name`` and the offending span.
    """
    ordered = sorted((tuple(span) for span in spans), key=lambda span: (span[0], span[1]))
    previous_end = -1
    for span in ordered:
        if len(span) != 3:
            raise ValueError(f"{name}: a span must be (start, end, type); got {span!r}")
        start, end, entity_type = span
        integers = isinstance(start, Integral) and isinstance(end, Integral)
        if not (integers and 0 <= start <= end < length):
            raise ValueError(
                f"{name}: span {span!r} must satisfy 0 <= start <= end < length = {length}"
            )
        try:
            split_tag(f"B-{entity_type}")
        except ValueError:
            raise ValueError(f"{name}: span {span!r} has an invalid type {entity_type!r}") from None
        if start <= previous_end:
            raise ValueError(f"{name}: span {span!r} overlaps a span ending at {previous_end}")
        previous_end = end
    return [(int(start), int(end), entity_type) for start, end, entity_type in ordered]


def spans_to_tags(spans: Iterable[Span], length: int, scheme: str = "iob2") -> list[str]:
    """Encode non-overlapping spans ``(start, end, type)`` as tags ``[length]`` in ``scheme``.

    IOB1 output is canonical: a span starts with ``B-`` only when the token before it ends a span
    of the same type, else with ``I-``.
    """
    check_scheme(scheme)
    if not isinstance(length, int) or length < 0:
        raise ValueError(f"length must be a non-negative int; got {length!r}")
    tags = ["O"] * length
    previous_end, previous_type = -2, None
    for start, end, entity_type in check_spans(spans, length):
        if scheme == "bioes":
            if start == end:
                tags[start] = f"S-{entity_type}"
            else:
                tags[start] = f"B-{entity_type}"
                tags[start + 1 : end] = [f"I-{entity_type}"] * (end - start - 1)
                tags[end] = f"E-{entity_type}"
        else:
            tags[start : end + 1] = [f"I-{entity_type}"] * (end - start + 1)
            adjacent_same_type = previous_end == start - 1 and previous_type == entity_type
            if scheme == "iob2" or adjacent_same_type:
                tags[start] = f"B-{entity_type}"
        previous_end, previous_type = end, entity_type
    return tags


def convert_tags(tags: Sequence[str], source: str, target: str) -> list[str]:
    """Convert tags ``[seq_len]`` from scheme ``source`` (validated) to scheme ``target``.

    Goes through the spans, so every pair of schemes works and ``convert(convert(t, a, b), b, a)``
    gives back ``t`` whenever ``t`` is in the canonical form of ``a`` (always, for IOB2 and BIOES).
    """
    check_scheme(source, name="source")
    check_scheme(target, name="target")
    return spans_to_tags(tags_to_spans(tags, source), len(tags), target)


def entity_types(tag_sequences: Iterable[Sequence[str]]) -> list[str]:
    """The sorted entity types found in tags ``[n_sentences][seq_len]`` (``"B-PER" -> "PER"``)."""
    found: set[str] = set()
    for tags in tag_sequences:
        for tag in tags:
            entity_type = split_tag(tag)[1]
            if entity_type is not None:
                found.add(entity_type)
    return sorted(found)


def _check_types(types: Sequence[str]) -> list[str]:
    types = list(types)
    if types != sorted(set(types)):
        raise ValueError(
            f"entity types must be sorted and unique (the label layout depends on the order); "
            f"got {types!r}"
        )
    for entity_type in types:
        try:
            split_tag(f"B-{entity_type}")
        except ValueError:
            raise ValueError(f"entity type {entity_type!r} does not make a valid tag") from None
    return types


def label_names(types: Sequence[str], scheme: str = "bioes") -> list[str]:
    """The tag of each label index ``[n_labels]`` for sorted entity ``types``, ``scheme``'s layout.

    ``"bioes"``: ``["O", "B-t0", "I-t0", "E-t0", "S-t0", "B-t1", ...]`` (``1 + 4R`` labels, the
    layout of ``structkd.structures``); ``"iob1"``/``"iob2"``: ``["O", "B-t0", "I-t0", ...]``
    (``1 + 2R``).
    """
    check_scheme(scheme)
    prefixes = _LAYOUT_PREFIXES[scheme]
    return ["O"] + [f"{prefix}-{name}" for name in _check_types(types) for prefix in prefixes]


def tags_to_label_indices(
    tags: Sequence[str], types: Sequence[str], scheme: str = "bioes"
) -> list[int]:
    """Map tags ``[seq_len]`` to label indices ``[seq_len]`` of ``label_names(types, scheme)``.

    With ``scheme="bioes"``: ``O -> 0``, ``B-t_r -> 1 + 4r``, ``I-t_r -> 2 + 4r``,
    ``E-t_r -> 3 + 4r``, ``S-t_r -> 4 + 4r``. The tags are validated against ``scheme``; a tag
    whose type is not in ``types`` raises ``ValueError``.
    """
    validate_tags(tags, scheme)
    index_of = {name: index for index, name in enumerate(label_names(types, scheme))}
    indices = []
    for position, tag in enumerate(tags):
        if tag not in index_of:
            raise ValueError(f"tags[{position}]: {tag!r} has a type not in types {list(types)!r}")
        indices.append(index_of[tag])
    return indices


def label_indices_to_tags(
    indices: Sequence[int], types: Sequence[str], scheme: str = "bioes"
) -> list[str]:
    """Map label indices ``[seq_len]`` (no padding) back to tags of ``label_names(types, scheme)``.

    The result is not validated (a tagger's argmax may break the scheme); decode spans from it with
    ``tags_to_spans(..., strict=False)`` or validate with ``validate_tags``.
    """
    names = label_names(types, scheme)
    tags = []
    for position, index in enumerate(indices):
        index = int(index)
        if not 0 <= index < len(names):
            raise ValueError(
                f"indices[{position}] = {index} is outside 0..{len(names) - 1} "
                f"({len(names)} labels for {len(types)} types in {scheme})"
            )
        tags.append(names[index])
    return tags
