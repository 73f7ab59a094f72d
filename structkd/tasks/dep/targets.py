"""Teacher outputs for dependency distillation: for every word ``i`` and student label
``l = (c, r)``, ``P_t(label_i = l) = P_t(head_i = head(c, i)) * P_t(r | i, head)``
(``structkd.distill.dep_bridges``), computed once per (teacher, data, student labels, method,
temperature) and cached (``structkd.train.store``); the mass on heads no label expresses is
recorded (``lost_mass``). ``DepTargetReader`` reads them per batch and mixes an ensemble (or a
fold teacher's K parsers) exactly. The student's KD loss from them is ``dep_kd_loss``. Entries
are sharded and built as ``structkd.train.store.build_sharded_entry`` says (format 2; format-1
entries, one array per quantity, are rebuilt: their key differs)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from structkd.data.dep_batching import DepCollator, DepVocab, scheme_to_dict
from structkd.data.dep_encodings import DepLabelScheme
from structkd.distill.dep_bridges import label_marginals, local_head_probs
from structkd.structures.base import NumericalError
from structkd.tasks.dep.data import DepSource
from structkd.tasks.dep.model import TASK, dep_info, load_dep_model
from structkd.train.folds import FoldEntries
from structkd.train.inference import sorted_batches
from structkd.train.store import RaggedWriter, ShardedArray, ShardPlan, build_sharded_entry

__all__ = [
    "TARGETS_FORMAT",
    "DepTargetReader",
    "DepTargets",
    "DepTeacherShards",
    "dep_kd_loss",
    "ensure_dep_targets",
    "mix_label_targets",
    "relation_map",
]

TARGETS_FORMAT = 2


@dataclass
class DepTargets:
    """Teacher label distributions of one batch: ``probs`` ``[B, N, L]`` (mixed over teachers)
    and ``has_target`` ``[B, N]`` (False at padding and where the teacher put no mass on any
    label)."""

    probs: Tensor
    has_target: Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DepTargets:
        return DepTargets(
            self.probs.to(device, non_blocking=non_blocking),
            self.has_target.to(device, non_blocking=non_blocking),
        )


def relation_map(scheme: DepLabelScheme, teacher_vocab: DepVocab) -> tuple[Tensor, Tensor]:
    """Per student label: the teacher's index of its relation ``[L]`` and whether the teacher
    knows that relation ``[L]``."""
    index = {relation: position for position, relation in enumerate(teacher_vocab.relations)}
    names = [scheme.relations[r] for r in scheme.label_relation.tolist()]
    known = torch.tensor([name in index for name in names])
    return torch.tensor([index.get(name, 0) for name in names]), known


class DepTeacherShards:
    """Builds the shards of a dependency target entry (a ``structkd.train.store.ShardBuilder``):
    the parser of ``teacher_dir`` runs over the shard's sentences in length-sorted batches and
    each word's label distribution (``probs`` ``[L]``) and the mass on heads no label expresses
    (``lost_mass`` ``[1]``) are written (``RaggedWriter``). Picklable (the loaded teacher is
    not pickled: each process loads it once)."""

    def __init__(
        self,
        teacher_dir: str,
        sentences: Sequence[Any],
        scheme: DepLabelScheme,
        *,
        method: str,
        temperature: float,
        device: str = "cpu",
        batch_size: int = 64,
    ):
        self.teacher_dir = teacher_dir
        self.sentences = sentences
        self.scheme = scheme
        self.method = method
        self.temperature = temperature
        self.device = device
        self.batch_size = batch_size
        self._teacher: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_teacher": None}

    def __call__(self, directory: Path, start: int, stop: int) -> dict[str, Any]:
        started = time.perf_counter()
        if self._teacher is None:
            self._teacher, _ = load_dep_model(self.teacher_dir, device=self.device)
        teacher, scheme, device = self._teacher, self.scheme, self.device
        collator = DepCollator(teacher.vocab, scheme, labeled=False)
        label_relations, known = relation_map(scheme, teacher.vocab)
        shard = list(self.sentences[start:stop])
        lengths = np.asarray([len(sentence) for sentence in shard], dtype=np.int64)

        def collate(items: list[tuple[int, Any]]) -> Any:
            return collator([(start + index, sentence) for index, sentence in items])

        lost_total = 0.0
        with contextlib.ExitStack() as files:  # on success: every sentence written, synced
            probs = files.enter_context(
                RaggedWriter(directory, "probs", lengths, (scheme.n_labels,), "float32")
            )
            lost = files.enter_context(
                RaggedWriter(directory, "lost_mass", lengths, (1,), "float32")
            )
            # no_grad, not inference_mode: some teachers' marginals are gradients of log Z
            # (autograd through the inside pass, e.g. the exact second-order sibling CRF)
            with torch.no_grad():
                for indices, batch in sorted_batches(shard, collate, self.batch_size, device):
                    scores = teacher(batch)
                    if self.method == "struct":
                        arcs = teacher.arc_marginals(scores, batch.lengths, self.temperature)
                    else:
                        arcs = local_head_probs(scores.arcs, batch.lengths, self.temperature)
                    label_heads = batch.label_heads.masked_fill(~known.to(device), -1)
                    targets = label_marginals(
                        arcs.float(),
                        teacher.rel_log_probs(scores, self.temperature).float(),
                        label_heads,
                        label_relations.to(device),
                        batch.lengths,
                    )
                    probs.write(indices, targets.probs.cpu().numpy())
                    lost_mass = targets.lost_mass.cpu().numpy().astype(np.float32)
                    lost.write(indices, lost_mass[:, :, None])
                    lost_total += float(lost_mass.sum())
        return {
            "lost_mass": lost_total,
            "n_words": int(lengths.sum()),
            "seconds": time.perf_counter() - started,
        }


def ensure_dep_targets(
    teacher_dir: str | os.PathLike[str],
    source: DepSource,
    scheme: DepLabelScheme,
    *,
    method: str,
    temperature: float,
    cache_dir: str | os.PathLike[str],
    device: str = "cpu",
    batch_size: int = 64,
    plan: ShardPlan | None = None,
) -> tuple[Path | None, bool]:
    """The cache entry of the teacher's label distributions on ``source`` (``probs`` rows
    ``[L]`` and ``lost_mass`` rows ``[1]`` per word), built if missing; returns
    ``(directory, built)``. ``method``: ``struct`` (tree marginals) or ``token`` (the local head
    softmax); the relation distribution is the teacher's relation softmax in both; every score is
    divided by ``temperature``. Built in shards (``DepTeacherShards``) as ``plan`` says
    (``ShardPlan()``: shards of 50,000 sentences built one after another by this process);
    ``directory`` is ``None`` only when ``plan.finish`` is false and other processes' shards are
    missing. Format 2 (sharded) entries replace format 1 ones, which are rebuilt (another key)."""
    info, _ = dep_info(teacher_dir)
    if info.kind != "parser":
        raise ValueError(f"teacher {os.fspath(teacher_dir)!r} is a {info.arch!r}, not a parser")
    inputs = {
        "format": TARGETS_FORMAT,
        "task": TASK,
        "teacher_hash": info.file_hash,
        "data": source.fingerprint,
        "n_sentences": len(source),
        "scheme": scheme_to_dict(scheme),
        "method": method,
        "temperature": float(temperature),
    }
    builder = DepTeacherShards(
        os.fspath(Path(teacher_dir).resolve()),
        source.sentences,
        scheme,
        method=method,
        temperature=float(temperature),
        device=str(device),
        batch_size=batch_size,
    )

    def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
        n_words = sum(record["n_words"] for record in records)
        return {
            "teacher": os.fspath(Path(teacher_dir).resolve()),
            "data_name": source.name,
            "n_labels": scheme.n_labels,
            "mean_lost_mass": sum(record["lost_mass"] for record in records) / max(1, n_words),
            "seconds": sum(record["seconds"] for record in records),
        }

    return build_sharded_entry(
        Path(cache_dir) / "dep-targets",
        inputs,
        len(source),
        builder,
        summarize=summarize,
        plan=plan,
    )


class DepTargetReader:
    """Reads ``DepTargets`` for batches of sentence ids: per teacher, one cache entry or the
    ``FoldEntries`` of a fold teacher (``structkd.train.folds``), mixed with ``weights``.

    The targets of a mixture of teachers ``P = sum_t w_t P_t`` are exact. A cached row is a
    teacher's label distribution renormalized over the labels that express its heads
    (``q_t = P_t(label) / E_t``, ``E_t = 1 - lost_mass_t``: ``label_marginals``), and the KD
    losses are linear in the unnormalized ``P_t(label)``, so the mixture's renormalized targets
    are ``sum_t w_t E_t q_t / sum_t w_t E_t`` (not the mean of the ``q_t``, unless the teachers
    lose the same mass), for Token KD (local head and relation softmax) and structural KD (tree
    marginals) alike. ``E_t`` is read back from the cached float32 ``lost_mass`` (``1 - E_t``,
    computed in float32 from the float32 ``E_t``): exactly for ``E_t >= 1/2``, within ``2^-25``
    below. A word no teacher gives a target has none; where every teacher giving one has an
    ``E_t`` below that resolution (all but all of their mass on heads no label expresses) the
    ``q_t`` are mixed with the weights ``w_t``. One set of targets (one teacher, or a batch of
    out-of-fold sentences) is read as cached. A fold teacher gives K sets of weight ``w / K`` where
    some sentence gets the mixture of its K fold teachers (``FoldEntries.plans``)."""

    def __init__(self, directories: Sequence[Path | FoldEntries], weights: Tensor):
        if len(directories) != len(weights):
            raise ValueError(f"{len(directories)} cache entries but {len(weights)} weights")
        self.weights = weights
        self.teachers: list[tuple[list[tuple[ShardedArray, ShardedArray] | None], FoldEntries]]
        self.teachers = []
        for item in directories:
            fold = item if isinstance(item, FoldEntries) else FoldEntries((Path(item),), (None,))
            opened = [
                None
                if directory is None
                else (
                    ShardedArray.open(directory, "probs"),
                    ShardedArray.open(directory, "lost_mass"),
                )
                for directory in fold.entries
            ]
            self.teachers.append((opened, fold))

    def sets(
        self, sentence_ids: Tensor, lengths: Tensor
    ) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """The sets of targets of a batch: ``(weight, probs [B, N, L] float32, lost_mass [B, N]
        float32)`` each (padding: probabilities 0, lost mass 0)."""
        items = sentence_ids.cpu().numpy().astype(np.int64)
        lengths_np = lengths.cpu().numpy().astype(np.int64)
        max_len = int(lengths_np.max())
        found = []
        for (opened, fold), weight in zip(self.teachers, self.weights.tolist(), strict=True):
            plans = fold.plans(items)
            for plan in plans:
                probs, lost = self._read(opened, fold, plan, items, lengths_np, max_len)
                found.append((weight / len(plans), probs, lost))
        return found

    def _read(
        self,
        opened: list[tuple[ShardedArray, ShardedArray] | None],
        fold: FoldEntries,
        plan: np.ndarray,
        items: np.ndarray,
        lengths: np.ndarray,
        max_len: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One set of targets: sentence ``b``'s from the entry ``opened[plan[b]]``."""
        probs = lost = None
        for index in np.unique(plan).tolist():
            rows = np.flatnonzero(plan == index)
            ids = fold.locate(index, items[rows])
            entry = opened[index]
            assert entry is not None  # locate checked it
            if not np.array_equal(entry[0].rows(ids), lengths[rows]):
                raise ValueError(
                    "cached teacher outputs do not match the batch's sentence lengths (a cache of "
                    "other data?)"
                )
            found_probs = entry[0].gather(ids, max_len, 0.0)
            found_lost = entry[1].gather(ids, max_len, 0.0)[:, :, 0]
            if len(rows) == len(items):
                return found_probs, found_lost
            if probs is None or lost is None:
                probs = np.zeros((len(items), *found_probs.shape[1:]), found_probs.dtype)
                lost = np.zeros((len(items), max_len), found_lost.dtype)
            probs[rows] = found_probs
            lost[rows] = found_lost
        assert probs is not None and lost is not None
        return probs, lost

    def __call__(self, sentence_ids: Tensor, lengths: Tensor) -> DepTargets:
        found = self.sets(sentence_ids, lengths)
        if len(found) == 1:
            probs = torch.from_numpy(found[0][1])
            return DepTargets(probs, probs.sum(-1) > 0)
        return DepTargets(*mix_label_targets(found))


