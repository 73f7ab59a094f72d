"""``structkd demo --quick``: exact inference and structural KD without training a neural network.

The teacher is a linear-chain CRF over BIOES tags whose potentials are counted on CoNLL-2003
train: ``emission(w, t) = log P(t | w) - log P(t)`` with ``P(t | w)`` backed off to the word's
shape, and ``transition(a, b) = log P(b | a)``, both smoothed, under BIOES constraints. The
student is a softmax (MaxEnt) tagger with one weight table per word and per shape, trained on gold
tags (no KD), and by structural KD (case 2a: CRF -> MaxEnt) with and without the gold term.
``run_quick_demo`` prints the dev F1 and speed of each, in about a minute.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from structkd.data.conll import Sentence
from structkd.data.datasets import load_dataset
from structkd.data.tag_schemes import entity_types, label_names, tags_to_label_indices
from structkd.data.vocab import Vocabulary
from structkd.distill import structural_kd_loss
from structkd.structures import Factorized, LinearChainCRF, transition_constraints

__all__ = [
    "SMOOTHING",
    "CountTeacher",
    "Encoded",
    "TableTagger",
    "encode",
    "run_quick_demo",
    "word_shape",
]

SMOOTHING = 1.0
"""Pseudo-count of the back-off distribution in every smoothed estimate."""


def word_shape(word: str) -> str:
    """A coarse shape: case pattern of the first 4 characters (digits ``d``), the last 2 letters."""
    pattern = "".join(
        "X" if char.isupper() else "x" if char.islower() else "d" if char.isdigit() else char
        for char in word[:4]
    )
    return f"{pattern}|{word[-2:].lower()}"


@dataclass
class Encoded:
    """A padded batch: word ids, shape ids, gold label ids (``-1`` padding), lengths."""

    words: Tensor  # [batch, seq_len]
    shapes: Tensor  # [batch, seq_len]
    labels: Tensor  # [batch, seq_len]
    lengths: Tensor  # [batch]


def encode(
    sentences: Sequence[Sentence], words: Vocabulary, shapes: Vocabulary, types: list[str]
) -> Encoded:
    max_len = max(len(sentence) for sentence in sentences)
    word_ids = torch.zeros(len(sentences), max_len, dtype=torch.long)
    shape_ids = torch.zeros_like(word_ids)
    labels = torch.full_like(word_ids, -1)
    for row, sentence in enumerate(sentences):
        n = len(sentence)
        word_ids[row, :n] = torch.tensor(words.encode([token.lower() for token in sentence.tokens]))
        shape_ids[row, :n] = torch.tensor(shapes.encode([word_shape(t) for t in sentence.tokens]))
        labels[row, :n] = torch.tensor(tags_to_label_indices(sentence.tags, types, "bioes"))
    lengths = torch.tensor([len(sentence) for sentence in sentences])
    return Encoded(word_ids, shape_ids, labels, lengths)


def smoothed_log_conditional(counts: Tensor, prior: Tensor) -> Tensor:
    """``log P(t | x)`` ``[n_x, n_tags]`` from counts ``[n_x, n_tags]`` backed off to ``prior``."""
    return ((counts + SMOOTHING * prior) / (counts.sum(-1, keepdim=True) + SMOOTHING)).log()


class CountTeacher:
    """The count-based CRF teacher: potential tables estimated once from tagged sentences."""

    def __init__(self, data: Encoded, n_words: int, n_shapes: int, tag_names: list[str]):
        n_tags = len(tag_names)
        mask = data.labels >= 0
        tags = data.labels[mask]
        tag_prior = torch.bincount(tags, minlength=n_tags).double() + SMOOTHING
        tag_prior = tag_prior / tag_prior.sum()
        shape_counts = torch.zeros(n_shapes, n_tags, dtype=torch.float64)
        shape_counts.index_put_((data.shapes[mask], tags), torch.ones(len(tags)).double(), True)
        word_counts = torch.zeros(n_words, n_tags, dtype=torch.float64)
        word_counts.index_put_((data.words[mask], tags), torch.ones(len(tags)).double(), True)
        self.shape_log_prob = smoothed_log_conditional(shape_counts, tag_prior)
        self.word_counts = word_counts
        self.log_prior = tag_prior.log()
        pairs = mask[:, 1:] & mask[:, :-1]
        transition_counts = torch.zeros(n_tags, n_tags, dtype=torch.float64)
        transition_counts.index_put_(
            (data.labels[:, :-1][pairs], data.labels[:, 1:][pairs]),
            torch.ones(int(pairs.sum())).double(),
            True,
        )
        self.transitions = smoothed_log_conditional(transition_counts, tag_prior)
        self.constraints = transition_constraints(tag_names, "BIOES")

    def distribution(self, data: Encoded) -> LinearChainCRF:
        shape_log_prob = self.shape_log_prob[data.shapes]  # [batch, seq_len, n_tags]
        word_counts = self.word_counts[data.words]
        log_prob = (
            (word_counts + SMOOTHING * shape_log_prob.exp())
            / (word_counts.sum(-1, keepdim=True) + SMOOTHING)
        ).log()
        allowed_transitions, allowed_start, allowed_end = self.constraints
        return LinearChainCRF(
            emissions=(log_prob - self.log_prior).float(),
            transitions=self.transitions.float(),
            lengths=data.lengths,
            allowed_transitions=allowed_transitions,
            allowed_start=allowed_start,
            allowed_end=allowed_end,
        )


class TableTagger(torch.nn.Module):
    """The student: ``logits[i] = W_word[w_i] + W_shape[shape_i] + b`` ``[batch, seq_len, L]``."""

    def __init__(self, n_words: int, n_shapes: int, n_tags: int):
        super().__init__()
        self.word_weights = torch.nn.Embedding(n_words, n_tags)
        self.shape_weights = torch.nn.Embedding(n_shapes, n_tags)
        self.bias = torch.nn.Parameter(torch.zeros(n_tags))
        torch.nn.init.zeros_(self.word_weights.weight)
        torch.nn.init.zeros_(self.shape_weights.weight)

    def forward(self, data: Encoded) -> Factorized:
        logits = self.word_weights(data.words) + self.shape_weights(data.shapes) + self.bias
        return Factorized(logits=logits, lengths=data.lengths)


def batches(data: Encoded, size: int, generator: torch.Generator) -> list[Encoded]:
    order = torch.randperm(len(data.lengths), generator=generator)
    result = []
    for start in range(0, len(order), size):
        index = order[start : start + size]
        max_len = int(data.lengths[index].max())
        result.append(
            Encoded(
                data.words[index, :max_len],
                data.shapes[index, :max_len],
                data.labels[index, :max_len],
                data.lengths[index],
            )
        )
    return result


def train_student(
    train: Encoded,
    teacher: CountTeacher,
    sizes: tuple[int, int, int],
    kd_weight: float,
    steps: int,
    seed: int,
) -> TableTagger:
    """Adam on ``kd_weight * structural KD + (1 - kd_weight) * gold cross-entropy``."""
    torch.manual_seed(seed)
    student = TableTagger(*sizes)
    optimizer = torch.optim.Adam(student.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(seed)
    step = 0
    while step < steps:
        for batch in batches(train, 128, generator):
            distribution = student(batch)
            loss = torch.zeros(())
            if kd_weight > 0:
                with torch.no_grad():
                    teacher_distribution = teacher.distribution(batch)
                loss = loss + kd_weight * structural_kd_loss(teacher_distribution, distribution)
            if kd_weight < 1:
                gold = -distribution.log_prob(batch.labels).mean()
                loss = loss + (1 - kd_weight) * gold
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
    return student


def evaluate(predict, data: Encoded, tag_names: list[str]) -> tuple[float, float]:
    """Strict span F1 (seqeval, BIOES) and sentences per second of ``predict(batch) -> tags``."""
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOBES

    order = torch.argsort(data.lengths)
    gold, predicted = [], []
    start = time.perf_counter()
    with torch.no_grad():
        for first in range(0, len(order), 64):
            index = order[first : first + 64]
            max_len = int(data.lengths[index].max())
            batch = Encoded(
                data.words[index, :max_len],
                data.shapes[index, :max_len],
                data.labels[index, :max_len],
                data.lengths[index],
            )
            tags = predict(batch)
            for row, length in enumerate(batch.lengths.tolist()):
                predicted.append([tag_names[i] for i in tags[row, :length].tolist()])
                gold.append([tag_names[i] for i in batch.labels[row, :length].tolist()])
    seconds = time.perf_counter() - start
    f1 = f1_score(gold, predicted, mode="strict", scheme=IOBES)
    return 100 * f1, len(order) / seconds


def run_quick_demo(sentences: int = 2000, steps: int = 400, seed: int = 0) -> int:
    """The quick demo: prints the dev F1 and speed of the count-based CRF teacher and of its
    softmax students; returns the exit code (1 if an F1 is not finite)."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    clock = time.perf_counter()
    train_sentences = load_dataset("conll03-en:train", target_scheme="bioes")
    dev_sentences = load_dataset("conll03-en:dev", target_scheme="bioes")[:sentences]
    types = entity_types(sentence.tags for sentence in train_sentences)
    tag_names = label_names(types, "bioes")
    words = Vocabulary.build(
        token.lower() for sentence in train_sentences for token in sentence.tokens
    )
    shapes = Vocabulary.build(
        word_shape(token) for sentence in train_sentences for token in sentence.tokens
    )
    train = encode(train_sentences, words, shapes, types)
    dev = encode(dev_sentences, words, shapes, types)
    print(
        f"CoNLL-2003 English: {len(train_sentences)} train sentences, {len(dev_sentences)} dev "
        f"sentences, {len(tag_names)} BIOES tags, {len(words)} words, {len(shapes)} shapes "
        f"(read in {time.perf_counter() - clock:.1f} s)"
    )
    teacher = CountTeacher(train, len(words), len(shapes), tag_names)
    sizes = (len(words), len(shapes), len(tag_names))
    rows = [
        (
            "teacher: count-based CRF (exact Viterbi)",
            *evaluate(lambda batch: teacher.distribution(batch).argmax, dev, tag_names),
        )
    ]
    for name, kd_weight in [
        ("student: softmax tagger, no KD (gold only)", 0.0),
        ("student: softmax tagger, structural KD", 1.0),
        ("student: softmax tagger, 0.5 KD + 0.5 gold", 0.5),
    ]:
        clock = time.perf_counter()
        student = train_student(train, teacher, sizes, kd_weight, steps, seed)
        seconds = time.perf_counter() - clock
        f1, speed = evaluate(lambda batch, model=student: model(batch).argmax, dev, tag_names)
        rows.append((f"{name} ({steps} steps, {seconds:.0f} s)", f1, speed))
    width = max(len(row[0]) for row in rows)
    print(f"\n{'model'.ljust(width)}  dev F1  sentences/s")
    for name, f1, speed in rows:
        print(f"{name.ljust(width)}  {f1:6.2f}  {speed:11.0f}")
    if not all(math.isfinite(f1) for _, f1, _ in rows):
        return 1
    return 0
