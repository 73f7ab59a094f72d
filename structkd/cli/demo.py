"""``structkd demo``: its arguments and the call of ``structkd.demo`` (imported when it runs:
it imports torch)."""

from __future__ import annotations

import argparse
import shlex
import sys

__all__ = ["add_demo_command", "run_demo_command"]


def add_demo_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``demo`` sub-command to ``commands`` (its ``handler``: ``run_demo_command``)."""
    demo = commands.add_parser(
        "demo",
        help="NER distillation on real CoNLL-2003: teacher, students without KD, with Token KD "
        "and with structural KD",
        description=(
            "The main job (what `make demo` runs), on a reduced budget: of the first sentences "
            "of CoNLL-2003 train, the first share keeps its tags and the rest is used as text "
            "without labels. Trains a teacher (frozen MiniLM + GloVe + char CNN + BiLSTM + CRF) "
            "on the labeled sentences, or reuses the one in OUT/teacher trained with the same "
            "options; trains a small CRF student on gold tags only, by Token KD and by structural "
            "KD (these two also on the unlabeled text); prints the dev and test F1 and sentences "
            "per second of every model, the gains of structural KD and the share of the "
            "teacher-student gap it closes, and writes OUT/report.md. --quick runs the older "
            "structures-only demo instead (a count-based CRF teacher distilled into a softmax "
            "tagger; about a minute, no neural network)."
        ),
    )
    demo.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    demo.add_argument(
        "--train-sentences",
        default="3000",
        metavar="N",
        help="use the first N training sentences, or 'all' (default 3000)",
    )
    demo.add_argument(
        "--labeled-fraction",
        type=float,
        default=0.5,
        metavar="F",
        help="the share of those sentences that keep their tags (the teacher's training data); "
        "the rest is unlabeled text the students distill on (default 0.5; 1: all labeled)",
    )
    demo.add_argument("--teacher-epochs", type=int, default=4, metavar="N", help="default 4")
    demo.add_argument(
        "--student-epochs", type=int, default=8, metavar="N", help="default 8 (each student)"
    )
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float, default=2e-3)
    demo.add_argument("--train", default="conll03-en:train", help="a data set name or CoNLL file")
    demo.add_argument("--dev", default="conll03-en:dev", help="a data set name or CoNLL file")
    demo.add_argument("--test", default="conll03-en:test", help="a data set name or CoNLL file")
    demo.add_argument("--teacher-arch", default="teacher-crf")
    demo.add_argument("--student-arch", default="student-crf")
    for who in ("teacher", "student"):
        demo.add_argument(
            f"--{who}-override",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"change one TaggerConfig field of the {who}, VALUE read as JSON; repeatable",
        )
    demo.add_argument(
        "--retrain-teacher", action="store_true", help="train the teacher even if one matches"
    )
    demo.add_argument("--num-threads", type=int, default=1, help="torch CPU threads (default 1)")
    demo.add_argument("--cache-dir", help="MiniLM features and teacher outputs (default OUT/cache)")
    demo.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="training progress bars (default: when standard error is a terminal)",
    )
    demo.add_argument("--quick", action="store_true", help="the structures-only demo (~1 min)")
    demo.add_argument("--sentences", type=int, default=2000, help="--quick: dev sentences to use")
    demo.add_argument("--steps", type=int, default=400, help="--quick: distillation steps")
    demo.set_defaults(handler=run_demo_command)
    return demo


def run_demo_command(args: argparse.Namespace) -> int:
    """Run ``structkd demo`` from parsed arguments; returns the exit code. ``args.argv``: the
    words of the command line (recorded in the report; default ``sys.argv[1:]``)."""
    from structkd.demo import DemoOptions, parse_arch_overrides, run_demo, run_quick_demo

    if args.quick:
        return run_quick_demo(sentences=args.sentences, steps=args.steps, seed=args.seed)
    count = args.train_sentences.strip().lower()
    if count != "all" and not count.isdigit():
        raise ValueError(f"--train-sentences must be a number or 'all'; got {count!r}")
    options = DemoOptions(
        out=args.out,
        train=args.train,
        dev=args.dev,
        test=args.test,
        train_sentences=None if count == "all" else int(count),
        labeled_fraction=args.labeled_fraction,
        teacher_epochs=args.teacher_epochs,
        student_epochs=args.student_epochs,
        seed=args.seed,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        teacher_arch=args.teacher_arch,
        student_arch=args.student_arch,
        teacher_overrides=parse_arch_overrides(args.teacher_override),
        student_overrides=parse_arch_overrides(args.student_override),
        retrain_teacher=args.retrain_teacher,
        num_threads=args.num_threads,
        cache_dir=args.cache_dir,
        progress=sys.stderr.isatty() if args.progress is None else args.progress,
    )
    words = getattr(args, "argv", None)
    words = list(sys.argv[1:] if words is None else words)
    run_demo(options, command=shlex.join(["structkd", *words]))
    return 0
