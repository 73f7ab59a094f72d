"""The commands as functions, for programs: ``train``, ``distill``, ``evaluate``, ``predict``,
``export``, and ``load`` (a predictor), dispatched to the task plug-in (``structkd.tasks.TASKS``)
named by the options or by the model directory.

    train(TrainOptions(train="conll03-en:train", dev="conll03-en:dev", out="models/teacher"))
    distill(DistillOptions(train=..., dev=..., out=..., teachers=["models/teacher"]))
    evaluate("models/student", "conll03-en:test")  ->  {"precision", "recall", "f1", ...}
    load("models/student").predict("EU rejects German call.")   ->  Document (entities, offsets)
    predict("models/student", "news.txt", "news.jsonl", input_format="raw", output_format="json")
    export("models/student", "models/student-onnx")   # served by load() without torch

``predict`` is ``load`` over a file: ``read_inputs`` reads it (raw text, tokens, CoNLL, CoNLL-U
or a data set), the predictor labels it, the task writes the documents (``write_documents``).
Importing this module is cheap (no torch, no Lightning).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from structkd.data.tag_schemes import SCHEMES
from structkd.serve.text import TokenizedSentence
from structkd.tasks import get_task
from structkd.train.options import DistillOptions, TrainOptions, positive_int

__all__ = [
    "INPUT_FORMATS",
    "DistillOptions",
    "TrainOptions",
    "distill",
    "evaluate",
    "export",
    "guess_input_format",
    "load",
    "predict",
    "read_inputs",
    "train",
]

INPUT_FORMATS: tuple[str, ...] = ("auto", "raw", "tokens", "conll", "conllu")
"""What ``predict`` reads (``read_inputs``)."""


def train(options: TrainOptions) -> dict[str, Any]:
    """Train a model on gold labels; model selection on the task's dev metric. Writes
    ``options.out`` and returns the metrics written to ``metrics.json`` (plus ``model_dir``)."""
    return get_task(options.task).train(options)


def distill(options: DistillOptions) -> dict[str, Any]:
    """Train a student from one teacher or an ensemble (see ``DistillOptions``). Teacher outputs
    are computed once per (teacher, data, method options) and cached under ``cache_dir``."""
    return get_task(options.task).distill(options)


def _task_of_model(model_dir: str | os.PathLike[str]) -> Any:
    from structkd.serve.manifest import is_exported, read_manifest

    if is_exported(model_dir):
        return get_task(read_manifest(model_dir)["task"])
    from structkd.train.checkpoint import model_task

    return get_task(model_task(model_dir))


def load(
    model_dir: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    num_threads: int | None = None,
    device: str = "cpu",
    scheme: str = "bioes",
) -> Any:
    """A predictor for the model in ``model_dir`` (any task; a trained model directory, or an
    exported one, which is served with numpy and onnxruntime only, without importing torch):
    ``load(dir).predict(texts)`` takes raw strings or token lists and returns
    ``structkd.serve.results.Document``s (``structkd.serve.predictor.Predictor``).
    ``num_threads``: the threads of the backend (``None``: its default); ``scheme``: the tag
    scheme of a tagger's token tags, ``bioes`` or ``iob2`` (a task without tags refuses
    another value than the default)."""
    positive_int(batch_size, "batch_size")
    positive_int(num_threads, "num_threads", allow_none=True)
    return _task_of_model(model_dir).load_predictor(
        model_dir, batch_size=batch_size, num_threads=num_threads, device=device, scheme=scheme
    )


def export(
    model_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, format: str = "onnx"
) -> dict[str, Any]:
    """Export the model in ``model_dir`` to the directory ``out`` (``format``: ``"onnx"``) for
    serving without torch (``load(out)``); returns the manifest written."""
    from structkd.serve.manifest import EXPORT_FORMATS

    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}; got {format!r}")
    return _task_of_model(model_dir).export(model_dir, out, format=format)


def evaluate(
    model_dir: str | os.PathLike[str],
    data: str,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    num_threads: int | None = None,
    max_sentences: int | None = None,
    include_punct: bool = False,
    scheme: str = "auto",
) -> dict[str, Any]:
    """The scores of the model in ``model_dir`` on the labeled ``data`` (the task is read from
    the model directory): NER precision, recall, F1 per type; dependency UAS, LAS
    (punctuation excluded unless ``include_punct``) and the well-formed rate; and the speed.
    ``scheme``: the tag scheme of tagged data (``auto``: detected, IOB1 with a warning; or
    ``iob1``, ``iob2``, ``bioes``: checked)."""
    positive_int(batch_size, "batch_size")
    positive_int(num_threads, "num_threads", allow_none=True)
    if scheme not in ("auto", *SCHEMES):
        raise ValueError(f"scheme must be one of auto, {', '.join(SCHEMES)}; got {scheme!r}")
    if num_threads is not None:
        import torch

        torch.set_num_threads(num_threads)
    return _task_of_model(model_dir).evaluate(
        model_dir,
        data,
        batch_size=batch_size,
        device=device,
        max_sentences=max_sentences,
        include_punct=include_punct,
        scheme=scheme,
    )


def read_inputs(
    input: str | os.PathLike[str], input_format: str = "auto"
) -> list[str | TokenizedSentence]:
    """What ``predict`` labels, read from ``input`` (a file, ``"-"`` for standard input, or a
    registered data set name such as ``"conll03-en:test"``): a list of raw texts (``str``, each
    tokenized and split into sentences by syntok) or of pre-tokenized sentences
    (``TokenizedSentence``), one output document each, in input order. A sentence read from a
    column file or tokenized text records its ``document`` there, so that a tagger reading
    document context (``teacher-crf-context``) reads it with the sentences of that document.

    ``input_format``: ``"raw"`` (each non-blank line is one text), ``"tokens"`` (one sentence per
    line, tokens separated by spaces or tabs), ``"conll"`` (a CoNLL column file: the word is the
    first column, any tags are ignored), ``"conllu"`` (CoNLL-U: the words and their UPOS; HEAD and
    DEPREL may be ``_``), or ``"auto"`` (``guess_input_format``; a data set is read as what it
    holds). Malformed input raises ``DataError`` (a ``ValueError``) naming the file and line."""
    from structkd.data.datasets import dataset_names, is_dataset_name, load_dataset

    if input_format not in INPUT_FORMATS:
        raise ValueError(
            f"input_format must be one of {', '.join(INPUT_FORMATS)}; got {input_format!r}"
        )
    spec = os.fspath(input)
    if spec == "-":
        return _read_standard_input(input_format)
    if is_dataset_name(spec):
        return [_record_input(spec, record) for record in load_dataset(spec)]
    if not Path(spec).is_file():
        raise ValueError(
            f"input {spec!r} is neither a known data set ({', '.join(dataset_names())}) nor an "
            "existing file"
        )
    return _read_file(spec, input_format)


def guess_input_format(path: str | os.PathLike[str]) -> str:
    """The format of an input file for ``input_format="auto"``: ``"conllu"`` for a ``*.conllu``
    file or one most of whose lines (blank and ``#`` lines aside) have 10 tab-separated columns
    and a word ID first; else ``"conll"`` or ``"tokens"`` by the rules of column files, which
    never turn tags into words (``structkd.data.formats.guess_text_format``: a file most of
    whose lines end with a tag is a column file, one where almost none does is tokenized text,
    anything between is refused). Raw text is never guessed: pass ``"raw"``."""
    from structkd.data.conll import DataError, read_text_lines
    from structkd.data.formats import conllu_line, guess_text_format

    if os.fspath(path).endswith(".conllu"):
        return "conllu"
    if conllu_line(read_text_lines(path)) is not None:
        return "conllu"
    try:
        return guess_text_format(path)
    except DataError as error:  # name this command's flag
        problem = error.problem.replace("--format ", "--input-format ")
        raise DataError(error.path, error.line, problem) from None


def _read_standard_input(input_format: str) -> list[str | TokenizedSentence]:
    """``read_inputs`` of standard input (through a temporary file: the readers take paths);
    errors name ``<stdin>``."""
    import sys
    import tempfile

    from structkd.data.conll import DataError

    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False)
    with handle:
        handle.write(sys.stdin.read())
    try:
        return _read_file(handle.name, input_format)
    except DataError as error:
        raise DataError("<stdin>", error.line, error.problem) from None
    finally:
        os.unlink(handle.name)


def _read_file(path: str, input_format: str) -> list[str | TokenizedSentence]:
    from structkd.data.conll import DataError, read_conll, read_text_lines, read_tokenized

    chosen = guess_input_format(path) if input_format == "auto" else input_format
    if chosen == "raw":
        lines = read_text_lines(path)
        texts = [line.removesuffix("\r") for line in lines if line.strip()]
        if not texts:
            raise DataError(path, max(1, len(lines)), "no text in the file (only blank lines)")
        return texts
    if chosen == "conllu":
        from structkd.data.conllu_io import read_conllu

        # text to parse: HEAD and DEPREL may be `_`, and gold trees are not needed
        trees = read_conllu(path, single_root=False, require_trees=False)
        return [_tokenized(tree.words, tree.upos) for tree in trees]
    if chosen == "conll":
        sentences = read_conll(path, labeled=False)
    else:
        sentences = read_tokenized(path)
    return [_tokenized(sentence.tokens, document=sentence.document) for sentence in sentences]


def _record_input(spec: str, record: Any) -> TokenizedSentence:
    """The words (and UPOS) of one record of a data set: a tagged ``Sentence`` or a treebank's
    ``DepSentence``."""
    from structkd.data.conll import Sentence

    if isinstance(record, Sentence):
        return _tokenized(record.tokens, document=record.document)
    from structkd.data.conllu_io import DepSentence

    if isinstance(record, DepSentence):
        return _tokenized(record.words, record.upos)
    raise ValueError(f"data set {spec!r} holds {type(record).__name__} records, not sentences")


def _tokenized(
    tokens: Sequence[str], upos: Sequence[str] | None = None, document: int | None = None
) -> TokenizedSentence:
    """A pre-tokenized sentence as the text of its tokens joined by single spaces (the text a
    ``Document`` of it has), each token's offsets into it; ``upos`` unless it is all ``_``;
    ``document``: its document in the input file (context for a model that reads it)."""
    starts, position = [], 0
    for token in tokens:
        starts.append(position)
        position += len(token) + 1
    ends = tuple(start + len(token) for start, token in zip(starts, tokens, strict=True))
    if upos is not None and all(tag == "_" for tag in upos):
        upos = None
    return TokenizedSentence(
        tokens=tuple(tokens),
        starts=tuple(starts),
        ends=ends,
        upos=None if upos is None else tuple(upos),
        document=document,
    )


def predict(
    model_dir: str | os.PathLike[str],
    input: str | os.PathLike[str],
    output: str | os.PathLike[str] | TextIO | None = None,
    *,
    input_format: str = "auto",
    output_format: str | None = None,
    scheme: str = "bioes",
    batch_size: int = 64,
    device: str = "cpu",
    num_threads: int | None = None,
) -> int:
    """Label ``input`` with the model in ``model_dir`` (trained or exported; any task) and write
    the result to ``output`` (a path, a stream, or standard output for ``None``/``"-"``); returns
    the number of sentences written.

    ``input`` and ``input_format``: see ``read_inputs`` (raw text, tokens, CoNLL, CoNLL-U, a data
    set). ``output_format``: one of the task's ``output_formats`` (``None``: its first; NER:
    ``conll``, ``word tag probability`` per token, or ``json``, one document per line with
    character offsets and entity probabilities; dependency parsing: ``conllu`` or ``json``).
    ``scheme``: the tag scheme of a tagger's tags (``bioes`` or ``iob2``). A path ``output`` is
    checked before any work (not ``input``, in a writable directory) and written through a
    temporary file renamed onto it at the end."""
    positive_int(batch_size, "batch_size")
    positive_int(num_threads, "num_threads", allow_none=True)
    if input_format not in INPUT_FORMATS:
        raise ValueError(
            f"input_format must be one of {', '.join(INPUT_FORMATS)}; got {input_format!r}"
        )
    task = _task_of_model(model_dir)
    if output_format is None:
        output_format = task.output_formats[0]
    if output_format not in task.output_formats:
        raise ValueError(
            f"{task.title} predictions can be written as {', '.join(task.output_formats)}; got "
            f"{output_format!r}"
        )
    from structkd.train.outputs import output_stream

    with output_stream(output, inputs=[input]) as stream:
        items = read_inputs(input, input_format)
        predictor = load(
            model_dir, batch_size=batch_size, num_threads=num_threads, device=device, scheme=scheme
        )
        documents = predictor.predict_documents(items)
        return task.write_documents(stream, documents, format=output_format, scheme=scheme)
