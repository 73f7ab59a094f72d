"""Dependency parsing: training, distillation, evaluation and prediction (``--task dep``).

The same machinery as NER (``structkd.train.commands``): the options (``TrainOptions``,
``DistillOptions``), the parts, batch sampler and data module (``structkd.train.data``,
``structkd.train.module``), the KD settings and the best-model callback, Lightning's Trainer, the
model-directory format (``structkd.train.checkpoint``) and the memory-mapped teacher-output cache
(``structkd.train.cache``). What is particular to parsing lives here:

* architectures (``DEP_ARCHITECTURES``): the biaffine parser teachers (head selection, projective
  tree CRF, matrix-tree CRF, second-order mean-field, exact projective second-order siblings) and
  the sequence-labeling students (relative-offset and relative-PoS encodings);
* the teacher outputs a student distils from: for every word ``i`` and student label ``l = (c, r)``,
  ``P_t(label_i = l) = P_t(head_i = head(c, i)) * P_t(r | i, head)`` (``structkd.distill.
  dep_bridges``), computed once per (teacher, data, student labels, method, temperature) and
  cached; the mass on heads no label expresses is reported (``teacher_lost_mass``);
* the loss: ``lambda * T^2 * L_KD + (1 - lambda) * L_gold`` with both terms means over words;
  ``L_KD = - sum_i sum_l P_t(label_i = l) log softmax(s_i / T)[l]``, which for a per-word softmax
  student is exactly the structural KD cross-entropy (``struct``: the teacher's tree marginals;
  ``token``: its local head and relation softmax);
* the metrics: UAS and LAS (punctuation excluded unless ``include_punct``) and, for students, the
  rate of well-formed trees before repair. Model selection is on dev LAS.

Projective teachers (``parser-projective``, ``parser-sibling-exact``) train on the projective
trees of the training data (the others are dropped and counted in ``metrics.json``); every model
is evaluated on all trees.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from structkd.data.batching import length_sorted_batches
from structkd.data.conllu_io import DepSentence, format_conllu, projective_subset, read_conllu
from structkd.data.datasets import is_dataset_name, load_dataset
from structkd.data.dep_batching import (
    DepBatch,
    DepCollator,
    DepVocab,
    scheme_from_dict,
    scheme_to_dict,
)
from structkd.data.dep_encodings import DepLabelScheme
from structkd.distill.dep_bridges import label_marginals, local_head_probs
from structkd.models.dep_encoder import DepEncoderConfig
from structkd.models.dep_tagger import DepTaggerConfig, SequenceLabelingParser
from structkd.models.parser import PROJECTIVE_MODES, BiaffineParser, ParserConfig
from structkd.train.cache import (
    RaggedArray,
    _complete,
    _fingerprint,
    _finish_entry,
    _locked,
    _new_entry,
)
from structkd.train.dep_metrics import attachment_counts, attachment_scores, scored_word_mask
from structkd.train.module import (
    BestModelSaver,
    KDSettings,
    TaggerDataModule,
    scheduled_kd_weight,
)

__all__ = [
    "DEP_ARCHITECTURES",
    "DEP_KD_METHODS",
    "DepModelInfo",
    "DepSource",
    "DepTargetReader",
    "DepTargets",
    "ParserModule",
    "dep_kd_loss",
    "distill_dep",
    "ensure_dep_targets",
    "evaluate_dep",
    "evaluate_dep_model",
    "load_dep_model",
    "load_dep_source",
    "predict_dep",
    "save_dep_model",
    "train_dep",
]

DEP_ARCHITECTURES: dict[str, dict[str, str]] = {
    "parser-head-selection": {"kind": "parser", "mode": "head-selection"},
    "parser-projective": {"kind": "parser", "mode": "projective"},
    "parser-matrix-tree": {"kind": "parser", "mode": "matrix-tree"},
    "parser-mean-field": {"kind": "parser", "mode": "mean-field"},
    "parser-sibling-exact": {"kind": "parser", "mode": "sibling-exact"},
    "student-dep-offset": {"kind": "student", "encoding": "offset"},
    "student-dep-pos": {"kind": "student", "encoding": "pos"},
}
"""``--arch`` names of ``--task dep``: teachers (``parser-*``) and students (``student-dep-*``)."""

DEP_KD_METHODS = ("struct", "token", "none")
TARGETS_FORMAT = 1
_ENCODER_FIELDS = {field.name for field in dataclasses.fields(DepEncoderConfig)}


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class DepSource:
    """Dependency trees read from a named data set (``twt-tr:train``) or a CoNLL-U file."""

    name: str
    sentences: list[DepSentence]

    def __len__(self) -> int:
        return len(self.sentences)

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the words and UPOS tags of every sentence: what a model reads (not the
        trees), so it keys the caches of teacher outputs."""
        digest = hashlib.sha256()
        for sentence in self.sentences:
            digest.update("\x1f".join(sentence.words).encode("utf-8"))
            digest.update(b"\x1d")
            digest.update("\x1f".join(sentence.upos).encode("utf-8"))
            digest.update(b"\x1e")
        return digest.hexdigest()

    @property
    def lengths(self) -> list[int]:
        return [len(sentence) for sentence in self.sentences]


