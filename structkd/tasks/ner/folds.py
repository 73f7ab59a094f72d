"""NER fold teachers (``structkd train --folds K``; the format and the assignment are
``structkd.train.folds``): K taggers, tagger ``k`` trained without the sentences of fold ``k``,
acting as one teacher, the equal-weight mixture ``P = (1/K) sum_k P_k``.

* **Distillation** (``fold_target_entries``): a sentence of fold ``k`` of the teacher's training
  data gets the targets of tagger ``k`` alone (out-of-fold: it never saw the sentence), any other
  sentence the mixture, whose marginals are the mean of the K taggers' (``P(u) = (1/K) sum_k
  P_k(u)``: exact for the KD losses, linear in the teacher's marginals). Each tagger is run only
  on the sentences it is read for (its own held-out fold and the sentences none of them trained
  on), so out-of-fold targets cost one teacher pass per sentence. ``in-fold`` targets are the
  mixture everywhere (``TargetReader`` in ``structkd.tasks.ner.targets``, ``FoldEntries`` and
  ``build_fold_entries`` in ``structkd.train.folds``).
* **Prediction and evaluation** (``FoldMixture``, ``FoldNerPredictor``): the mixture's token and
  pair marginals (the mean of the taggers' on the CRF bridge) define the linear chain ``Q(y) =
  P(y_1) prod_i P(y_i, y_{i+1}) / P(y_i)`` closest to the mixture (``min_Q KL(P || Q)`` over
  chains: it has the mixture's marginals; a CRF student's ideal), decoded by Viterbi
  (``chain_decode``): for K = 1 and a CRF teacher, ``Q = P`` and the path is the CRF's Viterbi
  path. Tag scores are the mixture's token marginals, entity scores the mixture's exact span
  probabilities (the mean of the taggers').
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

from structkd.data.conll import Sentence
from structkd.data.tag_schemes import label_names
from structkd.distill.bridges import ChainTargets, mix_targets, project_teacher
from structkd.models.tagger import Tagger
from structkd.serve.text import TokenizedSentence
from structkd.structures.base import probabilities_within_roundoff
from structkd.tasks.ner.data import DataSource, load_labeled
from structkd.tasks.ner.evaluation import evaluate_tagger
from structkd.tasks.ner.features import make_collator
from structkd.tasks.ner.model import TASK, ModelInfo, load_tagger, model_info
from structkd.tasks.ner.predictor import NerLabels, NerPredictor
from structkd.tasks.ner.serving import entity_spans, iob2_index, span_probabilities
from structkd.tasks.ner.targets import TargetSpec, ensure_targets
from structkd.train.folds import FoldEntries, FoldModel, build_fold_entries, read_fold_model
from structkd.train.runtime import default_cache_dir
from structkd.train.store import ShardPlan

__all__ = [
    "FoldMixture",
    "FoldNerPredictor",
    "MixtureCollator",
    "chain_decode",
    "evaluate_folds",
    "fold_infos",
    "fold_target_entries",
    "mixture_chain",
    "score_mixture",
]


def fold_infos(model: FoldModel) -> list[ModelInfo]:
    """The ``ModelInfo`` of each fold tagger (each directory checked by ``model_info``);
    ``ValueError`` unless they share their label set and architecture."""
    infos = [model_info(directory) for directory in model.models]
    for info in infos[1:]:
        if info.types != infos[0].types or info.arch != infos[0].arch:
            raise ValueError(
                f"{os.fspath(info.directory)!r} is not of the architecture and label set of "
                f"{os.fspath(infos[0].directory)!r}: not fold teachers of one run"
            )
    return infos


def mixture_chain(distributions: Sequence[Any]) -> ChainTargets:
    """The equal-weight mixture's token ``[B, N, L]`` and pair ``[B, N - 1, L, L]`` marginals
    (float64) of the taggers' output ``distributions`` (CRF, softmax or span: the CRF bridge)."""
    chains = [project_teacher(distribution, "crf") for distribution in distributions]
    chains = [
        ChainTargets(chain.marginals.double(), chain.pair_marginals.double()) for chain in chains
    ]
    weights = torch.full((len(chains),), 1.0 / len(chains), dtype=torch.float64)
    return mix_targets(chains, weights)


