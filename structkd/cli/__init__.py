"""The ``structkd`` command line: a thin layer over the library, one sub-command per job.

One module per command group, each adding its sub-parsers and setting ``handler`` (``args ->
exit code``): ``structkd.cli.models`` (``train``, ``distill``, ``evaluate``, ``predict``,
``export``), ``structkd.cli.demo`` (``demo``) and ``structkd.cli.experiment`` (``experiment``).
A user's mistake (``structkd.cli.errors.USER_ERRORS``) is one line on standard error and exit
code 2. SIGINT and SIGTERM stop a command with one line on standard error and exit status 130 or
143 (``128 + signal``); a training run stopped so has no completion marker, an experiment keeps
its finished runs and is resumed by the same command.
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from collections.abc import Sequence

from structkd import __version__
from structkd.cli.demo import add_demo_command
from structkd.cli.errors import USER_ERRORS, one_line_error
from structkd.cli.experiment import add_experiment_arguments, experiment_command
from structkd.cli.models import add_commands
from structkd.train.interrupts import RunInterrupted, handling_signals

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


_AFTER_INTERRUPT = {
    "train": "the run did not finish; its model directory is left incomplete (no completion "
    "marker), so nothing will use it",
    "distill": "the run did not finish; its model directory is left incomplete (no completion "
    "marker), so nothing will use it",
    "experiment": "finished runs are kept and the interrupted ones start again: run the same "
    "command to resume",
    "demo": "finished models are kept: run the same command to go on",
    "predict": "the output file was not written",
}


def _interrupted(command: str, error: BaseException) -> int:
    """The one line of a command stopped by a signal; its exit status (``128 + signal``)."""
    if not isinstance(error, RunInterrupted):
        error = RunInterrupted(signal.SIGINT)
    after = _AFTER_INTERRUPT.get(command)
    print(
        f"structkd {command}: interrupted by {error.signal_name}" + (f"; {after}" if after else ""),
        file=sys.stderr,
        flush=True,
    )
    return error.exit_status


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """A warning to a user as one line, ``structkd: warning: ...`` (not Python's two lines with
    the source of the code that warned)."""
    return f"structkd: warning: {one_line_error(Warning(str(message)))}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``structkd`` with the words ``argv`` (default ``sys.argv[1:]``); the exit code."""
    warnings.formatwarning = _one_line_warning
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
    try:
        with handling_signals():
            if not getattr(args, "catch_user_errors", True):
                return handler(args)
            try:
                return handler(args)
            except USER_ERRORS as error:
                # Bad options, data, files or packages: one line, no traceback.
                print(f"structkd {args.command}: error: {one_line_error(error)}", file=sys.stderr)
                return 2
    except (RunInterrupted, KeyboardInterrupt) as error:
        return _interrupted(args.command, error)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
