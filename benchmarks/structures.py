"""Exact inference side by side: structkd against torch-struct, SuPar and pytorch-crf.

Every row computes ``log Z`` and the marginals (``d log Z / d potentials``) of one batch of 32
sentences with mixed lengths, on CPU with one thread, from the same random scores handed to each
library in its own input format and masking convention. A timed call starts from the shared scores
(structkd's layout) and ends with the library's marginals of the row's quantity; it includes any
conversion of the scores a user of that library must write (e.g. folding emissions and transitions
into torch-struct's edge potentials). Converting the marginals back to structkd's layout for the
comparison is not timed. Agreement is checked once per row in float64 on the real (unpadded)
entries.

Rows (the quantity each library returns):

* linear-chain CRF, ``N`` tokens, ``L`` tags: unary marginals ``[batch, N, L]``; pair marginals are
  also compared where a library gives them per sentence (torch-struct);
* first-order trees, ``N`` words: arc marginals ``[batch, N+1, N+1]``, projective (Eisner) and
  non-projective (matrix-tree theorem), one root or several;
* second-order (sibling) projective trees: arc marginals;
* semi-Markov spans, ``N=40``, ``R=4`` labels, widths up to ``W``: BIOES token marginals
  ``[batch, N, 1+4R]``.

The competitors are development-only dependencies installed by ``benchmarks/setup-bench-env.sh``
into ``.venv-bench``; a library (or a structkd class) that cannot be imported has its column marked
and its rows skipped. Run::

    bash benchmarks/setup-bench-env.sh
    .venv-bench/bin/python benchmarks/structures.py --write docs/performance.md

``--quick`` runs a short smoke pass, ``--json PATH`` dumps the raw timings.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

BATCH_SIZE = 32
LIBRARIES = ("structkd", "torch-struct", "SuPar", "pytorch-crf")
# A float64 result that differs from structkd's by more than this is reported as a disagreement.
AGREEMENT_TOLERANCE = 1e-8
SEMI_MARKOV_MAX_WIDTH = 6

# --------------------------------------------------------------------------------------------------
# Libraries


@dataclass
class Libraries:
    """The imported modules (or classes) of each library, and why one is missing."""

    modules: dict[str, Any] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> Any | None:
        return self.modules.get(name)


STRUCTKD_CLASSES = {
    "LinearChainCRF": "structkd.structures.linear_chain",
    "DependencyCRF": "structkd.structures.dependency",
    "Dependency2oCRF": "structkd.structures.second_order",
    "SemiMarkovSpans": "structkd.structures.semimarkov",
}


def load_libraries() -> Libraries:
    """Import every library that is installed; record the reason for each one that is not."""
    libraries = Libraries()
    for class_name, module_name in STRUCTKD_CLASSES.items():
        key = f"structkd.{class_name}"
        try:
            libraries.modules[key] = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as error:
            libraries.missing[key] = f"{module_name}.{class_name} not available ({error})"
    try:
        import structkd

        libraries.versions["structkd"] = getattr(structkd, "__version__", "?")
    except ImportError as error:  # pragma: no cover - the script lives in the repository
        libraries.missing["structkd"] = str(error)
    for name, module_name in (
        ("torch-struct", "torch_struct"),
        ("SuPar", "supar.structs"),
        ("pytorch-crf", "torchcrf"),
    ):
        try:
            module = importlib.import_module(module_name)
        except Exception as error:  # any import failure means: skip its rows, say why
            libraries.missing[name] = (
                f"import {module_name} failed: {type(error).__name__}: {error}"
            )
            continue
        libraries.modules[name] = module
        top = importlib.import_module(module_name.split(".")[0])
        libraries.versions[name] = str(
            getattr(top, "__version__", None) or getattr(top, "version", "?")
        )
    return libraries


# --------------------------------------------------------------------------------------------------
# Shared random inputs (structkd's layout)


def random_lengths(n_words: int, generator: torch.Generator) -> Tensor:
    """``[batch]`` lengths drawn uniformly in ``[ceil(n/2), n]``, one sentence at full length."""
    low = math.ceil(n_words / 2)
    lengths = torch.randint(low, n_words + 1, (BATCH_SIZE,), generator=generator)
    lengths[torch.randint(BATCH_SIZE, (1,), generator=generator)] = n_words
    return lengths


def crf_inputs(n_tokens: int, n_tags: int, seed: int) -> dict[str, Tensor]:
    """Standard normal ``emissions [batch, N, L]``, ``transitions [L, L]``, ``start, end [L]``."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "emissions": torch.randn(
            BATCH_SIZE, n_tokens, n_tags, generator=generator, dtype=torch.float64
        ),
        "transitions": torch.randn(n_tags, n_tags, generator=generator, dtype=torch.float64),
        "start": torch.randn(n_tags, generator=generator, dtype=torch.float64),
        "end": torch.randn(n_tags, generator=generator, dtype=torch.float64),
        "lengths": random_lengths(n_tokens, generator),
    }


