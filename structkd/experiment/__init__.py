"""``structkd experiment CONFIG``: a resumable grid of teachers and students, and its report.

The task of an experiment (``[experiment] task``) is a plug-in of ``structkd.tasks``: ``ner``
(taggers on CoNLL column files; the default) or ``dep`` (dependency parsers and
sequence-labeling parsers on CoNLL-U treebanks). Its facts decide what a config may ask for (the
KD methods, temperature modes, labeled fractions, built-in cases and model fields) and what the
results and the report hold (its scores, primary and secondary metrics). The built-in NER cases:

* ``1a``: CRF teacher -> CRF student (structural KD: pairwise marginals by forward-backward);
* ``2a``: CRF teacher -> softmax student (unary marginals);
* ``3``: softmax teacher -> CRF student without BIOES constraints (products of the teacher's
  token distributions; a constrained CRF cannot represent the ill-formed sequences a softmax
  teacher puts probability on, so the KD loss would be infinite);
* ``4``: span teacher -> softmax student (BIOES marginals of the semi-Markov span distribution).

Dependency parsing (``task = "dep"``, see ``experiments/dep.toml``) has no built-in cases: the
config's ``[cases]`` name them (``"1b-hs" = { teacher = "head-selection", student = "offset" }``).

The modules, one idea each:

* ``config``: the TOML schema, read into a validated ``ExperimentConfig`` (``load_config``);
* ``plan``: the grid's points, the runs they need and their stable ids (``plan_experiment``);
* ``provenance``: the code's commit and the machine (``code_commit``, ``hardware_info``);
* ``results``: the JSON-lines results file (append, read, check, one row per run/case/split);
* ``runner``: trains the unfinished runs, in worker processes if asked (``run_experiment``);
* ``stats``: paired differences over seeds and their confidence intervals
  (``paired_differences``, ``confidence_interval``);
* ``report``: the markdown report and the plot from a results file (``write_report``).

The command line (``structkd experiment``) is ``structkd.cli.experiment``.
"""

from __future__ import annotations

from structkd.experiment.config import (
    RESERVED_OPTIONS,
    Case,
    ConfigError,
    ExperimentConfig,
    GridBlock,
    ModelSpec,
    builtin_cases,
    load_config,
    option_names,
    parse_config,
)
from structkd.experiment.plan import (
    GridPoint,
    Plan,
    RunSpec,
    expand_grid,
    plan_experiment,
    run_id_of,
)
from structkd.experiment.provenance import code_commit, cpu_model, hardware_info
from structkd.experiment.report import (
    findings,
    load_results,
    paired_delta,
    render_markdown,
    render_plot,
    summarize,
    write_report,
)
from structkd.experiment.results import METRICS_FILE, RUN_FILE, SPLITS, read_result_keys
from structkd.experiment.runner import (
    COMMAND_FILE,
    MODEL_DIR,
    ExperimentOutcome,
    RunFunction,
    TrainingLayerRun,
    cli_command,
    run_experiment,
)
from structkd.experiment.stats import PairedDifference, confidence_interval, paired_differences

__all__ = [
    "COMMAND_FILE",
    "METRICS_FILE",
    "MODEL_DIR",
    "RESERVED_OPTIONS",
    "RUN_FILE",
    "SPLITS",
    "Case",
    "ConfigError",
    "ExperimentConfig",
    "ExperimentOutcome",
    "GridBlock",
    "GridPoint",
    "ModelSpec",
    "PairedDifference",
    "Plan",
    "RunFunction",
    "RunSpec",
    "TrainingLayerRun",
    "builtin_cases",
    "cli_command",
    "code_commit",
    "confidence_interval",
    "cpu_model",
    "expand_grid",
    "findings",
    "hardware_info",
    "load_config",
    "load_results",
    "option_names",
    "paired_delta",
    "paired_differences",
    "parse_config",
    "plan_experiment",
    "read_result_keys",
    "render_markdown",
    "render_plot",
    "run_experiment",
    "run_id_of",
    "summarize",
    "write_report",
]
