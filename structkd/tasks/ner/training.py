"""NER training runs: the ``TrainingHooks`` of a tagger, and the preparation of ``train`` and
``distill`` runs (data, vocabulary, teacher-output caches, the seeded tagger) for the engine's
fit loop (``structkd.train.fit``)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from structkd.data.conll import split_labeled_fraction
from structkd.distill.bridges import check_weights
from structkd.distill.halves import student_half
from structkd.models.tagger import Tagger
from structkd.tasks.ner.data import DataSource, load_labeled, load_text
from structkd.tasks.ner.diagnostics import target_diagnostics
from structkd.tasks.ner.evaluation import evaluate_tagger
from structkd.tasks.ner.features import make_collator
from structkd.tasks.ner.folds import fold_infos, fold_target_entries, score_mixture
from structkd.tasks.ner.metrics import entity_counts, scores_from_counts
from structkd.tasks.ner.model import (
    TASK,
    build_vocab,
    check_types,
    load_tagger,
    model_info,
    save_tagger,
    tagger_config,
)
from structkd.tasks.ner.targets import KDTargets, TargetReader, TargetSpec, ensure_targets
from structkd.train.data import Part
from structkd.train.diagnostics import part_diagnostics, seen_by_folds
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
from structkd.train.store import ShardPlan

__all__ = [
    "TaggerHooks",
    "check_pairing",
    "labeled_part",
    "prepare_distill",
    "prepare_train",
    "student_kind",
    "train_folds",
    "vocabulary_sources",
]


class TaggerHooks:
    """The ``TrainingHooks`` of a NER tagger: model selection on dev entity F1."""

    metric = "f1"

    def __init__(
        self,
        *,
        arch: str,
        tag_scheme: str,
        types: Sequence[str],
        dev: DataSource,
        test: DataSource | None,
        options: TrainOptions,
    ):
        self.arch = arch
        self.tag_scheme = tag_scheme
        self.types = list(types)
        self.dev = dev
        self.test = test
        self.options = options

    def forward(self, model: Tagger, batch: Any) -> Any:
        return model(batch)

    def gold_loss(self, model: Tagger, batch: Any, output: Any) -> Tensor:
        return model.gold_loss(batch, output)

    def kd_loss(self, output: Any, targets: KDTargets, kd: KDSettings) -> Tensor:
        return student_half(
            kd.method,
            output,
            targets.per_teacher,
            targets.weights,
            temperature=float(kd.temperature),
            temperature_mode=kd.temperature_mode,
        ).mean()

    def zero_counts(self) -> Tensor:
        return torch.zeros(len(self.types), 3, dtype=torch.long)

    def dev_counts(self, model: Tagger, batch: Any) -> Tensor:
        predicted = model.decode(batch)
        return entity_counts(predicted, batch.label_ids, batch.lengths, len(self.types))

    def dev_scores(self, counts: Tensor) -> dict[str, Any]:
        return scores_from_counts(counts, self.types)

    def history_scores(self, scores: dict[str, Any]) -> dict[str, Any]:
        return {f"dev_{name}": scores[name] for name in ("precision", "recall", "f1")}

    def optimizer(self, parameters: Iterable[Tensor], learning_rate: float) -> Any:
        return torch.optim.Adam(parameters, lr=learning_rate)

    def save(self, directory: str | os.PathLike[str], model: Tagger) -> None:
        save_tagger(directory, model, arch=self.arch, tag_scheme=self.tag_scheme)

    def load(self, directory: str | os.PathLike[str], device: str) -> Tagger:
        return load_tagger(directory, device=device)[0]

    def model_entries(self, model: Tagger) -> dict[str, Any]:
        return {"config": model.config.to_dict(), "types": list(model.vocab.types)}

    def n_parameters(self, model: Tagger) -> int:
        return model.n_parameters()

    def final_scores(self, model: Tagger, device: str) -> dict[str, dict[str, Any]]:
        """Dev and test scores with transformer features computed on the fly (honest speed)."""
        evaluations = {}
        for name, source in (("dev", self.dev), ("test", self.test)):
            if source is None:
                continue
            collator = make_collator(
                model.config,
                model,
                model.vocab,
                source.sentences,
                source.fingerprint,
                cache_dir(self.options.cache_dir),
                device=device,
                cached_features=False,
            )
            evaluations[name] = {
                "data": source.name,
                **evaluate_tagger(
                    model, source, collator, batch_size=self.options.eval_batch_size, device=device
                ),
            }
        return evaluations


def labeled_part(source: str, items: list[tuple[int, Any]]) -> Part:
    """A labeled ``Part`` of NER sentences (``ValueError`` when one has no tags)."""
    if any(sentence.tags is None for _, sentence in items):
        raise ValueError(f"labeled part of {source!r} has sentences without tags")
    return Part(source, items, labeled=True)


def _sources(options: TrainOptions) -> tuple[DataSource, DataSource, DataSource | None]:
    scheme = options.scheme
    train_source = load_labeled(
        options.train, role="train", max_sentences=options.max_train_sentences, scheme=scheme
    )
    dev = load_labeled(options.dev, role="dev", scheme=scheme)
    test = None if options.test is None else load_labeled(options.test, role="test", scheme=scheme)
    return train_source, dev, test


def vocabulary_sources(
    options: TrainOptions, dev: DataSource, test: DataSource | None
) -> list[DataSource]:
    """The text beyond the training data whose words join the vocabulary: dev, test and
    ``options.vocab_text``."""
    extra = [load_text(spec, role="vocabulary", keep_tags=False) for spec in options.vocab_text]
    return [dev, *([test] if test else []), *extra]


def _collators(
    options: TrainOptions, tagger: Tagger, sources: dict[str, DataSource]
) -> dict[str, Any]:
    """The collator of each source (with cached frozen transformer features, built if
    missing)."""
    device = inference_device(options.accelerator)
    return {
        key: make_collator(
            tagger.config,
            tagger,
            tagger.vocab,
            source.sentences,
            source.fingerprint,
            cache_dir(options.cache_dir),
            device=device,
            progress=options.progress,
        )
        for key, source in sources.items()
    }


def _run(
    options: TrainOptions,
    command: str,
    tagger: Tagger,
    scheme: str | None,
    parts: list[Part],
    sources: dict[str, DataSource],
    dev: DataSource,
    test: DataSource | None,
    readers: dict[str, Any],
    kd: KDSettings | None,
    extra: dict[str, Any],
) -> PreparedRun:
    hooks = TaggerHooks(
        arch=options.arch,
        tag_scheme=scheme or "iob2",
        types=tagger.vocab.types,
        dev=dev,
        test=test,
        options=options,
    )
    return PreparedRun(
        options=options,
        command=command,
        model=tagger,
        hooks=hooks,
        train_parts=parts,
        dev_part=labeled_part("dev", list(enumerate(dev.sentences))),
        collators=_collators(options, tagger, {**sources, "dev": dev}),
        target_readers=readers,
        kd=kd,
        extra=extra,
    )


def prepare_train(
    options: TrainOptions, fold: tuple[FoldAssignment, int] | None = None
) -> PreparedRun:
    """Read the data, build the vocabulary and the (seeded) tagger of a ``train`` run.

    ``fold``: ``(assignment, k)`` trains fold teacher ``k`` (``train_folds``) on the training
    sentences outside fold ``k`` (its label set is that of all of them, the same for every fold;
    the held-out sentences' words join the vocabulary as text the model will read, like
    ``vocab_text``); ``metrics.json`` records the fold and the fingerprint of the sentences it
    trained on."""
    configure_runtime(options.num_threads)
    train_source, dev, test = _sources(options)
    config = tagger_config(options.arch, options.arch_overrides)
    labeled = [source for source in (train_source, dev, test) if source is not None]
    types = sorted({t for source in labeled for t in source.types})
    if not types:
        raise ValueError(f"train data {options.train!r} has no entities: nothing to learn")
    extra_text = vocabulary_sources(options, dev, test)
    data: dict[str, Any] = {"train": train_source.name}
    if fold is not None:
        assignment, index = fold
        folds = assignment.fold_index(sentence.tokens for sentence in train_source.sentences)
        pairs = list(zip(train_source.sentences, folds.tolist(), strict=True))
        kept = [sentence for sentence, f in pairs if f != index]
        held = [sentence for sentence, f in pairs if f == index]
        train_source = dataclasses.replace(train_source, sentences=kept)
        extra_text.append(DataSource(f"{train_source.name} (fold {index + 1})", held, None))
        data["fold"] = {
            "fold": index + 1,
            "folds": assignment.k,
            "n_held_out": len(held),
            "train_fingerprint": train_source.fingerprint,
        }
    vocab = build_vocab(config, train_source.sentences, types, extra_text)
    seed(options.seed)
    tagger = Tagger(config, vocab)
    data["n_train_sentences"] = len(train_source)
    return _run(
        options,
        "train",
        tagger,
        train_source.scheme,
        [labeled_part("train", list(enumerate(train_source.sentences)))],
        {"train": train_source},
        dev,
        test,
        {},
        None,
        {"data": data},
    )


def train_folds(options: TrainOptions) -> dict[str, Any]:
    """``train --folds K``: K fold taggers into ``options.out`` (``structkd.train.folds``), fold
    tagger ``k`` on the training sentences outside fold ``k`` (``prepare_train(options, fold)``);
    the directory's scores are those of their mixture (``structkd.tasks.ner.folds``)."""
    configure_runtime(options.num_threads)
    train_source, dev, test = _sources(options)
    keys = [sentence_key(sentence.tokens) for sentence in train_source.sentences]

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