def tree_inputs(n_words: int, seed: int, second_order: bool = False) -> dict[str, Tensor]:
    """Standard normal ``arc_scores [batch, N+1, N+1]`` (and ``sibling_scores [batch, N+1]*3``)."""
    generator = torch.Generator().manual_seed(seed)
    size = n_words + 1
    inputs = {
        "arc_scores": torch.randn(BATCH_SIZE, size, size, generator=generator, dtype=torch.float64),
        "lengths": random_lengths(n_words, generator),
    }
    if second_order:
        inputs["sibling_scores"] = torch.randn(
            BATCH_SIZE, size, size, size, generator=generator, dtype=torch.float64
        )
    return inputs


def span_inputs(n_tokens: int, n_labels: int, seed: int) -> dict[str, Tensor]:
    """Standard normal ``span_scores [batch, N, N, R]`` (entries with ``i > j`` unused)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "span_scores": torch.randn(
            BATCH_SIZE, n_tokens, n_tokens, n_labels, generator=generator, dtype=torch.float64
        ),
        "lengths": random_lengths(n_tokens, generator),
    }


def cast_inputs(inputs: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """A fresh copy of the inputs with floating tensors in ``dtype`` (each library gets its own)."""
    return {
        name: value.to(dtype).clone() if value.is_floating_point() else value.clone()
        for name, value in inputs.items()
    }


def token_mask(lengths: Tensor, n_tokens: int) -> Tensor:
    """``[batch, n_tokens]`` True on real tokens."""
    return torch.arange(n_tokens) < lengths.unsqueeze(-1)


def arc_mask(lengths: Tensor, n_words: int) -> Tensor:
    """``[batch, N+1, N+1]`` True on real arcs ``head -> dependent`` (dependent >= 1, no loop)."""
    positions = torch.arange(n_words + 1)
    inside = positions <= lengths.unsqueeze(-1)
    dependent = inside & (positions >= 1)
    mask = inside.unsqueeze(-1) & dependent.unsqueeze(-2)
    return mask & ~torch.eye(n_words + 1, dtype=torch.bool)


# --------------------------------------------------------------------------------------------------
# Contenders: one library computing one row's marginals


@dataclass
class Contender:
    """``run(inputs)`` is timed: shared scores -> the library's marginals (its own layout).

    ``to_reference(output, inputs)`` (untimed) maps them to structkd's layout, one entry per
    compared quantity (``marginals``, and ``pair_marginals`` where a library has them per sentence).
    """

    library: str
    run: Callable[[dict[str, Tensor]], Any]
    to_reference: Callable[[Any, dict[str, Tensor]], dict[str, Tensor]]
    note: str = ""


def identity_reference(output: Any, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    return output if isinstance(output, dict) else {"marginals": output}


def accepts(cls: Any, name: str) -> bool:
    try:
        return name in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


# ---- linear-chain CRF


def crf_contenders(libraries: Libraries) -> list[Contender]:
    contenders = []
    structkd_crf = libraries.get("structkd.LinearChainCRF")
    if structkd_crf is not None:

        def run_structkd(inputs: dict[str, Tensor]) -> Tensor:
            return structkd_crf(
                emissions=inputs["emissions"],
                transitions=inputs["transitions"],
                start=inputs["start"],
                end=inputs["end"],
                lengths=inputs["lengths"],
            ).marginals

        def structkd_reference(output: Tensor, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
            crf = structkd_crf(
                emissions=inputs["emissions"],
                transitions=inputs["transitions"],
                start=inputs["start"],
                end=inputs["end"],
                lengths=inputs["lengths"],
            )
            return {"marginals": output, "pair_marginals": crf.pair_marginals}

        contenders.append(Contender("structkd", run_structkd, structkd_reference))

    torch_struct = libraries.get("torch-struct")
    if torch_struct is not None:

        def run_torch_struct(inputs: dict[str, Tensor]) -> Tensor:
            # edges[b, n, c, p]: score of tags (p at n, c at n + 1), every factor folded in once.
            emissions, lengths = inputs["emissions"], inputs["lengths"]
            n_tokens = emissions.shape[1]
            edges = inputs["transitions"].t() + emissions[:, 1:].unsqueeze(-1)
            edges[:, 0] += (inputs["start"] + emissions[:, 0]).unsqueeze(-2)
            last_edge = torch.nn.functional.one_hot(lengths - 2, n_tokens - 1).to(emissions.dtype)
            edges = edges + last_edge[..., None, None] * inputs["end"][:, None]
            pair = torch_struct.LinearChainCRF(edges, lengths=lengths).marginals
            unary = torch.cat((pair[:, :1].sum(-2), pair.sum(-1)), dim=1)
            return {"marginals": unary, "pair_marginals": pair.transpose(-1, -2)}

        contenders.append(
            Contender(
                "torch-struct",
                run_torch_struct,
                identity_reference,
                "emissions, transitions, start and end folded into [B, N-1, L, L] edges; "
                "needs lengths >= 2",
            )
        )

    supar = libraries.get("SuPar")
    if supar is not None:

        def run_supar(inputs: dict[str, Tensor]) -> Tensor:
            n_tags = inputs["transitions"].shape[0]
            trans = inputs["transitions"].new_zeros(n_tags + 1, n_tags + 1)
            trans[:-1, :-1] = inputs["transitions"]
            trans[-1, :-1] = inputs["start"]
            trans[:-1, -1] = inputs["end"]
            return supar.LinearChainCRF(inputs["emissions"], trans, inputs["lengths"]).marginals

        contenders.append(Contender("SuPar", run_supar, identity_reference))

    torchcrf = libraries.get("pytorch-crf")
    if torchcrf is not None:
        # id(transitions) -> (transitions, layer): holding the tensor keeps its id from reuse.
        layers: dict[int, tuple[Tensor, Any]] = {}

        def crf_layer(inputs: dict[str, Tensor]) -> Any:
            # The layer's parameters are set once per input set: a user has them in the model.
            key = id(inputs["transitions"])
            if key not in layers:
                layer = torchcrf.CRF(inputs["transitions"].shape[0], batch_first=True)
                layer = layer.to(inputs["emissions"].dtype)
                with torch.no_grad():
                    layer.transitions.copy_(inputs["transitions"])
                    layer.start_transitions.copy_(inputs["start"])
                    layer.end_transitions.copy_(inputs["end"])
                layer.requires_grad_(False)
                layers[key] = (inputs["transitions"], layer)
            return layers[key][1]

        def run_pytorch_crf(inputs: dict[str, Tensor]) -> Tensor:
            layer = crf_layer(inputs)
            emissions = inputs["emissions"].detach().requires_grad_()
            mask = token_mask(inputs["lengths"], emissions.shape[1])
            # Its log-partition is private: unary marginals are its gradient w.r.t. the emissions.
            log_z = layer._compute_normalizer(emissions.transpose(0, 1), mask.t())
            (marginals,) = torch.autograd.grad(log_z.sum(), emissions)
            return marginals

        contenders.append(
            Contender(
                "pytorch-crf",
                run_pytorch_crf,
                identity_reference,
                "no marginals API: autograd of the private _compute_normalizer",
            )
        )
    return contenders


# ---- first-order trees


def root_on_diagonal(arc_scores: Tensor) -> Tensor:
    """structkd arcs ``[batch, N+1, N+1]`` (row 0 = root) -> torch-struct ``[batch, N, N]``.

    torch-struct keeps ``head -> dependent`` for words ``1..N`` at ``[head-1, dependent-1]`` and the
    root's arc to ``d`` on the diagonal ``[d-1, d-1]``.
    """
    potentials = arc_scores[:, 1:, 1:].clone()
    potentials.diagonal(dim1=1, dim2=2).copy_(arc_scores[:, 0, 1:])
    return potentials


def root_to_row(marginals: Tensor) -> Tensor:
    """torch-struct marginals ``[batch, N, N]`` (root on the diagonal) -> ``[batch, N+1, N+1]``."""
    batch, n_words, _ = marginals.shape
    result = marginals.new_zeros(batch, n_words + 1, n_words + 1)
    result[:, 1:, 1:] = marginals
    result[:, 1:, 1:].diagonal(dim1=1, dim2=2).zero_()
    result[:, 0, 1:] = marginals.diagonal(dim1=1, dim2=2)
    return result


def tree_contenders(libraries: Libraries, projective: bool, multiroot: bool) -> list[Contender]:
    contenders = []
    structkd_tree = libraries.get("structkd.DependencyCRF")
    if structkd_tree is not None:

        def run_structkd(inputs: dict[str, Tensor]) -> Tensor:
            return structkd_tree(
                arc_scores=inputs["arc_scores"],
                lengths=inputs["lengths"],
                projective=projective,
                multiroot=multiroot,
            ).marginals

        contenders.append(Contender("structkd", run_structkd, identity_reference))

    torch_struct = libraries.get("torch-struct")
    if torch_struct is not None:
        if projective:

            def run_torch_struct(inputs: dict[str, Tensor]) -> Tensor:
                potentials = root_on_diagonal(inputs["arc_scores"])
                # multiroot is passed every time: torch-struct stores it on the class.
                return torch_struct.DependencyCRF(
                    potentials, lengths=inputs["lengths"], multiroot=multiroot
                ).marginals

            note = "root arcs moved to the diagonal"
        else:

            def run_torch_struct(inputs: dict[str, Tensor]) -> Tensor:
                potentials = root_on_diagonal(inputs["arc_scores"])
                return torch_struct.NonProjectiveDependencyCRF(
                    potentials, lengths=inputs["lengths"], multiroot=multiroot
                ).marginals

            note = (
                "adds eps=1e-5 to every exp(score), padded entries included: a bias of about "
                "1e-5 on the marginals; `eps=0` is its same matrix-tree code "
                "(`torch_struct.deptree.deptree_nonproj(..., eps=0)`, untimed), which agrees; "
                "no max-shift before exp"
            )

        def torch_struct_reference(output: Tensor, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
            reference = {"marginals": root_to_row(output)}
            if not projective:
                unbiased = torch_struct.deptree.deptree_nonproj(
                    root_on_diagonal(inputs["arc_scores"]), multiroot, inputs["lengths"], eps=0.0
                )
                reference["marginals:eps=0"] = root_to_row(unbiased)
            return reference

        contenders.append(Contender("torch-struct", run_torch_struct, torch_struct_reference, note))

    supar = libraries.get("SuPar")
    if supar is not None:
        supar_class = supar.DependencyCRF if projective else supar.MatrixTree

        def run_supar(inputs: dict[str, Tensor]) -> Tensor:
            # SuPar scores are [batch, dependent, head].
            scores = inputs["arc_scores"].transpose(1, 2)
            return supar_class(scores, inputs["lengths"], multiroot=multiroot).marginals

        contenders.append(
            Contender(
                "SuPar",
                run_supar,
                lambda output, inputs: {"marginals": output.transpose(1, 2)},
                "" if projective else "exp() without max-shift, determinant in float64",
            )
        )
    return contenders


def second_order_contenders(libraries: Libraries, multiroot: bool) -> list[Contender]:
    contenders = []
    structkd_2o = libraries.get("structkd.Dependency2oCRF")
    if structkd_2o is not None:
        options = {"multiroot": multiroot} if accepts(structkd_2o, "multiroot") else {}

        def run_structkd(inputs: dict[str, Tensor]) -> Tensor:
            return structkd_2o(
                arc_scores=inputs["arc_scores"],
                sibling_scores=inputs["sibling_scores"],
                lengths=inputs["lengths"],
                **options,
            ).marginals

        contenders.append(Contender("structkd", run_structkd, identity_reference))

    supar = libraries.get("SuPar")
    if supar is not None:

        def run_supar(inputs: dict[str, Tensor]) -> Tensor:
            # SuPar: arcs [batch, dependent, head], siblings [batch, dependent, head, sibling].
            scores = (
                inputs["arc_scores"].transpose(1, 2),
                inputs["sibling_scores"].transpose(1, 2),
            )
            return supar.Dependency2oCRF(scores, inputs["lengths"], multiroot=multiroot).marginals

        contenders.append(
            Contender(
                "SuPar",
                run_supar,
                lambda output, inputs: {"marginals": output.transpose(1, 2)},
            )
        )
    return contenders


# ---- semi-Markov spans -> BIOES


def spans_to_bioes(span_marginals: Tensor, n_labels: int) -> Tensor:
    """Span marginals ``[batch, N, W+1, 1+R]`` -> BIOES marginals ``[batch, N, 1+4R]``.

    ``span_marginals[b, i, w, c]`` is the probability of a segment of width ``w`` labeled ``c``
    (``0`` = O, ``r + 1`` = span label ``r``) starting at token ``i``. A span ``i..j`` of label
    ``r`` puts its mass on ``S-r`` at ``i`` when ``i = j``, else on ``B-r`` at ``i``, ``I-r``
    strictly inside, ``E-r`` at ``j``.
    """
    batch, n_tokens, max_width_1, _ = span_marginals.shape
    bioes = span_marginals.new_zeros(batch, n_tokens, 1 + 4 * n_labels)
    labels = span_marginals[..., 1:]
    bioes[..., 0] = span_marginals[:, :, 1, 0]
    bioes[..., 4::4] = labels[:, :, 1]
    for width in range(2, max_width_1):
        starts = n_tokens - width + 1
        mass = labels[:, :starts, width]
        bioes[:, :starts, 1::4] += mass
        bioes[:, width - 1 :, 3::4] += mass
        for offset in range(1, width - 1):
            bioes[:, offset : offset + starts, 2::4] += mass
    return bioes


def semi_markov_contenders(libraries: Libraries, max_width: int | None) -> list[Contender]:
    contenders = []
    structkd_spans = libraries.get("structkd.SemiMarkovSpans")
    if structkd_spans is not None:

        def run_structkd(inputs: dict[str, Tensor]) -> Tensor:
            return structkd_spans(
                span_scores=inputs["span_scores"], lengths=inputs["lengths"], max_width=max_width
            ).bioes_marginals

        contenders.append(Contender("structkd", run_structkd, identity_reference))

    torch_struct = libraries.get("torch-struct")
    if torch_struct is not None and max_width is not None:

        def run_torch_struct(inputs: dict[str, Tensor]) -> Tensor:
            return torch_struct_bioes(torch_struct, inputs, max_width, own_lengths=False)

        def torch_struct_reference(output: Tensor, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
            native = torch_struct_bioes(torch_struct, inputs, max_width, own_lengths=True)
            return {"marginals": output, "marginals:its lengths=": native}

        contenders.append(
            Contender(
                "torch-struct",
                run_torch_struct,
                torch_struct_reference,
                f"span scores laid out as [B, N, {max_width + 1}, 1+R, 1+R] edges (O = label 0, "
                "width 1; one dummy position after the sentence); BIOES summed from its span "
                "marginals. Its own `lengths=` masking gives wrong marginals for every sentence "
                "longer than the shortest of the batch (a segment may only continue up to "
                "min(lengths)): shown untimed as `its lengths=`; the timed call writes the "
                "sentence ends into the potentials instead (same cost)",
            )
        )
    return contenders


def torch_struct_bioes(
    torch_struct: Any, inputs: dict[str, Tensor], max_width: int, own_lengths: bool
) -> Tensor:
    """BIOES marginals ``[batch, N, 1+4R]`` from torch-struct's ``SemiMarkovCRF``.

    Its edges ``[batch, N, W+1, 1+R, 1+R]`` ``[b, n, k, c_next, c]`` score a segment of label ``c``
    and width ``k`` starting at ``n``, followed by a segment of label ``c_next``; label 0 is O
    (width 1, score 0). A sentence of ``n`` tokens is ``n + 1`` positions: the last only carries
    the label of the segment after the sentence, pinned to O so that it does not multiply ``Z``.
    With ``own_lengths`` the sentence ends go to torch-struct's ``lengths=``; otherwise (correct)
    they are written into the potentials: from position ``length`` on, only O segments of width 1
    scoring 0 are allowed, and every sentence spans the whole padded length.
    """
    span_scores, lengths = inputs["span_scores"], inputs["lengths"]
    batch, n_tokens, _, n_labels = span_scores.shape
    forbidden = float("-inf")
    segment = span_scores.new_full((batch, n_tokens, max_width + 1, 1 + n_labels), forbidden)
    segment[:, :, 1, 0] = 0.0
    for width in range(1, max_width + 1):
        starts = n_tokens - width + 1
        diagonal = span_scores.diagonal(offset=width - 1, dim1=1, dim2=2)
        segment[:, :starts, width, 1:] = diagonal.transpose(1, 2)
    # beyond[b, n, k] > 0: the segment would end after the sentence; == 0: it ends the sentence.
    ends = torch.arange(n_tokens).unsqueeze(-1) + torch.arange(max_width + 1)
    beyond = (ends.unsqueeze(0) - lengths.view(-1, 1, 1))[..., None, None]
    edges = segment.unsqueeze(-2).expand(-1, -1, -1, 1 + n_labels, -1).clone()
    edges[..., 1:, :].masked_fill_(beyond >= 0, forbidden)
    if own_lengths:
        edges.masked_fill_(beyond > 0, forbidden)
        marginals = torch_struct.SemiMarkovCRF(edges, lengths=lengths + 1).marginals
    else:
        after = (torch.arange(n_tokens) >= lengths.unsqueeze(-1))[..., None, None, None]
        edges.masked_fill_((beyond > 0) | after, forbidden)
        edges[:, :, 1, 0, 0].masked_fill_(after[..., 0, 0, 0], 0.0)
        marginals = torch_struct.SemiMarkovCRF(edges).marginals
    bioes = spans_to_bioes(marginals.sum(-2), n_labels)
    return bioes * token_mask(lengths, n_tokens).unsqueeze(-1)


# --------------------------------------------------------------------------------------------------
# Rows


@dataclass
class Row:
    group: str
    name: str
    make_inputs: Callable[[], dict[str, Tensor]]
    contenders: list[Contender]
    valid_mask: Callable[[dict[str, Tensor]], dict[str, Tensor]]
    note: str = ""
    quick: bool = False


def crf_mask(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    lengths = inputs["lengths"]
    n_tokens, n_tags = inputs["emissions"].shape[1:]
    tokens = token_mask(lengths, n_tokens).unsqueeze(-1).expand(-1, -1, n_tags)
    pairs = token_mask(lengths - 1, n_tokens - 1)[..., None, None].expand(-1, -1, n_tags, n_tags)
    return {"marginals": tokens, "pair_marginals": pairs}


def tree_mask(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    return {"marginals": arc_mask(inputs["lengths"], inputs["arc_scores"].shape[1] - 1)}


def bioes_mask(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    n_tokens, _, n_labels = inputs["span_scores"].shape[1:]
    tokens = token_mask(inputs["lengths"], n_tokens)
    return {"marginals": tokens.unsqueeze(-1).expand(-1, -1, 1 + 4 * n_labels)}


def build_rows(libraries: Libraries) -> list[Row]:
    rows = []
    seed = 0
    for n_tokens in (30, 100):
        for n_tags in (9, 17, 50):
            seed += 1
            rows.append(
                Row(
                    "Linear-chain CRF: log Z + unary marginals",
                    f"N={n_tokens}, L={n_tags}",
                    lambda n=n_tokens, tags=n_tags, s=seed: crf_inputs(n, tags, s),
                    crf_contenders(libraries),
                    crf_mask,
                    quick=(n_tokens, n_tags) == (30, 9),
                )
            )
    for projective, title in (
        (True, "projective (Eisner)"),
        (False, "non-projective (matrix-tree)"),
    ):
        for multiroot in (False, True):
            for n_words in (20, 40, 80):
                seed += 1
                rows.append(
                    Row(
                        f"First-order trees, {title}: log Z + arc marginals",
                        f"N={n_words}, {'multi-root' if multiroot else 'single root'}",
                        lambda n=n_words, s=seed: tree_inputs(n, s),
                        tree_contenders(libraries, projective, multiroot),
                        tree_mask,
                        quick=n_words == 20,
                    )
                )
    for multiroot in (False, True):
        for n_words in (20, 40):
            seed += 1
            rows.append(
                Row(
                    "Second-order (sibling) projective trees: log Z + arc marginals",
                    f"N={n_words}, {'multi-root' if multiroot else 'single root'}",
                    lambda n=n_words, s=seed: tree_inputs(n, s, second_order=True),
                    second_order_contenders(libraries, multiroot),
                    tree_mask,
                    quick=n_words == 20,
                )
            )
    for max_width in (SEMI_MARKOV_MAX_WIDTH, None):
        seed += 1
        rows.append(
            Row(
                "Semi-Markov spans: log Z + BIOES marginals",
                f"N=40, R=4, W={max_width or 'N (any width)'}",
                lambda s=seed: span_inputs(40, 4, s),
                semi_markov_contenders(libraries, max_width),
                bioes_mask,
                note=""
                if max_width
                else "structkd only: torch-struct's scan at W=N would broadcast about 8e9 "
                "elements in its first step (its state is width x label = 200 wide), not run",
                quick=max_width is not None,
            )
        )
    return rows


# --------------------------------------------------------------------------------------------------
# Timing and agreement


@dataclass
class Timing:
    seconds: list[float]

    @property
    def median_ms(self) -> float:
        return 1000 * statistics.median(self.seconds)

    @property
    def iqr_ms(self) -> float:
        if len(self.seconds) < 4:
            return float("nan")
        quartiles = statistics.quantiles(self.seconds, n=4)
        return 1000 * (quartiles[2] - quartiles[0])


@dataclass
class RowResult:
    row: Row
    timings: dict[str, Timing] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    differences: dict[str, dict[str, float]] = field(default_factory=dict)
    reference: str = ""


SLOW_CALL_S = 2.0
SLOW_REPEATS = 5
VERY_SLOW_CALL_S = 10.0


def check_finite(output: Tensor | dict[str, Tensor]) -> None:
    """Raise if a float32 result holds NaN or infinity (its row then shows it as failed)."""
    for name, value in (output if isinstance(output, dict) else {"marginals": output}).items():
        if not torch.isfinite(value).all():
            raise FloatingPointError(f"float32 {name} holds NaN or inf")


def time_row(
    contenders: list[Contender],
    inputs: dict[str, Tensor],
    result: RowResult,
    *,
    warmup: int,
    min_repeats: int,
    max_repeats: int,
    budget_s: float,
) -> None:
    """Round-robin timing: each repeat calls every contender once (in a rotating order).

    Stops once every contender has ``min_repeats`` calls and ``budget_s`` is spent, or at
    ``max_repeats``. A contender whose warm-up call takes over ``SLOW_CALL_S`` is timed
    ``SLOW_REPEATS`` times only (the others go on), and one over ``VERY_SLOW_CALL_S`` keeps its
    warm-up call as its single sample (warm-up effects are negligible at that scale), so that one
    slow library cannot take the whole run.
    """
    live = []
    own_inputs = {}
    quota = {}
    for contender in contenders:
        own_inputs[contender.library] = cast_inputs(inputs, torch.float32)
        try:
            for attempt in range(warmup):
                tick = time.perf_counter()
                output = contender.run(own_inputs[contender.library])
                elapsed = time.perf_counter() - tick
                if attempt == 0:
                    check_finite(output)
                if elapsed > SLOW_CALL_S:
                    break  # a slow call is its own warm-up
        except Exception as error:
            result.errors[contender.library] = f"{type(error).__name__}: {error}"
            continue
        if elapsed > VERY_SLOW_CALL_S:
            result.timings[contender.library] = Timing([elapsed])
            continue
        live.append(contender)
        quota[contender.library] = SLOW_REPEATS if elapsed > SLOW_CALL_S else max_repeats
    seconds: dict[str, list[float]] = {contender.library: [] for contender in live}
    start = time.perf_counter()
    repeat = 0
    while live and repeat < max_repeats:
        enough = all(
            len(seconds[library]) >= min(min_repeats, quota[library]) for library in seconds
        )
        if enough and time.perf_counter() - start > budget_s:
            break
        shift = repeat % len(live)
        for contender in live[shift:] + live[:shift]:
            tick = time.perf_counter()
            contender.run(own_inputs[contender.library])
            seconds[contender.library].append(time.perf_counter() - tick)
        live = [c for c in live if len(seconds[c.library]) < quota[c.library]]
        repeat += 1
    result.timings.update({library: Timing(values) for library, values in seconds.items()})


def check_agreement(
    row: Row, contenders: list[Contender], inputs: dict[str, Tensor], result: RowResult
) -> None:
    """Max abs difference of each library's float64 marginals to the reference, on real entries."""
    outputs = {}
    for contender in contenders:
        if contender.library in result.errors:
            continue
        own = cast_inputs(inputs, torch.float64)
        try:
            outputs[contender.library] = {
                name: value.detach()
                for name, value in contender.to_reference(contender.run(own), own).items()
            }
        except Exception as error:
            result.errors[contender.library] = f"{type(error).__name__}: {error}"
    if not outputs:
        return
    masks = row.valid_mask(inputs)
    reference_library = "structkd" if "structkd" in outputs else next(iter(outputs))
    result.reference = reference_library
    reference = outputs[reference_library]
    for library, output in outputs.items():
        if library == reference_library:
            continue
        differences = {}
        for name, value in output.items():
            quantity = name.split(":")[0]  # "marginals:eps=0" is compared with "marginals"
            if quantity not in reference:
                continue
            mask = masks[quantity]
            difference = (value - reference[quantity]).abs()[mask]
            differences[name] = float(difference.max()) if difference.numel() else 0.0
            if torch.isnan(difference).any():
                differences[name] = float("nan")
        result.differences[library] = differences


