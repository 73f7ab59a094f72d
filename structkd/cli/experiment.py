"""``structkd experiment CONFIG``: the command line of ``structkd.experiment`` (run the grid of a
TOML config that has not finished yet, then render its report; or only list the runs, or only
re-render the report)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from structkd.experiment import (
    COMMAND_FILE,
    METRICS_FILE,
    ConfigError,
    load_config,
    plan_experiment,
    run_experiment,
    write_report,
)

__all__ = ["add_experiment_arguments", "experiment_command"]


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``structkd experiment``."""
    parser.add_argument("config", help="the experiment's TOML file (e.g. experiments/ner.toml)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: re-render the report from the results file",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list the runs (finished or not) and the result rows they give; train nothing",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="train N runs at once, each in its own process (give each run num_threads = "
        "cores / N in the config's [defaults]); default 1",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="when a run fails, note it in its directory, skip its students and go on",
    )


def _dry_run(config) -> int:
    """Print each run of the plan, finished or not, and the counts."""
    plan = plan_experiment(config)
    n_finished = 0
    for run in plan.runs:
        finished = (run.directory(config) / METRICS_FILE).exists()
        n_finished += finished
        cases = ", ".join(str(labels["case"]) for labels in plan.rows[run.run_id])
        state = "finished" if finished else "to run"
        print(f"{run.run_id}  {state:8}  {run.label}  (cases {cases})")
    n_teachers = sum(run.kind == "teacher" for run in plan.runs)
    print(
        f"{len(plan.runs)} runs ({n_teachers} teachers, {len(plan.runs) - n_teachers} "
        f"students): {n_finished} finished, {len(plan.runs) - n_finished} to run"
    )
    return 0


def experiment_command(args: argparse.Namespace) -> int:
    """Run ``structkd experiment`` from parsed arguments; returns the exit status."""
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"structkd experiment: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        return _dry_run(config)
    status = 0
    if not args.report_only:
        outcome = run_experiment(config, jobs=args.jobs, keep_going=args.keep_going)
        if outcome.failed or outcome.skipped:
            status = 1
    if not config.results_path.exists():
        print(f"structkd experiment: no results yet at {config.results_path}", file=sys.stderr)
        return 1
    paths = write_report(
        config.results_path,
        config.report_path,
        plot_path=config.plot_path,
        title=config.name,
        rerender_command=shlex.join(["structkd", "experiment", args.config, "--report-only"]),
        notes=[
            "each run's own `structkd train` / `structkd distill` command: "
            f"`{os.path.relpath(config.runs_dir, config.report_path.parent)}/*/{COMMAND_FILE}`"
        ],
        run_ids={run.run_id for run in plan_experiment(config).runs},
    )
    print(f"report: {paths[0]}\nplot: {paths[1]}")
    return status
