"""The ``structkd`` command line: a thin layer over the library, one sub-command per job.

One module per command group, each adding its sub-parsers and setting ``handler`` (``args ->
exit code``): ``structkd.cli.models`` (``train``, ``distill``, ``evaluate``, ``predict``),
``structkd.cli.demo`` (``demo``) and ``structkd.cli.experiment`` (``experiment``). A user's
mistake (``structkd.cli.errors.USER_ERRORS``) is one line on standard error and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from structkd import __version__
from structkd.cli.demo import add_demo_command
from structkd.cli.errors import USER_ERRORS, one_line_error
from structkd.cli.experiment import add_experiment_arguments, experiment_command
from structkd.cli.models import add_commands

__all__ = ["USER_ERRORS", "build_parser", "main", "one_line_error"]


def _add_experiment_command(commands: argparse._SubParsersAction) -> None:
    experiment = commands.add_parser(
        "experiment",
        help="run a resumable grid of teachers and students and render its report",
        description=(
            "Runs every (case x method x seed x labeled fraction) of a TOML config that has not "
            "finished yet, appends one JSON line per run and split to the results file, and "
            "renders a markdown report (mean ± std over seeds) and a PNG plot."
        ),
    )
    add_experiment_arguments(experiment)
    # it reports its own errors (a bad config: exit code 2)
    experiment.set_defaults(handler=experiment_command, catch_user_errors=False)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``structkd`` and all its sub-commands."""
    parser = argparse.ArgumentParser(
        prog="structkd",
        description=(
            "Structural knowledge distillation: train a small structured predictor to match the "
            "whole output distribution of a large one, exactly."
        ),
    )
    parser.add_argument("--version", action="version", version=f"structkd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_demo_command(commands)
    add_commands(commands)
    _add_experiment_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``structkd`` with the words ``argv`` (default ``sys.argv[1:]``); the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.error(f"unknown command {args.command!r}")
        return 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "catch_user_errors", True):
        return handler(args)
    try:
        return handler(args)
    except USER_ERRORS as error:
        # Bad options, data, files or packages: one line, no traceback.
        print(f"structkd {args.command}: error: {one_line_error(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
