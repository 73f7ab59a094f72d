"""The one way structkd opens an exported model with onnxruntime (serving and the exporters'
checks)."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["onnx_session"]


def onnx_session(path: str | os.PathLike[str], num_threads: int | None) -> Any:
    """An onnxruntime session of ``path`` on the CPU provider: ``num_threads`` intra-op threads
    (``None``: onnxruntime's default), one inter-op thread (the graph runs sequentially).
    ``ImportError`` naming the ``serve`` extra without onnxruntime; ``ValueError`` naming the file
    when onnxruntime cannot load it."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "serving an exported model needs onnxruntime: pip install 'structkd[serve]'"
        ) from None
    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
    try:
        return onnxruntime.InferenceSession(
            os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
        raise ValueError(f"{os.fspath(path)}: onnxruntime cannot load it ({error})") from None