def run_benchmark(rows: list[Row], quick: bool, log: Callable[[str], None]) -> list[RowResult]:
    results = []
    settings = (
        {"warmup": 1, "min_repeats": 3, "max_repeats": 5, "budget_s": 0.5}
        if quick
        else {"warmup": 2, "min_repeats": 7, "max_repeats": 500, "budget_s": 6.0}
    )
    for row in rows:
        if quick and not row.quick:
            continue
        result = RowResult(row)
        results.append(result)
        if not row.contenders:
            log(f"{row.group} | {row.name}: no library available, skipped")
            continue
        inputs = row.make_inputs()
        check_agreement(row, row.contenders, inputs, result)
        time_row(row.contenders, inputs, result, **settings)
        log(format_log_line(result))
    return results


def format_log_line(result: RowResult) -> str:
    parts = [f"{result.row.group} | {result.row.name}:"]
    for library, timing in result.timings.items():
        parts.append(f"{library} {timing.median_ms:.2f} ms (n={len(timing.seconds)})")
    for library, differences in result.differences.items():
        shown = ", ".join(f"{name} {value:.1e}" for name, value in differences.items())
        parts.append(f"max|{library} - {result.reference}| {shown}")
    for library, error in result.errors.items():
        parts.append(f"{library} FAILED {error}")
    return "  ".join(parts)


