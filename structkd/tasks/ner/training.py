"""NER training runs: the ``TrainingHooks`` of a tagger, and the preparation of ``train`` and
``distill`` runs (data, vocabulary, teacher-output caches, the seeded tagger) for the engine's
fit loop (``structkd.train.fit``)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
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
from structkd.tasks.ner.metrics import entity_counts, scores_from_counts
from structkd.tasks.ner.model import (
    build_vocab,
    check_types,
    load_tagger,
    model_info,
    save_tagger,
    tagger_config,
)
from structkd.tasks.ner.targets import KDTargets, TargetReader, TargetSpec, ensure_targets
from structkd.train.data import Part
from structkd.train.fit import PreparedRun
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


def prepare_train(options: TrainOptions) -> PreparedRun:
    """Read the data, build the vocabulary and the (seeded) tagger of a ``train`` run."""
    configure_runtime(options.num_threads)
    train_source, dev, test = _sources(options)
    config = tagger_config(options.arch, options.arch_overrides)
    labeled = [source for source in (train_source, dev, test) if source is not None]
    types = sorted({t for source in labeled for t in source.types})
    if not types:
        raise ValueError(f"train data {options.train!r} has no entities: nothing to learn")
    vocab = build_vocab(
        config, train_source.sentences, types, vocabulary_sources(options, dev, test)
    )
    seed(options.seed)
    tagger = Tagger(config, vocab)
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
        {"data": {"train": train_source.name, "n_train_sentences": len(train_source)}},
    )


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
    infos = [model_info(directory) for directory in options.teachers]
    weights = check_weights(options.teacher_weights, max(1, len(infos)))
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

    # Teacher outputs, cached per (teacher, source).
    device = inference_device(options.accelerator)
    readers, caches = {}, []
    if spec is not None:
        for key, source in sources.items():
            directories = []
            for directory in options.teachers:
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
                    plan=ShardPlan.from_environment(),  # torchrun ranks share the shards
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
            "teachers": [os.fspath(info.directory) for info in infos],
            "teacher_weights": weights.tolist() if infos else [],
            "temperature": temperature,
            "temperature_mode": options.temperature_mode,
            "k": options.k,
            "kd_weight": options.kd_weight,
            "kd_weight_end": options.kd_weight_end,
            "kd_schedule": options.kd_schedule,
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
        run.extra["target_diagnostics"] = _diagnostics(run, kd)
    return run


def _diagnostics(run: PreparedRun, kd: KDSettings) -> dict[str, Any]:
    """``target_diagnostics`` of every training part (see ``structkd.tasks.ner.diagnostics``)."""
    found = {}
    for part in run.train_parts:
        name = f"{part.source} ({'labeled' if part.labeled else 'unlabeled'})"
        found[name] = target_diagnostics(
            part.items,
            run.collators[part.source],
            run.target_readers[part.source],
            labeled=part.labeled,
            temperature=float(kd.temperature),
        )
    return found
