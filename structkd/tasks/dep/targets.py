"""Teacher outputs for dependency distillation: for every word ``i`` and student label
``l = (c, r)``, ``P_t(label_i = l) = P_t(head_i = head(c, i)) * P_t(r | i, head)``
(``structkd.distill.dep_bridges``), computed once per (teacher, data, student labels, method,
temperature) and cached (``structkd.train.store``); the mass on heads no label expresses is
recorded (``lost_mass``). The student's KD loss from them is ``dep_kd_loss``. Entries are sharded
and built as ``structkd.train.store.build_sharded_entry`` says (format 2; format-1 entries, one
array per quantity, are rebuilt: their key differs)."""

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
from structkd.train.inference import sorted_batches
from structkd.train.store import RaggedWriter, ShardedArray, ShardPlan, build_sharded_entry

__all__ = [
    "TARGETS_FORMAT",
    "DepTargetReader",
    "DepTargets",
    "DepTeacherShards",
    "dep_kd_loss",
    "ensure_dep_targets",
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
    """Reads ``DepTargets`` for batches of sentence ids from one cache entry per teacher, mixing
    the teachers' label distributions with ``weights`` (the KD loss is linear in them)."""

    def __init__(self, directories: Sequence[Path], weights: Tensor):
        self.entries = [ShardedArray.open(directory, "probs") for directory in directories]
        self.weights = weights

    def __call__(self, sentence_ids: Tensor, lengths: Tensor) -> DepTargets:
        items = sentence_ids.cpu().numpy().astype(np.int64)
        max_len = int(lengths.max())
        mixed = None
        for weight, entry in zip(self.weights.tolist(), self.entries, strict=True):
            if not np.array_equal(entry.rows(items), lengths.cpu().numpy()):
                raise ValueError(
                    "cached teacher outputs do not match the batch's sentence lengths (a cache of "
                    "other data?)"
                )
            probs = torch.from_numpy(entry.gather(items, max_len, 0.0)) * weight
            mixed = probs if mixed is None else mixed + probs
        assert mixed is not None
        return DepTargets(mixed, mixed.sum(-1) > 0)


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
