"""The experiment runner: config validation, grid expansion, run ids, resumability, and one real
tiny end-to-end experiment through the training layer."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import pytest

from structkd.experiment import (
    ConfigError,
    code_commit,
    expand_grid,
    load_config,
    parse_config,
    plan_experiment,
    read_result_keys,
    run_experiment,
)


def base_config(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "experiment": {"name": "unit", "output_dir": str(tmp_path / "out")},
        "data": {"train": "toy:train", "dev": "toy:dev", "test": "toy:test"},
        "defaults": {"epochs": 2, "batch_size": 4},
        "teachers": {
            "crf": {"arch": "teacher-crf", "seed": 7},
            "softmax": {"arch": "teacher-softmax"},
            "span": {"arch": "teacher-span"},
        },
        "students": {
            "crf": {"arch": "student-crf"},
            "softmax": {"arch": "student-softmax"},
            "crf-unconstrained": {"arch": "student-crf-unconstrained"},
        },
        "grid": [
            {"cases": ["2a", "4"], "methods": ["none", "token", "struct"], "seeds": [1, 2]},
        ],
    }
    raw.update(changes)
    return raw


# ---------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda raw: raw.pop("experiment"), "experiment: missing table"),
        (lambda raw: raw["experiment"].pop("name"), "experiment.name: missing"),
        (lambda raw: raw["experiment"].update(flavour=1), "experiment: unknown keys ['flavour']"),
        (lambda raw: raw["experiment"].update(teacher_seeds="some"), "experiment.teacher_seeds"),
        (lambda raw: raw["data"].pop("dev"), "data.dev: missing"),
        (lambda raw: raw["teachers"]["crf"].pop("arch"), "teachers.crf.arch: missing"),
        (lambda raw: raw["teachers"]["crf"].update(seed="x"), "teachers.crf.seed: must be"),
        (lambda raw: raw["students"]["crf"].update(seed=3), "students.crf.seed"),
        (lambda raw: raw["defaults"].update(seed=3), "defaults.seed: is set by the runner"),
        (lambda raw: raw["teachers"].pop("span"), "needs the teacher 'span'"),
        (
            lambda raw: (
                raw["students"].pop("crf-unconstrained") and raw["grid"][0].update(cases=["3"])
            ),
            "case '3' needs the student 'crf-unconstrained'",
        ),
        (lambda raw: raw.update(grid=[]), "grid: needs at least one"),
        (lambda raw: raw["grid"][0].update(cases=["9z"]), "grid[0].cases: unknown case '9z'"),
        (lambda raw: raw["grid"][0].update(methods=["kd"]), "grid[0].methods: unknown method"),
        (lambda raw: raw["grid"][0].update(seeds=[]), "grid[0].seeds: must be a non-empty list"),
        (lambda raw: raw["grid"][0].update(seeds=[1, 1]), "grid[0].seeds: has repeated"),
        (lambda raw: raw["grid"][0].update(labeled_fractions=[0]), "grid[0].labeled_fractions"),
        (lambda raw: raw["grid"][0].update(temperatures=[-1.0]), "grid[0].temperatures"),
        (lambda raw: raw["grid"][0].update(temperature_modes=["hot"]), "unknown mode 'hot'"),
        (lambda raw: raw["grid"][0].update(option={"k": 2}), "grid[0]: unknown keys ['option']"),
        (lambda raw: raw["grid"][0].update(options={"method": "x"}), "grid[0].options.method"),
        (lambda raw: raw.update(extra={}), "top level: unknown keys ['extra']"),
        (lambda raw: raw["defaults"].update(k=3), "defaults.k: unknown option (a distillation"),
        (lambda raw: raw["defaults"].update(arch_overrides=3), "defaults.arch_overrides: must"),
        (
            lambda raw: raw["students"]["crf"].update(arch_overrides={"lstm": 3}),
            "students.crf.arch_overrides: unknown TaggerConfig fields ['lstm']",
        ),
        (lambda raw: raw["teachers"]["crf"].update(method="x"), "teachers.crf.method: is set"),
        (lambda raw: raw["teachers"]["crf"].update(lstm=3), "teachers.crf.lstm: unknown option"),
        (
            lambda raw: (
                raw["students"]["crf"].update(kd_weight=0.5)
                or raw["grid"][0].update(options={"temprature": 2})
            ),
            "grid[0].options.temprature: unknown option",
        ),
    ],
)
def test_invalid_configs_name_the_key(tmp_path: Path, mutate, message: str) -> None:
    raw = base_config(tmp_path)
    mutate(raw)
    with pytest.raises(ConfigError) as error:
        parse_config(raw, source="unit.toml")
    assert message in str(error.value)
    assert str(error.value).startswith("unit.toml: ")


def test_load_config_reads_toml_and_reports_syntax_errors(tmp_path: Path) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(
        f"""