# --------------------------------------------------------------------------------------------------
# Report


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_ms(timing: Timing | None) -> str:
    if timing is None:
        return "—"
    if math.isnan(timing.iqr_ms):
        return f"{timing.median_ms:.2f} (n={len(timing.seconds)})"
    return f"{timing.median_ms:.2f} ± {timing.iqr_ms / 2:.2f}"


def format_agreement(result: RowResult) -> str:
    """``library max|diff| [verdict] (variant: max|diff|)`` per library, ``;``-separated."""
    if not result.differences:
        return "—" if not result.errors else ""
    cells = []
    for library, differences in result.differences.items():
        own = {name: value for name, value in differences.items() if ":" not in name}
        variants = {
            name.split(":", 1)[1]: value for name, value in differences.items() if ":" in name
        }
        worst = max(own.values(), default=0.0)
        if len(own) > 1:
            detail = ", ".join(
                f"{name.replace('pair_marginals', 'pairs')} {value:.0e}"
                for name, value in own.items()
            )
        else:
            detail = ", ".join(f"{value:.0e}" for value in own.values())
        if any(math.isnan(value) for value in own.values()):
            detail += " **NaN**"
        elif worst > AGREEMENT_TOLERANCE:
            detail += " **DISAGREE**"
        # A variant of the library's own code (e.g. "eps=0") that explains a difference.
        detail += "".join(f" ({name}: {value:.0e})" for name, value in variants.items())
        cells.append(f"{library} {detail}")
    prefix = "" if result.reference == "structkd" else f"(vs {result.reference}) "
    return prefix + "; ".join(cells)


