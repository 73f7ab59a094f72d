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

Unlabeled text (``distill --labeled-fraction F``, ``--unlabeled FILE``): the first ``F`` of the
training trees keep their trees (gold loss and KD), the rest become unparsed sentences
(``structkd.data.conllu_io.split_labeled_trees``: their trees are dropped as soon as they are
read, so none reaches the loss, the relations or the student's labels) that get the KD term only,
like the sentences of ``--unlabeled`` (CoNLL-U with UPOS, HEAD and DEPREL ``_``:
``structkd.tasks.dep.data.load_dep_text``). Teacher targets are computed for every training
sentence and every unlabeled one; the vocabulary (words, characters, UPOS) is built from all of
that text, the relations and the student's labels from the labeled trees only. Without KD the
student trains on the labeled trees only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from structkd.data.conllu_io import projective_subset, split_labeled_trees
from structkd.data.dep_batching import DepCollator, DepVocab
from structkd.data.dep_encodings import DepLabelScheme
from structkd.distill.bridges import check_weights
from structkd.models.parser import PROJECTIVE_MODES
from structkd.tasks.dep.data import DepSource, load_dep_source, load_dep_text
from structkd.tasks.dep.diagnostics import dep_target_diagnostics
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
    unlabeled: DepSource | None = None,
) -> tuple[DepSource, DepSource, DepSource | None, DepVocab, DepLabelScheme | None, dict]:
    """The training, dev and test trees, the vocabulary (dev and test words included), the
    student's label scheme (``None`` for a parser) and the ``metrics.json`` entries describing
    them. Projective parsers keep the projective training trees only. ``fold``: ``(assignment,
    k)``, fold parser ``k`` (``train_folds``): the training trees outside fold ``k``; the
    relations of every training tree (one relation list for all the fold parsers, so that their
    relation distributions mix) and the words of fold ``k`` (text the parser will read) join its
    vocabulary.

    ``options.labeled_fraction`` (distill): the training sentences after the first fraction lose
    their trees (``split_labeled_trees``; the returned source holds the labeled trees first, then
    those sentences with ``has_tree=False``). ``unlabeled``: the ``--unlabeled`` text. Their
    words, characters and UPOS join the vocabulary; the relations and the label scheme come from
    the labeled trees only."""
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
    trees = train_source.sentences
    fraction = getattr(options, "labeled_fraction", None)
    if fraction is not None:
        trees, rest = split_labeled_trees(train_source.sentences, fraction)
        train_source = DepSource(train_source.name, [*trees, *rest])
    relations = tuple(sorted({r for s in trees for r in s.relations}))
    if fold is not None:
        assignment, index = fold
        kept = [s for s in train_source.sentences if assignment.fold_of(s.words) != index]
        if not kept:
            raise ValueError(f"fold {index + 1} of {assignment.k} leaves no training tree")
        train_source = DepSource(train_source.name, kept)
        trees = kept
        extra["data"]["fold"] = {
            "fold": index + 1,
            "folds": assignment.k,
            "n_held_out": len(held),
            "train_fingerprint": train_source.fingerprint,
        }
        extra["data"]["n_train_sentences"] = len(kept)
    if fraction is not None or unlabeled is not None:
        extra["data"]["labeled_fraction"] = fraction
        extra["data"]["unlabeled"] = None if unlabeled is None else unlabeled.name
    vocabulary_text = [load_dep_source(spec, role="input") for spec in options.vocab_text]
    vocab = DepVocab.build(
        [*train_source.sentences, *(unlabeled.sentences if unlabeled is not None else [])],
        extra_words=[
            w
            for source in (dev, test, *vocabulary_text, DepSource("held out", held))
            if source
            for s in source.sentences
            for w in s.words
        ],
        relations=relations,
    )
    scheme = None
    if spec["kind"] == "student":
        scheme = DepLabelScheme.from_sentences(trees, encoding=spec["encoding"])
        extra["label_coverage_dev"] = scheme.coverage(dev.sentences)
    return train_source, dev, test, vocab, scheme, extra