[experiment]
name = "toml"
output_dir = "{tmp_path / "out"}"
report = "summary.md"
[data]
train = "conll03-en:train"
dev = "conll03-en:dev"
test = "conll03-en:test"
[teachers.crf]
arch = "teacher-crf"
[students.softmax]
arch = "student-softmax"
[[grid]]
cases = ["2a"]
methods = ["struct"]
seeds = [3]
""",
        encoding="utf-8",
    )
    config = load_config(path)
    assert config.dataset == "conll03-en"
    assert config.report_path == tmp_path / "out" / "summary.md"
    assert config.plot_path == tmp_path / "out" / "summary.png"
    assert config.results_path == tmp_path / "out" / "results.jsonl"
    path.write_text("[experiment\nname = 1", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")


# ---------------------------------------------------------------------------------------------
# Grid and plan


def test_grid_expansion_and_shared_teachers(tmp_path: Path) -> None:
    raw = base_config(tmp_path)
    raw["grid"].append(
        {
            "cases": ["1a"],
            "methods": ["none", "struct", "topk"],
            "seeds": [1],
            "labeled_fractions": [0.1],
            "temperatures": [1.0, 2.0],
            "temperature_modes": ["global", "local"],
            "options": {"k": 3},
        }
    )
    config = parse_config(raw)
    points = expand_grid(config)
    # block 0: 2 cases x (1 none + 2 KD methods) x 2 seeds; block 1: 1 none + struct at 2
    # temperatures x 2 modes + topk at 2 temperatures (the baselines temper globally only)
    assert len(points) == 2 * 3 * 2 + 1 + 2 * 2 + 2
    assert {p.temperature_mode for p in points if p.method == "topk"} == {"global"}
    assert [point.seed for point in points] == sorted(point.seed for point in points)
    assert all(p.temperature is None for p in points if p.method == "none")
    plan = plan_experiment(config)
    teachers = [run for run in plan.runs if run.kind == "teacher"]
    # shared teachers: crf at seed 7 (its own), span at the grid's first seed, and the crf
    # teacher of the 10% setting trained on the labeled part only
    assert sorted((run.options["arch"], run.options["seed"]) for run in teachers) == [
        ("teacher-crf", 7),
        ("teacher-crf", 7),
        ("teacher-span", 1),
    ]
    assert sorted(run.options["labeled_fraction"] for run in teachers) == [0.1, 1.0, 1.0]
    # the no-KD students of cases 2a and 4 are the same model: one run, rows for both cases
    none_runs = [run for run in plan.runs if run.options.get("method") == "none"]
    assert len(none_runs) == 2 + 1  # 2 seeds at fraction 1, 1 seed at fraction 0.1
    for run in none_runs:
        if run.options["labeled_fraction"] == 1:
            assert sorted(labels["case"] for labels in plan.rows[run.run_id]) == ["2a", "4"]
        assert run.teacher_ids == ()
    # every teacher comes before its students, and run ids are unique
    position = {run.run_id: index for index, run in enumerate(plan.runs)}
    assert len(position) == len(plan.runs)
    for run in plan.runs:
        assert all(position[teacher] < position[run.run_id] for teacher in run.teacher_ids)
    # k only reaches Top-K students; block options reach that block's students only
    for run in plan.runs:
        assert ("k" in run.options) == (run.options.get("method") in ("topk", "topwk"))


def test_per_seed_teachers_and_full_data_teachers(tmp_path: Path) -> None:
    raw = base_config(tmp_path)
    raw["experiment"].update(teacher_seeds="per-seed", teacher_data="full")
    raw["grid"][0]["labeled_fractions"] = [1.0, 0.5]
    plan = plan_experiment(parse_config(raw))
    teachers = [run for run in plan.runs if run.kind == "teacher"]
    assert sorted((run.options["arch"], run.options["seed"]) for run in teachers) == [
        ("teacher-crf", 1),
        ("teacher-crf", 2),
        ("teacher-span", 1),
        ("teacher-span", 2),
    ]
    assert {run.options["labeled_fraction"] for run in teachers} == {1.0}


def test_run_ids_are_stable_and_depend_on_every_option(tmp_path: Path) -> None:
    first = plan_experiment(parse_config(base_config(tmp_path)))
    again = plan_experiment(parse_config(base_config(tmp_path)))
    assert [run.run_id for run in first.runs] == [run.run_id for run in again.runs]
    # moving the output directory does not change ids; a hyperparameter does
    moved = base_config(tmp_path)
    moved["experiment"]["output_dir"] = str(tmp_path / "elsewhere")
    assert [r.run_id for r in plan_experiment(parse_config(moved)).runs] == [
        r.run_id for r in first.runs
    ]
    changed = base_config(tmp_path)
    changed["teachers"]["crf"]["epochs"] = 3
    changed_plan = plan_experiment(parse_config(changed))
    old_ids = {run.run_id for run in first.runs}
    for run in changed_plan.runs:
        uses_crf_teacher = run.options["arch"] == "teacher-crf" or any(
            changed_plan.run(t).options["arch"] == "teacher-crf" for t in run.teacher_ids
        )
        assert (run.run_id in old_ids) != uses_crf_teacher


# ---------------------------------------------------------------------------------------------
# Running and resuming


class Interrupted(RuntimeError):
    pass


def fake_run_function(fail_on_call: int | None = None):
    """A run function that writes a model file and returns metrics derived from the run id;
    raises on its ``fail_on_call``-th call (1-based)."""
    calls: list[str] = []

    def run(spec, run_dir: Path, teacher_dirs) -> dict[str, dict[str, float]]:
        calls.append(spec.run_id)
        for teacher_id, teacher_dir in teacher_dirs.items():
            assert (teacher_dir / "model.txt").read_text() == teacher_id
        (run_dir / "model.txt").write_text(spec.run_id)
        if fail_on_call is not None and len(calls) == fail_on_call:
            raise Interrupted("power cut")
        score = int(spec.run_id[:4], 16) / 65535
        return {
            split: {"precision": score, "recall": score, "f1": score, "sentences_per_second": 10.0}
            for split in ("dev", "test")
        }

    run.calls = calls  # type: ignore[attr-defined]
    return run


def result_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_interrupted_experiment_resumes_without_duplicates(tmp_path: Path) -> None:
    config = parse_config(base_config(tmp_path))
    plan = plan_experiment(config)
    quiet = dict(log=lambda message: None, command="structkd experiment unit.toml")

    crashing = fake_run_function(fail_on_call=3)
    with pytest.raises(Interrupted):
        run_experiment(config, crashing, **quiet)
    assert len(crashing.calls) == 3
    interrupted = plan.run(crashing.calls[2]).directory(config)
    assert interrupted.exists() and not (interrupted / "metrics.json").exists()
    rows_after_crash = result_lines(config.results_path)
    # the two finished runs wrote their rows (2 splits per case they serve)
    finished = crashing.calls[:2]
    assert {row["run_id"] for row in rows_after_crash} == set(finished)

    resumed = fake_run_function()
    outcome = run_experiment(config, resumed, **quiet)
    assert set(resumed.calls).isdisjoint(finished)
    assert crashing.calls[2] in resumed.calls  # the interrupted run starts again
    assert len(resumed.calls) == len(plan.runs) - 2
    assert outcome.finished_before == finished
    rows = result_lines(config.results_path)
    keys = [(row["run_id"], row["case"], row["split"]) for row in rows]
    assert len(keys) == len(set(keys))
    expected = sum(len(labels) for labels in plan.rows.values()) * 2
    assert len(rows) == expected == len(read_result_keys(config.results_path))

    # a third run trains nothing and writes nothing
    idle = fake_run_function()
    outcome = run_experiment(config, idle, **quiet)
    assert idle.calls == [] and outcome.rows_appended == 0
    assert len(result_lines(config.results_path)) == expected

    required = {
        "task",
        "dataset",
        "case",
        "teacher",
        "student",
        "method",
        "temperature",
        "temperature_mode",
        "labeled_fraction",
        "seed",
        "split",
        "precision",
        "recall",
        "f1",
        "sentences_per_second",
        "commit",
    }
    for row in rows:
        assert required <= set(row)
        assert row["command"] == "structkd experiment unit.toml"
    teacher_rows = [row for row in rows if row["method"] == "teacher"]
    assert {(row["case"], row["student"]) for row in teacher_rows} == {
        ("2a", "teacher-crf"),
        ("4", "teacher-span"),
    }


def test_partial_last_line_is_repaired_and_rows_are_rewritten(tmp_path: Path) -> None:
    config = parse_config(base_config(tmp_path))
    quiet = dict(log=lambda message: None, command="test")
    run_experiment(config, fake_run_function(), **quiet)
    complete = config.results_path.read_text(encoding="utf-8")
    lines = complete.splitlines(keepends=True)
    # an append cut in the middle of the last line: that row is missing, the line is garbage
    config.results_path.write_text("".join(lines[:-1]) + lines[-1][:15], encoding="utf-8")
    outcome = run_experiment(config, fake_run_function(), **quiet)
    assert outcome.rows_appended == 1
    assert config.results_path.read_text(encoding="utf-8") == complete


def test_keep_going_skips_the_students_of_a_failed_teacher(tmp_path: Path) -> None:
    config = parse_config(base_config(tmp_path))
    plan = plan_experiment(config)
    first_teacher = plan.runs[0]
    assert first_teacher.kind == "teacher"

    def run(spec, run_dir, teacher_dirs):
        if spec.run_id == first_teacher.run_id:
            raise RuntimeError("diverged")
        return fake_run_function()(spec, run_dir, {})

    outcome = run_experiment(config, run, keep_going=True, log=lambda message: None)
    assert outcome.failed == [first_teacher.run_id]
    dependents = [r.run_id for r in plan.runs if first_teacher.run_id in r.teacher_ids]
    assert dependents and outcome.skipped == dependents
    error = (first_teacher.directory(config) / "error.txt").read_text()
    assert "diverged" in error


def metrics_unless_span_teacher(spec, run_dir: Path, teacher_dirs) -> dict:
    """A picklable run function (for worker processes) that fails for the span teacher."""
    if spec.options["arch"] == "teacher-span":
        raise RuntimeError("the span teacher diverged")
    score = {"precision": 0.5, "recall": 0.5, "f1": 0.5, "sentences_per_second": 1.0}
    return {"dev": score, "test": score}


def test_parallel_jobs_keep_going_and_failure(tmp_path: Path) -> None:
    config = parse_config(base_config(tmp_path))
    plan = plan_experiment(config)
    quiet = dict(log=lambda message: None, command="test")
    with pytest.raises(ValueError, match="jobs must be an integer >= 1"):
        run_experiment(config, metrics_unless_span_teacher, jobs=0, **quiet)
    outcome = run_experiment(config, metrics_unless_span_teacher, jobs=2, keep_going=True, **quiet)
    span_teacher = next(r for r in plan.runs if r.options["arch"] == "teacher-span")
    dependents = {r.run_id for r in plan.runs if span_teacher.run_id in r.teacher_ids}
    assert outcome.failed == [span_teacher.run_id]
    assert set(outcome.skipped) == dependents
    assert len(outcome.trained) == len(plan.runs) - 1 - len(dependents)
    rows = result_lines(config.results_path)
    assert len(rows) == len({(r["run_id"], r["case"], r["split"]) for r in rows})
    assert {r["jobs"] for r in rows} == {2}
    # without keep_going the failure propagates once the running runs have finished
    shutil.rmtree(config.output_dir)
    with pytest.raises(RuntimeError, match="diverged"):
        run_experiment(config, metrics_unless_span_teacher, jobs=2, **quiet)
    assert not (span_teacher.directory(config) / "metrics.json").exists()
    # the rerun goes on from there (the failing teacher starts over and fails again)
    with pytest.raises(RuntimeError, match="diverged"):
        run_experiment(config, metrics_unless_span_teacher, jobs=2, **quiet)
    again = result_lines(config.results_path)
    assert len(again) == len({(r["run_id"], r["case"], r["split"]) for r in again})


def test_code_commit(tmp_path: Path) -> None:
    assert code_commit(tmp_path) == "unknown"
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "a.txt").write_text("a")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "a"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert code_commit(repo) == head
    (repo / "a.txt").write_text("b")
    assert code_commit(repo) == head + "-dirty"


# ---------------------------------------------------------------------------------------------
# A real tiny experiment through the training layer


def write_tiny_conll(path: Path, n_sentences: int, seed: int) -> Path:
    """``n_sentences`` generated sentences with PER, LOC and ORG entities (IOB2)."""
    rng = random.Random(seed)
    people = [["John", "Smith"], ["Mary"], ["Ali", "Khan"], ["Li", "Wei"]]
    places = [["Paris"], ["New", "York"], ["Berlin"], ["Cairo"]]
    organizations = [["Acme", "Corp"], ["UN"], ["Reuters"]]

    def entity(words: list[str], entity_type: str) -> list[tuple[str, str]]:
        return [(w, ("B-" if i == 0 else "I-") + entity_type) for i, w in enumerate(words)]

    lines = []
    for _ in range(n_sentences):
        person, place = rng.choice(people), rng.choice(places)
        organization = rng.choice(organizations)
        tokens = [
            *entity(person, "PER"),
            ("works", "O"),
            ("for", "O"),
            *entity(organization, "ORG"),
            ("in", "O"),
            *entity(place, "LOC"),
            (".", "O"),
        ]
        lines += [f"{word} {tag}" for word, tag in tokens[rng.randrange(2) * 3 :]] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


TINY_CONFIG = """
[experiment]
name = "tiny"
output_dir = "{out}"

