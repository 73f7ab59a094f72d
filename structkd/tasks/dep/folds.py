"""Dependency fold teachers (``structkd train --task dep --arch parser-* --folds K``; the format
and the assignment are ``structkd.train.folds``, folds by the words of each sentence): K biaffine
parsers, parser ``k`` trained without the trees of fold ``k``, acting as one teacher, the
equal-weight mixture ``P = (1/K) sum_k P_k``.

* **Training** (``structkd.tasks.dep.training.train_folds``): every fold parser has the relations
  of all the training trees (one relation list, so that their relation distributions mix) and
  the words of its held-out fold in its vocabulary (text it will read).
* **Distillation** (``fold_target_entries``): a training sentence of fold ``k`` gets the targets
  of parser ``k`` alone (out-of-fold: it never saw the sentence), any other sentence those of the
  mixture; ``in-fold`` targets are the mixture everywhere. Each parser is run only on the
  sentences it is read for (its held-out fold and the sentences none of them trained on), so
  out-of-fold targets cost one teacher pass per sentence. The mixture's targets are exact for
  both dependency KD methods: the label marginals of a word are linear in the teachers' arc and
  relation marginals (``P(label = (h, r)) = (1/K) sum_k P_k(head = h) P_k(r | h)``, for tree
  marginals and for the local softmax of Token KD alike), and ``DepTargetReader`` mixes the
  cached renormalized distributions with the weights of their expressible mass
  (``structkd.tasks.dep.targets``).
* **Evaluation and prediction** (``FoldParserMixture``, ``mixture_parse``, ``FoldDepPredictor``):
  see ``mixture_parse``: the tree of highest expected attachment score under the mixture, each
  arc's most probable relation under the mixture, the mixture's arc marginal as the head's score.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from structkd.data.dep_batching import DepBatch, DepCollator
from structkd.data.dep_encodings import DepLabelScheme
from structkd.models.parser import BiaffineParser, ParserScores
from structkd.serve.text import TokenizedSentence
from structkd.structures.dependency import DependencyCRF
from structkd.tasks.dep.data import DepSource, load_dep_source
from structkd.tasks.dep.evaluation import evaluate_dep_model
from structkd.tasks.dep.model import TASK, DepModelInfo, dep_info, load_dep_model
from structkd.tasks.dep.predictor import DepParse, DepPredictor, ParserInput, parses
from structkd.tasks.dep.targets import ensure_dep_targets
from structkd.train.folds import FoldEntries, FoldModel, build_fold_entries, read_fold_model
from structkd.train.store import ShardedArray, ShardPlan, read_meta

__all__ = [
    "DepMixtureBatch",
    "DepMixtureCollator",
    "FoldDepPredictor",
    "FoldParserMixture",
    "evaluate_folds",
    "fold_parser_infos",
    "fold_target_entries",
    "given_lost_mass",
    "load_mixture",
    "mixture_parse",
    "score_mixture",
]


def fold_parser_infos(model: FoldModel) -> list[DepModelInfo]:
    """The ``DepModelInfo`` of each fold parser (each directory checked by ``dep_info``);
    ``ValueError`` unless they are parsers of one architecture and one relation list."""
    infos = [dep_info(directory)[0] for directory in model.models]
    first = infos[0]
    for info in infos:
        if info.kind != "parser":
            raise ValueError(
                f"{os.fspath(info.directory)!r} is a {info.arch!r}, not a parser: dependency "
                "fold teachers are parsers"
            )
        if info.arch != first.arch or info.vocab.relations != first.vocab.relations:
            raise ValueError(
                f"{os.fspath(info.directory)!r} is not of the architecture and relations of "
                f"{os.fspath(first.directory)!r}: not fold teachers of one run"
            )
    return infos


def _at_heads(values: Tensor, heads: Tensor) -> Tensor:
    """``values [B, L, L, ...]`` (``[head, dependent, ...]``) at the arcs ``heads[b, d] -> d`` ->
    ``[B, L, ...]`` (position with head ``-1``: that of head 0)."""
    index = heads.clamp(min=0).unsqueeze(2)  # [B, L, 1]
    if values.dim() == 4:
        index = index.unsqueeze(-1).expand(-1, -1, 1, values.shape[-1])
    # values.transpose(1, 2): [B, dependent, head, ...]; pick the head of every dependent
    return values.transpose(1, 2).gather(2, index).squeeze(2)


def mixture_parse(
    arc_marginals: Sequence[Tensor],
    rel_log_probs: Sequence[Tensor],
    lengths: Tensor,
    *,
    projective: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The parse of the equal-weight mixture of parsers with arc marginals ``arc_marginals``
    (each ``[B, N+1, N+1]``, ``P_k(head_d = h)`` at ``[b, h, d]``) and relation distributions
    ``rel_log_probs`` (each ``[B, N+1, N+1, R]``, ``log P_k(r | h -> d)``): ``(heads [B, N+1],
    rel_ids [B, N+1], head_scores [B, N+1] float64)``, ``-1`` (scores 0) at 0 and padding.

    The tree is the **minimum-Bayes-risk tree for attachment**: the single-root tree ``y``
    maximizing ``E_P[UAS(y)] ∝ sum_d P(head_d = y_d)`` with ``P(head_d = h) = (1/K) sum_k
    P_k(head_d = h)``, the mean of the parsers' arc marginals: a maximum spanning tree (Chu-Liu-
    Edmonds, ``DependencyCRF(...).argmax``) over the mean marginals, or Eisner's algorithm for
    projective parsers (every tree the mixture gives mass to is projective). Why this decoder:
    the expected attachment score is linear in the marginals, so the mixture's decision is exact
    from the mean marginals alone (a MAP tree of the mixture is not: the mixture of tree CRFs is
    no tree CRF); the tree is well-formed by construction (one root, every word attached, no
    cycle); it needs no parser family's own scores (which do not mix), so every mode decodes
    alike. Each arc's relation is ``argmax_r P(h -> d, r) = argmax_r sum_k P_k(head_d = h) P_k(r
    | h -> d)``, the mixture's most probable relation given the arc (with the tree, the
    highest expected LAS); the head's score is ``P(head_d = y_d)``, its mixture marginal.
    """
    if len(arc_marginals) != len(rel_log_probs) or not arc_marginals:
        raise ValueError("mixture_parse needs one relation distribution per arc distribution")
    mean = torch.stack([arcs.double() for arcs in arc_marginals]).mean(0)
    lengths = lengths.to(mean.device)
    heads = DependencyCRF(mean, lengths, projective=projective, multiroot=False).argmax
    words = heads >= 0
    joint = None
    for arcs, rels in zip(arc_marginals, rel_log_probs, strict=True):
        at_arc = _at_heads(arcs.double(), heads)  # [B, N+1]: P_k(head_d = y_d)
        part = at_arc.unsqueeze(-1) * _at_heads(rels.double(), heads).exp()  # [B, N+1, R]
        joint = part if joint is None else joint + part
    assert joint is not None
    rel_ids = torch.where(words, joint.argmax(-1), -1)
    head_scores = torch.where(words, _at_heads(mean, heads), 0.0)
    return heads, rel_ids, head_scores


