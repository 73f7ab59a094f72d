"""``structkd train``, ``distill``, ``evaluate``, ``predict`` and ``export``: their arguments, the
calls of ``structkd.api`` and the printing of the results.

Nothing here names a task: the ``--task`` choices, the default architectures, the KD methods and
the printing of scores come from the task plug-ins (``structkd.tasks``) and the method table
(``structkd.distill.methods``). Importing this module is cheap (no torch, no Lightning).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

from structkd.api import INPUT_FORMATS
from structkd.data.tag_schemes import SCHEMES
from structkd.distill.methods import DEFAULT_METHOD, METHOD_NAMES, TEMPERATURE_MODES
from structkd.tasks import get_task, task_names
from structkd.train.options import (
    DEFAULT_KD_SCHEDULE,
    KD_SCHEDULES,
    TEACHER_TARGETS,
    DistillOptions,
    TrainOptions,
)

__all__ = [
    "DEFAULT_TASK",
    "OUTPUT_FORMATS",
    "add_commands",
    "add_training_arguments",
    "parse_devices",
    "parse_output_format",
    "parse_override",
    "summary",
    "training_fields",
]

DEFAULT_TASK: str = TrainOptions.task
"""The task of ``--task`` when it is not given (that of ``TrainOptions``)."""

INPUT_SCHEMES: tuple[str, ...] = ("auto", *SCHEMES)
"""The choices of ``--scheme`` on ``train``, ``distill`` and ``evaluate``: the tag scheme of the
labeled data read (``predict``'s ``--scheme`` is the scheme it writes)."""
OUTPUT_FORMATS: tuple[str, ...] = ("auto", "conll", "conllu", "json")
"""The choices of ``predict --format`` (each task writes some of them: ``Task.output_formats``)."""
_INPUT_SCHEME_HELP = (
    "tag scheme of tagged data files (default auto: detected, with a warning when it comes out "
    "IOB1; iob1, iob2 or bioes: every tag checked against it)"
)


def parse_override(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> ``(KEY, VALUE read as JSON, else the text)`` (for ``--arch-override``)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def parse_devices(text: str) -> int | str:
    """``--devices``: a count, or a Lightning word such as ``auto``."""
    return int(text) if text.isdigit() else text


def _tasks_help() -> str:
    return " or ".join(f"{name} ({get_task(name).title})" for name in task_names())


def _arch_help(command: str) -> str:
    defaults = [(name, get_task(name).default_arch(command)) for name in task_names()]
    first = next((arch for name, arch in defaults if name == DEFAULT_TASK), defaults[0][1])
    others = "; ".join(f"for --task {name}: {arch}" for name, arch in defaults if arch != first)
    return f"architecture (default {first}" + (f"; {others})" if others else ")")


def _metric_help() -> str:
    parts = []
    for name in task_names():
        task = get_task(name)
        metric = task.score_titles.get(task.primary_metric, task.primary_metric)
        parts.append(f"{task.title}: {metric}")
    return ", ".join(parts)


def _scores_help() -> str:
    parts = []
    for name in task_names():
        task = get_task(name)
        titles = ", ".join(task.score_titles.get(score, score) for score in task.scores)
        parts.append(f"{task.title}: {titles}")
    return "; ".join(parts)


def add_training_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """The arguments ``train`` and ``distill`` share (``command``: which of the two)."""
    parser.add_argument(
        "--task",
        default=DEFAULT_TASK,
        choices=task_names(),
        help=f"the task: {_tasks_help()} (default {DEFAULT_TASK})",
    )
    parser.add_argument("--train", required=True, help="training data: a data set name or file")
    parser.add_argument(
        "--dev", required=True, help=f"dev data, for model selection ({_metric_help()})"
    )
    parser.add_argument("--test", help="test data, scored with the best model")
    parser.add_argument("--scheme", default="auto", choices=INPUT_SCHEMES, help=_INPUT_SCHEME_HELP)
    parser.add_argument("--out", required=True, help="the model directory to write")
    parser.add_argument(
        "--vocab-text",
        action="append",
        default=[],
        metavar="DATA",
        help="other text the model will read (e.g. the unlabeled text a teacher labels): its "
        "words keep their pretrained vectors; repeatable",
    )
    parser.add_argument("--arch", help=_arch_help(command))
    parser.add_argument(
        "--arch-override",
        action="append",
        type=parse_override,
        default=[],
        metavar="KEY=VALUE",
        help="change one field of the architecture's config, VALUE read as JSON; repeatable "
        "(e.g. glove=false)",
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patience", type=int, default=5, help="epochs without a better dev score")
    parser.add_argument("--no-early-stopping", action="store_true", help="ignore --patience")
    parser.add_argument("--max-train-sentences", type=int, help="use the first N sentences only")
    parser.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    parser.add_argument(
        "--devices", type=parse_devices, default=1, help="Lightning devices (int/auto)"
    )
    parser.add_argument("--strategy", default="auto", help="Lightning strategy (e.g. ddp)")
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator (cpu/gpu/auto)")
    parser.add_argument(
        "--num-threads", type=int, default=1, help="torch CPU threads per process (default 1)"
    )
    parser.add_argument("--cache-dir", help="cache of teacher outputs and transformer features")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    if command == "train":
        parser.add_argument(
            "--folds",
            type=int,
            metavar="K",
            help="train K >= 2 fold teachers into --out instead of one model: fold teacher k on "
            "the training sentences outside fold k (folds by sentence content, duplicates "
            "together); the directory is one teacher, the mixture of the K, and its students "
            "get out-of-fold targets on its training sentences (distill --teacher-targets)",
        )


def training_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The ``TrainOptions`` fields given by the arguments of ``add_training_arguments``."""
    command = getattr(args, "command", None) or "train"
    return {
        "train": args.train,
        "dev": args.dev,
        "test": args.test,
        "scheme": getattr(args, "scheme", TrainOptions.scheme),
        "out": args.out,
        "vocab_text": list(args.vocab_text),
        "task": args.task,
        "arch": args.arch or get_task(args.task).default_arch(command),
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
        "folds": getattr(args, "folds", None),
    }


def summary(metrics: Mapping[str, Any], task_name: str) -> str:
    """What ``train`` and ``distill`` print: the model directory, its best epoch, training time
    and size, then its dev (and test) scores as the task writes them (empty without dev)."""
    if "dev" not in metrics:
        return ""
    task = get_task(str(metrics.get("task") or task_name))
    lines = [
        f"model: {metrics['model_dir']}  (best epoch {metrics['best_epoch']}, "
        f"{metrics['training_seconds']:.1f} s of training, {metrics['n_parameters']:,} parameters)",
        task.score_line("dev", metrics["dev"]),
    ]
    if metrics.get("test"):
        lines.append(task.score_line("test", metrics["test"]))
    return "\n".join(lines)


def _run_train(args: argparse.Namespace) -> int:
    from structkd.api import train

    metrics = train(TrainOptions(**training_fields(args)))
    if metrics.get("model_dir"):
        print(summary(metrics, args.task))
    return 0


def _run_distill(args: argparse.Namespace) -> int:
    from structkd.api import distill

    # the distillation's fields have flags of the same name (``--teacher`` is repeated)
    distillation = {field.name for field in dataclasses.fields(DistillOptions)}
    distillation -= {field.name for field in dataclasses.fields(TrainOptions)}
    flags = {
        name: getattr(args, "teacher" if name == "teachers" else name) for name in distillation
    }
    options = DistillOptions(**training_fields(args), **flags)
    metrics = distill(options)
    if metrics.get("model_dir"):
        print(summary(metrics, args.task))
    return 0


def _check_model_task(model_dir: str, task: str | None) -> None:
    """With ``--task`` given, a model of another task is refused by name (``'runs/x' holds a
    'dep' model, not a 'ner' model``) before its data is read as the wrong format; an exported
    model directory is checked by its ``export.json``."""
    if task is None:
        return
    from structkd.serve.manifest import is_exported, read_manifest

    if is_exported(model_dir):
        found = read_manifest(model_dir)["task"]
        if found != task:
            raise ValueError(f"{model_dir!r} holds a {found!r} model, not a {task!r} model")
        return
    from structkd.train.checkpoint import read_model
    from structkd.train.folds import is_fold_directory, read_fold_model

    if is_fold_directory(model_dir):  # fold teachers (train --folds)
        read_fold_model(model_dir, task=task)
        return
    read_model(model_dir, task=task)


def _run_evaluate(args: argparse.Namespace) -> int:
    from structkd.api import evaluate
    from structkd.train.checkpoint import model_task

    _check_model_task(args.model, args.task)
    result = evaluate(
        args.model,
        args.data,
        batch_size=args.batch_size,
        device=args.device,
        num_threads=args.num_threads,
        include_punct=args.punct,
        scheme=args.scheme,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(get_task(model_task(args.model)).format_scores(result))
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from structkd.api import predict

    _check_model_task(args.model, args.task)
    predict(
        args.model,
        args.input,
        args.output,
        input_format=args.input_format,
        output_format=None if args.format == "auto" else args.format,
        scheme=args.scheme,
        batch_size=args.batch_size,
        device=args.device,
        num_threads=args.num_threads,
    )
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from structkd.api import export

    export(args.model, args.out, format=args.format)
    print(f"exported {args.model} to {args.out} ({args.format})")
    return 0


def parse_output_format(text: str) -> str:
    """``predict --format``: the output format (``auto``: the task's first). The input formats
    that ``--format`` used to name are refused with the flag that takes them now."""
    if text in OUTPUT_FORMATS:
        return text
    if text in INPUT_FORMATS:
        raise argparse.ArgumentTypeError(
            f"--format is the output format ({', '.join(OUTPUT_FORMATS)}); the input format is "
            f"--input-format {text}"
        )
    raise argparse.ArgumentTypeError(
        f"invalid choice: {text!r} (choose from {', '.join(OUTPUT_FORMATS)})"
    )


def add_commands(
    commands: argparse._SubParsersAction,
) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the ``train``, ``distill``, ``evaluate``, ``predict`` and ``export`` sub-commands to
    ``commands``.

    Each sub-parser gets ``handler`` as a default (``args.handler(args) -> exit code``); the
    handlers are also returned as ``{name: handler}``.
    """
    train_parser = commands.add_parser(
        "train",
        help="train a model on gold labels (a teacher, or a student without KD)",
        description=(
            "Train a model on gold labels; the model with the best dev score "
            f"({_metric_help()}) is kept."
        ),
    )
    add_training_arguments(train_parser, "train")

    distill_parser = commands.add_parser(
        "distill",
        help="train a student from one teacher or an ensemble (structural KD and baselines)",
        description=(
            "Train a student by knowledge distillation: loss lambda * T^2 * KD + "
            "(1 - lambda) * gold on labeled sentences, T^2 * KD on unlabeled ones. Teacher outputs "
            "are computed once and cached."
        ),
    )
    add_training_arguments(distill_parser, "distill")
    distill_parser.add_argument(
        "--teacher", action="append", default=[], metavar="DIR", help="teacher model directory"
    )
    distill_parser.add_argument(
        "--teacher-weights", type=float, nargs="+", metavar="W", help="ensemble weights (sum 1)"
    )
    distill_parser.add_argument("--method", default=DEFAULT_METHOD, choices=METHOD_NAMES)
    distill_parser.add_argument("--temperature", type=float, default=1.0)
    distill_parser.add_argument("--temperature-mode", default="global", choices=TEMPERATURE_MODES)
    distill_parser.add_argument("--k", type=int, default=5, help="structures for topk/topwk")
    distill_parser.add_argument(
        "--kd-weight", type=float, default=1.0, help="lambda at the first step"
    )
    distill_parser.add_argument(
        "--kd-weight-end", type=float, default=0.0, help="lambda at the last step (linear)"
    )
    distill_parser.add_argument("--kd-schedule", default=DEFAULT_KD_SCHEDULE, choices=KD_SCHEDULES)
    distill_parser.add_argument(
        "--unlabeled",
        help="unlabeled text (data set, CoNLL, tokens; --task dep: CoNLL-U with UPOS, HEAD _)",
    )
    distill_parser.add_argument(
        "--labeled-fraction", type=float, help="keep the labels of only this fraction of --train"
    )
    distill_parser.add_argument(
        "--target-workers",
        type=int,
        default=1,
        metavar="N",
        help="processes that build the teacher-target caches, each whole shards (default 1; "
        "machines or DDP ranks sharing --cache-dir also split the shards)",
    )
    distill_parser.add_argument(
        "--target-shard-size",
        type=int,
        default=50_000,
        metavar="N",
        help="sentences per shard of a teacher-target cache (default 50000): the memory of a "
        "build is bounded by one shard",
    )
    distill_parser.add_argument(
        "--teacher-targets",
        choices=TEACHER_TARGETS,
        help="with a fold teacher (train --folds K): out-of-fold (its default: each of its "
        "training sentences gets the targets of the fold teacher that did not see it, other "
        "text the mixture of the K) or in-fold (the mixture everywhere, what an ordinary "
        "teacher gives)",
    )

    evaluate_parser = commands.add_parser(
        "evaluate",
        help=f"the scores of a model on labeled data ({_metric_help()}; speed)",
        description=(f"Score a model directory on labeled data ({_scores_help()}), and its speed."),
    )
    evaluate_parser.add_argument("--model", required=True, metavar="DIR")
    evaluate_parser.add_argument("--data", required=True, help="a data set name or file")
    evaluate_parser.add_argument("--json", action="store_true", help="print JSON")
    evaluate_parser.add_argument("--batch-size", type=int, default=64)
    evaluate_parser.add_argument("--device", default="cpu")
    evaluate_parser.add_argument("--num-threads", type=int)
    evaluate_parser.add_argument(
        "--punct", action="store_true", help="dependency models: score punctuation too"
    )
    evaluate_parser.add_argument(
        "--scheme", default="auto", choices=INPUT_SCHEMES, help=_INPUT_SCHEME_HELP
    )
    evaluate_parser.add_argument(
        "--task",
        choices=task_names(),
        help="the task is read from the model directory; if given, a model of another task is "
        "refused",
    )

    predict_parser = commands.add_parser(
        "predict",
        help="label text with a trained or exported model (NER: tags with their marginal "
        "probabilities and entities; dependency parsing: trees)",
        description=(
            "Label raw text, tokenized text, a CoNLL or CoNLL-U file or a data set with a model "
            "directory (trained, or exported by `structkd export`). NER writes CoNLL (word, "
            "predicted tag, its marginal probability; gold tags of the input are not copied: "
            "`structkd evaluate` scores them) or JSON lines (one document per input text, with "
            "character offsets and each entity's probability); dependency parsing writes CoNLL-U "
            "or JSON lines."
        ),
    )
    predict_parser.add_argument("--model", required=True, metavar="DIR")
    predict_parser.add_argument(
        "--input", required=True, help="a file, a data set name, or - for standard input"
    )
    predict_parser.add_argument("--output", default="-", help="a file, or - (default) for stdout")
    predict_parser.add_argument(
        "--input-format",
        default="auto",
        choices=INPUT_FORMATS,
        help="raw: one text per line, tokenized and split into sentences (syntok), one output "
        "document each; tokens: one tokenized sentence per line; conll: a column file (word "
        "first); conllu: CoNLL-U (HEAD and DEPREL may be _); auto (default): conllu for *.conllu "
        "files and CoNLL-U lines, conll when most lines end with a tag, else tokens",
    )
    predict_parser.add_argument(
        "--format",
        default="auto",
        type=parse_output_format,
        metavar="{" + ",".join(OUTPUT_FORMATS) + "}",
        help="the output format (it used to be the input format, now --input-format): auto "
        "(default: the task's first: NER conll, dependency parsing conllu), conll, conllu, json",
    )
    predict_parser.add_argument(
        "--scheme",
        default="bioes",
        choices=("bioes", "iob2"),
        help="NER: the tag scheme written (default bioes, the model's own labels)",
    )
    predict_parser.add_argument("--batch-size", type=int, default=64)
    predict_parser.add_argument("--device", default="cpu", help="torch device of a trained model")
    predict_parser.add_argument(
        "--num-threads", type=int, help="CPU threads of the backend (default: its own)"
    )
    predict_parser.add_argument(
        "--task",
        choices=task_names(),
        help="the task is read from the model directory (with its input and output formats); "
        "if given, a model of another task is refused",
    )

    export_parser = commands.add_parser(
        "export",
        help="export a model for serving without torch (ONNX)",
        description=(
            "Export a trained model directory to a directory that `structkd predict` and "
            "structkd.load serve with numpy and onnxruntime only (the serve extra, no torch)."
        ),
    )
    export_parser.add_argument("--model", required=True, metavar="DIR", help="a trained model")
    export_parser.add_argument("--out", required=True, metavar="DIR", help="the directory to write")
    export_parser.add_argument("--format", default="onnx", choices=("onnx",))
    handlers = {
        "train": (train_parser, _run_train),
        "distill": (distill_parser, _run_distill),
        "evaluate": (evaluate_parser, _run_evaluate),
        "predict": (predict_parser, _run_predict),
        "export": (export_parser, _run_export),
    }
    for parser, handler in handlers.values():
        parser.set_defaults(handler=handler)
    return {name: handler for name, (_, handler) in handlers.items()}
