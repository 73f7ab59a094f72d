"""Lightning pieces: the data module, the tagger module (gold and KD losses, dev F1) and the
callback that keeps the best model directory.

The loss of a training step (DESIGN.md section 2, the paper's recipe):

    labeled batch:    lambda_t * T^2 * L_KD + (1 - lambda_t) * L_gold
    unlabeled batch:  T^2 * L_KD
    no KD:            L_gold

``L_gold`` and ``L_KD`` are means over the batch's sentences of per-sentence losses; ``lambda_t``
follows ``KDSettings.schedule`` over the optimizer steps (``"linear"``: from ``kd_weight`` to
``kd_weight_end``; ``"constant"``: ``kd_weight``). With several teachers ``L_KD`` is the weighted
sum of the per-teacher losses (for structural KD this is exactly the loss of the mixture of the
teachers, since the loss is linear in ``P_t``; the mixed marginals are used directly).
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

from structkd.distill.baselines import token_kd_loss
from structkd.distill.bridges import mix_targets
from structkd.distill.objective import check_cross_entropy, kd_loss_from_targets
from structkd.models.tagger import Tagger
from structkd.structures.base import StructDistribution
from structkd.structures.factorized import Factorized
from structkd.train.cache import KDTargets
from structkd.train.data import BucketBatchSampler, Part, PartsDataset, StepBatch, StepCollator
from structkd.train.metrics import entity_counts, scores_from_counts

__all__ = [
    "KD_SCHEDULES",
    "BestModelSaver",
    "KDSettings",
    "TaggerDataModule",
    "TaggerModule",
    "kd_losses",
    "posterior_loss_from_targets",
    "scheduled_kd_weight",
    "topk_loss_from_targets",
]

KD_SCHEDULES = ("linear", "constant")


@dataclass(frozen=True)
class KDSettings:
    """The KD term of a distillation run: ``method`` (struct, token, topk, topwk, posterior),
    ``temperature`` ``T``, ``temperature_mode`` (struct only), the weight ``lambda`` of the KD term
    on labeled batches (``kd_weight`` at the first step, then ``schedule``), ``kd_weight_end``
    (the last step's weight under ``"linear"``)."""

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

    def weight(self, step: int, total_steps: int) -> float:
        """``lambda`` at optimizer step ``step`` (0-based) of ``total_steps``."""
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
    return kd.weight(module.global_step, total)


def topk_loss_from_targets(
    tags: Tensor, log_probs: Tensor, student: StructDistribution, weighted: bool
) -> Tensor:
    """Top-K / Top-WK KD ``[batch]`` from cached k-best structures: ``- sum_j w_j log P_s(y_j)``.

    ``tags`` ``[k, batch, seq_len]`` (``-1`` at padding and for missing structures),
    ``log_probs`` ``[k, batch]`` the teacher's (tempered) log-probabilities (``-inf`` where
    missing), ``student`` already tempered. ``w_j = 1 / k'`` (uniform over the ``k'`` that exist) or
    ``softmax_j(log_probs)`` (``weighted``), as ``structkd.distill.topk_kd_loss``.
    """
    exists = (tags[:, :, 0] >= 0) & torch.isfinite(log_probs)
    if weighted:
        weights = torch.softmax(log_probs.masked_fill(~exists, float("-inf")), dim=0)
    else:
        weights = exists.to(log_probs.dtype) / exists.sum(0, keepdim=True).to(log_probs.dtype)
    tags = torch.where(exists.unsqueeze(-1), tags, tags[:1])
    student_log_probs = student.log_prob(tags)
    weights = weights.to(student_log_probs)
    loss = -torch.where(exists, weights * student_log_probs, torch.zeros_like(student_log_probs))
    loss = loss.sum(0)
    check_cross_entropy(loss, student.log_partition, what="top-k KD loss")
    return loss


def posterior_loss_from_targets(marginals: Tensor, student: StructDistribution) -> Tensor:
    """Posterior KD ``[batch]``: ``sum_i KL(P_t(y_i) || P_s(y_i))`` from cached teacher token
    marginals ``[batch, seq_len, n_labels]`` and the (tempered) student's token marginals, as
    ``structkd.distill.posterior_kd_loss``."""
    student_marginals = student.marginals
    has_mass = marginals > 0
    safe_teacher = torch.where(has_mass, marginals, torch.ones_like(marginals))
    safe_student = torch.where(has_mass, student_marginals, torch.ones_like(student_marginals))
    loss = (marginals * (torch.log(safe_teacher) - torch.log(safe_student))).sum((-1, -2))
    check_cross_entropy(loss, what="posterior KD loss")
    return loss


def kd_losses(student: StructDistribution, targets: KDTargets, settings: KDSettings) -> Tensor:
    """The KD loss ``[batch]`` of one batch (no ``T^2`` factor) for ``settings.method``, from
    cached teacher outputs ``targets`` and the untempered student distribution."""
    temperature = float(settings.temperature)
    method = settings.method
    local = method == "struct" and settings.temperature_mode == "local"
    tempered = student.tempered(temperature) if temperature != 1.0 and not local else student
    weights = targets.weights
    if method == "struct":
        mixed = mix_targets(targets.chains(), weights)
        return kd_loss_from_targets(mixed.to(_potentials(student)), tempered, reduction="none")
    losses = []
    for teacher in targets.per_teacher:
        if method == "token":
            emissions = teacher["emissions"].to(_potentials(student))
            losses.append(
                token_kd_loss(
                    Factorized(emissions, student.lengths), student, temperature, reduction="none"
                )
            )
        elif method in ("topk", "topwk"):
            losses.append(
                topk_loss_from_targets(
                    teacher["kbest_tags"],
                    teacher["kbest_log_probs"],
                    tempered,
                    weighted=method == "topwk",
                )
            )
        elif method == "posterior":
            marginals = teacher["marginals"].to(_potentials(student))
            losses.append(posterior_loss_from_targets(marginals, tempered))
        else:
            raise ValueError(f"unknown KD method {method!r}")
    weights = weights.to(losses[0])
    return sum(weight * loss for weight, loss in zip(weights, losses, strict=True))


def _potentials(distribution: StructDistribution) -> Tensor:
    for name in ("emissions", "logits", "span_scores"):
        tensor = getattr(distribution, name, None)
        if isinstance(tensor, Tensor):
            return tensor
    raise TypeError(f"a {type(distribution).__name__} student has no tag potentials")


class TaggerDataModule(pl.LightningDataModule):
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


class TaggerModule(pl.LightningModule):
    """Trains a ``Tagger`` on gold tags, cached teacher outputs, or both; validates by dev F1.

    Args:
        tagger: the model trained.
        learning_rate: Adam's step size.
        kd: the KD term, or ``None`` to train on gold tags only.

    After each validation ``dev_scores`` holds the dev scores (identical on every DDP process:
    entity counts are summed across processes before scoring) and ``history`` one row per epoch.
    """

    def __init__(self, tagger: Tagger, *, learning_rate: float, kd: KDSettings | None = None):
        super().__init__()
        self.tagger = tagger
        self.learning_rate = learning_rate
        self.kd = kd
        self.types = list(tagger.vocab.types)
        self.dev_scores: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.last_losses: dict[str, float] = {}
        self._dev_counts = torch.zeros(len(self.types), 3, dtype=torch.long)
        self._epoch_loss = 0.0
        self._epoch_steps = 0
        self._epoch_started = time.perf_counter()

    # -- losses -------------------------------------------------------------------------------

    def kd_weight(self) -> float:
        """``lambda`` of the current optimizer step."""
        return scheduled_kd_weight(self, self.kd)

    def step_losses(self, batch: StepBatch) -> dict[str, Tensor]:
        """``loss`` (what is minimized) and its parts ``gold``, ``kd`` (scalars; absent when not
        computed) and the weight ``lambda``, for one batch."""
        distribution = self.tagger(batch.tagging)
        losses: dict[str, Tensor] = {}
        if batch.labeled:
            losses["gold"] = self.tagger.gold_loss(batch.tagging, distribution)
        if self.kd is not None and batch.targets is not None:
            scale = float(self.kd.temperature) ** 2
            losses["kd"] = kd_losses(distribution, batch.targets, self.kd).mean()
            if batch.labeled:
                weight = self.kd_weight()
                losses["lambda"] = torch.tensor(weight)
                losses["loss"] = weight * scale * losses["kd"] + (1 - weight) * losses["gold"]
            else:
                losses["loss"] = scale * losses["kd"]
        elif batch.labeled:
            losses["loss"] = losses["gold"]
        else:
            raise ValueError("an unlabeled batch needs teacher targets (distillation)")
        return losses

    def training_step(self, batch: StepBatch, batch_idx: int) -> Tensor:
        losses = self.step_losses(batch)
        self.last_losses = {name: float(value.detach()) for name, value in losses.items()}
        self._epoch_loss += self.last_losses["loss"]
        self._epoch_steps += 1
        self.log("loss", losses["loss"].detach(), prog_bar=True, batch_size=batch.batch_size)
        return losses["loss"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        parameters = [p for p in self.tagger.parameters() if p.requires_grad]
        return torch.optim.Adam(parameters, lr=self.learning_rate)

    # -- validation ---------------------------------------------------------------------------

    def on_train_epoch_start(self) -> None:
        self._epoch_loss, self._epoch_steps = 0.0, 0
        self._epoch_started = time.perf_counter()

    def on_validation_epoch_start(self) -> None:
        self._dev_counts = torch.zeros(len(self.types), 3, dtype=torch.long)

    def validation_step(self, batch: StepBatch, batch_idx: int) -> None:
        tagging = batch.tagging
        predicted = self.tagger.decode(tagging)
        self._dev_counts += entity_counts(
            predicted, tagging.label_ids, tagging.lengths, len(self.types)
        )

    def on_validation_epoch_end(self) -> None:
        counts = self._dev_counts.to(self.device)
        if self.trainer.world_size > 1:
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        self.dev_scores = scores_from_counts(counts.cpu(), self.types)
        self.log("dev_f1", float(self.dev_scores["f1"]), prog_bar=True, sync_dist=False)

    def on_train_epoch_end(self) -> None:
        row = {
            "epoch": self.current_epoch,
            "train_loss": self._epoch_loss / max(1, self._epoch_steps),
            "seconds": time.perf_counter() - self._epoch_started,
        }
        if self.dev_scores is not None:
            row.update(
                {f"dev_{name}": self.dev_scores[name] for name in ("precision", "recall", "f1")}
            )
        self.history.append(row)


class BestModelSaver(pl.Callback):
    """After every validation, if the dev score ``metric`` (F1 for NER, LAS for parsing) beats
    the best so far (ties keep the earlier epoch), call ``save(model)`` on the global-zero process
    (the module's ``tagger``, or its ``model``); remembers ``best_score`` (the best value of
    ``metric``), ``best_epoch`` and ``best_scores``."""

    def __init__(self, save: Callable[[Any], Any], metric: str = "f1"):
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
                model = getattr(pl_module, "tagger", None)
                self.save(model if model is not None else pl_module.model)