[data]
dataset = "toy"
train = "{train}"
dev = "{dev}"
test = "{test}"

[defaults]
epochs = 2
batch_size = 8
num_threads = 1
[defaults.arch_overrides]
glove = false
word_dim = 16
char_dim = 8
char_filters = 8
lstm_hidden = 16

[teachers.crf]
arch = "student-crf"
arch_overrides = {{ glove = false, word_dim = 16, char_filters = 8, lstm_hidden = 24 }}

[students.crf]
arch = "student-crf"

[students.softmax]
arch = "student-softmax"

[[grid]]
cases = ["1a", "2a"]
methods = ["none", "struct"]
seeds = [1]

[[grid]]
cases = ["1a"]
methods = ["struct"]
seeds = [1]
labeled_fractions = [0.5]
"""


def test_tiny_experiment_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("lightning")
    from structkd.cli import main

    config_path = tmp_path / "tiny.toml"
    config_path.write_text(
        TINY_CONFIG.format(
            out=tmp_path / "out",
            train=write_tiny_conll(tmp_path / "train.conll", 40, 1),
            dev=write_tiny_conll(tmp_path / "dev.conll", 12, 2),
            test=write_tiny_conll(tmp_path / "test.conll", 12, 3),
        ),
        encoding="utf-8",
    )
    # two runs at a time, in worker processes (the teachers first)
    assert main(["experiment", str(config_path), "--jobs", "2"]) == 0
    config = load_config(config_path)
    plan = plan_experiment(config)
    # teacher, teacher on the labeled half, 2 no-KD students, 3 structural-KD students
    assert len(plan.runs) == 7
    # arch_overrides merge key by key: the defaults' char_dim, the teacher's lstm_hidden
    teacher_sizes = plan.runs[0].options["arch_overrides"]
    assert teacher_sizes["char_dim"] == 8 and teacher_sizes["lstm_hidden"] == 24
    rows = result_lines(config.results_path)
    assert len(rows) == 2 * sum(len(labels) for labels in plan.rows.values()) == 2 * 8
    for row in rows:
        assert 0.0 <= row["f1"] <= 1.0 and row["sentences_per_second"] > 0
        assert row["commit"] != "" and row["dataset"] == "toy"
    for run in plan.runs:
        model_metrics = json.loads(
            (run.directory(config) / "model" / "metrics.json").read_text(encoding="utf-8")
        )
        data = model_metrics["data"]
        half = run.options["labeled_fraction"] == 0.5
        if run.kind == "teacher":
            # the semi-supervised teacher sees exactly the labeled half
            assert data["n_train_sentences"] == (20 if half else 40)
        else:
            assert data["n_labeled"] == (20 if half else 40)
            assert data["n_unlabeled"] == (20 if half else 0)
            assert model_metrics["distillation"]["method"] == run.options["method"]
    check_equivalent_commands(config, plan)
    report = config.report_path.read_text(encoding="utf-8")
    assert "| 1a | student-crf -> student-crf | structural KD | 1 global | 0.5 |" in report
    assert config.plot_path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    # running again trains nothing and writes nothing; --report-only re-renders
    metrics_files = sorted(config.runs_dir.glob("*/metrics.json"))
    stamps = [path.stat().st_mtime_ns for path in metrics_files]
    assert main(["experiment", str(config_path)]) == 0
    assert [path.stat().st_mtime_ns for path in metrics_files] == stamps
    assert len(result_lines(config.results_path)) == len(rows)
    config.report_path.unlink()
    assert main(["experiment", str(config_path), "--report-only"]) == 0
    assert config.report_path.read_text(encoding="utf-8") == report
    assert main(["experiment", str(config_path), "--dry-run"]) == 0
    assert "7 runs (2 teachers, 5 students): 7 finished, 0 to run" in capsys.readouterr().out


def check_equivalent_commands(config, plan) -> None:
    """Each run's ``command.sh`` parses, with the real CLI, into the options the run used."""
    import dataclasses
    import shlex

    from structkd import api
    from structkd.cli import build_parser

    captured = []
    saved = api.train, api.distill
    api.train = api.distill = lambda options: captured.append(options) or {}
    try:
        for run in plan.runs:
            run_dir = run.directory(config)
            line = (run_dir / "command.sh").read_text(encoding="utf-8").strip()
            assert "python-only" not in line
            words = shlex.split(line)
            args = build_parser().parse_args(words[1:])
            assert args.handler(args) == 0
            used = json.loads((run_dir / "model" / "metrics.json").read_text())["options"]
            assert dataclasses.asdict(captured[-1]) == used
    finally:
        api.train, api.distill = saved


