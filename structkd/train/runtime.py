"""The process a run trains in: torch threads, quiet Lightning logs, seeding, the device that
runs models outside the Trainer, and the cache directory."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

__all__ = ["cache_dir", "configure_runtime", "default_cache_dir", "inference_device", "seed"]


def default_cache_dir() -> Path:
    """``$STRUCTKD_CACHE_DIR``, else ``$XDG_CACHE_HOME/structkd``, else ``~/.cache/structkd``."""
    if os.environ.get("STRUCTKD_CACHE_DIR"):
        return Path(os.environ["STRUCTKD_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "structkd"


def cache_dir(configured: str | os.PathLike[str] | None) -> Path:
    """``configured`` (an option), else ``default_cache_dir()``."""
    return Path(configured) if configured else default_cache_dir()


def configure_runtime(num_threads: int | None) -> None:
    """Torch CPU threads (``None``: torch's default) and quiet Lightning logs."""
    import torch

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    quiet_lightning()


def quiet_lightning() -> None:
    """Lightning's loggers at WARNING; its warnings about workers and tree specs silenced."""
    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from lightning.fabric.utilities.warnings import PossibleUserWarning

        warnings.filterwarnings("ignore", category=PossibleUserWarning)
    except ImportError:  # pragma: no cover
        pass
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")


def seed(value: int) -> None:
    """Seed Python, NumPy and torch (and dataloader workers) with ``value``."""
    import lightning.pytorch as pl

    pl.seed_everything(value, workers=True, verbose=False)


def inference_device(accelerator: str) -> str:
    """Where a command runs models outside the Trainer (caches, final evaluation)."""
    import torch

    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    if accelerator == "mps":
        return "mps"
    return "cpu"
