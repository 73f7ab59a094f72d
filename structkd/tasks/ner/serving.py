"""Serving NER models: ``load_predictor`` (a trained model directory served with torch, or an
exported one served by ``structkd.tasks.ner.onnx_serving`` without torch), ``export`` and
``write_documents`` (CoNLL or JSON lines), the three functions ``NerTask`` delegates to.

``TorchNerPredictor`` labels a batch of sentences with one forward pass of the tagger and returns,
per sentence (``NerLabels``), the tags of the best structure (CRF: Viterbi; softmax: each token's
best label; span head: the best flat span set), each tag's marginal probability, and the entities
of the best structure with the exact probability that exactly that span is an entity of that type:

* CRF (``LinearChainCRF``): the posterior over tag sequences is a Markov chain, so the
  probability of the labels ``a_i .. a_j`` on tokens ``i..j`` (``B-t I-t .. E-t``, or ``S-t``) is
  ``P(y_i = a_i) * prod_{k=i}^{j-1} P(y_k = a_k, y_{k+1} = a_{k+1}) / P(y_k = a_k)``
  (node and pair marginals of forward-backward), or equally ``alpha_i[a_i] * prod_k
  exp(transitions + emissions) * beta_j[a_j] / Z``;
* softmax (``Factorized``): ``prod_{k=i}^{j} P(y_k = a_k)``;
* span head (``SemiMarkovSpans``): the span marginal ``P(span i..j labeled t)``.

CRF and softmax taggers are decoded from their emissions in numpy, as an exported model is
(``onnx_serving.label_emissions``: ``structkd.serve.chain`` for the CRF), and a tagger without a
transformer reads batches laid out by the exported model's encoder (``ExportedVocab``, equal to
its collator's); a span tagger is decoded by its distribution (``labels_of``).

Entities are decoded strictly from the BIOES labels (``S-t`` alone or ``B-t I-t* E-t``, as the
evaluation's seqeval strict mode): a softmax tagger's broken chunks keep their token tags but are
no entity. Strict decoding makes the label path on ``i..j`` and the entity the same event, so the
probability above is the entity's.

Importing this module loads no torch (an exported model is served without it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from structkd.data.conll import Sentence, write_conll
from structkd.data.tag_schemes import label_names
from structkd.serve.manifest import is_exported
from structkd.serve.results import Document, write_json_lines
from structkd.serve.text import TokenizedSentence
from structkd.tasks.ner.onnx_serving import ExportedVocab, label_emissions, masked_crf
from structkd.tasks.ner.predictor import OUTPUT_SCHEMES, NerLabels, NerPredictor

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "OUTPUT_FORMATS",
    "TorchNerPredictor",
    "entity_spans",
    "export",
    "iob2_index",
    "labels_of",
    "load_predictor",
    "span_probabilities",
    "write_documents",
]

OUTPUT_FORMATS = ("conll", "json")
"""What ``write_documents`` writes (``NerTask.output_formats``)."""

# BIOES label layout of the structures (``0 = O``, ``B-r = 1 + 4r``, ``I-r = 2 + 4r``,
# ``E-r = 3 + 4r``, ``S-r = 4 + 4r``): the offsets of a label's prefix inside its type's block.
_BEGIN, _INSIDE, _END, _SINGLE = 0, 1, 2, 3


def load_predictor(
    model_dir: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    num_threads: int | None = None,
    device: str = "cpu",
    scheme: str = "bioes",
) -> NerPredictor:
    """A NER predictor for ``model_dir``: ``OnnxNerPredictor`` for an exported directory (an
    ``export.json``; no torch), else ``TorchNerPredictor`` for a trained one. ``scheme``: the
    tag scheme of the token tags, ``"bioes"`` or ``"iob2"``."""
    options = {
        "batch_size": batch_size,
        "num_threads": num_threads,
        "device": device,
        "scheme": scheme,
    }
    if is_exported(model_dir):
        from structkd.tasks.ner.onnx_serving import OnnxNerPredictor

        return OnnxNerPredictor(model_dir, **options)
    return TorchNerPredictor(model_dir, **options)


def export(
    model_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, format: str
) -> dict[str, Any]:
    """Export the NER model of ``model_dir`` to the directory ``out`` (``format``: ``"onnx"``);
    returns the manifest written."""
    if format != "onnx":
        raise ValueError(f"NER models export to onnx; got format {format!r}")
    from structkd.tasks.ner.export import export_onnx

    return export_onnx(model_dir, out)


def write_documents(
    stream: TextIO, documents: Iterable[Document], *, format: str, scheme: str = "bioes"
) -> int:
    """Write predicted ``documents`` to ``stream``; returns the number of sentences written.

    ``"conll"``: one token per line, ``word tag probability`` (the tag's marginal probability,
    4 decimals), a blank line between sentences (the documents' boundaries are not marked);
    ``"json"``: one JSON object per document and line (``Document.to_dict``: text, sentences with
    character offsets, entities with their probabilities). ``scheme`` is the scheme the tags are
    in (the predictor's); they are written as they are."""
    if format not in OUTPUT_FORMATS:
        raise ValueError(
            f"NER predictions can be written as {', '.join(OUTPUT_FORMATS)}; got {format!r}"
        )
    if scheme not in OUTPUT_SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(OUTPUT_SCHEMES)}; got {scheme!r}")
    documents = list(documents)
    n_sentences = sum(len(document.sentences) for document in documents)
    if format == "json":
        write_json_lines(stream, documents)
        return n_sentences
    sentences, tags, scores = [], [], []
    for number, document in enumerate(documents, start=1):
        for sentence in document.sentences:
            if any(token.tag is None or token.tag_score is None for token in sentence.tokens):
                raise ValueError(f"document {number} has a token without a predicted tag")
            sentences.append(Sentence([token.text for token in sentence.tokens]))
            tags.append([token.tag for token in sentence.tokens])
            scores.append([token.tag_score for token in sentence.tokens])
    write_conll(stream, sentences, tags, scores)
    return n_sentences


# -- the torch predictor --------------------------------------------------------------------------


class TorchNerPredictor(NerPredictor):
    """A trained NER model directory served with torch (see the module docstring).

    ``device``: where the tagger runs (``"cpu"``, ``"cuda"``, ...); ``num_threads``: torch's CPU
    threads (``torch.set_num_threads``; ``None`` leaves torch's setting). A transformer's word
    features are computed on the fly (never read from a cache); a tagger with document context
    (``transformer_context``) reads the sentences of one input text as one document."""

    backend = "torch"

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        batch_size: int = 64,
        num_threads: int | None = None,
        device: str = "cpu",
        scheme: str = "bioes",
    ):
        super().__init__(model_dir, batch_size=batch_size, num_threads=num_threads, scheme=scheme)
        import torch

        from structkd.tasks.ner.features import make_collator
        from structkd.tasks.ner.model import load_tagger
        from structkd.train.runtime import default_cache_dir

        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.device = device
        self.tagger, self.info = load_tagger(model_dir, device=device)
        self.types = tuple(self.info.types)
        # cached_features=False: no cache entry is read or built, so no sentences are needed
        self.collator = make_collator(
            self.info.config,
            self.tagger,
            self.info.vocab,
            [],
            "",
            default_cache_dir(),
            device=device,
            cached_features=False,
        )
        # document context: the sentences of one input text are one document
        # (``label_sentences``); a batch labeled alone reads each sentence alone
        self.context_size = self.info.config.transformer_context
        self.tag_names = tuple(label_names(self.types, scheme))  # the tags written
        self.labels = tuple(self.info.vocab.labels)
        head = self.tagger.head
        # CRF and softmax heads are decoded in numpy (``label_emissions``, as an exported model
        # is); a span head by its own distribution (``labels_of``)
        self.head_kind = self.info.config.head
        self.crf = None
        if self.head_kind == "crf":
            self.crf = masked_crf(
                *(
                    None if value is None else value.detach().cpu().numpy()
                    for value in (
                        head.transitions,
                        head.start,
                        head.end,
                        head.allowed_transitions,
                        head.allowed_start,
                        head.allowed_end,
                    )
                )
            )
        # a plain collator (no transformer) is replaced by the numpy encoder of exported models
        self.encoder = None
        if self.collator.tokenizer is None and self.collator.features is None:
            vocab = self.info.vocab
            self.encoder = ExportedVocab.of(
                words=vocab.words.items,
                word_unk=vocab.words.unk_index,
                chars=vocab.chars.items,
                char_unk=vocab.chars.unk_index,
                max_word_chars=self.collator.max_word_chars,
                labels=vocab.labels,
                types=vocab.types,
            )

    def context_collator(self, context: Any) -> Any:
        """The tagger's collator reading ``context`` (``NerPredictor.label_sentences``)."""
        return self.collator.with_context(context)

    def label_batch(self, sentences: Sequence[TokenizedSentence]) -> list[NerLabels]:
        """``NerLabels`` of each sentence of one batch (one forward pass, batched decoding)."""
        if not sentences:
            return []
        import torch

        from structkd.data.batching import TaggingBatch

        if self.encoder is not None:
            word_ids, char_ids, lengths = self.encoder.encode([s.tokens for s in sentences])
            batch = TaggingBatch(
                word_ids=torch.from_numpy(word_ids),
                char_ids=torch.from_numpy(char_ids),
                lengths=torch.from_numpy(lengths),
                sentence_ids=torch.arange(len(sentences)),
            )
        else:
            items = [(index, Sentence(list(s.tokens))) for index, s in enumerate(sentences)]
            batch = self.collator(items)
        return self.label_collated(batch)

    def label_collated(self, batch: Any) -> list[NerLabels]:
        """``NerLabels`` of each sentence of a collated ``TaggingBatch``."""
        import torch

        batch = batch.to(self.device)
        with torch.inference_mode():
            scores = self.tagger.scores(batch)
            if self.head_kind in ("crf", "softmax"):
                # float64 decoding of the float32 scores (they convert exactly, so the best
                # labels are the tagger's)
                return label_emissions(
                    scores.cpu().numpy(),
                    batch.lengths.cpu().numpy(),
                    self.crf,
                    labels=self.labels,
                    types=self.types,
                    scheme=self.scheme,
                )
            # the head's distribution of float64 scores: marginals and entity probabilities in
            # float64
            lengths = batch.lengths.to(self.tagger.head_device)
            distribution = self.tagger.head.distribution(scores.double(), lengths)
            return labels_of(distribution, self.types, self.tag_names, self.scheme)