# ---------------------------------------------------------------------------------------------
# Dependency parsing (task "dep"): validation, plan, rows (fake run functions; no training)

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def dep_config(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "experiment": {"name": "dep unit", "task": "dep", "output_dir": str(tmp_path / "out")},
        "data": {"train": "twt-tr:train", "dev": "twt-tr:dev", "test": "twt-tr:test"},
        "defaults": {"epochs": 2, "arch_overrides": {"lstm_hidden": 16}},
        "teachers": {
            "head-selection": {"arch": "parser-head-selection", "arch_overrides": {"arc_dim": 8}},
            "matrix-tree": {"arch": "parser-matrix-tree"},
        },
        "students": {
            "offset": {"arch": "student-dep-offset", "arch_overrides": {"hidden_dim": 4}},
            "pos": {"arch": "student-dep-pos"},
        },
        "cases": {
            "1b-hs": {"teacher": "head-selection", "student": "offset"},
            "1b-mtt": {"teacher": "matrix-tree", "student": "offset"},
            "best-pos": {"teacher": "matrix-tree", "student": "pos"},
        },
        "grid": [
            {"cases": ["1b-hs", "1b-mtt"], "methods": ["none", "token", "struct"], "seeds": [1, 2]},
            {"cases": ["best-pos"], "methods": ["none", "struct"], "seeds": [1, 2]},
        ],
    }
    raw.update(changes)
    return raw


