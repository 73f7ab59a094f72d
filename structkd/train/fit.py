"""The one fit loop: a ``PreparedRun`` (what a task builds: the model, its hooks, the data parts,
collators and teacher-target readers) trained with Lightning; the best model by the task's dev
metric is kept, scored on dev and test, and ``metrics.json`` written, then the completion marker
(``structkd.train.checkpoint``): a run that does not get there (killed, interrupted, failed)
leaves a directory that ``read_model`` refuses. A run starts by removing the outputs of an earlier
one in its directory. SIGINT and SIGTERM stop it with ``RunInterrupted``, whatever Lightning made
of them."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from structkd.train.checkpoint import (
    METRICS_FILE,
    clear_outputs,
    mark_complete,
    reading_unfinished,
    write_json,
)
from structkd.train.data import Part, StepCollator
from structkd.train.interrupts import RunInterrupted
from structkd.train.module import BestModelSaver, DistillationModule, KDSettings, PartsDataModule
from structkd.train.options import TrainOptions
from structkd.train.protocol import TrainingHooks
from structkd.train.runtime import inference_device

__all__ = ["PreparedRun", "build_lightning", "fit", "make_trainer"]


@dataclass
class PreparedRun:
    """Everything a training run needs, before Lightning (tests and tools may inspect or change
    it).

    ``model``: the (seeded) model trained; ``hooks``: the task's ``TrainingHooks``;
    ``train_parts``: the labeled and unlabeled parts sampled from; ``dev_part``: the dev
    sentences; ``collators``: per source key (every part's, and ``"dev"``), the task's collator;
    ``target_readers``: cached teacher outputs by source key (distillation); ``kd``: the KD
    settings (``None``: gold only); ``extra``: entries added to ``metrics.json``.
    """

    options: TrainOptions
    command: str
    model: Any
    hooks: TrainingHooks
    train_parts: list[Part]
    dev_part: Part
    collators: Mapping[str, Callable[..., Any]]
    target_readers: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    kd: KDSettings | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def build_lightning(run: PreparedRun) -> tuple[DistillationModule, PartsDataModule]:
    """The ``(DistillationModule, PartsDataModule)`` of a prepared run."""
    options = run.options
    datamodule = PartsDataModule(
        run.train_parts,
        StepCollator(run.train_parts, run.collators, run.target_readers),
        run.dev_part,
        StepCollator([run.dev_part], run.collators),
        batch_size=options.batch_size,
        eval_batch_size=options.eval_batch_size,
        seed=options.seed,
    )
    module = DistillationModule(
        run.model, run.hooks, learning_rate=options.learning_rate, kd=run.kd
    )
    return module, datamodule


def make_trainer(options: TrainOptions, callbacks: list[Any]) -> Any:
    """The Lightning ``Trainer`` of a training run (no logger or Lightning checkpoints: the best
    model is kept by ``BestModelSaver``; batches are sharded by our own sampler)."""
    import lightning.pytorch as pl

    return pl.Trainer(
        max_epochs=options.epochs,
        max_steps=-1 if options.max_steps is None else options.max_steps,
        accelerator=options.accelerator,
        devices=options.devices,
        strategy=options.strategy,
        deterministic=True if options.accelerator == "cpu" else None,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=options.progress,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        gradient_clip_val=options.gradient_clip,
        callbacks=callbacks,
    )


def _is_first_process() -> bool:
    """Whether this is the launching process (not a rank > 0 started for DDP)."""
    return all(
        os.environ.get(name, "0") in ("", "0") for name in ("RANK", "LOCAL_RANK", "NODE_RANK")
    )


def _fit_trainer(trainer: Any, module: Any, datamodule: Any) -> None:
    """``trainer.fit``, with an interrupted run raising ``RunInterrupted``: Lightning turns a
    ``KeyboardInterrupt`` into ``SystemExit(1)`` (and leaves SIGINT ignored) and SIGTERM into a
    ``SystemExit`` of status 0 (older versions: a normal return)."""
    main_thread = threading.current_thread() is threading.main_thread()
    sigint_handler = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        trainer.fit(module, datamodule=datamodule)
    except SystemExit:
        if getattr(trainer, "received_sigterm", False):
            raise RunInterrupted(signal.SIGTERM) from None
        if trainer.interrupted:
            raise RunInterrupted(signal.SIGINT) from None
        raise
    finally:
        if main_thread and sigint_handler is not None:
            signal.signal(signal.SIGINT, sigint_handler)
    if getattr(trainer, "received_sigterm", False):
        raise RunInterrupted(signal.SIGTERM)
    if trainer.interrupted:
        raise RunInterrupted(signal.SIGINT)


def fit(run: PreparedRun) -> dict[str, Any]:
    """Remove an earlier run's outputs from ``options.out``, run the Trainer, keep the best model
    (by the task's dev metric) there, score it on dev and test, write ``metrics.json`` and, last,
    the completion marker; returns the metrics plus ``model_dir`` (on DDP processes other than
    rank 0: only ``{"global_rank"}``). ``RunInterrupted`` when SIGINT or SIGTERM stopped it."""
    from lightning.pytorch.callbacks import EarlyStopping

    options, hooks = run.options, run.hooks
    out = Path(options.out)
    if _is_first_process():
        clear_outputs(out)
    module, datamodule = build_lightning(run)
    saver = BestModelSaver(lambda model: hooks.save(out, model), metric=hooks.metric)
    callbacks: list[Any] = [saver]
    if options.patience is not None:
        callbacks.append(
            EarlyStopping(monitor=f"dev_{hooks.metric}", mode="max", patience=options.patience)
        )
    trainer = make_trainer(options, callbacks)
    started = time.perf_counter()
    _fit_trainer(trainer, module, datamodule)
    training_seconds = time.perf_counter() - started
    if not trainer.is_global_zero:
        return {"global_rank": trainer.global_rank}
    if saver.best_epoch is None:  # stopped before any validation: keep the last model
        hooks.save(out, run.model)
    device = inference_device(options.accelerator)
    with reading_unfinished(out):
        best = hooks.load(out, device)
    evaluations = hooks.final_scores(best, device)
    metrics = {
        "command": run.command,
        "task": options.task,
        "arch": options.arch,
        **hooks.model_entries(best),
        "best_epoch": saver.best_epoch,
        "epochs_run": len(module.history),
        "optimizer_steps": trainer.global_step,
        "world_size": trainer.world_size,
        "dev": evaluations["dev"],
        "test": evaluations.get("test"),
        "n_parameters": hooks.n_parameters(best),
        "sentences_per_second": evaluations["dev"]["sentences_per_second"],
        "training_seconds": training_seconds,
        "history": module.history,
        **run.extra,
        "options": dataclasses.asdict(options),
    }
    write_json(out / METRICS_FILE, metrics)
    mark_complete(out)
    return {**metrics, "model_dir": os.fspath(out)}
