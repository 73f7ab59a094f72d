"""What the training engine needs of a task: ``TrainingHooks``, the object a task puts in a
``PreparedRun`` (``structkd.train.fit``). The engine calls these and nothing else of the task, so
it never imports one."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Protocol

from torch import Tensor

__all__ = ["TrainingHooks"]


class TrainingHooks(Protocol):
    """The task-specific steps of training one model.

    ``metric``: the dev score that selects the model (logged as ``dev_<metric>``).
    """

    metric: str

    def forward(self, model: Any, batch: Any) -> Any:
        """The model's output on a collated batch (a distribution, scores)."""

    def gold_loss(self, model: Any, batch: Any, output: Any) -> Tensor:
        """The supervised loss (a scalar, a mean over the batch) of a labeled batch."""

    def kd_loss(self, output: Any, targets: Any, kd: Any) -> Tensor:
        """The KD loss (a scalar, a mean; without the ``T^2`` factor) of the batch's cached
        teacher ``targets`` under the ``KDSettings`` ``kd``."""

    def zero_counts(self) -> Tensor:
        """The dev counts of no sentence (zeros of the shape ``dev_counts`` returns)."""

    def dev_counts(self, model: Any, batch: Any) -> Tensor:
        """Integer counts of one dev batch; summed over batches and DDP processes."""

    def dev_scores(self, counts: Tensor) -> dict[str, Any]:
        """The dev scores (``metric`` among them) of summed ``counts``."""

    def history_scores(self, scores: dict[str, Any]) -> dict[str, Any]:
        """The entries of a per-epoch history row taken from the dev scores."""

    def optimizer(self, parameters: Iterable[Tensor], learning_rate: float) -> Any:
        """The optimizer of the trainable ``parameters``."""

    def save(self, directory: str | os.PathLike[str], model: Any) -> None:
        """Write ``model`` as a model directory."""

    def load(self, directory: str | os.PathLike[str], device: str) -> Any:
        """The model of a directory written by ``save``, in eval mode on ``device``."""

    def model_entries(self, model: Any) -> dict[str, Any]:
        """``metrics.json`` entries that describe the trained model (its config, labels)."""

    def n_parameters(self, model: Any) -> int:
        """The model's parameter count as reported in ``metrics.json``."""

    def final_scores(self, model: Any, device: str) -> dict[str, dict[str, Any]]:
        """The scores of the selected model per split (``dev``, and ``test`` when given), each
        with ``data`` (the data's name) and ``sentences_per_second``."""