def load_dep_source(
    spec: str, *, role: str = "train", max_sentences: int | None = None
) -> DepSource:
    """A treebank: a registered data set name (``twt-tr:dev``) or a CoNLL-U file (malformed trees
    stop with the file, line and problem)."""
    spec = os.fspath(spec)
    if is_dataset_name(spec):
        sentences = list(load_dataset(spec))
        if sentences and not isinstance(sentences[0], DepSentence):
            raise ValueError(
                f"{role} data {spec!r} is not a dependency treebank (its records are "
                f"{type(sentences[0]).__name__}); --task dep reads CoNLL-U trees"
            )
    elif Path(spec).is_file():
        sentences = read_conllu(spec)
    else:
        raise ValueError(f"{role} data {spec!r} is neither a known data set nor an existing file")
    if not sentences:
        raise ValueError(f"{role} data {spec!r} has no sentences")
    if max_sentences is not None:
        sentences = sentences[:max_sentences]
    return DepSource(spec, sentences)


# ---------------------------------------------------------------------------------------------
# Models and model directories


def _architecture(arch: str) -> dict[str, str]:
    if arch not in DEP_ARCHITECTURES:
        raise ValueError(
            f"unknown dependency architecture {arch!r}; choose one of "
            f"{', '.join(DEP_ARCHITECTURES)}"
        )
    return DEP_ARCHITECTURES[arch]


def _model_config(arch: str, overrides: dict[str, Any]) -> ParserConfig | DepTaggerConfig:
    """The config of ``arch`` with ``overrides`` (encoder fields such as ``lstm_hidden`` go to
    the encoder config)."""
    spec = _architecture(arch)
    top = {key: value for key, value in overrides.items() if key not in _ENCODER_FIELDS}
    encoder_changes = {key: value for key, value in overrides.items() if key in _ENCODER_FIELDS}
    try:
        if spec["kind"] == "parser":
            config = ParserConfig(mode=spec["mode"], **top)
        else:
            config = DepTaggerConfig(**top)
        if encoder_changes:
            config = dataclasses.replace(
                config, encoder=dataclasses.replace(config.encoder, **encoder_changes)
            )
    except TypeError as error:
        raise ValueError(f"bad --arch-override for {arch!r}: {error}") from None
    return config


def _build_model(
    arch: str, config: Any, vocab: DepVocab, scheme: DepLabelScheme | None
) -> torch.nn.Module:
    if _architecture(arch)["kind"] == "parser":
        return BiaffineParser(vocab, config)
    assert scheme is not None
    return SequenceLabelingParser(vocab, scheme, config)


def _scheme_of(model: torch.nn.Module) -> DepLabelScheme | None:
    return getattr(model, "scheme", None)


