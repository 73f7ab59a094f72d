"""The options of a training run, typed: ``TrainOptions`` (a model on gold labels) and
``DistillOptions`` (a student from teachers). Task-agnostic: ``task`` names the plug-in
(``structkd.tasks``) that reads them. Importing this module is cheap (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from structkd.data.tag_schemes import SCHEMES
from structkd.distill.methods import DEFAULT_METHOD, KD_METHODS, TEMPERATURE_MODES, method

__all__ = [
    "DEFAULT_KD_SCHEDULE",
    "KD_SCHEDULES",
    "REFERENCE_DECAY",
    "TEACHER_TARGETS",
    "DistillOptions",
    "TrainOptions",
    "check_distill_options",
    "check_options",
    "positive_int",
]

KD_SCHEDULES = ("linear", "constant", "reference")
"""How the KD weight ``lambda`` moves during training (``structkd.train.module.KDSettings``):
``linear`` from ``kd_weight`` to ``kd_weight_end`` over the optimizer steps; ``constant``
``kd_weight``; ``reference``, the authors' recipe, ``kd_weight * max(0, 1 - 0.005 * epoch)``."""
DEFAULT_KD_SCHEDULE = "linear"
"""The schedule of ``DistillOptions.kd_schedule`` when none is given."""
REFERENCE_DECAY = 0.005
"""The per-epoch decay of the ``reference`` schedule."""
TEACHER_TARGETS: tuple[str, ...] = ("out-of-fold", "in-fold")
"""The values of ``DistillOptions.teacher_targets`` (``--teacher-targets``): see
``structkd.train.folds``."""


@dataclass
class TrainOptions:
    """Options of ``train`` (a model on gold labels: a teacher, or a student without KD).

    Data (``train``, ``dev``, ``test``): a registered data set name (``conll03-en:train``,
    ``twt-tr:dev``) or a file of the task's format. ``task``: the task plug-in (``ner``, ``dep``).
    ``out``: the model directory written (``model.pt``, ``config.json``, ``metrics.json``).
    ``vocab_text``: other text the model will read (data set names or files, e.g. the unlabeled
    text a teacher will label for its students): its words join the vocabulary where a frozen
    pretrained table knows them (GloVe), so that they keep their vectors instead of becoming
    ``<unk>``; nothing is learned from it (dev and test words are added the same way).
    ``arch``: an architecture name of the task, changed by ``arch_overrides`` (``{"lstm_hidden":
    32}``). Model selection is on the task's dev metric (F1, LAS); ``patience``: stop after that
    many epochs without a better one (``None``: never). ``max_train_sentences``: use only the
    first N training sentences; ``max_steps``: stop after that many optimizer steps.
    ``devices``, ``strategy``, ``accelerator``: Lightning's (``devices=2, strategy="ddp"`` trains
    in two processes). ``num_threads``: torch CPU threads per process (default 1: these small
    models gain nothing from more; ``None``: torch's default). ``cache_dir``: where teacher
    outputs and transformer features are cached (default ``$STRUCTKD_CACHE_DIR`` or
    ``~/.cache/structkd``). ``progress``: progress bars. ``folds``: ``K >= 2`` trains K fold
    teachers into ``out`` instead of one model, fold teacher ``k`` on the training sentences
    outside fold ``k`` (``structkd.train.folds``): one directory a student distills from with
    out-of-fold targets (``None``: one model).
    """

    train: str
    dev: str
    out: str
    test: str | None = None
    scheme: str = "auto"  # tag scheme of labeled data: auto (IOB1 warns), iob1, iob2, bioes
    vocab_text: list[str] = field(default_factory=list)
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
    folds: int | None = None


@dataclass
class DistillOptions(TrainOptions):
    """Options of ``distill``: those of ``TrainOptions`` (``arch`` defaults to ``student-crf``)
    and the distillation.

    ``teachers``: model directories (one, or an ensemble mixed with ``teacher_weights``, default
    uniform). ``method``: a name of ``structkd.distill.methods.METHODS`` (``struct``: structural
    KD, exact; ``token``, ``topk``, ``topwk``, ``posterior``; ``none``: gold only).
    ``temperature`` ``T`` and ``temperature_mode`` (``global`` or ``local``; struct only). ``k``:
    structures of top-k methods. The KD weight ``lambda`` on labeled batches starts at
    ``kd_weight`` and follows ``kd_schedule`` (``linear`` to ``kd_weight_end``, ``constant``, or
    ``reference``: ``kd_weight * max(0, 1 - 0.005 * epoch)``, the authors' recipe); the KD term
    is multiplied by ``T^2``; unlabeled sentences contribute the KD term only. ``unlabeled``:
    extra unlabeled text (a data set, a file of the task's format or one tokenized sentence per
    line); ``labeled_fraction``: keep the labels of only the first fraction of the training
    sentences (the rest become unlabeled). ``teacher_targets``: what a fold teacher (``train
    --folds``) gives: ``"out-of-fold"`` (its default: the targets of each of its training
    sentences come from the fold teacher that did not see it, the mixture of the K elsewhere) or
    ``"in-fold"`` (the mixture everywhere; all an ordinary teacher has); ``None``: the default.
    ``target_workers``: processes of this machine that build the teacher-target caches (each
    builds whole shards of ``target_shard_size`` sentences; ``structkd.train.store.ShardPlan``);
    several machines or DDP ranks sharing the cache directory split the shards among them too.
    """

    arch: str = "student-crf"
    teachers: list[str] = field(default_factory=list)
    teacher_weights: list[float] | None = None
    method: str = DEFAULT_METHOD
    temperature: float = 1.0
    temperature_mode: str = "global"
    k: int = 5
    kd_weight: float = 1.0
    kd_weight_end: float = 0.0
    kd_schedule: str = DEFAULT_KD_SCHEDULE
    unlabeled: str | None = None
    labeled_fraction: float | None = None
    teacher_targets: str | None = None
    target_workers: int = 1
    target_shard_size: int = 50_000