def test_dep_config_parses_and_plans(tmp_path: Path) -> None:
    config = parse_config(dep_config(tmp_path))
    assert config.task == "dep" and config.dataset == "twt-tr"
    assert sorted(config.cases) == ["1b-hs", "1b-mtt", "best-pos"]  # no built-in NER cases
    plan = plan_experiment(config)
    teachers = [run for run in plan.runs if run.kind == "teacher"]
    assert sorted(run.options["arch"] for run in teachers) == [
        "parser-head-selection",
        "parser-matrix-tree",
    ]
    # per seed: one offset no-KD student (both offset cases), 2 x 2 KD offset students, and the
    # PoS student without KD and with structural KD
    students = [run for run in plan.runs if run.kind == "student"]
    assert len(students) == 2 * (1 + 4 + 2)
    assert {run.options["task"] for run in plan.runs} == {"dep"}
    assert {run.options["labeled_fraction"] for run in plan.runs} == {1.0}
    offset_none = [r for r in students if r.label.startswith("student-offset-none")]
    assert len(offset_none) == 2
    for run in offset_none:
        assert sorted(labels["case"] for labels in plan.rows[run.run_id]) == ["1b-hs", "1b-mtt"]
    # arch_overrides merge: the encoder size of the defaults with each model's own fields
    hs = next(r for r in teachers if r.options["arch"] == "parser-head-selection")
    assert hs.options["arch_overrides"] == {"lstm_hidden": 16, "arc_dim": 8}
    offset = offset_none[0]
    assert offset.options["arch_overrides"] == {"lstm_hidden": 16, "hidden_dim": 4}
    # the matrix-tree teacher is shared by cases 1b-mtt and best-pos
    mtt = next(r for r in teachers if r.options["arch"] == "parser-matrix-tree")
    assert sorted(labels["case"] for labels in plan.rows[mtt.run_id]) == ["1b-mtt", "best-pos"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda raw: raw["grid"][0].update(methods=["none", "topk"]),
            "grid[0].methods: method 'topk' is not defined for task 'dep'",
        ),
        (
            lambda raw: raw["grid"][1].update(methods=["posterior"]),
            "grid[1].methods: method 'posterior' is not defined for task 'dep'",
        ),
        (
            lambda raw: raw["grid"][1].update(temperature_modes=["global", "local"]),
            "grid[1].temperature_modes: task 'dep' supports the temperature modes ['global'] only",
        ),
        (
            lambda raw: raw.pop("cases"),
            "grid[0].cases: unknown case '1b-hs'; known: [] (task 'dep' has no built-in cases",
        ),
        (
            lambda raw: raw["grid"][0].update(cases=["1a"]),
            "grid[0].cases: unknown case '1a'",
        ),
        (
            lambda raw: raw["defaults"].update(arch_overrides={"arc_dim": 8}),
            "defaults.arch_overrides: unknown DepEncoderConfig (the [defaults] reach teachers "
            "and students) fields ['arc_dim']",
        ),
        (
            lambda raw: raw["students"]["pos"].update(arch_overrides={"arc_dim": 8}),
            "students.pos.arch_overrides: unknown DepTaggerConfig or DepEncoderConfig fields",
        ),
        (
            lambda raw: raw["teachers"]["matrix-tree"].update(arch_overrides={"hidden_dim": 8}),
            "teachers.matrix-tree.arch_overrides: unknown ParserConfig or DepEncoderConfig",
        ),
        (
            lambda raw: raw["teachers"]["matrix-tree"].update(arch_overrides={"mode": "x"}),
            "teachers.matrix-tree.arch_overrides: unknown ParserConfig",
        ),
        (
            lambda raw: raw["grid"][0].update(options={"arch_overrides": {"glove": False}}),
            "grid[0].options.arch_overrides: unknown DepTaggerConfig",
        ),
        (
            lambda raw: raw["experiment"].update(task="pos"),
            "experiment.task: must be one of ['ner', 'dep']",
        ),
    ],
)
def test_invalid_dep_configs_name_the_key(tmp_path: Path, mutate, message: str) -> None:
    raw = dep_config(tmp_path)
    mutate(raw)
    with pytest.raises(ConfigError) as error:
        parse_config(raw, source="dep.toml")
    assert message in str(error.value)
    assert str(error.value).startswith("dep.toml: ")


def test_ner_keeps_its_methods_and_tagger_overrides(tmp_path: Path) -> None:
    """The dep restrictions do not reach NER configs (nor do dep model fields)."""
    raw = base_config(tmp_path)
    raw["grid"][0].update(methods=["posterior"], labeled_fractions=[0.5])
    raw["grid"][0]["temperature_modes"] = ["local"]
    parse_config(raw)
    raw["defaults"]["arch_overrides"] = {"upos_dim": 3}
    with pytest.raises(ConfigError, match="unknown TaggerConfig fields \\['upos_dim'\\]"):
        parse_config(raw)


def test_the_dep_experiment_configs_are_valid() -> None:
    config = load_config(EXPERIMENTS / "dep.toml")
    plan = plan_experiment(config)
    assert config.task == "dep" and config.defaults["num_threads"] == 1
    teachers = [run for run in plan.runs if run.kind == "teacher"]
    assert sorted(run.options["arch"] for run in teachers) == [
        "parser-head-selection",
        "parser-matrix-tree",
        "parser-mean-field",
        "parser-projective",
        "parser-sibling-exact",
    ]
    assert {run.options["seed"] for run in teachers} == {1}  # shared across student seeds
    # offset: no KD (3 seeds, one run for all five cases), Token and structural KD from each of
    # the 5 teachers; PoS: no KD and structural KD
    assert len(plan.runs) == 5 + 3 + 5 * 2 * 3 + 2 * 3
    assert {labels["seed"] for rows in plan.rows.values() for labels in rows} == {1, 2, 3}
    demo = load_config(EXPERIMENTS / "dep-demo.toml")
    demo_plan = plan_experiment(demo)
    assert demo.task == "dep" and demo.defaults["max_train_sentences"] == 300
    assert len(demo_plan.runs) == 2 + 1 + 2 * 2 + 2


