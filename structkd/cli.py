"""The ``structkd`` command line: a thin layer over the library, one sub-command per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from structkd import __version__
from structkd.train.commands import USER_ERRORS, add_commands, one_line_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="structkd",
        description=(
            "Structural knowledge distillation: train a small structured predictor to match the "
            "whole output distribution of a large one, exactly."
        ),
    )
    parser.add_argument("--version", action="version", version=f"structkd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="exact inference and structural KD on real CoNLL-2003 sentences (no training)",
        description=(
            "Builds a count-based CRF tagger from CoNLL-2003 train (a teacher that needs no "
            "training), decodes dev exactly, and distills it into a softmax tagger by the exact "
            "structural KD objective, printing F1 and timings."
        ),
    )
    demo.add_argument("--sentences", type=int, default=2000, help="dev sentences to use")
    demo.add_argument("--steps", type=int, default=400, help="distillation steps")
    demo.add_argument("--seed", type=int, default=0)

    # train, distill, evaluate, predict (structkd/train/commands.py): each sets `args.handler`.
    add_commands(commands)

    # -- structkd experiment (structkd/train/experiment.py) --
    from structkd.train.experiment import add_experiment_arguments

    experiment = commands.add_parser(
        "experiment",
        help="run a resumable grid of NER teachers and students and render its report",
        description=(
            "Runs every (case x method x seed x labeled fraction) of a TOML config that has not "
            "finished yet, appends one JSON line per run and split to the results file, and "
            "renders a markdown report (mean ± std over seeds) and a PNG plot."
        ),
    )
    add_experiment_arguments(experiment)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo":
        from structkd.demo import run_demo

        return run_demo(sentences=args.sentences, steps=args.steps, seed=args.seed)
    handler = getattr(args, "handler", None)
    if handler is not None:
        try:
            return handler(args)
        except USER_ERRORS as error:
            # Bad options, data, files or packages: one line, no traceback.
            print(f"structkd {args.command}: error: {one_line_error(error)}", file=sys.stderr)
            return 2
    if args.command == "experiment":
        from structkd.train.experiment import experiment_command

        return experiment_command(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
