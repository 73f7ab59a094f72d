"""The task protocol: what differs between structured prediction tasks (NER, dependency parsing,
a third one), named once.

A task is a plug-in: a subclass of ``Task`` registered in ``structkd.tasks.TASKS`` under its
``name``. The training engine (``structkd.train``) never imports a task; it receives one as an
object and calls the hooks below (``structkd.train.protocol.TrainableTask`` lists the subset it
needs). The experiment runner, the report and the CLI read the class attributes instead of
branching on a task's name.

Two kinds of members:

* **facts** (class attributes): ``name``, ``title``, the metrics (``scores``: the fractions
  every evaluation returns; ``primary_metric``: the one model selection and reports compare on;
  ``report_scores``: what a report summarizes), the KD methods and temperature modes the task
  implements, whether it can learn from unlabeled text, its built-in experiment cases, its
  architectures;
* **hooks** (methods): the commands (``train``, ``distill``, ``evaluate``), serving
  (``load_predictor``, ``export``, ``write_documents``: what ``structkd.load``, ``structkd
  export`` and ``structkd predict`` call), the pieces the engine calls while training
  (``forward``, ``gold_loss``, ``kd_loss``, ``dev_counts``, ``dev_scores``, ``save_model``,
  ``load_model``, ``evaluate_model``) and the printing of its scores.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TextIO

__all__ = ["CaseSpec", "ModuleTask", "Task"]


@dataclass(frozen=True)
class CaseSpec:
    """A built-in distillation scenario of a task: the names of the teacher and student tables
    of an experiment config, and a description."""

    teacher: str
    student: str
    description: str = ""


class Task(ABC):
    """One structured prediction task (see the module docstring)."""

    name: ClassVar[str]
    """The registry key and the ``--task`` value (``"ner"``, ``"dep"``)."""
    title: ClassVar[str]
    """For people: ``"NER"``, ``"dependency parsing"``."""
    scores: ClassVar[tuple[str, ...]]
    """The scores (fractions in ``[0, 1]``) every evaluation of a split returns."""
    optional_scores: ClassVar[tuple[str, ...]] = ()
    """Further fractions an evaluation may return (``None`` when not defined)."""
    primary_metric: ClassVar[str]
    """The score model selection (``dev_<metric>``) and reports compare on."""
    report_scores: ClassVar[tuple[str, ...]]
    """The scores a report summarizes, the primary one first."""
    score_titles: ClassVar[Mapping[str, str]] = {}
    """Column titles of the scores (``{"f1": "F1"}``)."""
    secondary_metric: ClassVar[str | None] = None
    """A second score a report compares methods on beside the primary one (dep: ``uas``)."""
    teacher_margin: ClassVar[tuple[str, float] | None] = None
    """``(score, points)``: a report checks that each teacher beats the no-KD student of its case
    by at least that many test points of that score (``None``: no check)."""
    report_intro: ClassVar[str] = ""
    """The paragraph a results report opens its section of this task with."""
    kd_methods: ClassVar[tuple[str, ...]]
    """The methods of ``structkd.distill.methods.METHODS`` this task implements (``none``
    included)."""
    temperature_modes: ClassVar[tuple[str, ...]] = ("global",)
    """The temperature modes of its structural KD."""
    learns_from_unlabeled: ClassVar[bool] = False
    """Whether a student can distill on unlabeled text (``--unlabeled``, ``--labeled-fraction``)."""
    fold_teachers: ClassVar[bool] = False
    """Whether ``train --folds K`` trains fold teachers of this task and its students distill
    from them with out-of-fold targets (``structkd.train.folds``; the hook ``train_folds``)."""
    cases: ClassVar[Mapping[str, CaseSpec]] = {}
    """Built-in experiment cases (an experiment config may add its own)."""
    default_archs: ClassVar[Mapping[str, str]]
    """The default ``--arch`` per command: ``{"train": ..., "distill": ...}``."""

    # -- facts derived from the class attributes ------------------------------------------------

    def default_arch(self, command: str) -> str:
        """The architecture ``command`` (``train`` or ``distill``) uses without ``--arch``."""
        return self.default_archs[command]

    @abstractmethod
    def architectures(self) -> tuple[str, ...]:
        """The ``--arch`` names of the task."""

    @abstractmethod
    def override_fields(self, kind: str) -> tuple[str, frozenset[str]]:
        """What ``arch_overrides`` may change for a ``kind`` of model (``"teacher"``,
        ``"student"`` or ``"both"``): a description of the config and its field names."""

    def check_distill_options(self, options: Any) -> None:
        """``ValueError`` when ``DistillOptions`` ask for what this task does not implement."""
        from structkd.train.options import check_distill_options

        check_distill_options(
            options,
            methods=self.kd_methods,
            temperature_modes=self.temperature_modes,
            learns_from_unlabeled=self.learns_from_unlabeled,
            task_name=self.name,
        )
        if options.teacher_targets == "out-of-fold" and not self.fold_teachers:
            raise ValueError(
                f"--teacher-targets out-of-fold: --task {self.name} has no fold teachers"
            )

    # -- commands ---------------------------------------------------------------------------------

    @abstractmethod
    def count_sentences(self, data: str, *, max_sentences: int | None = None) -> int:
        """The number of labeled sentences of ``data`` (a data set name or a file), at most
        ``max_sentences``."""

    @abstractmethod
    def prepare_train(self, options: Any) -> Any:
        """Check ``TrainOptions``, read the data and build the seeded model of a ``train`` run:
        a ``structkd.train.fit.PreparedRun`` (the model, its ``TrainingHooks``, the parts and
        collators)."""

    @abstractmethod
    def prepare_distill(self, options: Any) -> Any:
        """Check ``DistillOptions`` (``check_distill_options`` and the task's own pairings),
        build or reuse the caches of teacher outputs and build the seeded student of a
        ``distill`` run: a ``structkd.train.fit.PreparedRun``."""

    def train(self, options: Any) -> dict[str, Any]:
        """Train a model on gold labels (``TrainOptions``) with the engine's fit loop; returns
        the metrics written to ``metrics.json`` (plus ``model_dir``). With ``options.folds``:
        ``train_folds``."""
        from structkd.train.fit import fit

        if getattr(options, "folds", None) is not None:
            return self.train_folds(options)
        return fit(self.prepare_train(options))

    def train_folds(self, options: Any) -> dict[str, Any]:
        """Train ``options.folds`` fold teachers into one directory (``structkd.train.folds``);
        returns the metrics of the mixture. A task without ``fold_teachers`` refuses."""
        raise ValueError(f"--task {self.name} cannot train fold teachers (--folds)")

    def distill(self, options: Any) -> dict[str, Any]:
        """Train a student from teachers (``DistillOptions``) with the engine's fit loop; returns
        the metrics written to ``metrics.json`` (plus ``model_dir``)."""
        from structkd.train.fit import fit

        return fit(self.prepare_distill(options))

    @abstractmethod
    def evaluate(
        self,
        model_dir: str | os.PathLike[str],
        data: str,
        *,
        batch_size: int = 64,
        device: str = "cpu",
        max_sentences: int | None = None,
        include_punct: bool = False,
        scheme: str = "auto",
    ) -> dict[str, Any]:
        """The scores of the model in ``model_dir`` on the labeled ``data``, and its speed.
        ``include_punct`` and ``scheme`` (the tag scheme of tagged data) are options of some
        tasks; a task refuses a value it cannot honour."""

    # -- serving ----------------------------------------------------------------------------------

    output_formats: ClassVar[tuple[str, ...]] = ("json",)
    """What ``structkd predict --format`` can write for this task (the first is the default)."""

    def load_predictor(
        self,
        model_dir: str | os.PathLike[str],
        *,
        batch_size: int = 64,
        num_threads: int | None = None,
        device: str = "cpu",
        scheme: str = "bioes",
    ) -> Any:
        """A ``structkd.serve.predictor.Predictor`` for the model in ``model_dir``: a trained
        model directory (torch) or an exported one (``export.json``; served without torch).
        ``scheme``: the tag scheme of a tagger's token tags (``bioes`` or ``iob2``); a task
        that writes no tags refuses any other value than the default. A task without
        predictors refuses (``ValueError``)."""
        raise ValueError(f"the {self.title} task has no predictor (structkd.load)")

    def export(
        self, model_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, format: str
    ) -> dict[str, Any]:
        """Export the model in ``model_dir`` to ``out`` in ``format`` (``"onnx"``); returns the
        manifest written (``structkd.serve.manifest``). A task without export refuses."""
        raise ValueError(f"the {self.title} task cannot export its models")

    def write_documents(
        self, stream: TextIO, documents: Any, *, format: str, scheme: str = "bioes"
    ) -> int:
        """Write predicted ``Document``s to ``stream`` in ``format`` (one of ``output_formats``);
        returns the number of sentences written. The default writes JSON lines."""
        if format != "json":
            raise ValueError(f"{self.title} predictions can be written as json; got {format!r}")
        from structkd.serve.results import write_json_lines

        write_json_lines(stream, documents)
        return sum(len(document.sentences) for document in documents)

    # -- printing ---------------------------------------------------------------------------------

    @abstractmethod
    def score_line(self, name: str, scores: Mapping[str, Any]) -> str:
        """One line of a split's scores (``name``: ``dev``, ``test``, ``all``)."""

    @abstractmethod
    def format_scores(self, result: Mapping[str, Any]) -> str:
        """What ``structkd evaluate`` prints for ``result``."""

    def result_scores(self, split: Mapping[str, Any]) -> dict[str, Any]:
        """The scores of one split kept in an experiment's results row."""
        return {name: split.get(name) for name in (*self.scores, *self.optional_scores)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class ModuleTask(Task):
    """A ``Task`` whose commands live in a module, ``commands_module``, imported when a command
    runs (so that the registry, the CLI's ``--help`` and the experiment planner stay cheap). That
    module defines ``count_sentences(data, *, max_sentences)``, ``prepare_train(options)``,
    ``prepare_distill(options)`` and ``evaluate(model_dir, data, **options)`` (and
    ``train_folds(options)`` for a task with ``fold_teachers``); the options are checked here
    first. Serving lives in ``serving_module`` (below)."""

    commands_module: ClassVar[str]
    serving_module: ClassVar[str]
    """The module of the task's predictors and export, importable without torch: it defines
    ``load_predictor(model_dir, *, batch_size, num_threads, device, scheme)``,
    ``export(model_dir, out, *, format)`` and ``write_documents(stream, documents, *, format,
    scheme)`` (``Task``'s hooks of the same names)."""

    def commands(self) -> Any:
        """The module of the task's commands."""
        return importlib.import_module(self.commands_module)

    def serving(self) -> Any:
        """The module of the task's predictors (no torch at import)."""
        return importlib.import_module(self.serving_module)

    def load_predictor(
        self,
        model_dir: str | os.PathLike[str],
        *,
        batch_size: int = 64,
        num_threads: int | None = None,
        device: str = "cpu",
        scheme: str = "bioes",
    ) -> Any:
        return self.serving().load_predictor(
            model_dir, batch_size=batch_size, num_threads=num_threads, device=device, scheme=scheme
        )

    def export(
        self, model_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, format: str
    ) -> dict[str, Any]:
        return self.serving().export(model_dir, out, format=format)

    def write_documents(
        self, stream: TextIO, documents: Any, *, format: str, scheme: str = "bioes"
    ) -> int:
        if format not in self.output_formats:
            raise ValueError(
                f"{self.title} predictions can be written as {', '.join(self.output_formats)}; "
                f"got {format!r}"
            )
        return self.serving().write_documents(stream, documents, format=format, scheme=scheme)

    def count_sentences(self, data: str, *, max_sentences: int | None = None) -> int:
        return self.commands().count_sentences(data, max_sentences=max_sentences)

    def prepare_train(self, options: Any) -> Any:
        from structkd.train.options import check_options

        check_options(options)
        return self.commands().prepare_train(options)

    def prepare_distill(self, options: Any) -> Any:
        self.check_distill_options(options)
        return self.commands().prepare_distill(options)

    def train_folds(self, options: Any) -> dict[str, Any]:
        if not self.fold_teachers:
            return super().train_folds(options)
        from structkd.train.options import check_options

        check_options(options)
        return self.commands().train_folds(options)

    def evaluate(
        self, model_dir: str | os.PathLike[str], data: str, **options: Any
    ) -> dict[str, Any]:
        return self.commands().evaluate(model_dir, data, **options)