INTRO = """
structkd's structures side by side with torch-struct, SuPar and pytorch-crf: `log Z` and the
marginals of one batch of 32 sentences with mixed lengths (drawn in `[N/2, N]`, one at full
length), on CPU with one thread, float32, from the same random scores passed to each library
in its own format and masking convention. Times are medians in milliseconds per batch,
± half the interquartile range, over round-robin repeats (each repeat runs every library
once). A timed call starts from the shared scores and ends with the library's marginals,
including any conversion of the scores into the library's input format; converting the
marginals back for the comparison is not timed. **ratio** = (fastest other library) /
structkd: above 1 means structkd is faster. **agreement** = max absolute difference to
structkd's marginals in float64 on the real (unpadded) entries; above {tolerance:.0e} it is
marked **DISAGREE**; a figure in parentheses is an untimed variant of the same library that
explains the difference. The scores do not require grad (as for a teacher in distillation):
SuPar's and torch-struct's `marginals` still differentiate with `create_graph=True` (their API
has no other way; about 15% of SuPar's time on projective trees at N=40 in one check),
structkd does not. Some structkd classes compute in float64 internally whatever the input
dtype.
"""

KNOWN_FAILURES = {
    "a view of a leaf Variable that requires grad is being used in an in-place operation": (
        ": torch-struct 0.5, its last release on PyPI, writes in place into its potentials after "
        "setting requires_grad, which torch has refused since 1.9 (pytorch-struct issue #104, "
        "fixed on its main branch after the release), so its projective DependencyCRF cannot run "
        "on torch 2.13"
    ),
}