def chain_decode(marginals: Tensor, pair_marginals: Tensor, lengths: Tensor) -> Tensor:
    """``[B, N]`` int64 (``-1`` at padding): the best path of the linear chain with token
    marginals ``marginals`` ``[B, N, L]`` and pair marginals ``pair_marginals`` ``[B, N - 1, L,
    L]``, ``argmax_y log P(y_1) + sum_i log P(y_i, y_{i+1}) - log P(y_i)`` (Viterbi; a pair of
    marginal 0 is never taken)."""
    marginals, pair_marginals = marginals.double(), pair_marginals.double()
    batch, seq_len, _ = marginals.shape
    lengths = lengths.to(marginals.device)
    tiny = torch.finfo(torch.float64).tiny
    delta = torch.log(marginals[:, 0])  # [B, L]
    pointers = []
    for position in range(seq_len - 1):
        step = torch.log(pair_marginals[:, position]) - torch.log(
            marginals[:, position].clamp_min(tiny)
        ).unsqueeze(-1)  # [B, from, to]
        best, pointer = (delta.unsqueeze(-1) + step).max(dim=1)  # [B, to]
        active = (position + 1 < lengths).unsqueeze(-1)
        delta = torch.where(active, best, delta)
        pointers.append(pointer)
    current = delta.argmax(-1)  # the label at each sentence's last token
    path = torch.full((batch, seq_len), -1, dtype=torch.long, device=marginals.device)
    for position in range(seq_len - 1, -1, -1):
        if position < seq_len - 1:
            previous = pointers[position].gather(1, current.unsqueeze(1)).squeeze(1)
            current = torch.where(position < lengths - 1, previous, current)
        path[:, position] = torch.where(position < lengths, current, -1)
    return path


@dataclass
class MixtureBatch:
    """One batch collated by each fold tagger's collator."""

    batches: list[Any]

    @property
    def lengths(self) -> Tensor:
        return self.batches[0].lengths

    def to(self, device: Any, non_blocking: bool = False) -> MixtureBatch:
        return MixtureBatch([batch.to(device, non_blocking=non_blocking) for batch in self.batches])


@dataclass
class MixtureCollator:
    """Collates ``(sentence_id, Sentence)`` items once per fold tagger (each has its own
    vocabulary)."""

    collators: list[Any]

    def __call__(self, items: list[tuple[int, Any]]) -> MixtureBatch:
        return MixtureBatch([collator(items) for collator in self.collators])


class FoldMixture:
    """The equal-weight mixture of fold taggers as one tagger for ``evaluate_tagger``:
    ``decode`` is ``chain_decode`` of the mixture's marginals (see the module docstring)."""

    def __init__(self, taggers: Sequence[Tagger]):
        self.taggers = list(taggers)
        self.vocab = self.taggers[0].vocab
        self.training = False

    def eval(self) -> FoldMixture:
        return self.train(False)

    def train(self, mode: bool = True) -> FoldMixture:
        self.training = mode
        for tagger in self.taggers:
            tagger.train(mode)
        return self

    def distributions(self, batch: MixtureBatch) -> list[Any]:
        """Each fold tagger's output distribution on its own collation of the batch."""
        return [tagger(part) for tagger, part in zip(self.taggers, batch.batches, strict=True)]

    @torch.no_grad()
    def decode(self, batch: MixtureBatch) -> Tensor:
        distributions = self.distributions(batch)
        mixed = mixture_chain(distributions)
        return chain_decode(mixed.marginals, mixed.pair_marginals, distributions[0].lengths)


