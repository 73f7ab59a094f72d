"""Fold teachers (``structkd train --folds K``): K teachers, each trained on the training sentences
outside its fold, saved as one model directory that acts as one teacher. Task-agnostic: the fold
assignment, the directory format, and the loop that trains the K folds (``fit_folds``); a task
supplies its data, its per-fold run and the scores of the mixture.

Why: a teacher's marginals on its own training sentences are nearly the gold tags (it memorized
them), so distilling on them teaches little beyond gold. With folds, the targets of a training
sentence in fold ``k`` come from fold teacher ``k``, which never saw it (**out-of-fold**); on any
other sentence they are the **mixture** ``P = (1/K) sum_k P_k`` of the K fold teachers, whose
marginals are the mean of theirs (exact for the KD losses, which are linear in the teacher's
marginals). The mixture is also the teacher's own prediction (its evaluation and prediction).

**Assignment** (``assign_folds``): by sentence content, ``sentence_key`` (a hash of the tokens):
identical sentences are one group and share a fold (CoNLL-2003 repeats many sentences; a duplicate
split across folds would be seen by every fold teacher). Groups are placed largest first, ties in
an order drawn from ``seed``, each into the fold with the fewest sentences so far (fold sizes
differ by at most the largest group: by at most 1 without duplicates); deterministic given the
keys (in any order) and ``seed``.

**Directory** (``OUT``)::

    folds.json      format, task, K, seed, the training data, the keys of each fold's sentences,
                    the fold directories and the SHA-256 of each one's model.pt; "complete": true
                    is written last (the completion marker of the whole directory)
    metrics.json    the mixture's dev/test scores, each fold's metrics, sizes and timings
    fold-1/ .. fold-K/   complete model directories (``structkd.train.checkpoint``); fold-k was
                    trained without the sentences of fold k

``read_fold_model`` refuses an unfinished directory, one missing a fold or whose fold models
changed after training (``ValueError`` naming the file and the problem).

**Targets** (what every task's distillation shares): ``read_fold_teachers`` (which ``--teacher``
directories are fold teachers), ``teacher_targets`` (the ``--teacher-targets`` mode),
``build_fold_entries`` (which sentences each fold teacher is run on, and the cache entries of
them: its held-out fold and the sentences none of them trained on for out-of-fold targets, every
sentence for in-fold ones) and ``FoldEntries`` (those entries, and how a batch reads them:
``plans``, ``locate``). A task supplies the building of one entry and the mixing of its targets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from structkd.train.checkpoint import (
    FOLDS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    clear_outputs,
    file_sha256,
    write_json,
)
from structkd.train.options import TEACHER_TARGETS, DistillOptions, TrainOptions

__all__ = [
    "FOLDS_FILE",
    "FOLDS_FORMAT",
    "TEACHER_TARGETS",
    "FoldAssignment",
    "FoldEntries",
    "FoldModel",
    "assign_folds",
    "build_fold_entries",
    "fit_folds",
    "fold_directory_name",
    "is_fold_directory",
    "read_fold_model",
    "read_fold_teachers",
    "sentence_key",
    "teacher_targets",
]

FOLDS_FORMAT = 1
_KEY_HEX = 20  # 80 bits: no collision among 10^6 distinct sentences but with probability ~1e-12


def sentence_key(tokens: Iterable[str]) -> str:
    """The content key of a sentence: the first 80 bits (hex) of the SHA-256 of its tokens joined
    by U+001F (the tags are not part of it: a teacher reads the tokens)."""
    text = "\x1f".join(tokens)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_KEY_HEX]


def _draw(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}\x1e{key}".encode()).hexdigest()


def assign_folds(keys: Sequence[str], k: int, seed: int = 0) -> dict[str, int]:
    """``key -> fold`` (``0..k-1``) of the distinct sentence ``keys`` (one per sentence, repeats
    for duplicate sentences): see the module docstring. ``ValueError`` for ``k < 2`` or more
    folds than distinct sentences."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"--folds must be an integer >= 2; got {k!r}")
    counts = Counter(keys)
    if k > len(counts):
        raise ValueError(
            f"--folds {k}: the training data has only {len(counts)} distinct sentences "
            f"({len(keys)} in all); use at most {len(counts)} folds"
        )
    order = sorted(counts, key=lambda key: (-counts[key], _draw(seed, key)))
    sizes = [(0, fold) for fold in range(k)]  # a heap of (sentences so far, fold)
    folds = {}
    for key in order:
        size, fold = heapq.heappop(sizes)
        folds[key] = fold
        heapq.heappush(sizes, (size + counts[key], fold))
    return folds


