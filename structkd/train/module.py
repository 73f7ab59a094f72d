"""Lightning pieces, whatever the task: the data module, the one LightningModule (gold and KD
losses, dev scores) and the callback that keeps the best model directory.

The loss of a training step (the paper's recipe):

    labeled batch:    lambda_t * T^2 * L_KD + (1 - lambda_t) * L_gold
    unlabeled batch:  T^2 * L_KD
    no KD:            L_gold

``L_gold`` and ``L_KD`` are means (the task's ``gold_loss`` and ``kd_loss``); ``T^2`` is
``structkd.distill.kd_scale(T)``; ``lambda_t`` follows ``KDSettings.schedule`` (``"linear"``:
from ``kd_weight`` to ``kd_weight_end`` over the optimizer steps; ``"constant"``: ``kd_weight``;
``"reference"``: ``kd_weight * max(0, 1 - 0.005 * epoch)``, the authors' recipe).

Each epoch's history row holds the mean training loss and, where computed, the mean gold loss,
KD loss (without ``T^2``) and ``lambda`` of its steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from structkd.distill.temperature import kd_scale
from structkd.structures.base import NumericalError
from structkd.train.data import BucketBatchSampler, Part, PartsDataset, StepBatch, StepCollator
from structkd.train.options import KD_SCHEDULES, REFERENCE_DECAY
from structkd.train.protocol import TrainingHooks

__all__ = [
    "BestModelSaver",
    "DistillationModule",
    "KDSettings",
    "PartsDataModule",
    "scheduled_kd_weight",
]


@dataclass(frozen=True)
class KDSettings:
    """The KD term of a distillation run: ``method`` (a name of
    ``structkd.distill.methods.KD_METHODS``), ``temperature`` ``T``, ``temperature_mode``, the
    weight ``lambda`` of the KD term on labeled batches (``kd_weight`` at the first step, then
    ``schedule``), ``kd_weight_end`` (the last step's weight under ``"linear"``; unused by the
    others)."""

    method: str
    temperature: float = 1.0
    temperature_mode: str = "global"
    kd_weight: float = 1.0
    kd_weight_end: float = 0.0
    schedule: str = "linear"

    def __post_init__(self) -> None:
        if self.schedule not in KD_SCHEDULES:
            raise ValueError(
                f"kd_schedule must be one of {', '.join(KD_SCHEDULES)}; got {self.schedule!r}"
            )
        for name in ("kd_weight", "kd_weight_end"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}")

    @classmethod
    def of(cls, options: Any) -> KDSettings | None:
        """The settings of ``DistillOptions`` (``None`` for method ``none``)."""
        if options.method == "none":
            return None
        return cls(
            options.method,
            temperature=float(options.temperature),
            temperature_mode=options.temperature_mode,
            kd_weight=float(options.kd_weight),
            kd_weight_end=float(options.kd_weight_end),
            schedule=options.kd_schedule,
        )

    def weight(self, step: int, total_steps: int, epoch: int = 0) -> float:
        """``lambda`` at optimizer step ``step`` (0-based) of ``total_steps``, in ``epoch``
        (0-based)."""
        if self.schedule == "reference":
            return float(self.kd_weight) * max(0.0, 1.0 - REFERENCE_DECAY * epoch)
        if self.schedule == "constant" or total_steps <= 1:
            return float(self.kd_weight)
        progress = min(1.0, step / (total_steps - 1))
        return float(self.kd_weight + (self.kd_weight_end - self.kd_weight) * progress)


def scheduled_kd_weight(module: pl.LightningModule, kd: KDSettings | None) -> float:
    """``lambda`` at ``module``'s current optimizer step under ``kd``'s schedule (0 without KD;
    the total is the trainer's estimate of its optimizer steps)."""
    if kd is None:
        return 0.0
    total = module.trainer.estimated_stepping_batches if module._trainer is not None else 1
    total = int(total) if math.isfinite(total) else 1
    return kd.weight(module.global_step, total, module.current_epoch)


class PartsDataModule(pl.LightningDataModule):
    """Training parts and the dev part, batched by ``BucketBatchSampler`` (sharded by rank under
    DDP; run the Trainer with ``use_distributed_sampler=False``)."""

    def __init__(
        self,
        train_parts: Sequence[Part],
        train_collator: StepCollator,
        dev_part: Part,
        dev_collator: StepCollator,
        *,
        batch_size: int,
        eval_batch_size: int = 64,
        seed: int = 0,
    ):
        super().__init__()
        self.train_set = PartsDataset(train_parts)
        self.dev_set = PartsDataset([dev_part])
        self.train_collator = train_collator
        self.dev_collator = dev_collator
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def train_dataloader(self) -> DataLoader:
        rank, world_size = self._rank()
        sampler = BucketBatchSampler(
            self.train_set.groups,
            self.train_set.lengths,
            self.batch_size,
            shuffle=True,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            even=True,
        )
        return DataLoader(self.train_set, batch_sampler=sampler, collate_fn=self.train_collator)

    def val_dataloader(self) -> DataLoader:
        rank, world_size = self._rank()
        sampler = BucketBatchSampler(
            self.dev_set.groups,
            self.dev_set.lengths,
            self.eval_batch_size,
            shuffle=False,
            rank=rank,
            world_size=world_size,
            even=False,
        )
        return DataLoader(self.dev_set, batch_sampler=sampler, collate_fn=self.dev_collator)


class DistillationModule(pl.LightningModule):
    """Trains a task's ``model`` on gold labels, cached teacher outputs, or both; validates by
    the task's dev metric.

    Args:
        model: the model trained.
        hooks: the task's ``TrainingHooks`` (forward, losses, dev counts and scores, optimizer).
        learning_rate: the optimizer's step size.
        kd: the KD term, or ``None`` to train on gold labels only.

    After each validation ``dev_scores`` holds the dev scores (identical on every DDP process:
    counts are summed across processes before scoring) and ``history`` one row per epoch.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        hooks: TrainingHooks,
        *,
        learning_rate: float,
        kd: KDSettings | None = None,
    ):
        super().__init__()
        self.model = model
        self.hooks = hooks
        self.learning_rate = learning_rate
        self.kd = kd
        self.dev_scores: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.last_losses: dict[str, float] = {}
        self._dev_counts = hooks.zero_counts()
        self._epoch_sums: dict[str, tuple[float, int]] = {}
        self._epoch_steps = 0
        self._epoch_started = time.perf_counter()

    # -- losses -------------------------------------------------------------------------------

    def kd_weight(self) -> float:
        """``lambda`` of the current optimizer step."""
        return scheduled_kd_weight(self, self.kd)

    def step_losses(self, step: StepBatch) -> dict[str, Tensor]:
        """``loss`` (what is minimized) and its parts ``gold``, ``kd`` (scalars; absent when not
        computed) and the weight ``lambda``, for one step."""
        output = self.hooks.forward(self.model, step.batch)
        losses: dict[str, Tensor] = {}
        if step.labeled:
            losses["gold"] = self.hooks.gold_loss(self.model, step.batch, output)
        if self.kd is not None and step.targets is not None:
            scale = kd_scale(self.kd.temperature)
            losses["kd"] = self.hooks.kd_loss(output, step.targets, self.kd)
            if step.labeled:
                weight = self.kd_weight()
                losses["lambda"] = torch.tensor(weight)
                losses["loss"] = weight * scale * losses["kd"] + (1 - weight) * losses["gold"]
            else:
                losses["loss"] = scale * losses["kd"]
        elif step.labeled:
            losses["loss"] = losses["gold"]
        else:
            raise ValueError("an unlabeled batch needs teacher targets (distillation)")
        return losses

    def training_step(self, step: StepBatch, batch_idx: int) -> Tensor:
        losses = self.step_losses(step)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise NumericalError(f"training loss is {float(loss)} at step {self.global_step}")
        self.last_losses = {name: float(value.detach()) for name, value in losses.items()}
        for name, value in self.last_losses.items():
            total, count = self._epoch_sums.get(name, (0.0, 0))
            self._epoch_sums[name] = (total + value, count + 1)
        self._epoch_steps += 1
        self.log("loss", loss.detach(), prog_bar=True, batch_size=step.batch_size)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        return self.hooks.optimizer(parameters, self.learning_rate)

    # -- validation ---------------------------------------------------------------------------

    def on_train_epoch_start(self) -> None:
        self._epoch_sums, self._epoch_steps = {}, 0
        self._epoch_started = time.perf_counter()

    def on_validation_epoch_start(self) -> None:
        self._dev_counts = self.hooks.zero_counts()

    def validation_step(self, step: StepBatch, batch_idx: int) -> None:
        self._dev_counts += self.hooks.dev_counts(self.model, step.batch).cpu()

    def on_validation_epoch_end(self) -> None:
        counts = self._dev_counts.to(self.device)
        if self.trainer.world_size > 1:
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        self.dev_scores = self.hooks.dev_scores(counts.cpu())
        metric = self.hooks.metric
        self.log(f"dev_{metric}", float(self.dev_scores[metric]), prog_bar=True, sync_dist=False)

    def on_train_epoch_end(self) -> None:
        means = {name: total / count for name, (total, count) in self._epoch_sums.items()}
        row = {
            "epoch": self.current_epoch,
            "train_loss": means.get("loss", 0.0),
            "seconds": time.perf_counter() - self._epoch_started,
        }
        for name, key in (("gold", "train_gold_loss"), ("kd", "train_kd_loss")):
            if name in means:
                row[key] = means[name]
        if "lambda" in means:
            row["kd_weight"] = means["lambda"]
        if self.dev_scores is not None:
            row.update(self.hooks.history_scores(self.dev_scores))
        self.history.append(row)


class BestModelSaver(pl.Callback):
    """After every validation, if the dev score ``metric`` beats the best so far (ties keep the
    earlier epoch), call ``save(module.model)`` on the global-zero process; remembers
    ``best_score`` (the best value of ``metric``), ``best_epoch`` and ``best_scores``."""

    def __init__(self, save: Callable[[Any], Any], metric: str):
        self.save = save
        self.metric = metric
        self.best_score = -1.0
        self.best_epoch: int | None = None
        self.best_scores: dict[str, Any] | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or pl_module.dev_scores is None:
            return
        score = float(pl_module.dev_scores[self.metric])
        if score > self.best_score:
            self.best_score = score
            self.best_epoch = trainer.current_epoch
            self.best_scores = pl_module.dev_scores
            if trainer.is_global_zero:
                self.save(pl_module.model)