class _TreeOrTextCollator:
    """The collator of a training source that holds trees and unparsed sentences
    (``has_tree=False``: the rest of ``--labeled-fraction``, ``--unlabeled`` text): a batch (of
    one part, so all of one kind) of trees gets the gold trees and labels, a batch of text is
    collated without reading any (``DepCollator(labeled=False)``)."""

    def __init__(self, vocab: DepVocab, scheme: DepLabelScheme | None):
        options = {"label_heads": False, "code_heads": False, "cache": True}
        self.trees = DepCollator(vocab, scheme, labeled=True, **options)
        self.text = DepCollator(vocab, scheme, labeled=False, **options)

    def __call__(self, items: list[tuple[int, Any]]) -> Any:
        kinds = {bool(getattr(sentence, "has_tree", True)) for _, sentence in items}
        if len(kinds) != 1:
            raise ValueError("a training batch mixes trees and unparsed sentences")
        return (self.trees if kinds.pop() else self.text)(items)


def _run(
    options: TrainOptions,
    command: str,
    model: torch.nn.Module,
    sources: dict[str, DepSource],
    dev: DepSource,
    test: DepSource | None,
    readers: dict[str, Any],
    kd: KDSettings | None,
    extra: dict[str, Any],
) -> PreparedRun:
    """The ``PreparedRun``; the training parts: the trees of ``sources["train"]`` (labeled), and
    with KD its unparsed sentences and those of ``sources["unlabeled"]`` (unlabeled: KD only)."""
    scheme = scheme_of(model)
    train = list(enumerate(sources["train"].sentences))
    parts = [Part("train", [item for item in train if item[1].has_tree], labeled=True)]
    if kd is not None:  # without KD, unparsed sentences teach nothing
        rest = [item for item in train if not item[1].has_tree]
        if rest:
            parts.append(Part("train", rest, labeled=False))
        if "unlabeled" in sources:
            parts.append(
                Part("unlabeled", list(enumerate(sources["unlabeled"].sentences)), labeled=False)
            )
    if command == "distill":  # the sentences trained on, with and without their trees
        extra["data"]["n_labeled"] = sum(len(p.items) for p in parts if p.labeled)
        extra["data"]["n_unlabeled"] = sum(len(p.items) for p in parts if not p.labeled)
    return PreparedRun(
        options=options,
        command=command,
        model=model,
        hooks=ParserHooks(arch=options.arch, dev=dev, test=test, options=options),
        train_parts=parts,
        dev_part=Part("dev", list(enumerate(dev.sentences)), labeled=True),
        collators={
            # cached: each epoch collates the same sentences again
            **{key: _TreeOrTextCollator(model.vocab, scheme) for key in sources},
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
    return _run(options, "train", model, {"train": train_source}, dev, test, {}, None, extra)


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


def _teacher_entry(
    options: DistillOptions,
    teacher: str,
    fold_model: FoldModel | None,
    source: DepSource,
    scheme: DepLabelScheme,
    targets_mode: str,
) -> tuple[Any, dict[str, Any]]:
    """The cache entry (or a fold teacher's ``FoldEntries``) of ``teacher``'s label
    distributions on ``source``, built if missing, and its ``metrics.json`` record."""
    device = inference_device(options.accelerator)
    if fold_model is not None:
        fold_entries, caches = fold_target_entries(
            fold_model,
            source,
            scheme,
            method=options.method,
            temperature=options.temperature,
            cache_dir=cache_dir(options.cache_dir),
            out_of_fold=targets_mode == "out-of-fold",
            device=device,
            batch_size=options.eval_batch_size,
            plan=ShardPlan.from_environment(),
        )
        return fold_entries, {
            "teacher": os.fspath(teacher),
            "folds": fold_model.k,
            "caches": caches,
            "mean_lost_mass": given_lost_mass(fold_entries, source.lengths),
        }
    directory, built = ensure_dep_targets(
        teacher,
        source,
        scheme,
        method=options.method,
        temperature=options.temperature,
        cache_dir=cache_dir(options.cache_dir),
        device=device,
        batch_size=options.eval_batch_size,
        plan=ShardPlan.from_environment(),  # torchrun ranks share the shards
    )
    assert directory is not None  # the plan finishes the entry
    return directory, {
        "teacher": os.fspath(teacher),
        "cache": os.fspath(directory),
        "built": built,
        "mean_lost_mass": read_meta(directory)["mean_lost_mass"],
    }


def prepare_distill(options: DistillOptions) -> PreparedRun:
    """A sequence-labeling student from one parser teacher or an ensemble. Teacher label
    distributions are computed once per (teacher, data, labels, method, temperature) and cached;
    ``metrics.json`` records the mass each teacher put on heads the student's labels cannot
    express (``teacher_lost_mass``, on the training sentences). A fold teacher (``train
    --folds``) gives each training sentence of its fold parsers the targets of the one that did
    not see it (``out-of-fold``, its default) or the mixture of the K (``in-fold``), any other
    sentence the mixture (``structkd.tasks.dep.folds.fold_target_entries``); ``metrics.json``
    records ``teacher_targets``. ``labeled_fraction`` and ``unlabeled``: unparsed training
    sentences and text that get the KD term only (the module docstring). With KD,
    ``metrics.json`` also records ``target_diagnostics`` per training part
    (``structkd.tasks.dep.diagnostics``; split by target kind with a fold teacher)."""
    spec = architecture(options.arch)
    if spec["kind"] != "student":
        raise ValueError(f"distill trains a student-dep-* architecture; got {options.arch!r}")
    configure_runtime(options.num_threads)
    fold_models = read_fold_teachers(options.teachers, task=TASK)
    targets_mode = teacher_targets(options, fold_models)
    config = model_config(options.arch, options.arch_overrides)
    unlabeled = None
    if options.unlabeled is not None:
        unlabeled = load_dep_text(options.unlabeled, role="unlabeled")
    train_source, dev, test, vocab, scheme, extra = _prepare_data(
        options, spec, config, unlabeled=unlabeled
    )
    assert scheme is not None
    sources = {"train": train_source}
    if unlabeled is not None:
        sources["unlabeled"] = unlabeled
    readers: dict[str, Any] = {}
    kd = KDSettings.of(options)
    if kd is not None:
        raw = options.teacher_weights or [1.0] * len(options.teachers)
        if len(raw) != len(options.teachers) or any(w < 0 for w in raw) or not sum(raw):
            raise ValueError("--teacher-weights: one non-negative weight per teacher, not all 0")
        weights = check_weights(torch.tensor(raw, dtype=torch.float64) / sum(raw), len(raw))
        report = []
        entries: dict[str, list[Any]] = {key: [] for key in sources}
        for teacher, fold_model in zip(options.teachers, fold_models, strict=True):
            found = {
                key: _teacher_entry(options, teacher, fold_model, source, scheme, targets_mode)
                for key, source in sources.items()
            }
            for key, (entry, _) in found.items():
                entries[key].append(entry)
            record = found["train"][1]
            if unlabeled is not None:
                record["unlabeled"] = found["unlabeled"][1]
            report.append(record)
        for key in sources:
            readers[key] = DepTargetReader(entries[key], weights.float())
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
    run = _run(options, "distill", model, sources, dev, test, readers, kd, extra)
    if kd is not None:
        seen = None
        if any(fold is not None for fold in fold_models):
            seen = {
                key: seen_by_folds((s.words for s in source.sentences), fold_models)
                for key, source in sources.items()
            }
        run.extra["target_diagnostics"] = _diagnostics(run, seen, targets_mode)
    return run


def _diagnostics(
    run: PreparedRun, seen: dict[str, Any] | None = None, mode: str = "in-fold"
) -> dict[str, Any]:
    """``target_diagnostics`` of every training part (``structkd.tasks.dep.diagnostics``), split
    by target kind with a fold teacher (``structkd.train.diagnostics.part_diagnostics``)."""

    def diagnose(part: Part, items: Sequence[tuple[int, Any]]) -> dict[str, Any]:
        return dep_target_diagnostics(
            items,
            run.collators[part.source],
            run.target_readers[part.source],
            labeled=part.labeled,
        )

    return part_diagnostics(run.train_parts, diagnose, seen, mode)
