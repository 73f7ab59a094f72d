"""NER models: embeddings, a transformer word encoder, the BiLSTM encoder, heads and taggers.

Imports ``structkd.structures`` and ``structkd.data`` only (never training or CLI code).
``transformers`` is imported only when a transformer is built.
"""

from structkd.models.embeddings import (
    GLOVE_DIM,
    CharCNN,
    WordEmbedding,
    glove_initialized_embedding,
    glove_vocabulary,
    load_glove,
)
from structkd.models.encoder import WordEncoder
from structkd.models.heads import BiaffineSpanDistribution, BiaffineSpanHead, CRFHead, SoftmaxHead
from structkd.models.tagger import ARCHITECTURES, HEADS, Tagger, TaggerConfig, architecture
from structkd.models.transformer import (
    TRANSFORMER_MODELS,
    TransformerWordEncoder,
    compute_word_features,
    frozen_transformer,
    load_features,
    resolve_model_path,
    save_features,
    transformer_hidden_size,
)

__all__ = [
    "ARCHITECTURES",
    "GLOVE_DIM",
    "HEADS",
    "TRANSFORMER_MODELS",
    "BiaffineSpanDistribution",
    "BiaffineSpanHead",
    "CRFHead",
    "CharCNN",
    "SoftmaxHead",
    "Tagger",
    "TaggerConfig",
    "TransformerWordEncoder",
    "WordEmbedding",
    "WordEncoder",
    "architecture",
    "compute_word_features",
    "frozen_transformer",
    "glove_initialized_embedding",
    "glove_vocabulary",
    "load_features",
    "load_glove",
    "resolve_model_path",
    "save_features",
    "transformer_hidden_size",
]

from structkd.models.dep_tagger import (
    DepPrediction,
    DepTaggerConfig,
    SequenceLabelingParser,
)

__all__ += ["DepPrediction", "DepTaggerConfig", "SequenceLabelingParser"]

from structkd.models.parser import (  # noqa: E402
    PARSER_MODES,
    BiaffineParser,
    ParserConfig,
    ParserScores,
)

__all__ += ["PARSER_MODES", "BiaffineParser", "ParserConfig", "ParserScores"]