def student_kind(config: Any, arch: str) -> str:
    """The substructures a student of ``config`` scores: ``"crf"`` or ``"factorized"``."""
    if config.head == "crf":
        return "crf"
    if config.head == "softmax":
        return "factorized"
    raise ValueError(
        f"the student --arch {arch!r} has a {config.head!r} head; a student must have a 'crf' or "
        "'softmax' head"
    )


def check_pairing(
    infos: Sequence[Any],
    method: str,
    kind: str,
    temperature: float,
    temperature_mode: str,
    crf_constraints: bool = True,
) -> None:
    """Refuse teacher/student/method combinations whose loss is undefined or infinite."""
    if method == "struct" and temperature_mode == "local" and kind == "crf":
        if temperature != 1.0:
            raise ValueError(
                "temperature_mode='local' with T != 1 is not defined for a CRF student (its "
                "tempered token and pair targets are inconsistent); use --temperature-mode "
                "global or a softmax student"
            )
    for info in infos:
        where = os.fspath(info.directory)
        if (
            kind == "crf"
            and crf_constraints
            and info.head == "softmax"
            and method
            not in (
                "token",
                "none",
            )
        ):
            raise ValueError(
                f"teacher {where!r} has a softmax head: it puts probability on tag sequences "
                "that break BIOES, which this CRF student forbids, so the "
                f"{method} KD loss is infinite; use an unconstrained CRF student (--arch "
                "student-crf-unconstrained) or --method token"
            )
        if method == "token" and info.head == "span":
            raise ValueError(
                f"token KD needs teacher emissions, but teacher {where!r} has a span head (use "
                "--method struct or posterior)"
            )


