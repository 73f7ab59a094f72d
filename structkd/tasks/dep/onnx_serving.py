"""The dependency predictor of exported students (``backend = "onnx"``): numpy and onnxruntime,
no torch.

    predictor = OnnxDepPredictor("models/student-onnx")        # made by export_onnx
    predictor.predict([TokenizedSentence(tokens, starts, ends, upos)])  -> [Document]

A batch of tokenized sentences is encoded with the exported vocabulary exactly as the collator of
training and evaluation encodes it (``structkd.data.dep_encodings.WordEncoder`` and
``WordLayout``; that module imports no torch), the ONNX model computes each word's label
log-probabilities ``[B, N, L]``, the scheme gives each word's label -> head table
(``DepLabelScheme.word_code_heads``) and ``structkd.serve.trees`` decodes the trees, the relations
and the heads' probabilities: the functions the torch student decodes with, so both backends give
the same parses of the same scores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from structkd.data.dep_encodings import DepLabelScheme, WordEncoder, WordLayout
from structkd.data.vocab import Vocabulary
from structkd.serve.chars import flat_chars_from_padded
from structkd.serve.manifest import read_manifest
from structkd.serve.onnx import onnx_session
from structkd.serve.text import TokenizedSentence
from structkd.serve.trees import decode_scores, head_probabilities
from structkd.tasks.dep.predictor import DepParse, DepPredictor, parses

__all__ = ["OnnxDepPredictor", "read_json"]

_VOCAB_FORMAT = 1


def read_json(path: Path) -> Any:
    """The JSON of ``path`` (``ValueError`` naming the file when it is unreadable)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{os.fspath(path)}: cannot read it ({error})") from None


class OnnxDepPredictor(DepPredictor):
    """An exported dependency student (``export.json``, task ``dep``) served by onnxruntime.

    ``num_threads``: onnxruntime's intra-op threads (``None``: its default); ``device`` must be
    ``"cpu"`` (the CPU execution provider)."""

    backend = "onnx"

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        batch_size: int = 64,
        num_threads: int | None = None,
        device: str = "cpu",
    ):
        super().__init__(model_dir, batch_size=batch_size, num_threads=num_threads)
        if device != "cpu":
            raise ValueError(
                f"an exported model runs on the CPU (onnxruntime); got device={device!r}"
            )
        directory = Path(model_dir)
        manifest = read_manifest(directory)
        source = os.fspath(directory / "export.json")
        if manifest["task"] != self.task or manifest["format"] != "onnx":
            raise ValueError(
                f"{source}: an {manifest['format']!r} export of a {manifest['task']!r} model, "
                f"not an ONNX dependency model"
            )
        files = manifest["files"]
        missing = {"model", "vocab", "scheme"} - set(files)
        if missing:
            raise ValueError(f"{source}: 'files' lacks {sorted(missing)}")
        self.manifest = manifest
        vocab_path = directory / files["vocab"]
        vocab = read_json(vocab_path)
        try:
            if vocab.get("format") != _VOCAB_FORMAT:
                raise ValueError(f"format {vocab.get('format')!r} is not {_VOCAB_FORMAT}")
            words, chars, upos = (
                Vocabulary.from_dict(vocab[name]) for name in ("words", "chars", "upos")
            )
            max_word_chars = int(vocab["max_word_chars"])
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{os.fspath(vocab_path)}: malformed vocabulary ({error})") from None
        self.encoder = WordEncoder(words, chars, upos, max_word_chars=max_word_chars)
        scheme_path = directory / files["scheme"]
        try:
            self.scheme = DepLabelScheme.from_dict(read_json(scheme_path))
        except ValueError as error:
            raise ValueError(f"{os.fspath(scheme_path)}: {error}") from None
        self.needs_upos = self.scheme.encoding == "pos"
        self.reads_upos = bool(manifest.get("reads_upos", True))

        self.session = onnx_session(directory / files["model"], num_threads)
        self.inputs = [item.name for item in self.session.get_inputs()]
        self.reads_chars = "chars" in self.inputs
        context = manifest.get("char_context")
        if isinstance(context, bool) or not isinstance(context, int) or context < 0:
            raise ValueError(f"{source}: char_context must be an integer >= 0; got {context!r}")
        self.char_context = context
        self.output = manifest.get("output", "log_probs")

    def parse_batch(self, sentences: Sequence[TokenizedSentence]) -> list[DepParse]:
        """``DepParse`` of each sentence of one batch: one ONNX run, batched decoding."""
        scheme = self.scheme
        encoded = self.encoder.encode(
            [sentence.tokens for sentence in sentences], [sentence.upos for sentence in sentences]
        )
        layout = WordLayout(np.array([len(sentence) for sentence in sentences], dtype=np.int64))
        arrays = layout.pad_words(encoded)
        if self.reads_chars:
            arrays.update(
                flat_chars_from_padded(arrays["char_ids"], layout.lengths, self.char_context)
            )
        (log_probs,) = self.session.run([self.output], {name: arrays[name] for name in self.inputs})
        tags = None
        if scheme.encoding == "pos":
            tags = scheme.tag_indices(
                [
                    tag
                    for sentence in sentences
                    for tag in (sentence.upos or (None,) * len(sentence))
                ]
            )
        code_heads = np.full((layout.batch, layout.max_len, scheme.n_codes), -1, dtype=np.int64)
        code_heads[layout.rows, layout.columns] = scheme.word_code_heads(layout.lengths, tags)
        tables = scheme.arrays
        trees = decode_scores(
            log_probs,
            code_heads,
            layout.lengths,
            label_code=tables.label_code,
            label_relation=tables.label_relation,
            root_labels=tables.root_labels,
        )
        probabilities = head_probabilities(
            log_probs, code_heads, trees.heads, label_code=tables.label_code
        )
        names = np.array([*scheme.relations, "_"], dtype=object)[trees.relations]
        lengths = layout.lengths.tolist()
        deprels = [names[b, :n].tolist() for b, n in enumerate(lengths)]
        return parses(trees.heads, deprels, probabilities, lengths)
