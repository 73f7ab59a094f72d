"""Dependency training runs: the ``TrainingHooks`` of a parser or a sequence-labeling student,
and the preparation of ``train`` and ``distill`` runs for the engine's fit loop
(``structkd.train.fit``).

The loss of a student: ``lambda * T^2 * L_KD + (1 - lambda) * L_gold`` with both terms means over
words; ``L_KD = - sum_i sum_l P_t(label_i = l) log softmax(s_i / T)[l]``, which for a per-word
softmax student is exactly the structural KD cross-entropy (``struct``: the teacher's tree
marginals; ``token``: its local head and relation softmax). Model selection is on dev LAS.

Projective teachers (``parser-projective``, ``parser-sibling-exact``) train on the projective
trees of the training data (the others are dropped and counted in ``metrics.json``); every model
is evaluated on all trees.

Fold teachers (``train_folds``, ``--folds K``; ``structkd.tasks.dep.folds``): K parsers, parser
``k`` on the training trees outside fold ``k`` (folds over every training sentence, by its words;
a projective parser also drops the non-projective trees, and its held-out fold's sentences stay
in the fold). A student distills from one with out-of-fold or in-fold targets
(``teacher_targets``, recorded in ``metrics.json``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from structkd.data.conllu_io import projective_subset
from structkd.data.dep_batching import DepCollator, DepVocab
from structkd.data.dep_encodings import DepLabelScheme
from structkd.distill.bridges import check_weights
from structkd.models.parser import PROJECTIVE_MODES
from structkd.tasks.dep.data import DepSource, load_dep_source
from structkd.tasks.dep.evaluation import batch_counts, evaluate_dep_model
from structkd.tasks.dep.folds import fold_target_entries, given_lost_mass, score_mixture
from structkd.tasks.dep.metrics import attachment_scores
from structkd.tasks.dep.model import (
    TASK,
    architecture,
    build_model,
    load_dep_model,
    model_config,
    save_dep_model,
    scheme_of,
)
from structkd.tasks.dep.targets import DepTargetReader, DepTargets, dep_kd_loss, ensure_dep_targets
from structkd.train.data import Part
from structkd.train.fit import PreparedRun
from structkd.train.folds import (
    FoldAssignment,
    FoldModel,
    fit_folds,
    read_fold_teachers,
    sentence_key,
    teacher_targets,
)
from structkd.train.module import KDSettings
from structkd.train.options import DistillOptions, TrainOptions
from structkd.train.runtime import cache_dir, configure_runtime, inference_device, seed
from structkd.train.store import ShardPlan, read_meta

__all__ = ["ParserHooks", "prepare_distill", "prepare_train", "train_folds"]


class ParserHooks:
    """The ``TrainingHooks`` of a parser or a student: model selection on dev LAS."""

    metric = "las"

    def __init__(
        self,
        *,
        arch: str,
        dev: DepSource,
        test: DepSource | None,
        options: TrainOptions,
        include_punct: bool = False,
    ):
        self.arch = arch
        self.dev = dev
        self.test = test
        self.options = options
        self.include_punct = include_punct

    def forward(self, model: torch.nn.Module, batch: Any) -> Any:
        return model(batch)

    def gold_loss(self, model: torch.nn.Module, batch: Any, output: Any) -> Tensor:
        return model.gold_loss(batch, output)

    def kd_loss(self, output: Tensor, targets: DepTargets, kd: KDSettings) -> Tensor:
        return dep_kd_loss(output, targets, float(kd.temperature))

    def zero_counts(self) -> Tensor:
        return torch.zeros(5, dtype=torch.long)

    def dev_counts(self, model: torch.nn.Module, batch: Any) -> Tensor:
        return batch_counts(model, batch, include_punct=self.include_punct)

    def dev_scores(self, counts: Tensor) -> dict[str, Any]:
        return attachment_scores(counts[:3], well_formed=int(counts[3]), n_trees=int(counts[4]))

    def history_scores(self, scores: dict[str, Any]) -> dict[str, Any]:
        return {"dev_uas": scores["uas"], "dev_las": scores["las"]}

    def optimizer(self, parameters: Iterable[Tensor], learning_rate: float) -> Any:
        return torch.optim.Adam(parameters, lr=learning_rate, betas=(0.9, 0.9))

    def save(self, directory: str | os.PathLike[str], model: torch.nn.Module) -> None:
        save_dep_model(directory, model, arch=self.arch)

    def load(self, directory: str | os.PathLike[str], device: str) -> torch.nn.Module:
        return load_dep_model(directory, device=device)[0]

    def model_entries(self, model: torch.nn.Module) -> dict[str, Any]:
        scheme = scheme_of(model)
        return {
            "config": model.config.to_dict(),
            "encoding": None if scheme is None else scheme.encoding,
            "n_labels": None if scheme is None else scheme.n_labels,
        }

    def n_parameters(self, model: torch.nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    def final_scores(self, model: torch.nn.Module, device: str) -> dict[str, dict[str, Any]]:
        evaluations = {}
        for name, source in (("dev", self.dev), ("test", self.test)):
            if source is not None:
                evaluations[name] = {
                    "data": source.name,
                    **evaluate_dep_model(
                        model, source, batch_size=self.options.eval_batch_size, device=device
                    ),
                }
        return evaluations


def _check_scheme(options: TrainOptions) -> None:
    if options.scheme != "auto":
        raise ValueError(
            f"--scheme {options.scheme}: a treebank has no tag scheme (--scheme is for NER data)"
        )


def _sources(options: TrainOptions) -> tuple[DepSource, DepSource, DepSource | None]:
    """The training (at most ``max_train_sentences``), dev and test trees."""
    _check_scheme(options)
    train_source = load_dep_source(
        options.train, role="train", max_sentences=options.max_train_sentences
    )
    dev = load_dep_source(options.dev, role="dev")
    test = None if options.test is None else load_dep_source(options.test, role="test")
    return train_source, dev, test


def _prepare_data(
    options: TrainOptions,
    spec: dict[str, str],
    config: Any,
    fold: tuple[FoldAssignment, int] | None = None,
) -> tuple[DepSource, DepSource, DepSource | None, DepVocab, DepLabelScheme | None, dict]:
    """The training, dev and test trees, the vocabulary (dev and test words included), the
    student's label scheme (``None`` for a parser) and the ``metrics.json`` entries describing
    them. Projective parsers keep the projective training trees only. ``fold``: ``(assignment,
    k)``, fold parser ``k`` (``train_folds``): the training trees outside fold ``k``; the
    relations of every training tree (one relation list for all the fold parsers, so that their
    relation distributions mix) and the words of fold ``k`` (text the parser will read) join its
    vocabulary."""
    train_source, dev, test = _sources(options)
    extra: dict[str, Any] = {
        "data": {"train": train_source.name, "n_train_sentences": len(train_source)}
    }
    held: list[Any] = []  # the held-out fold: all of its sentences, projective or not
    if fold is not None:
        assignment, index = fold
        held = [s for s in train_source.sentences if assignment.fold_of(s.words) == index]
    if spec["kind"] == "parser" and config.mode in PROJECTIVE_MODES:
        kept = projective_subset(train_source.sentences)
        extra["data"]["training_trees"] = "projective subset"
        extra["data"]["non_projective_dropped"] = len(train_source) - len(kept)
        if not kept:
            raise ValueError(f"train data {options.train!r} has no projective tree")
        train_source = DepSource(train_source.name + " (projective)", kept)
        extra["data"]["n_train_sentences"] = len(kept)
    relations = tuple(sorted({r for s in train_source.sentences for r in s.relations}))
    if fold is not None:
        assignment, index = fold
        kept = [s for s in train_source.sentences if assignment.fold_of(s.words) != index]
        if not kept:
            raise ValueError(f"fold {index + 1} of {assignment.k} leaves no training tree")
        train_source = DepSource(train_source.name, kept)
        extra["data"]["fold"] = {
            "fold": index + 1,
            "folds": assignment.k,
            "n_held_out": len(held),
            "train_fingerprint": train_source.fingerprint,
        }
        extra["data"]["n_train_sentences"] = len(kept)
    vocabulary_text = [load_dep_source(spec, role="input") for spec in options.vocab_text]
    vocab = DepVocab.build(
        train_source.sentences,
        extra_words=[
            w
            for source in (dev, test, *vocabulary_text, DepSource("held out", held))
            if source
            for s in source.sentences
            for w in s.words
        ],
    )
    if fold is not None:
        vocab = dataclasses.replace(vocab, relations=relations)
    scheme = None
    if spec["kind"] == "student":
        scheme = DepLabelScheme.from_sentences(train_source.sentences, encoding=spec["encoding"])
        extra["label_coverage_dev"] = scheme.coverage(dev.sentences)
    return train_source, dev, test, vocab, scheme, extra


def _run(
    options: TrainOptions,
    command: str,
    model: torch.nn.Module,
    train_source: DepSource,
    dev: DepSource,
    test: DepSource | None,
    readers: dict[str, Any],
    kd: KDSettings | None,
    extra: dict[str, Any],
) -> PreparedRun:
    scheme = scheme_of(model)
    return PreparedRun(
        options=options,
        command=command,
        model=model,
        hooks=ParserHooks(arch=options.arch, dev=dev, test=test, options=options),
        train_parts=[Part("train", list(enumerate(train_source.sentences)), labeled=True)],
        dev_part=Part("dev", list(enumerate(dev.sentences)), labeled=True),
        collators={
            # cached: each epoch collates the same sentences again
            "train": DepCollator(
                model.vocab, scheme, labeled=True, label_heads=False, code_heads=False, cache=True
            ),
            "dev": DepCollator(
                model.vocab,
                scheme,
                labeled=True,
                strict_relations=False,
                label_ids=False,
                label_heads=False,
                cache=True,
            ),
        },
        target_readers=readers,
        kd=kd,
        extra=extra,
    )


def prepare_train(
    options: TrainOptions, fold: tuple[FoldAssignment, int] | None = None
) -> PreparedRun:
    """A parser teacher, or a student without KD, on gold trees. ``fold``: ``(assignment, k)``
    trains fold parser ``k`` (``train_folds``) on the training trees outside fold ``k``
    (``_prepare_data``); ``metrics.json`` records the fold and the fingerprint of the trees it
    trained on."""
    spec = architecture(options.arch)
    configure_runtime(options.num_threads)
    config = model_config(options.arch, options.arch_overrides)
    train_source, dev, test, vocab, scheme, extra = _prepare_data(options, spec, config, fold)
    seed(options.seed)
    model = build_model(options.arch, config, vocab, scheme)
    return _run(options, "train", model, train_source, dev, test, {}, None, extra)


def train_folds(options: TrainOptions) -> dict[str, Any]:
    """``train --task dep --arch parser-* --folds K``: K fold parsers into ``options.out``
    (``structkd.train.folds``; folds by the words of each sentence), fold parser ``k`` on the
    training trees outside fold ``k`` (``prepare_train(options, fold)``); the directory's scores
    are those of their mixture (``structkd.tasks.dep.folds``). A student architecture is
    refused: fold teachers are parsers."""
    if architecture(options.arch)["kind"] != "parser":
        raise ValueError(
            f"--folds trains fold teachers, and --arch {options.arch!r} is a student: use a "
            "parser-* architecture"
        )
    configure_runtime(options.num_threads)
    train_source, dev, test = _sources(options)
    keys = [sentence_key(sentence.words) for sentence in train_source.sentences]

    def prepare_fold(fold_options: TrainOptions, assignment: FoldAssignment, k: int) -> Any:
        return prepare_train(fold_options, (assignment, k))

    def score(model: FoldModel) -> dict[str, Any]:
        return score_mixture(
            model,
            {"dev": dev, "test": test},
            batch_size=options.eval_batch_size,
            device=inference_device(options.accelerator),
        )

    return fit_folds(options, keys, prepare_fold, score, data={"train": train_source.name})


def prepare_distill(options: DistillOptions) -> PreparedRun:
    """A sequence-labeling student from one parser teacher or an ensemble. Teacher label
    distributions are computed once per (teacher, data, labels, method, temperature) and cached;
    ``metrics.json`` records the mass each teacher put on heads the student's labels cannot
    express (``teacher_lost_mass``). A fold teacher (``train --folds``) gives each training
    sentence of its fold parsers the targets of the one that did not see it (``out-of-fold``,
    its default) or the mixture of the K (``in-fold``), any other sentence the mixture
    (``structkd.tasks.dep.folds.fold_target_entries``); ``metrics.json`` records
    ``teacher_targets``."""
    spec = architecture(options.arch)
    if spec["kind"] != "student":
        raise ValueError(f"distill trains a student-dep-* architecture; got {options.arch!r}")
    configure_runtime(options.num_threads)
    fold_models = read_fold_teachers(options.teachers, task=TASK)
    targets_mode = teacher_targets(options, fold_models)
    config = model_config(options.arch, options.arch_overrides)
    train_source, dev, test, vocab, scheme, extra = _prepare_data(options, spec, config)
    assert scheme is not None
    readers: dict[str, Any] = {}
    kd = KDSettings.of(options)
    if kd is not None:
        raw = options.teacher_weights or [1.0] * len(options.teachers)
        if len(raw) != len(options.teachers) or any(w < 0 for w in raw) or not sum(raw):
            raise ValueError("--teacher-weights: one non-negative weight per teacher, not all 0")
        weights = check_weights(torch.tensor(raw, dtype=torch.float64) / sum(raw), len(raw))
        device = inference_device(options.accelerator)
        entries: list[Any] = []
        report = []
        for teacher, fold_model in zip(options.teachers, fold_models, strict=True):
            if fold_model is not None:
                fold_entries, caches = fold_target_entries(
                    fold_model,
                    train_source,
                    scheme,
                    method=options.method,
                    temperature=options.temperature,
                    cache_dir=cache_dir(options.cache_dir),
                    out_of_fold=targets_mode == "out-of-fold",
                    device=device,
                    batch_size=options.eval_batch_size,
                    plan=ShardPlan.from_environment(),
                )
                entries.append(fold_entries)
                report.append(
                    {
                        "teacher": os.fspath(teacher),
                        "folds": fold_model.k,
                        "caches": caches,
                        "mean_lost_mass": given_lost_mass(fold_entries, train_source.lengths),
                    }
                )
                continue
            directory, built = ensure_dep_targets(
                teacher,
                train_source,
                scheme,
                method=options.method,
                temperature=options.temperature,
                cache_dir=cache_dir(options.cache_dir),
                device=device,
                plan=ShardPlan.from_environment(),  # torchrun ranks share the shards
            )
            assert directory is not None  # the plan finishes the entry
            entries.append(directory)
            report.append(
                {
                    "teacher": os.fspath(teacher),
                    "cache": os.fspath(directory),
                    "built": built,
                    "mean_lost_mass": read_meta(directory)["mean_lost_mass"],
                }
            )
        readers["train"] = DepTargetReader(entries, weights.float())
        extra["distillation"] = {
            "method": options.method,
            "temperature": options.temperature,
            "temperature_mode": options.temperature_mode,
            "teachers": report,
            "teacher_weights": weights.tolist(),
            "teacher_targets": targets_mode,
            "fold_teachers": [
                {"teacher": os.fspath(model.directory), "folds": model.k}
                for model in fold_models
                if model is not None
            ],
        }
        extra["teacher_lost_mass"] = sum(
            w * r["mean_lost_mass"] for w, r in zip(weights.tolist(), report, strict=True)
        )
    seed(options.seed)
    model = build_model(options.arch, config, vocab, scheme)
    return _run(options, "distill", model, train_source, dev, test, readers, kd, extra)