def fake_dep_run_function(percent: bool = False):
    """Dep metrics derived from the run id (``percent``: UAS/LAS in percent, which is wrong)."""
    calls: list[str] = []

    def run(spec, run_dir: Path, teacher_dirs) -> dict[str, dict[str, float]]:
        calls.append(spec.run_id)
        for teacher_id, teacher_dir in teacher_dirs.items():
            assert (teacher_dir / "model.txt").read_text() == teacher_id
        (run_dir / "model.txt").write_text(spec.run_id)
        uas = int(spec.run_id[:4], 16) / 65535
        scale = 100.0 if percent else 1.0
        well_formed = 1.0 if spec.kind == "teacher" else 0.9
        return {
            split: {
                "uas": scale * uas,
                "las": scale * uas * 0.8,
                "well_formed_rate": well_formed,
                "words": 100,
                "sentences_per_second": 50.0,
            }
            for split in ("dev", "test")
        }

    run.calls = calls  # type: ignore[attr-defined]
    return run


def test_dep_rows_resume_and_report(tmp_path: Path) -> None:
    from structkd.experiment import write_report

    config = parse_config(dep_config(tmp_path))
    plan = plan_experiment(config)
    messages: list[str] = []
    crashing = fake_run_function(fail_on_call=4)  # NER metrics: refused, not written

    def crash_or_dep(spec, run_dir, teacher_dirs):
        if len(crashing.calls) == 3:
            return crashing(spec, run_dir, teacher_dirs)  # the 4th call raises
        crashing.calls.append(spec.run_id)
        return fake_dep_run_function()(spec, run_dir, teacher_dirs)

    with pytest.raises(Interrupted):
        run_experiment(config, crash_or_dep, log=messages.append, command="c")
    assert any("test LAS" in message for message in messages)
    resumed = fake_dep_run_function()
    outcome = run_experiment(config, resumed, log=messages.append, command="c")
    assert len(resumed.calls) == len(plan.runs) - 3 and len(outcome.finished_before) == 3
    rows = result_lines(config.results_path)
    assert len(rows) == 2 * sum(len(labels) for labels in plan.rows.values())
    assert len({(r["run_id"], r["case"], r["split"]) for r in rows}) == len(rows)
    for row in rows:
        assert {"uas", "las", "well_formed_rate", "sentences_per_second"} <= set(row)
        assert not {"precision", "recall", "f1", "per_type"} & set(row)
        assert row["task"] == "dep" and row["dataset"] == "twt-tr"
        assert row["las"] == pytest.approx(0.8 * row["uas"])
        assert row["well_formed_rate"] == (1.0 if row["method"] == "teacher" else 0.9)
    report, plot = write_report(config.results_path, config.report_path)
    text = report.read_text(encoding="utf-8")
    assert "## dep: twt-tr" in text and "| test UAS | test LAS | dev LAS |" in text
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_dep_metrics_must_be_fractions(tmp_path: Path) -> None:
    config = parse_config(dep_config(tmp_path))
    quiet = dict(log=lambda message: None, command="c")
    with pytest.raises(ValueError, match="'uas' must be a fraction in \\[0, 1\\]; got"):
        run_experiment(config, fake_dep_run_function(percent=True), **quiet)

    def ner_metrics(spec, run_dir, teacher_dirs):
        score = {"precision": 0.5, "recall": 0.5, "f1": 0.5, "sentences_per_second": 1.0}
        return {"dev": score, "test": score}

    shutil.rmtree(config.output_dir)
    with pytest.raises(ValueError, match="dev metric 'uas' must be a finite number; got None"):
        run_experiment(config, ner_metrics, **quiet)
    assert not config.results_path.exists()


def test_training_layer_run_passes_dep_options(tmp_path: Path, monkeypatch) -> None:
    """``TrainingLayerRun`` on a dep plan: typed options with ``task="dep"`` reach
    ``structkd.api.train``/``distill``, a student gets its teacher's model directory and
    ``labeled_fraction=None`` (all of train labeled)."""
    from structkd import api
    from structkd.experiment import TrainingLayerRun, runner
    from structkd.train.options import DistillOptions, TrainOptions

    made: list[tuple[str, dict[str, Any]]] = []
    real_train_options, real_distill_options = runner.TrainOptions, runner.DistillOptions

    def recording(kind, real):
        def make(**kwargs):
            made.append((kind, kwargs))
            return real(**kwargs)

        return make

    score = {"uas": 0.5, "las": 0.4, "well_formed_rate": 1.0, "sentences_per_second": 1.0}
    passed: list[Any] = []  # the options objects train and distill receive

    def fake_training(options):
        passed.append(options)
        return {"dev": score, "test": score}

    config = parse_config(dep_config(tmp_path))  # (reads the real options classes)
    plan = plan_experiment(config)
    monkeypatch.setattr(runner, "TrainOptions", recording("train", real_train_options))
    monkeypatch.setattr(runner, "DistillOptions", recording("distill", real_distill_options))
    monkeypatch.setattr(api, "train", fake_training)
    monkeypatch.setattr(api, "distill", fake_training)
    outcome = run_experiment(
        config, TrainingLayerRun(config.cache_dir), log=lambda message: None, command="c"
    )
    assert len(outcome.trained) == len(plan.runs) == len(made) == len(passed)
    for (kind, kwargs), run, options in zip(made, plan.runs, passed, strict=True):
        assert kind == ("train" if run.kind == "teacher" else "distill")
        assert type(options) is (TrainOptions if run.kind == "teacher" else DistillOptions)
        assert kwargs["task"] == "dep" and kwargs["arch"] == run.options["arch"]
        if run.kind == "teacher":
            assert "labeled_fraction" not in kwargs
        else:
            assert kwargs["labeled_fraction"] is None and options.labeled_fraction is None
            expected = [str(plan.run(t).directory(config) / "model") for t in run.teacher_ids]
            assert kwargs["teachers"] == expected
            assert kwargs["method"] == run.options["method"]
        command = (run.directory(config) / "command.sh").read_text(encoding="utf-8")
        assert "--task dep" in command and "--labeled-fraction" not in command
    # each command.sh, run through the real CLI, gives the options the run used
    import dataclasses
    import shlex

    from structkd.cli import build_parser

    used = list(passed)
    for run, options in zip(plan.runs, used, strict=True):
        line = (run.directory(config) / "command.sh").read_text(encoding="utf-8").strip()
        assert "python-only" not in line
        args = build_parser().parse_args(shlex.split(line)[1:])
        assert args.handler(args) == 0
        assert dataclasses.asdict(passed[-1]) == dataclasses.asdict(options)


