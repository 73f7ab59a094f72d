"""Teacher outputs for NER distillation, computed once per (teacher, data, method options) and
cached (``structkd.train.store``), then read back per batch.

What each method caches for a sentence of ``n`` tokens (``structkd.distill.halves``):

=============  ============================================================================
method         quantities
=============  ============================================================================
struct         ``marginals [n, L]`` and, for a CRF student, ``pair_marginals [n - 1, L, L]``:
               the (tempered) teacher's marginals on the student's substructures
posterior      ``marginals [n, L]`` of the tempered teacher
token          ``emissions [n, L]``: the teacher's emissions / logits
topk, topwk    ``kbest_tags [n, k]`` (int32, ``-1`` where fewer than ``k`` structures exist),
               ``kbest_log_probs [1, k]`` (``-inf`` there)
=============  ============================================================================

An ensemble caches each teacher separately and mixes at load time (``KDTargets``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from structkd.data.conll import Sentence
from structkd.distill.bridges import CHAIN_KINDS
from structkd.distill.halves import cached_quantities, teacher_half
from structkd.distill.methods import KD_METHODS, TEMPERATURE_MODES, method
from structkd.tasks.ner.features import make_collator
from structkd.tasks.ner.model import load_tagger, model_info
from structkd.train.inference import sorted_batches
from structkd.train.store import RaggedArray, build_entry, progress_bar, read_meta

__all__ = [
    "CACHE_FORMAT",
    "STUDENT_KINDS",
    "KDTargets",
    "TargetReader",
    "TargetSpec",
    "ensure_targets",
]

CACHE_FORMAT = 1
STUDENT_KINDS = CHAIN_KINDS
"""The students of a tagger: ``"crf"`` (tag pairs and tokens) or ``"factorized"`` (tokens)."""


@dataclass(frozen=True)
class TargetSpec:
    """What to cache of a teacher for one distillation method.

    ``method``: one of ``KD_METHODS``; ``temperature``; ``temperature_mode``: ``"global"`` or
    ``"local"`` (struct only); ``student_kind``: ``"crf"`` (pair marginals too) or
    ``"factorized"``; ``k``: structures kept by top-k methods.
    """

    method: str
    temperature: float = 1.0
    temperature_mode: str = "global"
    student_kind: str = "crf"
    k: int = 1

    def __post_init__(self) -> None:
        if self.method not in KD_METHODS:
            raise ValueError(f"method must be one of {', '.join(KD_METHODS)}; got {self.method!r}")
        if self.student_kind not in STUDENT_KINDS:
            raise ValueError(
                f"student_kind must be one of {', '.join(STUDENT_KINDS)}; got {self.student_kind!r}"
            )
        if self.temperature_mode not in TEMPERATURE_MODES:
            raise ValueError(
                f"temperature_mode must be 'global' or 'local'; got {self.temperature_mode!r}"
            )
        if not (isinstance(self.temperature, int | float) and self.temperature > 0):
            raise ValueError(f"temperature must be a number > 0; got {self.temperature!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be an integer >= 1; got {self.k!r}")

    @property
    def kind(self) -> str:
        """The cache kind: ``"kbest"`` for topk and topwk (same outputs), else the method."""
        return method(self.method).cache_kind

    def key_inputs(self) -> dict[str, Any]:
        """The options the cached values depend on (and nothing else)."""
        inputs: dict[str, Any] = {"kind": self.kind}
        if self.kind in ("struct", "posterior", "kbest"):
            inputs["temperature"] = float(self.temperature)
        if self.kind == "struct":
            inputs["temperature_mode"] = self.temperature_mode
            inputs["student_kind"] = self.student_kind
        if self.kind == "kbest":
            inputs["k"] = self.k
        return inputs

    def quantities(self, n_labels: int) -> dict[str, tuple[str, tuple[int, ...], str]]:
        """``name -> (rows per sentence: "tokens" | "pairs" | "sentence", row shape, dtype)``."""
        return cached_quantities(self.method, self.student_kind, n_labels, self.k)

    def teacher_outputs(self, teacher: Any, n_labels: int) -> dict[str, Tensor]:
        """The quantities of one batch of teacher output, padded (``teacher_half``)."""
        return teacher_half(
            self.method,
            teacher,
            student_kind=self.student_kind,
            n_labels=n_labels,
            temperature=float(self.temperature),
            temperature_mode=self.temperature_mode,
            k=self.k,
        )


def _rows(rule: str, lengths: np.ndarray) -> np.ndarray:
    if rule == "tokens":
        return lengths
    if rule == "pairs":
        return lengths - 1
    return np.ones_like(lengths)


def _max_rows(rule: str, max_len: int) -> int:
    return {"tokens": max_len, "pairs": max_len - 1, "sentence": 1}[rule]


_PAD = {"float32": 0.0, "int32": -1}
_PAD_BY_NAME = {"kbest_log_probs": -np.inf}


def ensure_targets(
    teacher_dir: str | os.PathLike[str],
    sentences: Sequence[Sentence],
    data_fingerprint: str,
    spec: TargetSpec,
    cache_dir: str | os.PathLike[str],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    progress: bool = False,
    data_name: str = "",
) -> tuple[Path, bool]:
    """The cache entry of ``spec``'s teacher outputs on ``sentences`` (ids = their indices),
    built if missing; returns ``(directory, built)``.

    The key is the SHA-256 of ``(model.pt hash, data_fingerprint, number of sentences, spec's
    options)``. Building loads the teacher, runs it once over length-sorted batches of
    ``batch_size`` sentences in eval mode without gradients (frozen transformer features come from
    their own cache) and writes each batch's quantities to the memory maps.
    """
    info = model_info(teacher_dir)
    inputs = {
        "format": CACHE_FORMAT,
        "teacher_hash": info.file_hash,
        "data": data_fingerprint,
        "n_sentences": len(sentences),
        **spec.key_inputs(),
    }

    def build(scratch: Path) -> dict[str, Any]:
        started = time.perf_counter()
        teacher, _ = load_tagger(teacher_dir, device=device)
        unlabeled = [sentence.without_tags() for sentence in sentences]
        collator = make_collator(
            info.config,
            teacher,
            info.vocab,
            unlabeled,
            data_fingerprint,
            cache_dir,
            device=device,
            progress=progress,
        )
        n_labels = info.vocab.n_labels
        lengths = np.asarray([len(sentence) for sentence in sentences], dtype=np.int64)
        quantities = spec.quantities(n_labels)
        arrays = {
            name: RaggedArray.create(scratch, name, _rows(rule, lengths), shape, dtype)
            for name, (rule, shape, dtype) in quantities.items()
        }
        with progress_bar(len(sentences), f"teacher outputs ({spec.kind})", progress) as bar:
            with torch.inference_mode():
                for indices, batch in sorted_batches(unlabeled, collator, batch_size, device):
                    outputs = spec.teacher_outputs(teacher(batch), n_labels)
                    items = np.asarray(indices, dtype=np.int64)
                    for name, array in arrays.items():
                        dtype = quantities[name][2]
                        array.write(items, outputs[name].cpu().numpy().astype(dtype, copy=False))
                    if bar is not None:
                        bar.update(len(indices))
        for array in arrays.values():
            array.values.flush()
        return {
            "teacher": os.fspath(Path(teacher_dir).resolve()),
            "data_name": data_name,
            "spec": asdict(spec),
            "n_labels": n_labels,
            "types": list(info.types),
            "quantities": {name: list(rule_shape[:1]) for name, rule_shape in quantities.items()},
            "seconds": time.perf_counter() - started,
        }

    return build_entry(Path(cache_dir) / "targets", inputs, build)


@dataclass
class KDTargets:
    """Cached teacher outputs for one batch of ``B`` sentences padded to ``N`` tokens, one dict
    per teacher (``per_teacher``, keys as in ``TargetSpec.quantities``, padded as in
    ``teacher_half`` except ``kbest_tags`` ``[k, B, N]`` int64 and ``kbest_log_probs``
    ``[k, B]``), and the ensemble ``weights`` ``[n_teachers]``."""

    method: str
    per_teacher: list[dict[str, Tensor]]
    weights: Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> KDTargets:
        moved = [
            {name: value.to(device, non_blocking=non_blocking) for name, value in t.items()}
            for t in self.per_teacher
        ]
        return KDTargets(self.method, moved, self.weights)


class TargetReader:
    """Reads ``KDTargets`` for batches of sentence ids from the cache entries of one source (one
    entry per teacher, all of the same ``TargetSpec``)."""

    def __init__(self, directories: Sequence[Path], spec: TargetSpec, weights: Tensor):
        if len(directories) != len(weights):
            raise ValueError(f"{len(directories)} cache entries but {len(weights)} weights")
        self.spec = spec
        self.weights = weights
        self.entries: list[dict[str, tuple[RaggedArray, str]]] = []
        for directory in directories:
            n_labels = int(read_meta(directory)["n_labels"])
            self.entries.append(
                {
                    name: (RaggedArray.open(directory, name), rule)
                    for name, (rule, _, _) in spec.quantities(n_labels).items()
                }
            )

    def __call__(self, sentence_ids: Tensor, lengths: Tensor) -> KDTargets:
        """Targets of the sentences ``sentence_ids`` ``[B]`` with ``lengths`` ``[B]``."""
        items = sentence_ids.cpu().numpy().astype(np.int64)
        lengths_np = lengths.cpu().numpy().astype(np.int64)
        max_len = int(lengths_np.max())
        per_teacher = []
        for entry in self.entries:
            found = {}
            for name, (array, rule) in entry.items():
                expected = _rows(rule, lengths_np)
                if not np.array_equal(array.rows(items), expected):
                    raise ValueError(
                        f"cached {name} do not match the batch's sentence lengths (a cache of "
                        "other data?)"
                    )
                pad = _PAD_BY_NAME.get(name, _PAD[str(array.values.dtype)])
                padded = torch.from_numpy(array.gather(items, _max_rows(rule, max_len), pad))
                if name == "kbest_tags":
                    padded = padded.long().permute(2, 0, 1)  # [k, B, N]
                elif name == "kbest_log_probs":
                    padded = padded[:, 0, :].transpose(0, 1)  # [k, B]
                found[name] = padded
            per_teacher.append(found)
        return KDTargets(self.spec.method, per_teacher, self.weights)
