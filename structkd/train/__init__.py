"""Training: Lightning modules and data, caches of teacher outputs and transformer features,
metrics, model directories, and the NER commands (``train``, ``distill``, ``evaluate``,
``predict``).

Importing this package is cheap: it exposes the commands and their options; the modules that
need torch and Lightning (``structkd.train.module``, ``.cache``, ``.data``, ``.checkpoint``,
``.metrics``) are imported when used.
"""

from structkd.train.commands import (
    KD_METHODS,
    DistillOptions,
    TrainOptions,
    distill,
    evaluate,
    predict,
    train,
)

__all__ = [
    "KD_METHODS",
    "DistillOptions",
    "TrainOptions",
    "distill",
    "evaluate",
    "predict",
    "train",
]