# ---------------------------------------------------------------------------------------------
# A third task: the config, the plan, the rows and the report follow its facts alone


def test_a_third_task_runs_through_its_facts(tmp_path: Path) -> None:
    from structkd.experiment import write_report
    from structkd.tasks import TASKS, CaseSpec, Task, register_task

    class ToyTask(Task):
        name = "toy3"
        title = "toy"
        scores = ("acc",)
        primary_metric = "acc"
        report_scores = ("acc",)
        score_titles: ClassVar = {"acc": "Acc"}
        report_intro = "Toy accuracy in percent."
        kd_methods = ("none", "struct")
        cases: ClassVar = {"c": CaseSpec("big", "small", "big -> small")}
        default_archs: ClassVar = {"train": "big", "distill": "small"}

        def architectures(self):
            return ("big", "small")

        def override_fields(self, kind):
            return "ToyConfig", frozenset({"width"})

        def train(self, options):
            raise NotImplementedError

        distill = evaluate = predict = prepare_train = prepare_distill = count_sentences = train

        def score_line(self, name, scores):
            return f"{name} {scores['acc']}"

        def format_scores(self, result):
            return str(result)

    register_task(ToyTask())
    try:
        raw = {
            "experiment": {"name": "toy", "task": "toy3", "output_dir": str(tmp_path / "out")},
            "data": {"train": "toy:train", "dev": "toy:dev", "test": "toy:test"},
            "defaults": {"arch_overrides": {"width": 3}},
            "teachers": {"big": {"arch": "big"}},
            "students": {"small": {"arch": "small"}},
            "grid": [{"cases": ["c"], "methods": ["none", "struct"], "seeds": [1, 2]}],
        }
        config = parse_config(raw)
        assert sorted(config.cases) == ["c"]  # the task's built-in case
        for change, message in [
            ({"methods": ["token"]}, "method 'token' is not defined for task 'toy3'"),
            ({"labeled_fractions": [0.5]}, "task 'toy3' distills on the labeled training data"),
            ({"temperature_modes": ["local"]}, "task 'toy3' supports the temperature modes"),
        ]:
            bad = {**raw, "grid": [{**raw["grid"][0], **change}]}
            with pytest.raises(ConfigError, match=message):
                parse_config(bad)

        def run(spec, run_dir, teacher_dirs):
            acc = 0.9 if spec.kind == "teacher" else 0.7 + 0.05 * (spec.options["method"] != "none")
            return {s: {"acc": acc, "sentences_per_second": 10.0} for s in ("dev", "test")}

        messages: list[str] = []
        outcome = run_experiment(config, run, log=messages.append, command="c")
        assert len(outcome.trained) == 1 + 2 * 2
        assert any("test ACC 0.9000" in message for message in messages)
        rows = result_lines(config.results_path)
        assert {row["task"] for row in rows} == {"toy3"}
        assert all(set(row) >= {"acc", "sentences_per_second"} for row in rows)
        report, _ = write_report(config.results_path, config.report_path)
        text = report.read_text(encoding="utf-8")
        assert text.startswith("# experiment\n\nToy accuracy in percent.\n")
        header = (
            "| case | teacher -> student | method | T | test Acc | dev Acc | test sentences/s |"
        )
        assert header in text
        assert (
            "| c | big -> small | structural KD | 1 global | 75.00 ± 0.00 (n=2) | 75.00 ± 0.00 |"
            in text
        )
        assert "Structural KD beats no KD in case c (big -> small, T=1 global)" in text
        with pytest.raises(ValueError, match="'acc' must be a fraction"):
            shutil.rmtree(config.output_dir)
            run_experiment(
                config,
                lambda spec, run_dir, teachers: {
                    s: {"acc": 90.0, "sentences_per_second": 1.0} for s in ("dev", "test")
                },
                log=messages.append,
                command="c",
            )
    finally:
        TASKS.pop("toy3", None)


def test_a_non_default_kd_schedule_labels_its_rows() -> None:
    """experiments/ner-sweep.toml: the constant and reference blocks' KD students carry
    ``kd_schedule`` in their rows; linear (the default), no-KD and teacher rows do not."""
    from pathlib import Path

    from structkd.experiment import load_config, plan_experiment

    config = Path(__file__).parents[2] / "experiments" / "ner-sweep.toml"
    plan = plan_experiment(load_config(config))
    labels = [label for rows in plan.rows.values() for label in rows]
    schedules = [label.get("kd_schedule") for label in labels]
    assert schedules.count("constant") == schedules.count("reference") == 12
    assert all(label.get("kd_schedule") is None for label in labels if label["method"] == "none")
    assert len(plan.runs) == 39


def test_teacher_targets_label_their_rows_and_the_report_keeps_them_apart() -> None:
    """experiments/ner-folds.toml: the fold teacher's KD students carry ``teacher_targets`` in
    their rows (out-of-fold and in-fold rows are different table rows); the no-KD students are
    shared by both cases."""
    from pathlib import Path

    from structkd.experiment import load_config, plan_experiment
    from structkd.experiment.report import summarize

    config = Path(__file__).parents[2] / "experiments" / "ner-folds.toml"
    plan = plan_experiment(load_config(config))
    labels = [label for rows in plan.rows.values() for label in rows]
    targets = [label.get("teacher_targets") for label in labels]
    assert targets.count("out-of-fold") == 9 and targets.count("in-fold") == 6
    assert all(label.get("teacher_targets") is None for label in labels if label["case"] == "1a")
    assert len(plan.runs) == 38  # 2 teachers, 3 no-KD, 33 KD students
    folds = [run for run in plan.runs if run.options.get("folds") == 5]
    assert len(folds) == 1
    rows = [
        {**label, "split": "test", "f1": 0.5 + 0.01 * label["seed"]}
        for label in labels
        if label["method"] == "struct"
    ]
    variants = sorted((summary.case, summary.variant or "") for summary in summarize(rows))
    assert variants == [
        ("1a", ""),
        ("1a", "constant λ"),
        ("1a", "reference λ"),
        ("1a-folds", "in-fold targets"),
        ("1a-folds", "out-of-fold targets"),
        ("1a-folds", "reference λ, out-of-fold targets"),
    ]