@dataclass
class DepMixtureBatch:
    """One batch collated by each fold parser's collator (each has its own vocabulary); its
    other attributes (gold heads, relations, lengths, punctuation) are the first's."""

    batches: list[DepBatch]

    def __getattr__(self, name: str) -> Any:
        if name == "batches":  # not yet set (unpickling)
            raise AttributeError(name)
        return getattr(self.batches[0], name)

    def to(self, device: Any, non_blocking: bool = False) -> DepMixtureBatch:
        return DepMixtureBatch(
            [batch.to(device, non_blocking=non_blocking) for batch in self.batches]
        )


@dataclass
class DepMixtureCollator:
    """Collates ``(sentence_id, sentence)`` items once per fold parser."""

    collators: list[DepCollator]

    def __call__(self, items: list[tuple[int, Any]]) -> DepMixtureBatch:
        return DepMixtureBatch([collator(items) for collator in self.collators])


class FoldParserMixture:
    """The equal-weight mixture of fold parsers as one model for ``evaluate_dep_model``:
    ``__call__`` gives each parser's scores on its own collation of the batch, ``decode`` the
    heads and relations of ``mixture_parse``."""

    def __init__(self, parsers: Sequence[BiaffineParser]):
        self.parsers = list(parsers)
        self.vocab = self.parsers[0].vocab
        self.projective = self.parsers[0].is_projective_mode
        self.training = False

    def eval(self) -> FoldParserMixture:
        return self.train(False)

    def train(self, mode: bool = True) -> FoldParserMixture:
        self.training = mode
        for parser in self.parsers:
            parser.train(mode)
        return self

    def collator(self, **options: Any) -> DepMixtureCollator:
        """A collator of each parser's vocabulary (``DepCollator(vocab, None, **options)``)."""
        return DepMixtureCollator([DepCollator(p.vocab, None, **options) for p in self.parsers])

    def __call__(self, batch: DepMixtureBatch) -> list[ParserScores]:
        return [parser(part) for parser, part in zip(self.parsers, batch.batches, strict=True)]

    def parse(
        self, batch: DepMixtureBatch, scores: Sequence[ParserScores]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``mixture_parse`` of the parsers' ``scores`` on ``batch``."""
        lengths = batch.lengths
        arcs = [p.arc_marginals(s, lengths) for p, s in zip(self.parsers, scores, strict=True)]
        rels = [p.rel_log_probs(s) for p, s in zip(self.parsers, scores, strict=True)]
        return mixture_parse(arcs, rels, lengths, projective=self.projective)

    def decode(
        self, batch: DepMixtureBatch, scores: Sequence[ParserScores]
    ) -> tuple[Tensor, Tensor]:
        heads, rel_ids, _ = self.parse(batch, scores)
        return heads, rel_ids


def load_mixture(model: FoldModel, device: Any = "cpu") -> FoldParserMixture:
    """The mixture of the fold parsers of ``model`` (checked by ``fold_parser_infos``), in eval
    mode on ``device``."""
    fold_parser_infos(model)
    return FoldParserMixture(
        [load_dep_model(directory, device=device)[0] for directory in model.models]
    ).eval()


def _evaluation_collator(mixture: FoldParserMixture) -> DepMixtureCollator:
    return mixture.collator(
        labeled=True, strict_relations=False, label_ids=False, label_heads=False
    )


def score_mixture(
    model: FoldModel,
    sources: dict[str, DepSource | None],
    *,
    batch_size: int = 64,
    device: Any = "cpu",
    include_punct: bool = False,
) -> dict[str, Any]:
    """The mixture's scores on each source (``{"dev": ..., "test": ...}``; ``None`` for a
    missing one), as ``evaluate_dep_model`` reports them, with the data's name."""
    mixture = load_mixture(model, device)
    collator = _evaluation_collator(mixture)
    found: dict[str, Any] = {}
    for name, source in sources.items():
        if source is None:
            found[name] = None
            continue
        scores = evaluate_dep_model(
            mixture,  # duck-typed: evaluation calls it, its decode, eval and train
            source,
            batch_size=batch_size,
            device=device,
            include_punct=include_punct,
            collator=collator,
        )
        found[name] = {"data": source.name, **scores}
    return found


def evaluate_folds(
    model_dir: str | os.PathLike[str],
    data: str,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    include_punct: bool = False,
    max_sentences: int | None = None,
    scheme: str = "auto",
) -> dict[str, Any]:
    """``structkd evaluate`` of a dependency fold-teacher directory: the UAS, LAS, well-formed
    rate (1: trees by construction) and speed of the mixture of its parsers (``mixture_parse``),
    with ``folds``."""
    if scheme != "auto":
        raise ValueError(f"--scheme {scheme} is for tagged NER data; a treebank has no tag scheme")
    model = read_fold_model(model_dir, task=TASK)
    source = load_dep_source(data, role="evaluation", max_sentences=max_sentences)
    scores = score_mixture(
        model, {"data": source}, batch_size=batch_size, device=device, include_punct=include_punct
    )["data"]
    scores.pop("data")
    return {"model": os.fspath(model_dir), "data": data, "folds": model.k, **scores}


def fold_target_entries(
    model: FoldModel,
    source: DepSource,
    scheme: DepLabelScheme,
    *,
    method: str,
    temperature: float,
    cache_dir: str | os.PathLike[str],
    out_of_fold: bool,
    device: Any = "cpu",
    batch_size: int = 64,
    plan: ShardPlan | None = None,
) -> tuple[FoldEntries, list[dict[str, Any]]]:
    """The cache entries (``ensure_dep_targets``) of fold teacher ``model`` on ``source`` (built
    if missing) and a record of each (``distillation.teachers[...].caches`` in
    ``metrics.json``).

    ``out_of_fold``: parser ``k`` is run on the sentences of its held-out fold and on those no
    parser trained on (a cache entry of that subset, keyed by its content; of the whole source
    when that is all of it); else every parser on every sentence (the entries an ordinary
    ensemble of the K would use)."""
    fold_parser_infos(model)
    n = len(source)
    caches: list[dict[str, Any]] = []

    def build(fold: int, chosen: np.ndarray | None) -> Path:
        directory = model.models[fold]
        subset = source
        if chosen is not None:
            sentences = [source.sentences[index] for index in chosen.tolist()]
            subset = DepSource(f"{source.name} ({len(sentences)} of {n})", sentences)
        entry, built = ensure_dep_targets(
            directory,
            subset,
            scheme,
            method=method,
            temperature=temperature,
            cache_dir=cache_dir,
            device=device,
            batch_size=batch_size,
            plan=plan or ShardPlan.from_environment(),
        )
        assert entry is not None  # the plan finishes the entry
        caches.append(
            {
                "teacher": os.fspath(directory),
                "fold": fold + 1,
                "data": source.name,
                "n_sentences": len(subset),
                "cache": os.fspath(entry),
                "built": built,
                "mean_lost_mass": read_meta(entry)["mean_lost_mass"],
            }
        )
        return entry

    words = (sentence.words for sentence in source.sentences)
    return build_fold_entries(model, n, words, build, out_of_fold=out_of_fold), caches


def given_lost_mass(entries: FoldEntries, lengths: Sequence[int], chunk: int = 4096) -> float:
    """The mean over the words of a source (``lengths``: its sentences') of the lost mass of the
    targets a fold teacher gives them (``entries``): that of the out-of-fold parser, the mean of
    the K parsers' for the mixture (the mixture's lost mass, linear in theirs). Reads the cached
    ``lost_mass`` only."""
    arrays = [
        None if entry is None else ShardedArray.open(entry, "lost_mass")
        for entry in entries.entries
    ]
    total = 0.0
    for start in range(0, len(lengths), chunk):
        items = np.arange(start, min(start + chunk, len(lengths)), dtype=np.int64)
        max_len = max(lengths[start : start + chunk])
        plans = entries.plans(items)
        for plan in plans:
            for fold in np.unique(plan).tolist():
                ids = entries.locate(fold, items[plan == fold])
                array = arrays[fold]
                assert array is not None  # locate checked it
                values = array.gather(ids, max_len, 0.0)  # padding 0
                total += float(values.astype(np.float64).sum()) / len(plans)
    return total / max(1, int(sum(lengths)))


class FoldDepPredictor(DepPredictor):
    """A dependency fold-teacher directory served with torch: the mixture of its fold parsers
    (``mixture_parse``): each token's head in the tree of highest expected attachment score,
    its relation, and the head's mixture marginal. Input without UPOS is parsed with unknown
    tags and a warning (``structkd.tasks.dep.predictor``)."""

    backend = "torch"

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        batch_size: int = 64,
        num_threads: int | None = None,
        device: str = "cpu",
    ):
        super().__init__(model_dir, batch_size=batch_size, num_threads=num_threads)
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.device = device
        self.mixture = load_mixture(read_fold_model(model_dir, task=TASK), device)
        self.reads_upos = any(p.config.encoder.upos_dim > 0 for p in self.mixture.parsers)
        self.collator = self.mixture.collator(labeled=False, label_heads=False)
        self.relations = np.array([*self.mixture.vocab.relations, "_"], dtype=object)

    def parse_batch(self, sentences: Sequence[TokenizedSentence]) -> list[DepParse]:
        items = [(i, ParserInput(s.tokens, s.upos)) for i, s in enumerate(sentences)]
        batch = self.collator(items).to(self.device)
        lengths = batch.lengths.tolist()
        # no_grad, not inference_mode: the exact sibling CRF's marginals are gradients of log Z
        with torch.no_grad():
            heads, rel_ids, scores = self.mixture.parse(batch, self.mixture(batch))
        heads = heads[:, 1:].cpu().numpy()
        names = self.relations[rel_ids[:, 1:].cpu().numpy()]
        deprels = [names[b, :n].tolist() for b, n in enumerate(lengths)]
        return parses(heads, deprels, scores[:, 1:].cpu().numpy(), lengths)