def positive_int(value: Any, name: str, allow_none: bool = False) -> None:
    """``ValueError`` unless ``value`` is an integer >= 1 (or ``None`` when ``allow_none``)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}")


def check_options(options: TrainOptions) -> None:
    """The checks every run's options pass, whatever the task (``ValueError`` naming the
    option)."""
    for name in ("epochs", "batch_size", "eval_batch_size"):
        positive_int(getattr(options, name), name)
    for name in ("patience", "max_train_sentences", "max_steps", "num_threads"):
        positive_int(getattr(options, name), name, allow_none=True)
    if not (isinstance(options.learning_rate, int | float) and options.learning_rate > 0):
        raise ValueError(f"learning_rate must be > 0; got {options.learning_rate!r}")
    if not isinstance(options.vocab_text, list | tuple) or not all(
        isinstance(item, str) for item in options.vocab_text
    ):
        raise ValueError(
            f"vocab_text must be a list of data sets or files; got {options.vocab_text!r}"
        )
    if not isinstance(options.arch_overrides, dict):
        raise ValueError("arch_overrides must be a dict of the architecture's config fields")
    if options.scheme not in ("auto", *SCHEMES):
        raise ValueError(
            f"scheme must be one of auto, {', '.join(SCHEMES)}; got {options.scheme!r}"
        )
    folds = options.folds
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 2):
        raise ValueError(f"--folds must be an integer >= 2; got {folds!r}")


def check_distill_options(
    options: DistillOptions,
    *,
    methods: tuple[str, ...],
    temperature_modes: tuple[str, ...],
    learns_from_unlabeled: bool,
    task_name: str,
) -> None:
    """``check_options`` plus the distillation's: a method the task implements, teachers when
    the method reads them, a temperature mode the task knows, unlabeled text only where the task
    learns from it."""
    check_options(options)
    positive_int(options.target_workers, "target_workers")
    positive_int(options.target_shard_size, "target_shard_size")
    name = options.method
    entry = method(name)  # an unknown method: ValueError naming the known ones
    if name not in methods:
        raise ValueError(
            f"--task {task_name} supports the KD methods {', '.join(methods)}; got {name!r}"
        )
    if name in KD_METHODS and not options.teachers:
        raise ValueError(f"--method {name} needs at least one --teacher")
    if options.temperature_mode not in TEMPERATURE_MODES:
        raise ValueError(
            f"temperature_mode must be one of {', '.join(TEMPERATURE_MODES)}; got "
            f"{options.temperature_mode!r}"
        )
    if options.temperature_mode not in temperature_modes:
        raise ValueError(
            f"--task {task_name} supports --temperature-mode {', '.join(temperature_modes)} only"
        )
    if (
        options.temperature_mode == "local"
        and entry.uses_teacher
        and not entry.uses_temperature_mode
    ):
        raise ValueError(
            "temperature_mode='local' applies to --method struct only (the baselines temper "
            "both distributions globally)"
        )
    if options.kd_schedule not in KD_SCHEDULES:
        raise ValueError(
            f"kd_schedule must be one of {', '.join(KD_SCHEDULES)}; got {options.kd_schedule!r}"
        )
    if options.folds is not None:
        raise ValueError(
            "--folds trains fold teachers (`structkd train --folds K`); a student is one model"
        )
    if options.teacher_targets not in (None, *TEACHER_TARGETS):
        raise ValueError(
            f"--teacher-targets must be one of {', '.join(TEACHER_TARGETS)}; got "
            f"{options.teacher_targets!r}"
        )
    unlabeled = options.unlabeled is not None or options.labeled_fraction is not None
    if unlabeled and not learns_from_unlabeled:
        raise ValueError(f"--task {task_name} distills on the labeled training data only")
    if options.unlabeled is not None and name == "none":
        raise ValueError(
            "--unlabeled needs a KD method: unlabeled sentences contribute only the KD term"
        )
