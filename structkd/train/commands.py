"""The NER commands, for the command line and for programs: ``train``, ``distill``, ``evaluate``,
``predict``, each configured by a typed options dataclass or keyword arguments.

    train(TrainOptions(train="conll03-en:train", dev="conll03-en:dev", out="models/teacher"))
    distill(DistillOptions(train=..., dev=..., out=..., teachers=["models/teacher"]))
    evaluate("models/student", "conll03-en:test")  ->  {"precision", "recall", "f1", ...}
    predict("models/student", "sentences.txt", "tagged.conll")

Importing this module is cheap (no torch, no Lightning): the work is imported when a command runs,
so that ``structkd --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "KD_METHODS",
    "DistillOptions",
    "PreparedRun",
    "TrainOptions",
    "add_commands",
    "build_lightning",
    "distill",
    "evaluate",
    "evaluate_tagger",
    "fit",
    "predict",
    "prepare_distill",
    "prepare_train",
    "train",
]

KD_METHODS = ("struct", "token", "topk", "topwk", "posterior", "none")
TASKS = ("ner", "dep")


@dataclass
class TrainOptions:
    """Options of ``train`` (a tagger on gold tags; a teacher, or a student without KD).

    Data (``train``, ``dev``, ``test``): a registered data set name (``conll03-en:train``) or a
    CoNLL file. ``out``: the model directory written (``model.pt``, ``config.json``,
    ``metrics.json``). ``arch``: a name of ``structkd.models.ARCHITECTURES``, changed by
    ``arch_overrides`` (``{"lstm_hidden": 32, "glove": False}``). Model selection is on dev F1;
    ``patience``: stop after that many epochs without a better dev F1 (``None``: never).
    ``max_train_sentences``: use only the first N training sentences (quick runs);
    ``max_steps``: stop after that many optimizer steps. ``devices``, ``strategy``,
    ``accelerator``: Lightning's (``devices=2, strategy="ddp"`` trains in two processes).
    ``num_threads``: torch CPU threads per process (default 1: one CPU, which is also the fastest
    for these small models, whose matrix products are too small to gain from more threads;
    ``None``: torch's default). ``cache_dir``: where teacher
    outputs and transformer features are cached (default ``$STRUCTKD_CACHE_DIR`` or
    ``~/.cache/structkd``). ``progress``: progress bars.
    """

    train: str
    dev: str
    out: str
    test: str | None = None
    task: str = "ner"
    arch: str = "teacher-crf"
    arch_overrides: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 2e-3
    seed: int = 0
    devices: int | str = 1
    strategy: str = "auto"
    accelerator: str = "cpu"
    patience: int | None = 5
    max_train_sentences: int | None = None
    max_steps: int | None = None
    num_threads: int | None = 1
    cache_dir: str | None = None
    gradient_clip: float | None = 5.0
    eval_batch_size: int = 64
    progress: bool = True


@dataclass
class DistillOptions(TrainOptions):
    """Options of ``distill``: those of ``TrainOptions`` (``arch`` defaults to ``student-crf``)
    and the distillation.

    ``teachers``: model directories (one, or an ensemble mixed with ``teacher_weights``, default
    uniform). ``method``: ``struct`` (structural KD, exact), ``token``, ``topk``, ``topwk``,
    ``posterior`` or ``none`` (gold only). ``temperature`` ``T`` and ``temperature_mode``
    (``global`` or ``local``; struct only). ``k``: structures of top-k methods. The KD weight
    ``lambda`` on labeled batches starts at ``kd_weight`` and follows ``kd_schedule``
    (``linear`` to ``kd_weight_end``, or ``constant``); the KD term is multiplied by ``T^2``;
    unlabeled sentences contribute the KD term only. ``unlabeled``: extra unlabeled text (a data
    set, a CoNLL file or one tokenized sentence per line); ``labeled_fraction``: keep the tags of
    only the first fraction of the training sentences (the rest become unlabeled).
    """

    arch: str = "student-crf"
    teachers: list[str] = field(default_factory=list)
    teacher_weights: list[float] | None = None
    method: str = "struct"
    temperature: float = 1.0
    temperature_mode: str = "global"
    k: int = 5
    kd_weight: float = 1.0
    kd_weight_end: float = 0.0
    kd_schedule: str = "linear"
    unlabeled: str | None = None
    labeled_fraction: float | None = None


# ---------------------------------------------------------------------------------------------
# Shared set-up


def _positive_int(value: Any, name: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}")


def _check_options(options: TrainOptions) -> None:
    if options.task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {options.task!r}")
    for name in ("epochs", "batch_size", "eval_batch_size"):
        _positive_int(getattr(options, name), name)
    for name in ("patience", "max_train_sentences", "max_steps", "num_threads"):
        _positive_int(getattr(options, name), name, allow_none=True)
    if not (isinstance(options.learning_rate, int | float) and options.learning_rate > 0):
        raise ValueError(f"learning_rate must be > 0; got {options.learning_rate!r}")
    if not isinstance(options.arch_overrides, dict):
        raise ValueError("arch_overrides must be a dict of TaggerConfig fields")


def _configure_runtime(options: TrainOptions) -> None:
    """Torch threads and quiet Lightning logs."""
    import torch

    if options.num_threads is not None:
        torch.set_num_threads(options.num_threads)
    _quiet_lightning()


def _quiet_lightning() -> None:
    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from lightning.fabric.utilities.warnings import PossibleUserWarning

        warnings.filterwarnings("ignore", category=PossibleUserWarning)
    except ImportError:  # pragma: no cover
        pass
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")


def _seed(seed: int) -> None:
    import lightning.pytorch as pl

    pl.seed_everything(seed, workers=True, verbose=False)


def _inference_device(accelerator: str) -> str:
    """Where a command runs models outside the Trainer (caches, final evaluation)."""
    import torch

    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    if accelerator == "mps":
        return "mps"
    return "cpu"


def _cache_dir(options: TrainOptions) -> Path:
    from structkd.train.cache import default_cache_dir

    return Path(options.cache_dir) if options.cache_dir else default_cache_dir()


def _tagger_config(arch: str, overrides: dict[str, Any]) -> Any:
    from structkd.models.tagger import architecture

    try:
        return architecture(arch, **overrides)
    except TypeError as error:  # an unknown field name
        raise ValueError(f"bad --arch-override for {arch!r}: {error}") from None


def _build_vocab(config: Any, sentences: Sequence[Any], types: Sequence[str], extra: Any) -> Any:
    from structkd.data.batching import TaggingVocab

    if config.glove:
        from structkd.models.embeddings import glove_vocabulary

        extra_words = [token for source in extra for s in source.sentences for token in s.tokens]
        return TaggingVocab.build(
            sentences, types=types, known_words=glove_vocabulary(), extra_words=extra_words
        )
    return TaggingVocab.build(sentences, types=types)


def _check_types(source: Any, types: Sequence[str], owner: str) -> None:
    unknown = sorted(set(source.types) - set(types))
    if unknown:
        raise ValueError(
            f"data {source.name!r} has entity types {unknown} that {owner} does not know "
            f"(its label set is {sorted(types)})"
        )


# ---------------------------------------------------------------------------------------------
# Evaluation of a tagger on sentences


def evaluate_tagger(
    tagger: Any,
    source: Any,
    collator: Any,
    *,
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, Any]:
    """Entity scores of ``tagger`` on the labeled ``source`` (seqeval, strict, BIOES; gold converted
    exactly from its own scheme) and its speed: ``sentences_per_second`` over collation, forward
    and decoding of length-sorted batches of ``batch_size``."""
    import torch

    from structkd.data.batching import length_sorted_batches
    from structkd.data.tag_schemes import convert_tags, label_indices_to_tags
    from structkd.train.metrics import seqeval_scores

    _check_types(source, tagger.vocab.types, "the model")
    sentences = source.sentences
    unlabeled = [sentence.without_tags() for sentence in sentences]
    predictions: list[list[int]] = [[] for _ in sentences]
    was_training = tagger.training
    tagger.eval()
    started = time.perf_counter()
    with torch.inference_mode():
        for indices in length_sorted_batches(source.lengths, batch_size):
            batch = collator([(index, unlabeled[index]) for index in indices]).to(device)
            predicted = tagger.decode(batch).cpu().tolist()
            for row, index in zip(predicted, indices, strict=True):
                predictions[index] = row[: len(sentences[index])]
    seconds = time.perf_counter() - started
    tagger.train(was_training)
    types = list(tagger.vocab.types)
    gold = [convert_tags(s.tags, source.scheme, "bioes") for s in sentences]
    predicted_tags = [label_indices_to_tags(row, types, "bioes") for row in predictions]
    scores = seqeval_scores(gold, predicted_tags, types)
    return {
        **scores,
        "n_sentences": len(sentences),
        "n_tokens": sum(source.lengths),
        "seconds": seconds,
        "sentences_per_second": len(sentences) / seconds if seconds > 0 else float("inf"),
    }


# ---------------------------------------------------------------------------------------------
# Fitting


@dataclass
class PreparedRun:
    """Everything a training run needs, before Lightning: what ``prepare_train`` and
    ``prepare_distill`` build and ``fit`` runs (tests and tools may inspect or change it).

    ``sources``: training sources by key (``"train"``, ``"unlabeled"``); ``train_parts``: the
    labeled and unlabeled parts sampled from them; ``target_readers``: cached teacher outputs by
    source key (distillation); ``kd``: the KD settings (``None``: gold only); ``extra``: entries
    added to ``metrics.json``.
    """

    options: TrainOptions
    command: str
    tagger: Any
    tag_scheme: str
    train_parts: list[Any]
    sources: dict[str, Any]
    target_readers: dict[str, Any]
    dev: Any
    test: Any | None
    kd: Any | None
    extra: dict[str, Any]


def build_lightning(run: PreparedRun) -> tuple[Any, Any]:
    """The ``(TaggerModule, TaggerDataModule)`` of a prepared run (collators with cached
    transformer features, built if missing)."""
    from structkd.train.cache import make_collator
    from structkd.train.data import Part, StepCollator
    from structkd.train.module import TaggerDataModule, TaggerModule

    options, tagger = run.options, run.tagger
    cache_dir = _cache_dir(options)
    device = _inference_device(options.accelerator)
    collators = {
        key: make_collator(
            tagger.config,
            tagger,
            tagger.vocab,
            source.sentences,
            source.fingerprint,
            cache_dir,
            device=device,
            progress=options.progress,
        )
        for key, source in {**run.sources, "dev": run.dev}.items()
    }
    dev_part = Part("dev", list(enumerate(run.dev.sentences)), labeled=True)
    datamodule = TaggerDataModule(
        run.train_parts,
        StepCollator(run.train_parts, collators, run.target_readers),
        dev_part,
        StepCollator([dev_part], collators),
        batch_size=options.batch_size,
        eval_batch_size=options.eval_batch_size,
        seed=options.seed,
    )
    module = TaggerModule(tagger, learning_rate=options.learning_rate, kd=run.kd)
    return module, datamodule


def fit(run: PreparedRun) -> dict[str, Any]:
    """Run the Trainer, keep the best model (by dev F1) in ``options.out``, evaluate it on dev and
    test, write ``metrics.json``; returns the metrics plus ``model_dir`` (on DDP processes other
    than rank 0: only ``{"global_rank"}``)."""
    from lightning.pytorch.callbacks import EarlyStopping

    from structkd.train.checkpoint import save_tagger
    from structkd.train.module import BestModelSaver

    options = run.options
    module, datamodule = build_lightning(run)
    out = Path(options.out)
    saver = BestModelSaver(
        lambda model: save_tagger(out, model, arch=options.arch, tag_scheme=run.tag_scheme)
    )
    callbacks: list[Any] = [saver]
    if options.patience is not None:
        callbacks.append(EarlyStopping(monitor="dev_f1", mode="max", patience=options.patience))
    trainer = make_trainer(options, callbacks)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    training_seconds = time.perf_counter() - started
    return _finish_fit(run, module, trainer, saver, training_seconds)


def make_trainer(options: TrainOptions, callbacks: list[Any]) -> Any:
    """The Lightning ``Trainer`` of a training run (no logger or Lightning checkpoints: the best
    model is kept by ``BestModelSaver``; batches are sharded by our own sampler)."""
    import lightning.pytorch as pl

    return pl.Trainer(
        max_epochs=options.epochs,
        max_steps=-1 if options.max_steps is None else options.max_steps,
        accelerator=options.accelerator,
        devices=options.devices,
        strategy=options.strategy,
        deterministic=True if options.accelerator == "cpu" else None,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=options.progress,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        gradient_clip_val=options.gradient_clip,
        callbacks=callbacks,
    )


def _finish_fit(
    run: PreparedRun, module: Any, trainer: Any, saver: Any, training_seconds: float
) -> dict[str, Any]:
    from structkd.train.cache import make_collator
    from structkd.train.checkpoint import METRICS_FILE, load_tagger, save_tagger, write_json

    options = run.options
    cache_dir = _cache_dir(options)
    device = _inference_device(options.accelerator)
    out = Path(options.out)
    if not trainer.is_global_zero:
        return {"global_rank": trainer.global_rank}
    if saver.best_epoch is None:  # stopped before any validation: keep the last model
        save_tagger(out, run.tagger, arch=options.arch, tag_scheme=run.tag_scheme)
    best, info = load_tagger(out, device=device)
    # Final scores with transformer features computed on the fly, so that the speed is honest.
    evaluations = {}
    for name, source in (("dev", run.dev), ("test", run.test)):
        if source is None:
            continue
        collator = make_collator(
            info.config,
            best,
            info.vocab,
            source.sentences,
            source.fingerprint,
            cache_dir,
            device=device,
            cached_features=False,
        )
        evaluations[name] = {
            "data": source.name,
            **evaluate_tagger(
                best, source, collator, batch_size=options.eval_batch_size, device=device
            ),
        }
    metrics = {
        "command": run.command,
        "task": options.task,
        "arch": options.arch,
        "config": info.config.to_dict(),
        "types": list(info.types),
        "best_epoch": saver.best_epoch,
        "epochs_run": len(module.history),
        "optimizer_steps": trainer.global_step,
        "world_size": trainer.world_size,
        "dev": evaluations["dev"],
        "test": evaluations.get("test"),
        "n_parameters": best.n_parameters(),
        "sentences_per_second": evaluations["dev"]["sentences_per_second"],
        "training_seconds": training_seconds,
        "history": module.history,
        **run.extra,
        "options": dataclasses.asdict(options),
    }
    write_json(out / METRICS_FILE, metrics)
    return {**metrics, "model_dir": os.fspath(out)}


# ---------------------------------------------------------------------------------------------
# train


def prepare_train(options: TrainOptions) -> PreparedRun:
    """Read the data, build the vocabulary and the (seeded) tagger of a ``train`` run."""
    _check_options(options)
    _configure_runtime(options)
    from structkd.models.tagger import Tagger
    from structkd.train.data import Part, load_labeled

    train_source = load_labeled(
        options.train, role="train", max_sentences=options.max_train_sentences
    )
    dev = load_labeled(options.dev, role="dev")
    test = None if options.test is None else load_labeled(options.test, role="test")
    config = _tagger_config(options.arch, options.arch_overrides)
    labeled = [source for source in (train_source, dev, test) if source is not None]
    types = sorted({t for source in labeled for t in source.types})
    if not types:
        raise ValueError(f"train data {options.train!r} has no entities: nothing to learn")
    vocab = _build_vocab(config, train_source.sentences, types, [dev, *([test] if test else [])])
    _seed(options.seed)
    tagger = Tagger(config, vocab)
    return PreparedRun(
        options=options,
        command="train",
        tagger=tagger,
        tag_scheme=train_source.scheme or "iob2",
        train_parts=[Part("train", list(enumerate(train_source.sentences)), labeled=True)],
        sources={"train": train_source},
        target_readers={},
        dev=dev,
        test=test,
        kd=None,
        extra={"data": {"train": train_source.name, "n_train_sentences": len(train_source)}},
    )


def train(options: TrainOptions) -> dict[str, Any]:
    """Train a tagger on gold tags; model selection on dev F1. Writes ``options.out`` and returns
    the metrics written to ``metrics.json`` (plus ``model_dir``)."""
    if options.task == "dep":
        from structkd.train.dep import train_dep

        return train_dep(options)
    return fit(prepare_train(options))


# ---------------------------------------------------------------------------------------------
# distill


def _student_kind(config: Any, arch: str) -> str:
    if config.head == "crf":
        return "crf"
    if config.head == "softmax":
        return "factorized"
    raise ValueError(
        f"the student --arch {arch!r} has a {config.head!r} head; a student must have a 'crf' or "
        "'softmax' head"
    )


def _check_distill_options(options: DistillOptions) -> None:
    _check_options(options)
    method = options.method
    if method not in KD_METHODS:
        raise ValueError(f"method must be one of {', '.join(KD_METHODS)}; got {method!r}")
    if method != "none" and not options.teachers:
        raise ValueError(f"--method {method} needs at least one --teacher")
    if options.temperature_mode == "local" and method not in ("struct", "none"):
        raise ValueError(
            "temperature_mode='local' applies to --method struct only (the baselines temper "
            "both distributions globally)"
        )
    if options.unlabeled is not None and method == "none":
        raise ValueError(
            "--unlabeled needs a KD method: unlabeled sentences contribute only the KD term"
        )


def _check_pairing(
    infos: Sequence[Any],
    method: str,
    student_kind: str,
    temperature: float,
    temperature_mode: str,
    crf_constraints: bool = True,
) -> None:
    """Refuse teacher/student/method combinations whose loss is undefined or infinite."""
    if method == "struct" and temperature_mode == "local" and student_kind == "crf":
        if temperature != 1.0:
            raise ValueError(
                "temperature_mode='local' with T != 1 is not defined for a CRF student (its "
                "tempered token and pair targets are inconsistent); use --temperature-mode "
                "global or a softmax student"
            )
    for info in infos:
        where = os.fspath(info.directory)
        if (
            student_kind == "crf"
            and crf_constraints
            and info.head == "softmax"
            and method not in ("token", "none")
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
    _check_distill_options(options)
    _configure_runtime(options)
    import torch

    from structkd.data.conll import split_labeled_fraction
    from structkd.distill.bridges import check_weights
    from structkd.models.tagger import Tagger
    from structkd.train.cache import TargetReader, TargetSpec, ensure_targets
    from structkd.train.checkpoint import model_info
    from structkd.train.data import Part, load_labeled, load_text
    from structkd.train.module import KDSettings

    method = options.method
    infos = [model_info(directory) for directory in options.teachers]
    weights = check_weights(options.teacher_weights, max(1, len(infos)))
    for info in infos[1:]:
        if info.types != infos[0].types:
            raise ValueError(
                f"teachers have different label sets: {os.fspath(infos[0].directory)!r} has "
                f"{list(infos[0].types)}, {os.fspath(info.directory)!r} has {list(info.types)}"
            )
    train_source = load_labeled(
        options.train, role="train", max_sentences=options.max_train_sentences
    )
    dev = load_labeled(options.dev, role="dev")
    test = None if options.test is None else load_labeled(options.test, role="test")
    unlabeled = None
    if options.unlabeled is not None:
        unlabeled = load_text(options.unlabeled, role="unlabeled", keep_tags=False)
    labeled_sources = [s for s in (train_source, dev, test) if s is not None]
    if infos:
        types = list(infos[0].types)
        for source in labeled_sources:
            _check_types(source, types, f"teacher {os.fspath(infos[0].directory)!r}")
    else:
        types = sorted({t for source in labeled_sources for t in source.types})
    config = _tagger_config(options.arch, options.arch_overrides)
    student_kind = _student_kind(config, options.arch)
    temperature = float(options.temperature)
    _check_pairing(
        infos, method, student_kind, temperature, options.temperature_mode, config.crf_constraints
    )
    spec = kd = None
    if method != "none":
        spec = TargetSpec(
            method,
            temperature=temperature,
            temperature_mode=options.temperature_mode,
            student_kind=student_kind,
            k=options.k,
        )
        kd = KDSettings(
            method,
            temperature=temperature,
            temperature_mode=options.temperature_mode,
            kd_weight=float(options.kd_weight),
            kd_weight_end=float(options.kd_weight_end),
            schedule=options.kd_schedule,
        )

    # Parts: labeled training sentences, the unlabeled rest (--labeled-fraction), extra text.
    parts = []
    if options.labeled_fraction is not None:
        labeled, rest = split_labeled_fraction(train_source.sentences, options.labeled_fraction)
        parts.append(Part("train", list(enumerate(labeled)), labeled=True))
        if rest and method != "none":  # without KD, the unlabeled rest teaches nothing
            parts.append(Part("train", list(enumerate(rest, start=len(labeled))), labeled=False))
    else:
        parts.append(Part("train", list(enumerate(train_source.sentences)), labeled=True))
    sources = {"train": train_source}
    if unlabeled is not None:
        sources["unlabeled"] = unlabeled
        parts.append(Part("unlabeled", list(enumerate(unlabeled.sentences)), labeled=False))

    # Teacher outputs, cached per (teacher, source).
    cache_dir = _cache_dir(options)
    device = _inference_device(options.accelerator)
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
                    cache_dir,
                    device=device,
                    batch_size=options.eval_batch_size,
                    progress=options.progress,
                    data_name=source.name,
                )
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

    student_sentences = [s for part in parts for _, s in part.items]
    vocab = _build_vocab(config, student_sentences, types, [dev, *([test] if test else [])])
    _seed(options.seed)
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
    return PreparedRun(
        options=options,
        command="distill",
        tagger=tagger,
        tag_scheme=train_source.scheme or "iob2",
        train_parts=parts,
        sources=sources,
        target_readers=readers,
        dev=dev,
        test=test,
        kd=kd,
        extra=extra,
    )


def distill(options: DistillOptions) -> dict[str, Any]:
    """Train a student from one teacher or an ensemble (see ``DistillOptions``). Teacher outputs
    are computed once per (teacher, data, method options) and cached under ``cache_dir``; a rerun
    reuses them. Writes ``options.out`` and returns the metrics (plus ``model_dir``); the
    ``distillation`` entry records the caches used and whether this run built them."""
    if options.task == "dep":
        from structkd.train.dep import distill_dep

        return distill_dep(options)
    return fit(prepare_distill(options))


# ---------------------------------------------------------------------------------------------
# evaluate and predict


def evaluate(
    model_dir: str | os.PathLike[str],
    data: str,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    num_threads: int | None = None,
    max_sentences: int | None = None,
    include_punct: bool = False,
) -> dict[str, Any]:
    """Entity-level ``precision``, ``recall``, ``f1`` and ``per_type`` scores of the NER model in
    ``model_dir`` on the labeled ``data`` (a data set name or a CoNLL file), with
    ``sentences_per_second`` (transformer features computed on the fly, as in real use). For a
    dependency model (``--task dep``): UAS, LAS (punctuation excluded unless ``include_punct``)
    and the rate of well-formed trees before repair, on a treebank or CoNLL-U file."""
    _positive_int(batch_size, "batch_size")
    _positive_int(num_threads, "num_threads", allow_none=True)
    import torch

    from structkd.train.checkpoint import model_task

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    if model_task(model_dir) == "dep":
        from structkd.train.dep import evaluate_dep

        return evaluate_dep(
            model_dir,
            data,
            batch_size=batch_size,
            device=device,
            include_punct=include_punct,
            max_sentences=max_sentences,
        )

    from structkd.train.cache import default_cache_dir, make_collator
    from structkd.train.checkpoint import load_tagger
    from structkd.train.data import load_labeled

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    tagger, info = load_tagger(model_dir, device=device)
    source = load_labeled(data, role="evaluation", max_sentences=max_sentences)
    collator = make_collator(
        info.config,
        tagger,
        info.vocab,
        source.sentences,
        source.fingerprint,
        default_cache_dir(),
        device=device,
        cached_features=False,
    )
    scores = evaluate_tagger(tagger, source, collator, batch_size=batch_size, device=device)
    return {"model": os.fspath(model_dir), "data": data, **scores}


def predict(
    model_dir: str | os.PathLike[str],
    input: str | os.PathLike[str],
    output: str | os.PathLike[str] | TextIO | None = None,
    *,
    input_format: str = "auto",
    scheme: str = "bioes",
    batch_size: int = 64,
    device: str = "cpu",
) -> int:
    """Tag ``input`` (a CoNLL file, tokenized text with one sentence per line, a data set name, or
    ``"-"`` for standard input) and write CoNLL to ``output`` (a path, a stream, or standard
    output for ``None``/``"-"``): ``word [gold] predicted probability``, the probability being
    the marginal probability of the predicted tag at that token under the model's distribution
    (forward-backward for a CRF, not a softmax of Viterbi scores).

    ``scheme``: ``"bioes"`` (the model's own labels) or ``"iob2"`` (each BIOES label mapped to
    its IOB2 tag: ``B``/``S`` -> ``B``, ``I``/``E`` -> ``I``; the probability is then the sum of
    the marginals of the BIOES labels with that IOB2 tag, the exact marginal of the IOB2 tag).
    Returns the number of sentences written.
    """
    _positive_int(batch_size, "batch_size")
    if scheme not in ("bioes", "iob2"):
        raise ValueError(f"scheme must be 'bioes' or 'iob2'; got {scheme!r}")
    import torch

    from structkd.train.checkpoint import model_task

    if model_task(model_dir) == "dep":
        from structkd.train.dep import predict_dep

        return predict_dep(model_dir, input, output, batch_size=batch_size, device=device)

    from structkd.data.batching import length_sorted_batches
    from structkd.data.conll import write_conll
    from structkd.structures.semimarkov import SemiMarkovSpans
    from structkd.train.cache import default_cache_dir, make_collator
    from structkd.train.checkpoint import load_tagger
    from structkd.train.data import load_text

    tagger, info = load_tagger(model_dir, device=device)
    source = load_text(input, role="input", file_format=input_format, keep_tags=True)
    sentences = source.sentences
    unlabeled = [sentence.without_tags() for sentence in sentences]
    collator = make_collator(
        info.config,
        tagger,
        info.vocab,
        unlabeled,
        source.fingerprint,
        default_cache_dir(),
        device=device,
        cached_features=False,
    )
    labels = list(info.vocab.labels)
    names, to_output = labels, torch.eye(len(labels))
    if scheme == "iob2":
        names = ["O"] + [f"{p}-{t}" for t in info.types for p in "BI"]
        mapped = {"O": "O", "B": "B", "S": "B", "I": "I", "E": "I"}
        to_output = torch.zeros(len(labels), len(names))
        for index, label in enumerate(labels):
            tag = "O" if label == "O" else f"{mapped[label[0]]}{label[1:]}"
            to_output[index, names.index(tag)] = 1.0
    to_output = to_output.to(device)
    predictions: list[list[str]] = [[] for _ in sentences]
    probabilities: list[list[float]] = [[] for _ in sentences]
    with torch.inference_mode():
        for indices in length_sorted_batches(source.lengths, batch_size):
            batch = collator([(index, unlabeled[index]) for index in indices]).to(device)
            distribution = tagger(batch)
            best = distribution.argmax
            if isinstance(distribution, SemiMarkovSpans):
                marginals = distribution.bioes_marginals
            else:
                marginals = distribution.marginals
            output_marginals = marginals.to(to_output) @ to_output  # [B, N, L_out]
            output_best = to_output.argmax(-1)[best.clamp(min=0)]  # [B, N]
            best_probability = output_marginals.gather(-1, output_best.unsqueeze(-1))[..., 0]
            for row, index in enumerate(indices):
                length = len(sentences[index])
                predictions[index] = [names[i] for i in output_best[row, :length].tolist()]
                probabilities[index] = [
                    min(1.0, max(0.0, p)) for p in best_probability[row, :length].tolist()
                ]
    if output is None or output == "-":
        write_conll(sys.stdout, sentences, predictions, probabilities)
        sys.stdout.flush()
    else:
        write_conll(output, sentences, predictions, probabilities)
    return len(sentences)


# ---------------------------------------------------------------------------------------------
# Command line


def _override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _devices(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _add_training_arguments(parser: argparse.ArgumentParser, default_arch: str) -> None:
    parser.add_argument(
        "--task",
        default="ner",
        choices=TASKS,
        help="ner (CoNLL column files) or dep (dependency parsing on CoNLL-U treebanks)",
    )
    parser.add_argument("--train", required=True, help="training data: a data set name or file")
    parser.add_argument("--dev", required=True, help="dev data, for model selection by F1")
    parser.add_argument("--test", help="test data, scored with the best model")
    parser.add_argument("--out", required=True, help="the model directory to write")
    parser.add_argument(
        "--arch",
        help=f"architecture (default {default_arch}; for --task dep: parser-head-selection "
        "to train, student-dep-offset to distill)",
    )
    parser.add_argument(
        "--arch-override",
        action="append",
        type=_override,
        default=[],
        metavar="KEY=VALUE",
        help="change one TaggerConfig field, VALUE read as JSON; repeatable (e.g. glove=false)",
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patience", type=int, default=5, help="epochs without a better dev F1")
    parser.add_argument("--no-early-stopping", action="store_true", help="ignore --patience")
    parser.add_argument("--max-train-sentences", type=int, help="use the first N sentences only")
    parser.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    parser.add_argument("--devices", type=_devices, default=1, help="Lightning devices (int/auto)")
    parser.add_argument("--strategy", default="auto", help="Lightning strategy (e.g. ddp)")
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator (cpu/gpu/auto)")
    parser.add_argument(
        "--num-threads", type=int, default=1, help="torch CPU threads per process (default 1)"
    )
    parser.add_argument("--cache-dir", help="cache of teacher outputs and transformer features")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _training_fields(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "train": args.train,
        "dev": args.dev,
        "test": args.test,
        "out": args.out,
        "task": args.task,
        "arch": args.arch or _default_arch(args),
        "arch_overrides": dict(args.arch_override),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "patience": None if args.no_early_stopping else args.patience,
        "max_train_sentences": args.max_train_sentences,
        "max_steps": args.max_steps,
        "devices": args.devices,
        "strategy": args.strategy,
        "accelerator": args.accelerator,
        "num_threads": args.num_threads,
        "cache_dir": args.cache_dir,
        "progress": not args.no_progress,
    }


def _default_arch(args: argparse.Namespace) -> str:
    if args.task == "dep":
        distilling = getattr(args, "command", "train") == "distill"
        return "student-dep-offset" if distilling else "parser-head-selection"
    return "student-crf" if getattr(args, "command", "train") == "distill" else "teacher-crf"


def _dep_line(name: str, scores: dict[str, Any]) -> str:
    return (
        f"{name:<4} UAS {100 * scores['uas']:.2f}  LAS {100 * scores['las']:.2f}  well-formed "
        f"{100 * scores.get('well_formed_rate', float('nan')):.1f}%  "
        f"({scores['sentences_per_second']:.0f} sentences/s)"
    )


def _summary(metrics: dict[str, Any]) -> str:
    if "dev" not in metrics:
        return ""
    if metrics.get("task") == "dep":
        lines = [
            f"model: {metrics['model_dir']}  (best epoch {metrics['best_epoch']}, "
            f"{metrics['training_seconds']:.1f} s of training, {metrics['n_parameters']:,} "
            "parameters)",
            _dep_line("dev", metrics["dev"]),
        ]
        if metrics.get("test"):
            lines.append(_dep_line("test", metrics["test"]))
        return "\n".join(lines)
    lines = [
        f"model: {metrics['model_dir']}  (best epoch {metrics['best_epoch']}, "
        f"{metrics['training_seconds']:.1f} s of training, {metrics['n_parameters']:,} parameters)",
        f"dev  F1 {100 * metrics['dev']['f1']:.2f}  P {100 * metrics['dev']['precision']:.2f}  "
        f"R {100 * metrics['dev']['recall']:.2f}  "
        f"({metrics['dev']['sentences_per_second']:.0f} sentences/s)",
    ]
    if metrics.get("test"):
        test = metrics["test"]
        lines.append(
            f"test F1 {100 * test['f1']:.2f}  P {100 * test['precision']:.2f}  "
            f"R {100 * test['recall']:.2f}"
        )
    return "\n".join(lines)


def _run_train(args: argparse.Namespace) -> int:
    metrics = train(TrainOptions(**_training_fields(args)))
    if metrics.get("model_dir"):
        print(_summary(metrics))
    return 0


def _run_distill(args: argparse.Namespace) -> int:
    options = DistillOptions(
        **_training_fields(args),
        teachers=args.teacher,
        teacher_weights=args.teacher_weights,
        method=args.method,
        temperature=args.temperature,
        temperature_mode=args.temperature_mode,
        k=args.k,
        kd_weight=args.kd_weight,
        kd_weight_end=args.kd_weight_end,
        kd_schedule=args.kd_schedule,
        unlabeled=args.unlabeled,
        labeled_fraction=args.labeled_fraction,
    )
    metrics = distill(options)
    if metrics.get("model_dir"):
        print(_summary(metrics))
    return 0


def _format_scores(result: dict[str, Any]) -> str:
    if "uas" in result:
        punct = "included" if result.get("include_punct") else "excluded"
        return "\n".join(
            [
                f"data: {result['data']} ({result['n_sentences']} sentences, "
                f"{result['n_tokens']} words; punctuation {punct})",
                _dep_line("all", result),
            ]
        )
    lines = [
        f"data: {result['data']} ({result['n_sentences']} sentences, {result['n_tokens']} tokens)",
        f"{'type':<10} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}",
    ]
    for entity_type, row in result["per_type"].items():
        lines.append(
            f"{entity_type:<10} {100 * row['precision']:9.2f} {100 * row['recall']:9.2f} "
            f"{100 * row['f1']:9.2f} {row['support']:8d}"
        )
    lines.append(
        f"{'all':<10} {100 * result['precision']:9.2f} {100 * result['recall']:9.2f} "
        f"{100 * result['f1']:9.2f}"
    )
    lines.append(f"speed: {result['sentences_per_second']:.0f} sentences/s")
    return "\n".join(lines)


def _run_evaluate(args: argparse.Namespace) -> int:
    result = evaluate(
        args.model,
        args.data,
        batch_size=args.batch_size,
        device=args.device,
        num_threads=args.num_threads,
        include_punct=args.punct,
    )
    print(json.dumps(result, indent=2) if args.json else _format_scores(result))
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    predict(
        args.model,
        args.input,
        args.output,
        input_format=args.format,
        scheme=args.scheme,
        batch_size=args.batch_size,
        device=args.device,
    )
    return 0


def add_commands(
    commands: argparse._SubParsersAction,
) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the ``train``, ``distill``, ``evaluate`` and ``predict`` sub-commands to ``commands``.

    Each sub-parser gets ``handler`` as a default (``args.handler(args) -> exit code``); the
    handlers are also returned as ``{name: handler}``.
    """
    train_parser = commands.add_parser(
        "train",
        help="train a tagger on gold tags (a teacher, or a student without KD)",
        description="Train a NER tagger on gold tags; the model with the best dev F1 is kept.",
    )
    _add_training_arguments(train_parser, "teacher-crf")

    distill_parser = commands.add_parser(
        "distill",
        help="train a student from one teacher or an ensemble (structural KD and baselines)",
        description=(
            "Train a student tagger by knowledge distillation: loss lambda * T^2 * KD + "
            "(1 - lambda) * gold on labeled sentences, T^2 * KD on unlabeled ones. Teacher outputs "
            "are computed once and cached."
        ),
    )
    _add_training_arguments(distill_parser, "student-crf")
    distill_parser.add_argument(
        "--teacher", action="append", default=[], metavar="DIR", help="teacher model directory"
    )
    distill_parser.add_argument(
        "--teacher-weights", type=float, nargs="+", metavar="W", help="ensemble weights (sum 1)"
    )
    distill_parser.add_argument("--method", default="struct", choices=KD_METHODS)
    distill_parser.add_argument("--temperature", type=float, default=1.0)
    distill_parser.add_argument("--temperature-mode", default="global", choices=("global", "local"))
    distill_parser.add_argument("--k", type=int, default=5, help="structures for topk/topwk")
    distill_parser.add_argument(
        "--kd-weight", type=float, default=1.0, help="lambda at the first step"
    )
    distill_parser.add_argument(
        "--kd-weight-end", type=float, default=0.0, help="lambda at the last step (linear)"
    )
    distill_parser.add_argument("--kd-schedule", default="linear", choices=("linear", "constant"))
    distill_parser.add_argument("--unlabeled", help="unlabeled text (data set, CoNLL, tokens)")
    distill_parser.add_argument(
        "--labeled-fraction", type=float, help="keep the tags of only this fraction of --train"
    )

    evaluate_parser = commands.add_parser(
        "evaluate",
        help="entity-level precision, recall and F1 of a model (seqeval, strict)",
        description="Score a model directory on labeled data: P, R, F1 per type, and its speed.",
    )
    evaluate_parser.add_argument("--model", required=True, metavar="DIR")
    evaluate_parser.add_argument("--data", required=True, help="a data set name or CoNLL file")
    evaluate_parser.add_argument("--json", action="store_true", help="print JSON")
    evaluate_parser.add_argument("--batch-size", type=int, default=64)
    evaluate_parser.add_argument("--device", default="cpu")
    evaluate_parser.add_argument("--num-threads", type=int)
    evaluate_parser.add_argument(
        "--punct", action="store_true", help="dependency models: score punctuation too"
    )
    evaluate_parser.add_argument(
        "--task", choices=TASKS, help="ignored: the task is read from the model directory"
    )

    predict_parser = commands.add_parser(
        "predict",
        help="tag text; CoNLL out with each tag's marginal probability",
        description=(
            "Tag tokenized text (one sentence per line) or a CoNLL file; writes CoNLL: word, "
            "[gold,] predicted tag, its marginal probability."
        ),
    )
    predict_parser.add_argument("--model", required=True, metavar="DIR")
    predict_parser.add_argument("--input", required=True, help="a file, or - for standard input")
    predict_parser.add_argument("--output", default="-", help="a file, or - (default) for stdout")
    predict_parser.add_argument("--format", default="auto", choices=("auto", "conll", "tokens"))
    predict_parser.add_argument("--scheme", default="bioes", choices=("bioes", "iob2"))
    predict_parser.add_argument("--batch-size", type=int, default=64)
    predict_parser.add_argument("--device", default="cpu")
    predict_parser.add_argument(
        "--task",
        choices=TASKS,
        help="ignored: the task is read from the model directory (dep reads and writes CoNLL-U)",
    )
    handlers = {
        "train": (train_parser, _run_train),
        "distill": (distill_parser, _run_distill),
        "evaluate": (evaluate_parser, _run_evaluate),
        "predict": (predict_parser, _run_predict),
    }
    for parser, handler in handlers.values():
        parser.set_defaults(handler=handler)
    return {name: handler for name, (_, handler) in handlers.items()}


def one_line_error(error: BaseException) -> str:
    """``error`` as one line: its message with whitespace runs (newlines) collapsed."""
    message = " ".join(str(error).split())
    return message or type(error).__name__


USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError)
"""Errors the CLI reports as one line (exit code 2): bad options, data, files, packages."""