def mix_label_targets(
    sets: Sequence[tuple[float, np.ndarray, np.ndarray]],
) -> tuple[Tensor, Tensor]:
    """The targets of the mixture ``sum_s w_s P_s`` of sets ``(w_s, q_s [B, N, L], lost_s [B,
    N])`` of renormalized label distributions and their lost mass (``DepTargetReader``):
    ``(probs [B, N, L] float32, has_target [B, N])``."""
    weights = torch.tensor([weight for weight, _, _ in sets], dtype=torch.float64)
    probs = torch.stack([torch.from_numpy(q) for _, q, _ in sets]).double()  # [S, B, N, L]
    lost = torch.stack([torch.from_numpy(m) for _, _, m in sets]).double()  # [S, B, N]
    has = probs.sum(-1) > 0
    given = weights[:, None, None] * has
    mass = given * (1.0 - lost).clamp(min=0.0)
    unresolved = (mass.sum(0) <= 0)[None]  # words whose teachers' masses all read back as 0
    mass = torch.where(unresolved, given, mass)
    total = mass.sum(0)
    mixed = (mass[..., None] * probs).sum(0) / total.clamp(min=torch.finfo(torch.float64).tiny)[
        ..., None
    ]
    has_target = total > 0
    return torch.where(has_target[..., None], mixed, 0.0).float(), has_target


def dep_kd_loss(logits: Tensor, targets: DepTargets, temperature: float = 1.0) -> Tensor:
    """``L_KD`` (scalar, no ``T^2``): the mean over words with a target of
    ``- sum_l P_t(l) log softmax(logits / T)[l]``; ``logits`` ``[B, N, L]``.

    For the per-word softmax student this is the exact structural KD cross-entropy (its
    log-partition is the sum of the words' log-normalizers). A negative value is a bug and raises.
    """
    log_probs = torch.log_softmax(logits / temperature, dim=-1)
    probs = targets.probs.to(log_probs)
    per_word = -(probs * log_probs.masked_fill(probs == 0, 0.0)).sum(-1)
    mask = targets.has_target
    if not mask.any():
        return logits.sum() * 0.0
    loss = per_word[mask].mean()
    if not torch.isfinite(loss) or loss < -1e-4:
        raise NumericalError(f"dependency KD cross-entropy is {float(loss)} (must be >= 0)")
    return loss