def prepare_distill(options: DistillOptions) -> PreparedRun:
    """Check the options against the teachers and the data, build (or reuse) the caches of
    teacher outputs, and build the (seeded) student of a ``distill`` run."""
    configure_runtime(options.num_threads)
    method = options.method
    # a fold teacher (train --folds) is one teacher of K fold taggers
    fold_models = read_fold_teachers(options.teachers, task=TASK)
    infos = []
    for directory, fold_model in zip(options.teachers, fold_models, strict=True):
        infos.extend([model_info(directory)] if fold_model is None else fold_infos(fold_model))
    weights = check_weights(options.teacher_weights, max(1, len(options.teachers)))
    targets_mode = teacher_targets(options, fold_models)
    for info in infos[1:]:
        if info.types != infos[0].types:
            raise ValueError(
                f"teachers have different label sets: {os.fspath(infos[0].directory)!r} has "
                f"{list(infos[0].types)}, {os.fspath(info.directory)!r} has {list(info.types)}"
            )
    train_source, dev, test = _sources(options)
    unlabeled = None
    if options.unlabeled is not None:
        unlabeled = load_text(options.unlabeled, role="unlabeled", keep_tags=False)
    labeled_sources = [s for s in (train_source, dev, test) if s is not None]
    if infos:
        types = list(infos[0].types)
        for source in labeled_sources:
            check_types(source, types, f"teacher {os.fspath(infos[0].directory)!r}")
    else:
        types = sorted({t for source in labeled_sources for t in source.types})
    config = tagger_config(options.arch, options.arch_overrides)
    kind = student_kind(config, options.arch)
    temperature = float(options.temperature)
    check_pairing(
        infos, method, kind, temperature, options.temperature_mode, config.crf_constraints
    )
    kd = KDSettings.of(options)
    spec = None
    if kd is not None:
        spec = TargetSpec(
            method,
            temperature=temperature,
            temperature_mode=options.temperature_mode,
            student_kind=kind,
            k=options.k,
        )

    # Parts: labeled training sentences, the unlabeled rest (--labeled-fraction), extra text.
    parts = []
    if options.labeled_fraction is not None:
        labeled, rest = split_labeled_fraction(train_source.sentences, options.labeled_fraction)
        parts.append(labeled_part("train", list(enumerate(labeled))))
        if rest and kd is not None:  # without KD, the unlabeled rest teaches nothing
            parts.append(Part("train", list(enumerate(rest, start=len(labeled))), labeled=False))
    else:
        parts.append(labeled_part("train", list(enumerate(train_source.sentences))))
    sources = {"train": train_source}
    if unlabeled is not None:
        sources["unlabeled"] = unlabeled
        parts.append(Part("unlabeled", list(enumerate(unlabeled.sentences)), labeled=False))

    # Teacher outputs, cached per (teacher, source); a fold teacher's per fold tagger.
    device = inference_device(options.accelerator)
    readers, caches = {}, []
    if spec is not None:
        for key, source in sources.items():
            directories: list[Any] = []
            for directory, fold_model in zip(options.teachers, fold_models, strict=True):
                if fold_model is not None:
                    entries, records = fold_target_entries(
                        fold_model,
                        source,
                        spec,
                        cache_dir(options.cache_dir),
                        out_of_fold=targets_mode == "out-of-fold",
                        device=device,
                        batch_size=options.eval_batch_size,
                        progress=options.progress,
                        plan=ShardPlan.for_distillation(options),
                    )
                    directories.append(entries)
                    caches.extend(records)
                    continue
                entry, built = ensure_targets(
                    directory,
                    source.sentences,
                    source.fingerprint,
                    spec,
                    cache_dir(options.cache_dir),
                    device=device,
                    batch_size=options.eval_batch_size,
                    progress=options.progress,
                    data_name=source.name,
                    plan=ShardPlan.for_distillation(options),  # torchrun ranks share the shards
                )
                assert entry is not None  # the plan finishes the entry
                directories.append(entry)
                caches.append(
                    {
                        "teacher": os.fspath(directory),
                        "data": source.name,
                        "path": os.fspath(entry),
                        "built": built,
                    }
                )
            readers[key] = TargetReader(directories, spec, weights.to(torch.float32))

    # every method's student gets the vocabulary of all the training text (the no-KD student's
    # too, although it trains on the labeled part only), so that one seed gives one initialization
    text = [*train_source.sentences, *(unlabeled.sentences if unlabeled is not None else [])]
    vocab = build_vocab(config, text, types, vocabulary_sources(options, dev, test))
    seed(options.seed)
    tagger = Tagger(config, vocab)
    extra = {
        "data": {
            "train": train_source.name,
            "n_train_sentences": len(train_source),
            "n_labeled": sum(len(p.items) for p in parts if p.labeled),
            "n_unlabeled": sum(len(p.items) for p in parts if not p.labeled),
            "unlabeled": None if unlabeled is None else unlabeled.name,
        },
        "distillation": {
            "method": method,
            "teachers": [os.fspath(Path(directory)) for directory in options.teachers],
            "teacher_weights": weights.tolist() if infos else [],
            "temperature": temperature,
            "temperature_mode": options.temperature_mode,
            "k": options.k,
            "kd_weight": options.kd_weight,
            "kd_weight_end": options.kd_weight_end,
            "kd_schedule": options.kd_schedule,
            "teacher_targets": targets_mode if kd is not None else None,
            "fold_teachers": [
                {"teacher": os.fspath(model.directory), "folds": model.k}
                for model in fold_models
                if model is not None
            ],
            "caches": caches,
        },
    }
    run = _run(
        options,
        "distill",
        tagger,
        train_source.scheme,
        parts,
        sources,
        dev,
        test,
        readers,
        kd,
        extra,
    )
    if kd is not None:
        seen = None
        if any(model is not None for model in fold_models):
            seen = {
                key: seen_by_folds((s.tokens for s in source.sentences), fold_models)
                for key, source in sources.items()
            }
        run.extra["target_diagnostics"] = _diagnostics(run, kd, seen, targets_mode)
    return run


def _diagnostics(
    run: PreparedRun, kd: KDSettings, seen: dict[str, Any] | None = None, mode: str = "in-fold"
) -> dict[str, Any]:
    """``target_diagnostics`` of every training part (see ``structkd.tasks.ner.diagnostics``),
    split by target kind with a fold teacher (``structkd.train.diagnostics.part_diagnostics``)."""

    def diagnose(part: Part, items: Sequence[tuple[int, Any]]) -> Any:
        return target_diagnostics(
            items,
            run.collators[part.source],
            run.target_readers[part.source],
            labeled=part.labeled,
            temperature=float(kd.temperature),
        )

    return part_diagnostics(run.train_parts, diagnose, seen, mode)