def save_dep_model(directory: str | os.PathLike[str], model: torch.nn.Module, *, arch: str) -> Path:
    """Write a parser or a student to ``directory/model.pt`` (loads with ``weights_only=True``)
    and its metadata to ``config.json``, in the model-directory format of
    ``structkd.train.checkpoint`` with ``task = "dep"``."""
    from structkd.train.checkpoint import CHECKPOINT_FORMAT, CONFIG_FILE, MODEL_FILE, write_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    scheme = _scheme_of(model)
    config = {
        "model": model.config.to_dict(),
        "scheme": None if scheme is None else scheme_to_dict(scheme),
    }
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "task": "dep",
        "arch": arch,
        "config": config,
        "vocab": model.vocab.to_dict(),
        "tag_scheme": "" if scheme is None else scheme.encoding,
    }
    state = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
    path = directory / MODEL_FILE
    temporary = directory / f".{MODEL_FILE}.{os.getpid()}.tmp"
    torch.save({**metadata, "state_dict": state}, temporary)
    os.replace(temporary, path)
    view = {
        "task": "dep",
        "arch": arch,
        "config": config["model"],
        "encoding": scheme and scheme.encoding,
    }
    write_json(directory / CONFIG_FILE, view)
    return path


@dataclass(frozen=True)
class DepModelInfo:
    """What a dependency model directory holds: ``arch``, ``kind`` (parser or student),
    ``vocab``, ``scheme`` (students), ``file_hash`` of ``model.pt``."""

    directory: Path
    arch: str
    kind: str
    config: Any
    vocab: DepVocab
    scheme: DepLabelScheme | None
    file_hash: str