def known_failure(error: str) -> str:
    return next((cause for text, cause in KNOWN_FAILURES.items() if text in error), "")


def markdown_report(
    results: list[RowResult], libraries: Libraries, command: str, quick: bool
) -> str:
    lines = [
        "# Performance of exact inference",
        "",
        INTRO.format(tolerance=AGREEMENT_TOLERANCE).strip(),
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- torch {torch.__version__}, Python {platform.python_version()}, "
        f"{torch.get_num_threads()} thread(s)",
        f"- CPU: {cpu_model()}",
        "- versions: "
        + ", ".join(f"{name} {version}" for name, version in sorted(libraries.versions.items())),
        "- the machine was shared with other jobs during the run: absolute times are noisy; the",
        "  ratios within one run (libraries interleaved) are the numbers to read.",
    ]
    if quick:
        lines.append("- **quick smoke run** (`--quick`): few repeats, a subset of the rows.")
    if libraries.missing:
        lines += ["", "Not available in this run:", ""]
        lines += [f"- {name}: {reason}" for name, reason in sorted(libraries.missing.items())]
    groups: dict[str, list[RowResult]] = {}
    for result in results:
        groups.setdefault(result.row.group, []).append(result)
    for group, group_results in groups.items():
        present = [
            library
            for library in LIBRARIES
            if any(
                library in result.timings or library in result.errors for result in group_results
            )
            or (library == "structkd")
        ]
        lines += ["", f"## {group}", ""]
        lines.append(
            "| row | "
            + " | ".join(f"{library} ms" for library in present)
            + " | ratio | agreement |"
        )
        lines.append("|---" * (len(present) + 3) + "|")
        notes: dict[str, str] = {}
        failures: dict[tuple[str, str], list[str]] = {}
        for result in group_results:
            cells = [result.row.name]
            for library in present:
                if library in result.errors:
                    cells.append("failed")
                elif library == "structkd" and library not in result.timings:
                    cells.append("missing")
                else:
                    cells.append(format_ms(result.timings.get(library)))
            structkd = result.timings.get("structkd")
            others = [
                timing.median_ms for name, timing in result.timings.items() if name != "structkd"
            ]
            ratio = f"{min(others) / structkd.median_ms:.2f}" if structkd and others else "—"
            cells += [ratio, format_agreement(result)]
            lines.append("| " + " | ".join(cells) + " |")
            for contender in result.row.contenders:
                if contender.note:
                    notes[contender.library] = contender.note
            if result.row.note:
                notes[result.row.name] = result.row.note
            for library, error in result.errors.items():
                failures.setdefault((library, error), []).append(result.row.name)
        for (library, error), row_names in failures.items():
            where = "every row" if len(row_names) == len(group_results) else ", ".join(row_names)
            notes[f"{library} failed ({where})"] = f"`{error}`{known_failure(error)}"
        if notes:
            lines.append("")
            lines += [f"- {library}: {note}" for library, note in notes.items()]
    lines.append("")
    return "\n".join(lines)