def labels_of(
    distribution: Any, types: Sequence[str], tag_names: Sequence[str], scheme: str
) -> list[NerLabels]:
    """``NerLabels`` per sentence of a tagger's output ``distribution`` (a ``LinearChainCRF``,
    ``Factorized`` or ``SemiMarkovSpans`` over BIOES labels, batch ``B``): the best structure's
    tags in ``scheme`` (``tag_names``: the names of that scheme's label layout), their marginal
    probabilities, and its strictly decoded entities with their exact probabilities."""
    from structkd.structures.semimarkov import SemiMarkovSpans

    best = distribution.argmax  # [B, N] BIOES labels, -1 at padding
    if isinstance(distribution, SemiMarkovSpans):
        marginals = distribution.bioes_marginals  # [B, N, L]
    else:
        marginals = distribution.marginals
    if scheme == "iob2":
        to_iob2 = iob2_index(len(types), best.device)  # [L]
        output_best = to_iob2[best.clamp(min=0)]  # [B, N]
        grouped = marginals.new_zeros(*marginals.shape[:2], 1 + 2 * len(types))
        # P(IOB2 tag) = sum of the marginals of the BIOES labels with that tag
        output_marginals = grouped.index_add_(-1, to_iob2, marginals)
    else:
        output_best, output_marginals = best.clamp(min=0), marginals
    tag_scores = output_marginals.gather(-1, output_best.unsqueeze(-1)).squeeze(-1)  # [B, N]
    spans = entity_spans(best)  # [S, 4]
    probabilities = span_probabilities(distribution, best, spans)  # [S]

    lengths = distribution.lengths.tolist()
    tag_rows = output_best.tolist()
    score_rows = tag_scores.clamp(0.0, 1.0).tolist()
    by_sentence: list[list[tuple[int, int, str, float]]] = [[] for _ in lengths]
    for (row, start, end, label), probability in zip(
        spans.tolist(), probabilities.clamp(0.0, 1.0).tolist(), strict=True
    ):
        by_sentence[row].append((start, end + 1, types[label], probability))
    return [
        NerLabels(
            tags=tuple(tag_names[index] for index in tag_rows[row][:length]),
            tag_scores=tuple(score_rows[row][:length]),
            spans=tuple(by_sentence[row]),
        )
        for row, length in enumerate(lengths)
    ]