def _load(model: FoldModel, device: Any) -> tuple[FoldMixture, list[ModelInfo]]:
    fold_infos(model)
    loaded = [load_tagger(directory, device=device) for directory in model.models]
    return FoldMixture([tagger for tagger, _ in loaded]), [info for _, info in loaded]


def _collator(mixture: FoldMixture, infos: Sequence[ModelInfo], device: Any) -> MixtureCollator:
    """Collators computing any transformer features on the fly (honest speed; no cache)."""
    return MixtureCollator(
        [
            make_collator(
                info.config,
                tagger,
                info.vocab,
                [],
                "",
                default_cache_dir(),
                device=device,
                cached_features=False,
            )
            for tagger, info in zip(mixture.taggers, infos, strict=True)
        ]
    )


def score_mixture(
    model: FoldModel,
    sources: dict[str, DataSource | None],
    *,
    batch_size: int = 64,
    device: Any = "cpu",
) -> dict[str, Any]:
    """The mixture's scores on each labeled source (``{"dev": ..., "test": ...}``; ``None`` for
    a missing one), as ``evaluate_tagger`` reports them, with the data's name."""
    mixture, infos = _load(model, device)
    collator = _collator(mixture, infos, device)
    found: dict[str, Any] = {}
    for name, source in sources.items():
        if source is None:
            found[name] = None
            continue
        scores = evaluate_tagger(mixture, source, collator, batch_size=batch_size, device=device)
        found[name] = {"data": source.name, **scores}
    return found


def evaluate_folds(
    model_dir: str | os.PathLike[str],
    data: str,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    max_sentences: int | None = None,
    include_punct: bool = False,
    scheme: str = "auto",
) -> dict[str, Any]:
    """``structkd.tasks.ner.evaluation.evaluate`` of a fold-teacher directory: the scores of the
    mixture of its fold taggers (``chain_decode`` of their mean marginals), with ``folds``."""
    model = read_fold_model(model_dir, task=TASK)
    source = load_labeled(data, role="evaluation", max_sentences=max_sentences, scheme=scheme)
    scores = score_mixture(model, {"data": source}, batch_size=batch_size, device=device)["data"]
    scores.pop("data")
    return {"model": os.fspath(model_dir), "data": data, "folds": model.k, **scores}


def fold_target_entries(
    model: FoldModel,
    source: DataSource,
    spec: TargetSpec,
    cache_dir: str | os.PathLike[str],
    *,
    out_of_fold: bool,
    device: Any = "cpu",
    batch_size: int = 64,
    progress: bool = False,
    plan: ShardPlan | None = None,
) -> tuple[FoldEntries, list[dict[str, Any]]]:
    """The cache entries of fold teacher ``model`` on ``source`` (built if missing) and a record
    of each (``distillation.caches`` in ``metrics.json``).

    ``out_of_fold``: tagger ``k`` is run on the sentences of its held-out fold and on those no
    tagger trained on (a cache entry of that subset, keyed by its content; of the whole source
    when that is all of it); else every tagger on every sentence (the entries an ordinary
    ensemble of the K would use)."""
    sentences = source.sentences
    n = len(sentences)
    caches = []

    def build(fold: int, chosen: np.ndarray | None) -> Path:
        directory = model.models[fold]
        if chosen is None:
            subset, fingerprint, name = sentences, source.fingerprint, source.name
        else:
            subset = [sentences[index] for index in chosen.tolist()]
            fingerprint = DataSource(source.name, subset, None).fingerprint
            name = f"{source.name} ({len(subset)} of {n})"
        entry, built = ensure_targets(
            directory,
            subset,
            fingerprint,
            spec,
            cache_dir,
            device=device,
            batch_size=batch_size,
            progress=progress,
            data_name=name,
            plan=plan or ShardPlan.from_environment(),
        )
        assert entry is not None  # the plan finishes the entry
        caches.append(
            {
                "teacher": os.fspath(directory),
                "fold": fold + 1,
                "data": source.name,
                "n_sentences": len(subset),
                "path": os.fspath(entry),
                "built": built,
            }
        )
        return entry

    tokens = (sentence.tokens for sentence in sentences)
    entries = build_fold_entries(model, n, tokens, build, out_of_fold=out_of_fold)
    return entries, caches