def test_unlabeled_text_reaches_kd_students_and_teacher_vocabularies(tmp_path: Path) -> None:
    from structkd.experiment import parse_config, plan_experiment

    raw = base_config(tmp_path)
    raw["data"]["unlabeled"] = "text.txt"
    raw["grid"] = [{"cases": ["1a"], "methods": ["none", "struct"], "seeds": [1]}]
    plan = plan_experiment(parse_config(raw))
    by_method = {run.options.get("method", "teacher"): run.options for run in plan.runs}
    assert by_method["struct"]["unlabeled"] == "text.txt"
    assert "unlabeled" not in by_method["none"]  # without KD unlabeled text teaches nothing
    assert by_method["teacher"]["vocab_text"] == ["text.txt"]
    plain = plan_experiment(parse_config(base_config(tmp_path)))
    assert all("unlabeled" not in run.options for run in plain.runs)
    dep = dep_config(tmp_path)  # dep learns from unlabeled text too (CoNLL-U with UPOS)
    dep["data"]["unlabeled"] = "text.conllu"
    dep["grid"][0].update(labeled_fractions=[1.0, 0.1])
    assert parse_config(dep).unlabeled == "text.conllu"


# ---------------------------------------------------------------------------------------------
# Ensembles: a case with several teachers


def ensemble_config(tmp_path: Path) -> dict[str, Any]:
    raw = dep_config(tmp_path)
    raw["cases"]["1b-ens"] = {"teacher": ["head-selection", "matrix-tree"], "student": "offset"}
    raw["grid"].append({"cases": ["1b-ens"], "methods": ["none", "struct"], "seeds": [1, 2]})
    return raw


def test_an_ensemble_case_distills_from_every_teacher(tmp_path: Path, monkeypatch) -> None:
    """A case whose ``teacher`` is a list: the teachers are the single-teacher cases' runs (same
    ids), the student reads all of them in order and its rows name both architectures; each
    teacher has rows of its own in the ensemble's case; the training layer gets one model
    directory per teacher (``--teacher`` twice)."""
    from structkd import api
    from structkd.experiment import TrainingLayerRun, write_report

    single = plan_experiment(parse_config(dep_config(tmp_path)))
    config = parse_config(ensemble_config(tmp_path))
    plan = plan_experiment(config)
    teachers = {run.options["arch"]: run for run in plan.runs if run.kind == "teacher"}
    assert {run.run_id for run in teachers.values()} == {
        run.run_id for run in single.runs if run.kind == "teacher"
    }
    ensemble = [run for run in plan.runs if "from-head-selection+matrix-tree" in run.label]
    assert [run.options["seed"] for run in ensemble] == [1, 2]
    hs, mtt = teachers["parser-head-selection"], teachers["parser-matrix-tree"]
    for run in ensemble:
        assert run.teacher_ids == (hs.run_id, mtt.run_id)
        (labels,) = plan.rows[run.run_id]
        assert labels["case"] == "1b-ens" and labels["method"] == "struct"
        assert labels["teacher"] == "parser-head-selection+parser-matrix-tree"
    for teacher in (hs, mtt):
        cases = {labels["case"]: labels for labels in plan.rows[teacher.run_id]}
        assert "1b-ens" in cases and cases["1b-ens"]["teacher"] == teacher.options["arch"]
    # the no-KD students are shared with the single-teacher offset cases
    assert sum(run.kind == "student" for run in plan.runs) == (
        sum(run.kind == "student" for run in single.runs) + 2
    )

    passed: list[Any] = []

    def fake_training(options):
        passed.append(options)
        score = {"uas": 0.5, "las": 0.4, "well_formed_rate": 1.0, "sentences_per_second": 1.0}
        return {"dev": score, "test": score}

    monkeypatch.setattr(api, "train", fake_training)
    monkeypatch.setattr(api, "distill", fake_training)
    run_experiment(config, TrainingLayerRun(config.cache_dir), log=lambda m: None, command="c")
    by_seed = {o.seed: o for o in passed if len(getattr(o, "teachers", None) or ()) == 2}
    assert sorted(by_seed) == [1, 2]
    for options in by_seed.values():
        assert [Path(path).parent.name for path in options.teachers] == [
            hs.directory(config).name,
            mtt.directory(config).name,
        ]
    command = (ensemble[0].directory(config) / "command.sh").read_text(encoding="utf-8")
    assert command.count("--teacher ") == 2
    rows = result_lines(config.results_path)
    assert {r["teacher"] for r in rows if r["case"] == "1b-ens" and r["method"] == "struct"} == {
        "parser-head-selection+parser-matrix-tree"
    }
    report, _ = write_report(config.results_path, config.report_path)
    text = report.read_text(encoding="utf-8")
    assert "parser-head-selection+parser-matrix-tree -> student-dep-offset" in text


@pytest.mark.parametrize(
    ("teacher", "message"),
    [
        (["matrix-tree"], "cases.1b-ens.teacher: an ensemble needs at least two teachers"),
        (["matrix-tree", "matrix-tree"], "cases.1b-ens.teacher: names a teacher twice"),
        (["matrix-tree", 3], "cases.1b-ens.teacher: must be a list of non-empty strings"),
        (["matrix-tree", "mean-field"], "case '1b-ens' needs the teacher 'mean-field'"),
    ],
)
def test_invalid_ensembles_name_the_key(tmp_path: Path, teacher, message: str) -> None:
    raw = ensemble_config(tmp_path)
    raw["cases"]["1b-ens"]["teacher"] = teacher
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    assert message in str(error.value)