def _dep_info(directory: str | os.PathLike[str]) -> tuple[DepModelInfo, dict[str, Any]]:
    from structkd.train.checkpoint import _read, file_sha256

    path, data = _read(directory)
    if data["task"] != "dep":
        raise ValueError(
            f"{os.fspath(directory)!r} holds a {data['task']!r} model, not a dependency parser"
        )
    arch = str(data["arch"])
    kind = _architecture(arch)["kind"]
    try:
        config_data = dict(data["config"])
        model_config = (ParserConfig if kind == "parser" else DepTaggerConfig).from_dict(
            config_data["model"]
        )
        scheme = None if config_data["scheme"] is None else scheme_from_dict(config_data["scheme"])
        vocab = DepVocab.from_dict(data["vocab"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{os.fspath(path)!r} has a malformed config: {error}") from None
    info = DepModelInfo(path.parent, arch, kind, model_config, vocab, scheme, file_sha256(path))
    return info, data


def load_dep_model(
    directory: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, DepModelInfo]:
    """The parser or student of ``directory`` in eval mode on ``device``, and its metadata."""
    info, data = _dep_info(directory)
    model = _build_model(info.arch, info.config, info.vocab, info.scheme)
    try:
        model.load_state_dict(data["state_dict"], strict=True)
    except RuntimeError as error:
        reason = " ".join(str(error).split())[:300]
        raise ValueError(f"{info.directory!r} does not match its own config: {reason}") from None
    model.to(device)
    model.eval()
    return model, info


# ---------------------------------------------------------------------------------------------
# Prediction and evaluation


def _predict_batch(model: torch.nn.Module, batch: DepBatch) -> tuple[Tensor, Tensor, Tensor]:
    """Heads ``[B, N+1]``, relation ids ``[B, N+1]`` (in ``model.vocab.relations``) and
    well-formed-before-repair flags ``[B]`` (always True for the parsers, which decode trees)."""
    scores = model(batch)
    if isinstance(model, SequenceLabelingParser):
        prediction = model.decode(batch, scores)
        return prediction.heads, prediction.rel_ids, prediction.well_formed
    heads, rel_ids = model.decode(batch, scores)
    return heads, rel_ids, torch.ones(batch.batch_size, dtype=torch.bool, device=heads.device)


def evaluate_dep_model(
    model: torch.nn.Module,
    source: DepSource,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    include_punct: bool = False,
) -> dict[str, Any]:
    """UAS, LAS (fractions in ``[0, 1]``; punctuation excluded unless ``include_punct``), the rate
    of well-formed trees before repair, and ``sentences_per_second`` over collation, scoring and
    decoding of length-sorted batches."""
    collator = DepCollator(model.vocab, _scheme_of(model), labeled=True, strict_relations=False)
    counts = torch.zeros(3, dtype=torch.long)
    well_formed = 0
    was_training = model.training
    model.eval()
    seconds = 0.0
    with torch.inference_mode():
        for indices in length_sorted_batches(source.lengths, batch_size):
            started = time.perf_counter()
            batch = collator([(index, source.sentences[index]) for index in indices]).to(device)
            heads, rel_ids, formed = _predict_batch(model, batch)
            seconds += time.perf_counter() - started
            counts += attachment_counts(
                heads,
                rel_ids,
                batch.heads,
                batch.rel_ids,
                batch.lengths,
                scored_word_mask(
                    batch.lengths, batch.max_len + 1, batch.punct_mask, include_punct=include_punct
                ),
            ).cpu()
            well_formed += int(formed.sum())
    model.train(was_training)
    scores = attachment_scores(counts, well_formed=well_formed, n_trees=len(source))
    return {
        **scores,
        "include_punct": include_punct,
        "n_sentences": len(source),
        "n_tokens": sum(source.lengths),
        "seconds": seconds,
        "sentences_per_second": len(source) / seconds if seconds > 0 else float("inf"),
    }


# ---------------------------------------------------------------------------------------------
# Teacher outputs on the student's labels, cached


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


def _relation_map(scheme: DepLabelScheme, teacher_vocab: DepVocab) -> tuple[Tensor, Tensor]:
    """Per student label: the teacher's index of its relation ``[L]`` and whether the teacher
    knows that relation ``[L]``."""
    index = {relation: position for position, relation in enumerate(teacher_vocab.relations)}
    names = [scheme.relations[r] for r in scheme.label_relation.tolist()]
    known = torch.tensor([name in index for name in names])
    return torch.tensor([index.get(name, 0) for name in names]), known


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
) -> tuple[Path, bool]:
    """The cache entry of the teacher's label distributions on ``source`` (``probs`` rows
    ``[L]`` and ``lost_mass`` rows ``[1]`` per word), built if missing; returns
    ``(directory, built)``. ``method``: ``struct`` (tree marginals) or ``token`` (the local head
    softmax); the relation distribution is the teacher's relation softmax in both; every score is
    divided by ``temperature``."""
    info, _ = _dep_info(teacher_dir)
    if info.kind != "parser":
        raise ValueError(f"teacher {os.fspath(teacher_dir)!r} is a {info.arch!r}, not a parser")
    inputs = {
        "format": TARGETS_FORMAT,
        "task": "dep",
        "teacher_hash": info.file_hash,
        "data": source.fingerprint,
        "n_sentences": len(source),
        "scheme": scheme_to_dict(scheme),
        "method": method,
        "temperature": float(temperature),
    }
    root = Path(cache_dir) / "dep-targets"
    key = _fingerprint(inputs)
    final = root / key
    with _locked(root / f"{key}.lock"):
        if _complete(final):
            return final, False
        started = time.perf_counter()
        teacher, _ = load_dep_model(teacher_dir, device=device)
        collator = DepCollator(teacher.vocab, scheme, labeled=False)
        label_relations, known = _relation_map(scheme, teacher.vocab)
        lengths = np.asarray(source.lengths, dtype=np.int64)
        scratch = _new_entry(root, key)
        probs = RaggedArray.create(scratch, "probs", lengths, (scheme.n_labels,), "float32")
        lost = RaggedArray.create(scratch, "lost_mass", lengths, (1,), "float32")
        lost_total = 0.0
        # no_grad, not inference_mode: some teachers' marginals are gradients of log Z
        # (autograd through the inside pass, e.g. the exact second-order sibling CRF)
        with torch.no_grad():
            for indices in length_sorted_batches(source.lengths, batch_size):
                batch = collator([(index, source.sentences[index]) for index in indices])
                batch = batch.to(device)
                scores = teacher(batch)
                if method == "struct":
                    arcs = teacher.arc_marginals(scores, batch.lengths, temperature)
                else:
                    arcs = local_head_probs(scores.arcs, batch.lengths, temperature)
                label_heads = batch.label_heads.masked_fill(~known.to(device), -1)
                targets = label_marginals(
                    arcs.float(),
                    teacher.rel_log_probs(scores, temperature).float(),
                    label_heads,
                    label_relations.to(device),
                    batch.lengths,
                )
                items = np.asarray(indices, dtype=np.int64)
                probs.write(items, targets.probs.cpu().numpy().astype(np.float32))
                lost_mass = targets.lost_mass.cpu().numpy().astype(np.float32)
                lost.write(items, lost_mass[:, :, None])
                lost_total += float(lost_mass.sum())
        probs.values.flush()
        lost.values.flush()
        del probs, lost
        n_words = int(lengths.sum())
        meta = {
            **inputs,
            "teacher": os.fspath(Path(teacher_dir).resolve()),
            "data_name": source.name,
            "n_labels": scheme.n_labels,
            "mean_lost_mass": lost_total / max(1, n_words),
            "seconds": time.perf_counter() - started,
        }
        _finish_entry(scratch, final, meta)
    return final, True


class DepTargetReader:
    """Reads ``DepTargets`` for batches of sentence ids from one cache entry per teacher, mixing
    the teachers' label distributions with ``weights`` (the KD loss is linear in them)."""

    def __init__(self, directories: Sequence[Path], weights: Tensor):
        self.entries = [RaggedArray.open(directory, "probs") for directory in directories]
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
    from structkd.structures.base import NumericalError

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


# ---------------------------------------------------------------------------------------------
# The Lightning module


class ParserModule(pl.LightningModule):
    """Trains a parser or a sequence-labeling student on gold trees, cached teacher label
    distributions, or both (``lambda * T^2 * KD + (1 - lambda) * gold``); validates by dev LAS.

    ``dev_scores`` holds the last dev scores (``uas``, ``las``, ...; identical on every DDP process:
    counts are summed) and ``history`` one row per epoch."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        learning_rate: float,
        kd: KDSettings | None = None,
        include_punct: bool = False,
    ):
        super().__init__()
        self.model = model
        self.learning_rate = learning_rate
        self.kd = kd
        self.include_punct = include_punct
        self.dev_scores: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self._dev_counts = torch.zeros(5, dtype=torch.long)
        self._epoch_loss = 0.0
        self._epoch_steps = 0
        self._epoch_started = time.perf_counter()

    def kd_weight(self) -> float:
        """``lambda`` of the current optimizer step."""
        return scheduled_kd_weight(self, self.kd)

    def step_losses(self, step: Any) -> dict[str, Tensor]:
        batch: DepBatch = step.tagging
        scores = self.model(batch)
        losses: dict[str, Tensor] = {"gold": self.model.gold_loss(batch, scores)}
        if self.kd is not None and step.targets is not None:
            temperature = float(self.kd.temperature)
            losses["kd"] = dep_kd_loss(scores, step.targets, temperature)
            weight = self.kd_weight()
            losses["lambda"] = torch.tensor(weight)
            losses["loss"] = weight * temperature**2 * losses["kd"] + (1 - weight) * losses["gold"]
        else:
            losses["loss"] = losses["gold"]
        return losses

    def training_step(self, step: Any, batch_idx: int) -> Tensor:
        losses = self.step_losses(step)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            from structkd.structures.base import NumericalError

            raise NumericalError(f"training loss is {float(loss)} at step {self.global_step}")
        self._epoch_loss += float(loss.detach())
        self._epoch_steps += 1
        self.log("loss", loss.detach(), prog_bar=True, batch_size=step.batch_size)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.Adam(parameters, lr=self.learning_rate, betas=(0.9, 0.9))

    def on_train_epoch_start(self) -> None:
        self._epoch_loss, self._epoch_steps = 0.0, 0
        self._epoch_started = time.perf_counter()

    def on_validation_epoch_start(self) -> None:
        self._dev_counts = torch.zeros(5, dtype=torch.long)

    def validation_step(self, step: Any, batch_idx: int) -> None:
        batch: DepBatch = step.tagging
        heads, rel_ids, formed = _predict_batch(self.model, batch)
        counts = attachment_counts(
            heads,
            rel_ids,
            batch.heads,
            batch.rel_ids,
            batch.lengths,
            scored_word_mask(
                batch.lengths,
                batch.max_len + 1,
                batch.punct_mask,
                include_punct=self.include_punct,
            ),
        ).cpu()
        trees = torch.tensor([int(formed.sum()), batch.batch_size])
        self._dev_counts += torch.cat([counts, trees])

    def on_validation_epoch_end(self) -> None:
        counts = self._dev_counts.to(self.device)
        if self.trainer.world_size > 1:
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        counts = counts.cpu()
        self.dev_scores = attachment_scores(
            counts[:3], well_formed=int(counts[3]), n_trees=int(counts[4])
        )
        self.log("dev_las", float(self.dev_scores["las"]), prog_bar=True, sync_dist=False)

    def on_train_epoch_end(self) -> None:
        row = {
            "epoch": self.current_epoch,
            "train_loss": self._epoch_loss / max(1, self._epoch_steps),
            "seconds": time.perf_counter() - self._epoch_started,
        }
        if self.dev_scores is not None:
            row.update({"dev_uas": self.dev_scores["uas"], "dev_las": self.dev_scores["las"]})
        self.history.append(row)


# ---------------------------------------------------------------------------------------------
# train and distill


def _check_dep_options(options: Any) -> None:
    from structkd.train.commands import _check_options

    _check_options(options)
    _architecture(options.arch)


def _prepare_data(
    options: Any, spec: dict[str, str], config: Any
) -> tuple[DepSource, DepSource, DepSource | None, DepVocab, DepLabelScheme | None, dict]:
    """The training, dev and test trees, the vocabulary (dev and test words included), the
    student's label scheme (``None`` for a parser) and the ``metrics.json`` entries describing
    them. Projective parsers keep the projective training trees only."""
    train_source = load_dep_source(
        options.train, role="train", max_sentences=options.max_train_sentences
    )
    dev = load_dep_source(options.dev, role="dev")
    test = None if options.test is None else load_dep_source(options.test, role="test")
    extra: dict[str, Any] = {
        "data": {"train": train_source.name, "n_train_sentences": len(train_source)}
    }
    if spec["kind"] == "parser" and config.mode in PROJECTIVE_MODES:
        kept = projective_subset(train_source.sentences)
        extra["data"]["training_trees"] = "projective subset"
        extra["data"]["non_projective_dropped"] = len(train_source) - len(kept)
        if not kept:
            raise ValueError(f"train data {options.train!r} has no projective tree")
        train_source = DepSource(train_source.name + " (projective)", kept)
        extra["data"]["n_train_sentences"] = len(kept)
    vocab = DepVocab.build(
        train_source.sentences,
        extra_words=[
            w for source in (dev, test) if source for s in source.sentences for w in s.words
        ],
    )
    scheme = None
    if spec["kind"] == "student":
        scheme = DepLabelScheme.from_sentences(train_source.sentences, encoding=spec["encoding"])
        extra["label_coverage_dev"] = scheme.coverage(dev.sentences)
    return train_source, dev, test, vocab, scheme, extra


def _fit_dep(
    options: Any,
    *,
    command: str,
    model: torch.nn.Module,
    train_source: DepSource,
    dev: DepSource,
    test: DepSource | None,
    readers: dict[str, Any],
    kd: KDSettings | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Train with Lightning, keep the best model by dev LAS in ``options.out``, score it on dev
    and test, write ``metrics.json``."""
    from lightning.pytorch.callbacks import EarlyStopping

    from structkd.train.checkpoint import METRICS_FILE, write_json
    from structkd.train.commands import _inference_device, make_trainer
    from structkd.train.data import Part, StepCollator

    scheme = _scheme_of(model)
    collators = {
        "train": DepCollator(model.vocab, scheme, labeled=True),
        "dev": DepCollator(model.vocab, scheme, labeled=True, strict_relations=False),
    }
    train_parts = [Part("train", list(enumerate(train_source.sentences)), labeled=True)]
    dev_part = Part("dev", list(enumerate(dev.sentences)), labeled=True)
    datamodule = TaggerDataModule(
        train_parts,
        StepCollator(train_parts, collators, readers),
        dev_part,
        StepCollator([dev_part], collators),
        batch_size=options.batch_size,
        eval_batch_size=options.eval_batch_size,
        seed=options.seed,
    )
    module = ParserModule(model, learning_rate=options.learning_rate, kd=kd)
    out = Path(options.out)
    saver = BestModelSaver(
        lambda trained: save_dep_model(out, trained, arch=options.arch), metric="las"
    )
    callbacks: list[Any] = [saver]
    if options.patience is not None:
        callbacks.append(EarlyStopping(monitor="dev_las", mode="max", patience=options.patience))
    trainer = make_trainer(options, callbacks)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    training_seconds = time.perf_counter() - started
    if not trainer.is_global_zero:
        return {"global_rank": trainer.global_rank}
    if saver.best_epoch is None:
        save_dep_model(out, model, arch=options.arch)
    device = _inference_device(options.accelerator)
    best, info = load_dep_model(out, device=device)
    evaluations = {}
    for name, source in (("dev", dev), ("test", test)):
        if source is not None:
            evaluations[name] = {
                "data": source.name,
                **evaluate_dep_model(
                    best, source, batch_size=options.eval_batch_size, device=device
                ),
            }
    metrics = {
        "command": command,
        "task": "dep",
        "arch": options.arch,
        "config": info.config.to_dict(),
        "encoding": None if info.scheme is None else info.scheme.encoding,
        "n_labels": None if info.scheme is None else info.scheme.n_labels,
        "best_epoch": saver.best_epoch,
        "epochs_run": len(module.history),
        "optimizer_steps": trainer.global_step,
        "world_size": trainer.world_size,
        "dev": evaluations["dev"],
        "test": evaluations.get("test"),
        "n_parameters": sum(p.numel() for p in best.parameters()),
        "sentences_per_second": evaluations["dev"]["sentences_per_second"],
        "training_seconds": training_seconds,
        "history": module.history,
        **extra,
        "options": dataclasses.asdict(options),
    }
    write_json(out / METRICS_FILE, metrics)
    return {**metrics, "model_dir": os.fspath(out)}


def train_dep(options: Any) -> dict[str, Any]:
    """``structkd train --task dep``: a parser teacher, or a student without KD, on gold trees;
    model selection on dev LAS. Writes ``options.out``; returns the metrics (plus
    ``model_dir``)."""
    from structkd.train.commands import _configure_runtime, _seed

    _check_dep_options(options)
    _configure_runtime(options)
    spec = _architecture(options.arch)
    config = _model_config(options.arch, options.arch_overrides)
    train_source, dev, test, vocab, scheme, extra = _prepare_data(options, spec, config)
    _seed(options.seed)
    model = _build_model(options.arch, config, vocab, scheme)
    return _fit_dep(
        options,
        command="train",
        model=model,
        train_source=train_source,
        dev=dev,
        test=test,
        readers={},
        kd=None,
        extra=extra,
    )


def distill_dep(options: Any) -> dict[str, Any]:
    """``structkd distill --task dep``: a sequence-labeling student from one parser teacher or an
    ensemble. Teacher label distributions are computed once per (teacher, data, labels, method,
    temperature) and cached; ``metrics.json`` records the mass each teacher put on heads the
    student's labels cannot express (``teacher_lost_mass``)."""
    from structkd.train.commands import _cache_dir, _configure_runtime, _inference_device, _seed

    _check_dep_options(options)
    spec = _architecture(options.arch)
    if spec["kind"] != "student":
        raise ValueError(f"distill trains a student-dep-* architecture; got {options.arch!r}")
    if options.method not in DEP_KD_METHODS:
        raise ValueError(
            f"--task dep supports the KD methods {', '.join(DEP_KD_METHODS)}; got "
            f"{options.method!r}"
        )
    if options.temperature_mode != "global":
        raise ValueError("--task dep supports --temperature-mode global only")
    if options.unlabeled is not None or options.labeled_fraction is not None:
        raise ValueError("--task dep distills on the labeled training trees only")
    if options.method != "none" and not options.teachers:
        raise ValueError("distill needs at least one --teacher")
    _configure_runtime(options)
    config = _model_config(options.arch, options.arch_overrides)
    train_source, dev, test, vocab, scheme, extra = _prepare_data(options, spec, config)
    readers: dict[str, Any] = {}
    kd = None
    if options.method != "none":
        weights = options.teacher_weights or [1.0] * len(options.teachers)
        if len(weights) != len(options.teachers) or any(w < 0 for w in weights) or not sum(weights):
            raise ValueError("--teacher-weights: one non-negative weight per teacher, not all 0")
        weight_tensor = torch.tensor(weights, dtype=torch.float64) / sum(weights)
        cache_dir = _cache_dir(options)
        device = _inference_device(options.accelerator)
        entries, report = [], []
        for teacher in options.teachers:
            directory, built = ensure_dep_targets(
                teacher,
                train_source,
                scheme,
                method=options.method,
                temperature=options.temperature,
                cache_dir=cache_dir,
                device=device,
            )
            meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
            entries.append(directory)
            report.append(
                {
                    "teacher": os.fspath(teacher),
                    "cache": os.fspath(directory),
                    "built": built,
                    "mean_lost_mass": meta["mean_lost_mass"],
                }
            )
        readers["train"] = DepTargetReader(entries, weight_tensor.float())
        kd = KDSettings(
            method=options.method,
            temperature=options.temperature,
            kd_weight=options.kd_weight,
            kd_weight_end=options.kd_weight_end,
            schedule=options.kd_schedule,
        )
        extra["distillation"] = {
            "method": options.method,
            "temperature": options.temperature,
            "temperature_mode": "global",
            "teachers": report,
            "teacher_weights": weight_tensor.tolist(),
        }
        extra["teacher_lost_mass"] = sum(
            w * r["mean_lost_mass"] for w, r in zip(weight_tensor.tolist(), report, strict=True)
        )
    _seed(options.seed)
    model = _build_model(options.arch, config, vocab, scheme)
    return _fit_dep(
        options,
        command="distill",
        model=model,
        train_source=train_source,
        dev=dev,
        test=test,
        readers=readers,
        kd=kd,
        extra=extra,
    )


# ---------------------------------------------------------------------------------------------
# evaluate and predict


def evaluate_dep(
    model_dir: str | os.PathLike[str],
    data: str,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    include_punct: bool = False,
    max_sentences: int | None = None,
) -> dict[str, Any]:
    """``structkd evaluate`` of a dependency model: UAS, LAS, well-formed rate, speed."""
    model, _ = load_dep_model(model_dir, device=device)
    source = load_dep_source(data, role="evaluation", max_sentences=max_sentences)
    scores = evaluate_dep_model(
        model, source, batch_size=batch_size, device=device, include_punct=include_punct
    )
    return {"model": os.fspath(model_dir), "data": data, **scores}


def predict_dep(
    model_dir: str | os.PathLike[str],
    input: str | os.PathLike[str],
    output: str | os.PathLike[str] | TextIO | None = None,
    *,
    batch_size: int = 64,
    device: str = "cpu",
) -> int:
    """Parse ``input`` (a CoNLL-U file or a treebank name; its UPOS column is read, its HEAD and
    DEPREL are replaced) and write CoNLL-U to ``output`` (path, stream, or standard output);
    returns the number of sentences. Multiword tokens, empty nodes and comments are kept."""
    model, _ = load_dep_model(model_dir, device=device)
    source = load_dep_source(os.fspath(input), role="input")
    collator = DepCollator(model.vocab, _scheme_of(model), labeled=False)
    heads: list[list[int]] = [[] for _ in source.sentences]
    relations: list[list[str]] = [[] for _ in source.sentences]
    with torch.inference_mode():
        for indices in length_sorted_batches(source.lengths, batch_size):
            batch = collator([(index, source.sentences[index]) for index in indices]).to(device)
            batch_heads, rel_ids, _ = _predict_batch(model, batch)
            for row, index in enumerate(indices):
                length = len(source.sentences[index])
                heads[index] = batch_heads[row, 1 : length + 1].tolist()
                relations[index] = [
                    model.vocab.relations[r] for r in rel_ids[row, 1 : length + 1].tolist()
                ]
    text = format_conllu(source.sentences, heads, relations)
    if output is None or output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    elif hasattr(output, "write"):
        output.write(text)  # type: ignore[union-attr]
    else:
        Path(output).write_text(text, encoding="utf-8")
    return len(source.sentences)