class FoldNerPredictor(NerPredictor):
    """A fold-teacher directory served with torch: the mixture of its fold taggers (see the
    module docstring): the tags of ``chain_decode``, each tag's mixture marginal, the entities
    of the decoded tags with their exact probability under the mixture. Fold taggers with
    document context (``transformer_context``) read the sentences of one input document
    together, as ``TorchNerPredictor`` does."""

    backend = "torch"

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        batch_size: int = 64,
        num_threads: int | None = None,
        device: str = "cpu",
        scheme: str = "bioes",
    ):
        super().__init__(model_dir, batch_size=batch_size, num_threads=num_threads, scheme=scheme)
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.device = device
        self.mixture, infos = _load(read_fold_model(model_dir, task=TASK), device)
        self.collator = _collator(self.mixture, infos, device)
        self.context_size = max(info.config.transformer_context for info in infos)
        self.types = tuple(infos[0].types)
        self.tag_names = tuple(label_names(self.types, scheme))

    def context_collator(self, context: Any) -> MixtureCollator:
        """Each fold tagger's collator reading ``context`` (``NerPredictor.label_sentences``)."""
        return MixtureCollator([c.with_context(context) for c in self.collator.collators])

    def label_batch(self, sentences: Sequence[TokenizedSentence]) -> list[NerLabels]:
        if not sentences:
            return []
        items = [(index, Sentence(list(s.tokens))) for index, s in enumerate(sentences)]
        return self.label_collated(self.collator(items))

    def label_collated(self, batch: MixtureBatch) -> list[NerLabels]:
        """``NerLabels`` of each sentence of one collated batch (in its order)."""
        batch = batch.to(self.device)
        with torch.inference_mode():
            distributions = []
            for tagger, part in zip(self.mixture.taggers, batch.batches, strict=True):
                lengths = part.lengths.to(tagger.head_device)
                scores = tagger.scores(part).double()  # float64 marginals, as for one tagger
                distributions.append(tagger.head.distribution(scores, lengths))
            mixed = mixture_chain(distributions)
            lengths = distributions[0].lengths
            best = chain_decode(mixed.marginals, mixed.pair_marginals, lengths)
            marginals = mixed.marginals
            if self.scheme == "iob2":
                to_iob2 = iob2_index(len(self.types), best.device)
                output_best = to_iob2[best.clamp(min=0)]
                grouped = marginals.new_zeros(*marginals.shape[:2], 1 + 2 * len(self.types))
                output_marginals = grouped.index_add_(-1, to_iob2, marginals)
            else:
                output_best, output_marginals = best.clamp(min=0), marginals
            tag_scores = output_marginals.gather(-1, output_best.unsqueeze(-1)).squeeze(-1)
            spans = entity_spans(best)
            probabilities = torch.stack(
                [span_probabilities(d, best, spans) for d in distributions]
            ).mean(0)
        by_sentence: list[list[tuple[int, int, str, float]]] = [[] for _ in range(len(lengths))]
        for (row, start, end, label), probability in zip(
            spans.tolist(),
            probabilities_within_roundoff(
                probabilities, "a fold mixture's entity probability"
            ).tolist(),
            strict=True,
        ):
            by_sentence[row].append((start, end + 1, self.types[label], probability))
        tag_rows = output_best.tolist()
        score_rows = probabilities_within_roundoff(
            tag_scores, "a fold mixture's tag probability"
        ).tolist()
        return [
            NerLabels(
                tags=tuple(self.tag_names[index] for index in tag_rows[row][:length]),
                tag_scores=tuple(score_rows[row][:length]),
                spans=tuple(by_sentence[row]),
            )
            for row, length in enumerate(lengths.tolist())
        ]