@dataclass(frozen=True)
class FoldAssignment:
    """Which fold each distinct training sentence is in: ``folds`` ``key -> 0..k-1``."""

    k: int
    seed: int
    folds: dict[str, int]

    @classmethod
    def of(cls, keys: Sequence[str], k: int, seed: int = 0) -> FoldAssignment:
        """The assignment of training sentences with these content keys (``assign_folds``)."""
        return cls(k, seed, assign_folds(keys, k, seed))

    def fold_of(self, tokens: Iterable[str]) -> int:
        """The fold of a sentence of the training data, ``-1`` for any other sentence."""
        return self.folds.get(sentence_key(tokens), -1)

    def fold_index(self, sentences: Iterable[Iterable[str]]) -> np.ndarray:
        """``[n]`` int64: ``fold_of`` of each sentence (token lists)."""
        return np.asarray([self.fold_of(tokens) for tokens in sentences], dtype=np.int64)

    def fold_keys(self) -> list[list[str]]:
        """The sorted keys of each fold."""
        found: list[list[str]] = [[] for _ in range(self.k)]
        for key, fold in self.folds.items():
            found[fold].append(key)
        return [sorted(keys) for keys in found]


def fold_directory_name(fold: int) -> str:
    """The directory of fold ``fold`` (0-based) inside a fold-teacher directory: ``fold-1``..."""
    return f"fold-{fold + 1}"


@dataclass(frozen=True)
class FoldModel:
    """A fold-teacher directory: ``directory``, the ``task``, the ``assignment`` and the model
    directories of the K fold teachers (``models[k]`` never trained on fold ``k``)."""

    directory: Path
    task: str
    assignment: FoldAssignment

    @property
    def k(self) -> int:
        return self.assignment.k

    @property
    def models(self) -> list[Path]:
        return [self.directory / fold_directory_name(fold) for fold in range(self.k)]


