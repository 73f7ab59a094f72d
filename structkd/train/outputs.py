"""Output files of commands (``predict``): checked before any work, written atomically.

``output_stream(output, inputs=...)`` is the one way a command writes its output: standard output
for ``None``/``"-"``, an open stream as given, and a path through a temporary file beside it that
is renamed onto it when the block ends without an error (removed when it raises or the run is
interrupted), so an interrupted or failed command never leaves a half-written file and never
destroys the file that was there. Before the block runs, an output that is one of the command's
inputs (the same file, by ``os.path.samefile``), a directory, or in a directory that does not
exist or cannot be written is refused with ``ValueError``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

__all__ = ["check_output", "output_stream"]

_STANDARD = "-"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(
    output: str | os.PathLike[str], inputs: Iterable[Any] = (), *, what: str = "--output"
) -> Path:
    """``output`` as a path, checked before any work (``ValueError`` with the reason): not one of
    ``inputs`` (paths; names that are not files, such as data set names or ``"-"``, are
    skipped), not a directory, in an existing directory this process can write to."""
    path = Path(output)
    for source in inputs:
        if source is None or (isinstance(source, str) and source == _STANDARD):
            continue
        if isinstance(source, (str, os.PathLike)) and _same_file(path, Path(source)):
            raise ValueError(
                f"{what} {os.fspath(path)!r} is the input file {os.fspath(source)!r}: writing it "
                "would destroy the input; choose another output file"
            )
    if path.is_dir():
        raise ValueError(f"{what} {os.fspath(path)!r} is a directory; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(
            f"{what} {os.fspath(path)!r}: directory {os.fspath(parent)!r} does not exist"
        )
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{what} {os.fspath(path)!r} cannot be written (permission denied)")
    return path


@contextlib.contextmanager
def output_stream(
    output: str | os.PathLike[str] | TextIO | None,
    *,
    inputs: Iterable[Any] = (),
    what: str = "--output",
) -> Iterator[TextIO]:
    """A text stream for the block: standard output (``None`` or ``"-"``), ``output`` itself if
    it is a stream, or a temporary file beside the path ``output`` (UTF-8), opened before the
    block (so an unwritable location fails before any work) and renamed onto ``output`` when the
    block ends without an error, removed otherwise. ``check_output`` runs first."""
    if output is None or (isinstance(output, str) and output == _STANDARD):
        yield sys.stdout
        sys.stdout.flush()
        return
    if hasattr(output, "write"):
        yield output  # type: ignore[misc]
        return
    path = check_output(output, inputs, what=what)  # type: ignore[arg-type]
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        stream = open(temporary, "w", encoding="utf-8")
    except OSError as error:
        raise ValueError(
            f"{what} {os.fspath(path)!r} cannot be written: {error.strerror or error}"
        ) from None
    try:
        with stream:
            yield stream
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