def iob2_index(n_types: int, device: Any = "cpu") -> Tensor:
    """``[1 + 4R]`` int64: the IOB2 label (``label_names(types, "iob2")`` layout, ``1 + 2R``) of
    each BIOES label: ``O -> O``, ``B-r, S-r -> B-r = 1 + 2r``, ``I-r, E-r -> I-r = 2 + 2r``."""
    import torch

    labels = torch.arange(1, 1 + 4 * n_types, device=device) - 1
    prefix, entity_type = labels % 4, labels // 4
    inside = (prefix == _INSIDE) | (prefix == _END)
    return torch.cat([labels.new_zeros(1), 1 + 2 * entity_type + inside.long()])


def entity_spans(labels: Tensor) -> Tensor:
    """The strictly decoded entities of BIOES labels ``[B, N]`` (``-1`` at padding): ``[S, 4]``
    int64 rows ``(sentence, first token, last token, type)``, ordered by sentence then token.

    A chunk is a maximal run of entity labels each linked to the previous one (``I-r``/``E-r``
    after ``B-r``/``I-r`` of the same type); it is an entity iff it starts with ``B-r``/``S-r``
    and ends with ``E-r``/``S-r`` (seqeval strict IOBES; ``label_spans`` in
    ``structkd.tasks.ner.metrics`` decodes one sentence the same way)."""
    import torch

    entity = labels > 0  # [B, N]
    prefix = torch.where(entity, (labels - 1) % 4, -1)
    entity_type = torch.where(entity, (labels - 1) // 4, -1)
    opens = (prefix == _BEGIN) | (prefix == _INSIDE)  # may be continued
    continues = (prefix == _INSIDE) | (prefix == _END)  # may continue
    # linked[b, p]: label p continues the chunk of label p - 1 (False at p = 0)
    linked = opens[:, :-1] & continues[:, 1:] & (entity_type[:, :-1] == entity_type[:, 1:])
    no_link = linked.new_zeros(labels.shape[0], 1)
    linked_before = torch.cat([no_link, linked], dim=1)
    linked_after = torch.cat([linked, no_link], dim=1)
    # every chunk has exactly one first and one last token: the row-major orders match
    firsts = (entity & ~linked_before).nonzero()  # [C, 2]
    lasts = (entity & ~linked_after).nonzero()  # [C, 2]
    first_prefix = prefix[firsts[:, 0], firsts[:, 1]]
    last_prefix = prefix[lasts[:, 0], lasts[:, 1]]
    keep = ((first_prefix == _BEGIN) | (first_prefix == _SINGLE)) & (
        (last_prefix == _END) | (last_prefix == _SINGLE)
    )
    firsts, lasts = firsts[keep], lasts[keep]
    types = entity_type[firsts[:, 0], firsts[:, 1]]
    return torch.stack([firsts[:, 0], firsts[:, 1], lasts[:, 1], types], dim=1)


def span_probabilities(distribution: Any, labels: Tensor, spans: Tensor) -> Tensor:
    """``[S]`` float64: the probability under ``distribution`` that tokens ``i..j`` of sentence
    ``b`` carry exactly the labels ``labels[b, i..j]``, for each row ``(b, i, j, r)`` of ``spans``
    ``[S, 4]`` (``labels`` ``[B, N]`` BIOES; for the entities of ``entity_spans(labels)``, the
    probability of each entity). Formulas in the module docstring."""
    import torch

    from structkd.structures.linear_chain import LinearChainCRF
    from structkd.structures.semimarkov import SemiMarkovSpans

    rows, first, last, entity_type = spans.unbind(-1)
    if spans.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64, device=spans.device)
    if isinstance(distribution, SemiMarkovSpans):
        return distribution.marginals.double()[rows, first, last, entity_type]
    safe = labels.clamp(min=0)  # [B, N]
    marginals = distribution.marginals.double()
    node = marginals.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # [B, N]: P(y_k = a_k)
    if isinstance(distribution, LinearChainCRF):
        # log P(y_{k+1} = a_{k+1} | y_k = a_k) = log P(pair) - log P(y_k = a_k): [B, N - 1]
        pair = distribution.pair_marginals.double()  # [B, N - 1, L, L]
        n_labels = pair.shape[-1]
        flat = pair.flatten(-2).gather(-1, (safe[:, :-1] * n_labels + safe[:, 1:]).unsqueeze(-1))
        tiny = torch.finfo(torch.float64).tiny
        step = torch.log(flat.squeeze(-1) / node[:, :-1].clamp_min(tiny))
    else:
        # independent tokens: log P(y_{k+1} = a_{k+1})
        step = torch.log(node[:, 1:])
    positions = torch.arange(step.shape[1], device=step.device)
    inside = (positions >= first.unsqueeze(-1)) & (positions < last.unsqueeze(-1))  # [S, N - 1]
    steps = torch.where(inside, step[rows], 0.0).sum(-1)
    return torch.exp(torch.log(node[rows, first]) + steps)