def json_report(results: list[RowResult], libraries: Libraries) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": libraries.versions,
        "missing": libraries.missing,
        "rows": [
            {
                "group": result.row.group,
                "row": result.row.name,
                "seconds": {library: timing.seconds for library, timing in result.timings.items()},
                "median_ms": {
                    library: timing.median_ms for library, timing in result.timings.items()
                },
                "max_abs_difference": result.differences,
                "reference": result.reference,
                "errors": result.errors,
            }
            for result in results
        ],
    }


def shown_command(arguments: list[str]) -> str:
    """The command line as run from the repository root (with the setup step for .venv-bench)."""
    root = Path(__file__).resolve().parent.parent
    interpreter = os.path.relpath(sys.executable, root)
    if interpreter.startswith(".."):
        interpreter = "python"
    command = shlex.join([interpreter, "benchmarks/structures.py", *arguments])
    if interpreter.startswith(".venv-bench"):
        command = "bash benchmarks/setup-bench-env.sh && " + command
    return command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run on a subset of rows"
    )
    parser.add_argument("--write", type=Path, help="write the markdown report to this file")
    parser.add_argument("--json", type=Path, help="dump the raw timings as JSON to this file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--only", help="run only the rows whose group or name contains this text")
    args = parser.parse_args(argv)

    # Benchmark this checkout's structkd, installed or not.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    warnings.filterwarnings("ignore", message=".*does not define `arg_constraints`")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    libraries = load_libraries()
    for name, reason in sorted(libraries.missing.items()):
        print(f"not available: {name}: {reason}", file=sys.stderr)
    rows = build_rows(libraries)
    if args.only:
        rows = [row for row in rows if args.only in row.group or args.only in row.name]
    started = time.perf_counter()
    results = run_benchmark(rows, args.quick, lambda line: print(line, flush=True))
    print(f"total {time.perf_counter() - started:.0f} s", file=sys.stderr)

    command = shown_command(sys.argv[1:] if argv is None else argv)
    report = markdown_report(results, libraries, command, args.quick)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(report)
    else:
        print(report)
    if args.json:
        args.json.write_text(json.dumps(json_report(results, libraries), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