def is_fold_directory(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` is a fold-teacher directory (a ``folds.json``, no ``model.pt``),
    finished or not."""
    directory = Path(directory)
    return (directory / FOLDS_FILE).is_file() and not (directory / MODEL_FILE).is_file()


def _problem(path: Path, why: str) -> ValueError:
    return ValueError(f"{os.fspath(path)!r}: {why}")


def read_fold_model(
    directory: str | os.PathLike[str], *, task: str | None = None, check_hashes: bool = True
) -> FoldModel:
    """The fold teachers of ``directory`` (``ValueError`` naming the file and the problem: no or
    a malformed ``folds.json``, training not finished, a fold directory missing, a fold's
    ``model.pt`` changed since, or, given ``task``, a directory of another task). The fold
    directories themselves are checked when they are loaded (``read_model``)."""
    directory = Path(directory)
    path = directory / FOLDS_FILE
    if not path.is_file():
        raise _problem(directory, f"no {FOLDS_FILE}: not a fold-teacher directory")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != FOLDS_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise _problem(path, f"format {found!r}; this structkd reads format {FOLDS_FORMAT}")
        k, seed, found_task = data["k"], data["seed"], data["task"]
        fold_keys = data["folds"]
        if not (isinstance(k, int) and k >= 2 and isinstance(found_task, str)):
            raise ValueError
        if not (isinstance(fold_keys, list) and len(fold_keys) == k):
            raise _problem(path, f"lists {len(fold_keys)} folds but k = {k}")
        folds = {}
        for fold, keys in enumerate(fold_keys):
            for key in keys:
                if not isinstance(key, str) or key in folds:
                    raise _problem(path, f"sentence key {key!r} is malformed or in two folds")
                folds[key] = fold
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise _problem(path, f"unreadable or malformed ({type(error).__name__})") from None
    except ValueError as error:
        if os.fspath(path) in str(error):
            raise
        raise _problem(path, "malformed (k, seed or task)") from None
    if not data.get("complete"):
        raise _problem(
            directory,
            "training of the fold teachers did not finish (folds.json is not marked complete: "
            "the run was interrupted, failed or is still running); train it again",
        )
    if task is not None and found_task != task:
        raise _problem(directory, f"holds {found_task!r} fold teachers, not {task!r} ones")
    model = FoldModel(directory, found_task, FoldAssignment(k, seed, folds))
    hashes = data.get("sha256", {})
    for fold, fold_dir in enumerate(model.models):
        name = fold_directory_name(fold)
        if not (fold_dir / MODEL_FILE).is_file():
            raise _problem(
                directory,
                f"fold teacher {fold + 1} of {k} is missing ({name}/{MODEL_FILE} does not exist)",
            )
        recorded = hashes.get(f"{name}/{MODEL_FILE}")
        if check_hashes and recorded != file_sha256(fold_dir / MODEL_FILE):
            raise _problem(
                fold_dir / MODEL_FILE,
                f"does not match the hash recorded in {FOLDS_FILE}: the fold teacher was "
                "changed or retrained after the fold teachers were trained",
            )
    return model


def read_fold_teachers(
    directories: Sequence[str | os.PathLike[str]], *, task: str
) -> list[FoldModel | None]:
    """``read_fold_model`` of each fold-teacher directory of ``directories`` (``--teacher``),
    ``None`` for any other (an ordinary model directory)."""
    return [
        read_fold_model(directory, task=task) if is_fold_directory(directory) else None
        for directory in directories
    ]


def teacher_targets(options: DistillOptions, fold_models: Sequence[FoldModel | None]) -> str:
    """The targets the teachers give: ``options.teacher_targets``, by default ``out-of-fold``
    with a fold teacher, else ``in-fold`` (``ValueError`` for out-of-fold without one)."""
    has_folds = any(model is not None for model in fold_models)
    chosen = options.teacher_targets or ("out-of-fold" if has_folds else "in-fold")
    if chosen == "out-of-fold" and not has_folds:
        names = ", ".join(repr(os.fspath(directory)) for directory in options.teachers)
        raise ValueError(
            f"--teacher-targets out-of-fold needs a fold teacher (a directory written by "
            f"`structkd train --folds K`); {names or 'no teacher'} "
            f"{'is not one' if len(options.teachers) == 1 else 'are not'}"
        )
    return chosen


@dataclass(frozen=True)
class FoldEntries:
    """The cache entries of a fold teacher (K fold teachers) for one source of ``n`` sentences.

    ``entries[k]``: fold teacher ``k``'s entry (``None``: it computes no sentence of the source);
    ``local[k]``: ``[n]`` int64, the id of each sentence in ``entries[k]`` (``-1``: not there), or
    ``None`` when the entry holds the whole source (the identity); ``fold_of``: ``[n]`` int64, for
    out-of-fold targets the fold whose teacher did not see the sentence (its targets come from
    that teacher alone), ``-1`` for a sentence none of them trained on (the mixture of the K);
    ``None``: the mixture everywhere (in-fold targets). An ordinary teacher is
    ``FoldEntries((entry,), (None,))``."""

    entries: tuple[Path | None, ...]
    local: tuple[np.ndarray | None, ...]
    fold_of: np.ndarray | None = None

    def plans(self, items: np.ndarray) -> list[np.ndarray]:
        """The sets of targets a batch of sentence ids ``items`` ``[B]`` reads: per set, the
        fold teacher whose entry gives each sentence's targets. One set when every sentence's
        targets are out-of-fold, else K: set ``k`` holds fold teacher ``k``'s targets of the
        sentences that get the mixture and each other sentence's out-of-fold targets. Mixed with
        equal weights the K sets give the mixture where it is wanted and the out-of-fold targets
        elsewhere (K equal copies mix to themselves, whatever the mixing rule)."""
        chosen = np.full(len(items), -1, np.int64)
        if self.fold_of is not None:
            chosen = self.fold_of[items]
        if (chosen >= 0).all():
            return [chosen]
        return [np.where(chosen >= 0, chosen, index) for index in range(len(self.entries))]

    def locate(self, fold: int, items: np.ndarray) -> np.ndarray:
        """The ids in ``entries[fold]`` of the sentences ``items`` (``ValueError`` when the entry
        lacks one: a cache of other data)."""
        local = self.local[fold]
        ids = items if local is None else local[items]
        if self.entries[fold] is None or (ids < 0).any():
            raise ValueError(
                f"the teacher-target cache of fold teacher {fold + 1} lacks sentences of this "
                "batch (a cache of other data?)"
            )
        return ids


def build_fold_entries(
    model: FoldModel,
    n: int,
    tokens: Iterable[Iterable[str]],
    build: Callable[[int, np.ndarray | None], Path],
    *,
    out_of_fold: bool,
) -> FoldEntries:
    """The ``FoldEntries`` of fold teacher ``model`` on a source of ``n`` sentences with the
    tokens ``tokens`` (an iterable, read once and only for out-of-fold targets). ``build(k,
    chosen)``: the cache entry of fold teacher ``k`` on the source's sentences ``chosen`` (sorted
    indices; ``None``: all of them), built if missing.

    ``out_of_fold``: fold teacher ``k`` is run on the sentences of its held-out fold and on those
    no fold teacher trained on (so that each sentence is computed once for out-of-fold targets,
    K times only where the mixture is read); else every fold teacher on every sentence (the
    entries an ordinary ensemble of the K would use)."""
    fold_of = model.assignment.fold_index(tokens) if out_of_fold else None
    if fold_of is not None and len(fold_of) != n:
        raise ValueError(f"{len(fold_of)} token lists for a source of {n} sentences")
    entries: list[Path | None] = []
    local: list[np.ndarray | None] = []
    for fold in range(model.k):
        needed = np.ones(n, dtype=bool) if fold_of is None else (fold_of == fold) | (fold_of < 0)
        if not needed.any():
            entries.append(None)
            local.append(None)
        elif needed.all():
            entries.append(build(fold, None))
            local.append(None)
        else:
            chosen = np.flatnonzero(needed)
            entries.append(build(fold, chosen))
            ids = np.full(n, -1, dtype=np.int64)
            ids[chosen] = np.arange(len(chosen), dtype=np.int64)
            local.append(ids)
    return FoldEntries(tuple(entries), tuple(local), fold_of)


def _index(
    options: TrainOptions,
    assignment: FoldAssignment,
    task: str,
    sizes: list[int],
    complete: bool,
    hashes: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "format": FOLDS_FORMAT,
        "task": task,
        "k": assignment.k,
        "seed": assignment.seed,
        "train": options.train,
        "max_train_sentences": options.max_train_sentences,
        "key": "SHA-256 of the tokens joined by U+001F, first 80 bits",
        "fold_sizes": sizes,
        "models": [fold_directory_name(fold) for fold in range(assignment.k)],
        "sha256": hashes or {},
        "complete": complete,
        "folds": assignment.fold_keys(),
    }


def _first_process() -> bool:
    return all(
        os.environ.get(name, "0") in ("", "0") for name in ("RANK", "LOCAL_RANK", "NODE_RANK")
    )


def fit_folds(
    options: TrainOptions,
    keys: Sequence[str],
    prepare_fold: Callable[[TrainOptions, FoldAssignment, int], Any],
    score: Callable[[FoldModel], dict[str, Any]],
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the ``options.folds`` fold teachers of ``options`` into ``options.out``.

    ``keys``: the content keys (``sentence_key``) of the training sentences; ``prepare_fold(
    fold_options, assignment, k)``: the task's ``PreparedRun`` of fold teacher ``k`` (trained on
    every training sentence outside fold ``k``, written to ``fold_options.out``); ``score(model)``:
    the mixture's ``{"dev": ..., "test": ...}`` scores. Writes ``folds.json`` (incomplete) first,
    fits each fold (``structkd.train.fit.fit``), scores the mixture, writes ``metrics.json`` and
    marks ``folds.json`` complete last. Returns the metrics plus ``model_dir``."""
    from structkd.train.fit import fit

    k = options.folds
    assignment = FoldAssignment.of(keys, k, options.seed)
    task = options.task
    out = Path(options.out)
    sizes = [0] * k
    for key in keys:
        sizes[assignment.folds[key]] += 1
    if _first_process():
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {os.fspath(out)!r} exists and is not a directory")
        out.mkdir(parents=True, exist_ok=True)
        clear_outputs(out)  # an ordinary model written here before
        (out / METRICS_FILE).unlink(missing_ok=True)
        write_json(out / FOLDS_FILE, _index(options, assignment, task, sizes, complete=False))
    fold_metrics = []
    started = time.perf_counter()
    for fold in range(k):
        fold_options = dataclasses.replace(
            options, out=os.fspath(out / fold_directory_name(fold)), folds=None
        )
        fold_metrics.append(fit(prepare_fold(fold_options, assignment, fold)))
    training_seconds = time.perf_counter() - started
    if "global_rank" in fold_metrics[0]:  # a DDP process other than rank 0
        return {"global_rank": fold_metrics[0]["global_rank"]}
    model = FoldModel(out, task, assignment)
    scores = score(model)
    kept = ("dev", "test", "best_epoch", "epochs_run", "n_parameters", "training_seconds", "data")
    metrics = {
        "command": "train",
        "task": task,
        "arch": options.arch,
        "folds": k,
        "teacher": f"mixture of {k} fold teachers (equal weights)",
        "dev": scores["dev"],
        "test": scores.get("test"),
        "best_epoch": [m["best_epoch"] for m in fold_metrics],
        "n_parameters": sum(int(m["n_parameters"]) for m in fold_metrics),
        "sentences_per_second": scores["dev"].get("sentences_per_second"),
        "training_seconds": training_seconds,
        "data": {
            **(data or {}),
            "n_train_sentences": len(keys),
            "n_distinct_sentences": len(assignment.folds),
            "fold_sizes": sizes,
        },
        "fold_metrics": [
            {"model_dir": fold_directory_name(fold), **{n: m.get(n) for n in kept}}
            for fold, m in enumerate(fold_metrics)
        ],
        "options": dataclasses.asdict(options),
    }
    write_json(out / METRICS_FILE, metrics)
    hashes = {
        f"{fold_directory_name(fold)}/{MODEL_FILE}": file_sha256(path / MODEL_FILE)
        for fold, path in enumerate(model.models)
    }
    hashes[METRICS_FILE] = file_sha256(out / METRICS_FILE)
    write_json(out / FOLDS_FILE, _index(options, assignment, task, sizes, True, hashes))
    return {**metrics, "model_dir": os.fspath(out)}
