"""Exact inference side by side: structkd against torch-struct, SuPar and pytorch-crf.

Every row is one batch of 32 sentences with mixed lengths, on CPU with one thread, with the same
random scores handed to each library in its own input format and masking convention, and is
measured in the two uses a distiller has:

* **targets from fixed scores**: the marginals of scores that do not require grad (a trained
  teacher's outputs, turned into the student's targets). A library whose marginals are autograd
  (torch-struct, SuPar, pytorch-crf) gets its working path: for torch-struct the potentials are
  made to require grad inside ``torch.enable_grad()`` (its projective ``DependencyCRF`` raises on
  potentials that do not), SuPar does that itself;
* **teacher training**: ``log Z`` of scores that require grad, then ``log Z.sum().backward()``
  down to the scores in structkd's layout (through each library's own conversion).

A timed call starts from the shared scores (structkd's layout) and ends with the library's
marginals (targets) or with the gradients in place (training); it includes any conversion of the
scores a user of that library must write (e.g. folding emissions and transitions into
torch-struct's edge potentials). Converting marginals back to structkd's layout for the comparison
is not timed. Before timing, every library runs once in float64 on the same scores: its marginals
(targets), its ``log Z`` and its gradients (training) are compared with structkd's on the real
(unpadded) entries, and a library that disagrees by more than ``AGREEMENT_TOLERANCE`` is not timed
for that use (the table says why).

Rows:

* linear-chain CRF, ``N`` tokens, ``L`` tags: unary marginals ``[batch, N, L]`` (pair marginals
  also compared where a library gives them per sentence: torch-struct);
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
# Table columns, in this order; "torch-struct (eps=0)" is torch-struct's own matrix-tree functions
# called with eps=0 (its NonProjectiveDependencyCRF calls them with eps=1e-5).
LIBRARIES = ("structkd", "torch-struct", "torch-struct (eps=0)", "SuPar", "pytorch-crf")
# A float64 result that differs from structkd's by more than this is a disagreement.
AGREEMENT_TOLERANCE = 1e-8
EPS32 = torch.finfo(torch.float32).eps
SEMI_MARKOV_MAX_WIDTH = 6

TARGETS = "targets"
TRAINING = "training"
USES = (TARGETS, TRAINING)
USE_TITLES = {
    TARGETS: "targets from fixed scores",
    TRAINING: "teacher training: log Z + backward",
}

Inputs = dict[str, Tensor]

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


def crf_inputs(n_tokens: int, n_tags: int, seed: int) -> Inputs:
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


def tree_inputs(n_words: int, seed: int, second_order: bool = False) -> Inputs:
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


def span_inputs(n_tokens: int, n_labels: int, seed: int) -> Inputs:
    """Standard normal ``span_scores [batch, N, N, R]`` (entries with ``i > j`` unused)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "span_scores": torch.randn(
            BATCH_SIZE, n_tokens, n_tokens, n_labels, generator=generator, dtype=torch.float64
        ),
        "lengths": random_lengths(n_tokens, generator),
    }


def cast_inputs(inputs: Inputs, dtype: torch.dtype, use: str) -> Inputs:
    """A fresh copy of the inputs (each library gets its own) with floating tensors in ``dtype``.

    For training, every floating tensor is a leaf that requires grad (an ``nn.Parameter``: the
    teacher's scores, or for a CRF also its transition parameters); for targets none does.
    """
    copy = {}
    for name, value in inputs.items():
        if value.is_floating_point():
            value = value.to(dtype).clone()
            copy[name] = torch.nn.Parameter(value) if use == TRAINING else value
        else:
            copy[name] = value.clone()
    return copy


def clear_grads(inputs: Inputs) -> None:
    for value in inputs.values():
        if value.requires_grad:
            value.grad = None


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
# Contenders: one library computing one row's quantities


@dataclass
class Contender:
    """One library (one table column) on one row.

    ``marginals(inputs)`` (targets, timed): scores that do not require grad -> the library's
    marginals in its own layout; ``to_reference(output, inputs)`` (untimed) maps them to
    structkd's layout, one entry per compared quantity (``marginals``, and ``pair_marginals``
    where a library has them per sentence; a name ``quantity:variant`` is an untimed variant of
    the library that explains a difference). ``log_partition(inputs)`` (training, timed together
    with ``.sum().backward()``): scores that require grad -> ``[batch]`` log Z. ``calls`` says,
    per use, which function of the library is called.
    """

    library: str
    marginals: Callable[[Inputs], Any] | None
    log_partition: Callable[[Inputs], Tensor] | None
    calls: dict[str, str]
    to_reference: Callable[[Any, Inputs], dict[str, Tensor]] | None = None
    note: str = ""

    def runs(self, use: str) -> bool:
        return (self.marginals if use == TARGETS else self.log_partition) is not None

    def reference(self, output: Any, inputs: Inputs) -> dict[str, Tensor]:
        if self.to_reference is not None:
            return self.to_reference(output, inputs)
        return output if isinstance(output, dict) else {"marginals": output}


def accepts(cls: Any, name: str) -> bool:
    try:
        return name in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def autograd_leaf(potentials: Tensor) -> Tensor:
    """torch-struct's marginals are autograd: its potentials must be a leaf that requires grad."""
    return potentials.detach().requires_grad_()


# ---- linear-chain CRF


def crf_contenders(libraries: Libraries) -> list[Contender]:
    contenders = []
    structkd_crf = libraries.get("structkd.LinearChainCRF")
    if structkd_crf is not None:

        def structkd_model(inputs: Inputs) -> Any:
            return structkd_crf(
                emissions=inputs["emissions"],
                transitions=inputs["transitions"],
                start=inputs["start"],
                end=inputs["end"],
                lengths=inputs["lengths"],
            )

        def structkd_reference(output: Tensor, inputs: Inputs) -> dict[str, Tensor]:
            return {"marginals": output, "pair_marginals": structkd_model(inputs).pair_marginals}

        contenders.append(
            Contender(
                "structkd",
                lambda inputs: structkd_model(inputs).marginals,
                lambda inputs: structkd_model(inputs).log_partition,
                {
                    TARGETS: "`LinearChainCRF(emissions, transitions, start, end, "
                    "lengths=...).marginals`",
                    TRAINING: "`LinearChainCRF(...).log_partition`",
                },
                structkd_reference,
            )
        )

    torch_struct = libraries.get("torch-struct")
    if torch_struct is not None:

        def torch_struct_edges(inputs: Inputs) -> Tensor:
            # edges[b, n, c, p]: score of tags (p at n, c at n + 1), every factor folded in once.
            emissions, lengths = inputs["emissions"], inputs["lengths"]
            n_tokens = emissions.shape[1]
            edges = inputs["transitions"].t() + emissions[:, 1:].unsqueeze(-1)
            edges[:, 0] += (inputs["start"] + emissions[:, 0]).unsqueeze(-2)
            last_edge = torch.nn.functional.one_hot(lengths - 2, n_tokens - 1).to(emissions.dtype)
            return edges + last_edge[..., None, None] * inputs["end"][:, None]

        def torch_struct_marginals(inputs: Inputs) -> dict[str, Tensor]:
            with torch.enable_grad():
                edges = autograd_leaf(torch_struct_edges(inputs))
                pair = torch_struct.LinearChainCRF(edges, lengths=inputs["lengths"]).marginals
            pair = pair.detach()
            unary = torch.cat((pair[:, :1].sum(-2), pair.sum(-1)), dim=1)
            return {"marginals": unary, "pair_marginals": pair.transpose(-1, -2)}

        contenders.append(
            Contender(
                "torch-struct",
                torch_struct_marginals,
                lambda inputs: (
                    torch_struct.LinearChainCRF(
                        torch_struct_edges(inputs), lengths=inputs["lengths"]
                    ).partition
                ),
                {
                    TARGETS: "`LinearChainCRF(edges, lengths=...).marginals` (pair marginals; "
                    "unary = their sums)",
                    TRAINING: "`LinearChainCRF(edges, lengths=...).partition`",
                },
                note="emissions, transitions, start and end folded into [B, N-1, L, L] edges; "
                "needs lengths >= 2",
            )
        )

    supar = libraries.get("SuPar")
    if supar is not None:

        def supar_trans(inputs: Inputs) -> Tensor:
            n_tags = inputs["transitions"].shape[0]
            trans = inputs["transitions"].new_zeros(n_tags + 1, n_tags + 1)
            trans[:-1, :-1] = inputs["transitions"]
            trans[-1, :-1] = inputs["start"]
            trans[:-1, -1] = inputs["end"]
            return trans

        def supar_marginals(inputs: Inputs) -> Tensor:
            # SuPar sets requires_grad on the scores it is given: hand it an alias.
            emissions = inputs["emissions"].detach()
            crf = supar.LinearChainCRF(emissions, supar_trans(inputs), inputs["lengths"])
            return crf.marginals.detach()

        contenders.append(
            Contender(
                "SuPar",
                supar_marginals,
                lambda inputs: (
                    supar.LinearChainCRF(
                        inputs["emissions"], supar_trans(inputs), inputs["lengths"]
                    ).log_partition
                ),
                {
                    TARGETS: "`LinearChainCRF(emissions, trans, lens).marginals`",
                    TRAINING: "`LinearChainCRF(emissions, trans, lens).log_partition`",
                },
                note="start and end held in `trans [L+1, L+1]`",
            )
        )

    torchcrf = libraries.get("pytorch-crf")
    if torchcrf is not None:
        # id(transitions) -> (transitions, layer): holding the tensor keeps its id from reuse.
        layers: dict[int, tuple[Tensor, Any]] = {}

        def crf_layer(inputs: Inputs) -> Any:
            # Set up once per input set: a user has the layer in the model.
            key = id(inputs["transitions"])
            if key not in layers:
                layer = torchcrf.CRF(inputs["transitions"].shape[0], batch_first=True)
                layer = layer.to(inputs["emissions"].dtype)
                if inputs["transitions"].requires_grad:
                    # Training: the layer's parameters are the shared (leaf) scores themselves.
                    layer.transitions = inputs["transitions"]
                    layer.start_transitions = inputs["start"]
                    layer.end_transitions = inputs["end"]
                else:
                    with torch.no_grad():
                        layer.transitions.copy_(inputs["transitions"])
                        layer.start_transitions.copy_(inputs["start"])
                        layer.end_transitions.copy_(inputs["end"])
                    layer.requires_grad_(False)
                layers[key] = (inputs["transitions"], layer)
            return layers[key][1]

        def pytorch_crf_log_z(inputs: Inputs, emissions: Tensor) -> Tensor:
            mask = token_mask(inputs["lengths"], emissions.shape[1])
            return crf_layer(inputs)._compute_normalizer(emissions.transpose(0, 1), mask.t())

        def pytorch_crf_marginals(inputs: Inputs) -> Tensor:
            emissions = inputs["emissions"].detach().requires_grad_()
            with torch.enable_grad():
                log_z = pytorch_crf_log_z(inputs, emissions)
            (marginals,) = torch.autograd.grad(log_z.sum(), emissions)
            return marginals

        contenders.append(
            Contender(
                "pytorch-crf",
                pytorch_crf_marginals,
                lambda inputs: pytorch_crf_log_z(inputs, inputs["emissions"]),
                {
                    TARGETS: "`torch.autograd.grad` of `CRF._compute_normalizer` w.r.t. the "
                    "emissions (no marginals API)",
                    TRAINING: "`CRF._compute_normalizer` (private; its public `CRF.forward` is "
                    "the log-likelihood, which adds the gold score to this)",
                },
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

        def structkd_model(inputs: Inputs) -> Any:
            return structkd_tree(
                arc_scores=inputs["arc_scores"],
                lengths=inputs["lengths"],
                projective=projective,
                multiroot=multiroot,
            )

        contenders.append(
            Contender(
                "structkd",
                lambda inputs: structkd_model(inputs).marginals,
                lambda inputs: structkd_model(inputs).log_partition,
                {
                    TARGETS: f"`DependencyCRF(arc_scores, lengths, projective={projective}, "
                    "multiroot=...).marginals`",
                    TRAINING: "`DependencyCRF(...).log_partition`",
                },
            )
        )

    torch_struct = libraries.get("torch-struct")
    if torch_struct is not None:
        to_row = lambda output, inputs: {"marginals": root_to_row(output)}  # noqa: E731
        if projective:

            def torch_struct_marginals(inputs: Inputs) -> Tensor:
                with torch.enable_grad():
                    potentials = autograd_leaf(root_on_diagonal(inputs["arc_scores"]))
                    # multiroot is passed every time: torch-struct stores it on the class.
                    marginals = torch_struct.DependencyCRF(
                        potentials, lengths=inputs["lengths"], multiroot=multiroot
                    ).marginals
                return marginals.detach()

            contenders.append(
                Contender(
                    "torch-struct",
                    torch_struct_marginals,
                    lambda inputs: (
                        torch_struct.DependencyCRF(
                            root_on_diagonal(inputs["arc_scores"]),
                            lengths=inputs["lengths"],
                            multiroot=multiroot,
                        ).partition
                    ),
                    {
                        TARGETS: "`DependencyCRF(potentials, lengths=..., multiroot=...)"
                        ".marginals`, the potentials requiring grad, in `torch.enable_grad()`",
                        TRAINING: "`DependencyCRF(potentials, lengths=..., multiroot=...)"
                        ".partition`",
                    },
                    to_row,
                    "root arcs moved to the diagonal. Its marginals are autograd. On "
                    "potentials that do not require grad its copy of them is a leaf, which it "
                    "sets to require grad and then fills at the padding in place through a "
                    "view: torch 2.13 raises `RuntimeError: a view of a leaf Variable that "
                    "requires grad is being used in an in-place operation` (pytorch-struct "
                    "issue #104, after its 0.5 release, the last on PyPI). On potentials that "
                    "already require grad, as here and as a teacher's scores in training, the "
                    "copy is not a leaf and it runs",
                )
            )
        else:
            contenders.append(
                Contender(
                    "torch-struct",
                    lambda inputs: (
                        torch_struct.NonProjectiveDependencyCRF(
                            root_on_diagonal(inputs["arc_scores"]),
                            lengths=inputs["lengths"],
                            multiroot=multiroot,
                        ).marginals
                    ),
                    lambda inputs: (
                        torch_struct.NonProjectiveDependencyCRF(
                            root_on_diagonal(inputs["arc_scores"]),
                            lengths=inputs["lengths"],
                            multiroot=multiroot,
                        ).partition
                    ),
                    {
                        TARGETS: "`NonProjectiveDependencyCRF(potentials, lengths=..., "
                        "multiroot=...).marginals`",
                        TRAINING: "`NonProjectiveDependencyCRF(...).partition`",
                    },
                    to_row,
                    "root arcs moved to the diagonal; the class adds eps=1e-5 to every "
                    "exp(score), padded entries included (`deptree_nonproj` / `deptree_part` "
                    "with their default eps)",
                )
            )
            contenders.append(
                Contender(
                    "torch-struct (eps=0)",
                    lambda inputs: torch_struct.deptree_nonproj(
                        root_on_diagonal(inputs["arc_scores"]),
                        multiroot,
                        inputs["lengths"],
                        eps=0.0,
                    ),
                    lambda inputs: torch_struct.deptree_part(
                        root_on_diagonal(inputs["arc_scores"]),
                        multiroot,
                        inputs["lengths"],
                        eps=0.0,
                    ),
                    {
                        TARGETS: "`torch_struct.deptree_nonproj(potentials, multiroot, lengths, "
                        "eps=0)`",
                        TRAINING: "`torch_struct.deptree_part(potentials, multiroot, lengths, "
                        "eps=0)`",
                    },
                    to_row,
                    "the matrix-tree functions that torch-struct's NonProjectiveDependencyCRF "
                    "calls, with eps=0 instead of its 1e-5",
                )
            )

    supar = libraries.get("SuPar")
    if supar is not None:
        supar_class = supar.DependencyCRF if projective else supar.MatrixTree
        name = supar_class.__name__

        def supar_marginals(inputs: Inputs) -> Tensor:
            # SuPar scores are [batch, dependent, head]; it sets requires_grad on them (alias).
            scores = inputs["arc_scores"].detach().transpose(1, 2)
            return supar_class(scores, inputs["lengths"], multiroot=multiroot).marginals.detach()

        contenders.append(
            Contender(
                "SuPar",
                supar_marginals,
                lambda inputs: (
                    supar_class(
                        inputs["arc_scores"].transpose(1, 2), inputs["lengths"], multiroot=multiroot
                    ).log_partition
                ),
                {
                    TARGETS: f"`{name}(scores, lens, multiroot=...).marginals`",
                    TRAINING: f"`{name}(scores, lens, multiroot=...).log_partition`",
                },
                lambda output, inputs: {"marginals": output.transpose(1, 2)},
                "scores as [dependent, head]",
            )
        )
    return contenders


def second_order_contenders(libraries: Libraries, multiroot: bool) -> list[Contender]:
    contenders = []
    structkd_2o = libraries.get("structkd.Dependency2oCRF")
    if structkd_2o is not None:
        options = {"multiroot": multiroot} if accepts(structkd_2o, "multiroot") else {}

        def structkd_model(inputs: Inputs) -> Any:
            return structkd_2o(
                arc_scores=inputs["arc_scores"],
                sibling_scores=inputs["sibling_scores"],
                lengths=inputs["lengths"],
                **options,
            )

        contenders.append(
            Contender(
                "structkd",
                lambda inputs: structkd_model(inputs).marginals,
                lambda inputs: structkd_model(inputs).log_partition,
                {
                    TARGETS: "`Dependency2oCRF(arc_scores, sibling_scores, lengths, "
                    "multiroot=...).marginals`",
                    TRAINING: "`Dependency2oCRF(...).log_partition`",
                },
            )
        )

    supar = libraries.get("SuPar")
    if supar is not None:

        def supar_scores(inputs: Inputs) -> tuple[Tensor, Tensor]:
            # SuPar: arcs [batch, dependent, head], siblings [batch, dependent, head, sibling].
            return inputs["arc_scores"].transpose(1, 2), inputs["sibling_scores"].transpose(1, 2)

        def supar_marginals(inputs: Inputs) -> Tensor:
            scores = tuple(score.detach() for score in supar_scores(inputs))
            crf = supar.Dependency2oCRF(scores, inputs["lengths"], multiroot=multiroot)
            return crf.marginals.detach()

        contenders.append(
            Contender(
                "SuPar",
                supar_marginals,
                lambda inputs: (
                    supar.Dependency2oCRF(
                        supar_scores(inputs), inputs["lengths"], multiroot=multiroot
                    ).log_partition
                ),
                {
                    TARGETS: "`Dependency2oCRF((arcs, siblings), lens, multiroot=...).marginals`",
                    TRAINING: "`Dependency2oCRF((arcs, siblings), lens, multiroot=...)"
                    ".log_partition`",
                },
                lambda output, inputs: {"marginals": output.transpose(1, 2)},
                "siblings as [dependent, head, sibling]",
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


def torch_struct_span_edges(
    inputs: Inputs, max_width: int, own_lengths: bool
) -> tuple[Tensor, Tensor | None]:
    """torch-struct ``SemiMarkovCRF`` edges ``[batch, N, W+1, 1+R, 1+R]`` and its ``lengths=``.

    ``edges[b, n, k, c_next, c]`` scores a segment of label ``c`` and width ``k`` starting at
    ``n``, followed by a segment of label ``c_next``; label 0 is O (width 1, score 0). A sentence of
    ``n`` tokens is ``n + 1`` positions: the last only carries the label of the segment after the
    sentence, pinned to O so that it does not multiply ``Z``. With ``own_lengths`` the sentence
    ends go to torch-struct's ``lengths=``; otherwise (correct) they are written into the
    potentials: from position ``length`` on, only O segments of width 1 scoring 0 are allowed, and
    every sentence spans the whole padded length (``lengths=None``).
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
        return edges, lengths + 1
    after = (torch.arange(n_tokens) >= lengths.unsqueeze(-1))[..., None, None, None]
    edges.masked_fill_((beyond > 0) | after, forbidden)
    edges[:, :, 1, 0, 0].masked_fill_(after[..., 0, 0, 0], 0.0)
    return edges, None


def torch_struct_bioes(
    torch_struct: Any, inputs: Inputs, max_width: int, own_lengths: bool
) -> Tensor:
    """BIOES marginals ``[batch, N, 1+4R]`` from torch-struct's ``SemiMarkovCRF``."""
    lengths = inputs["lengths"]
    n_labels = inputs["span_scores"].shape[-1]
    with torch.enable_grad():
        edges, its_lengths = torch_struct_span_edges(inputs, max_width, own_lengths)
        marginals = torch_struct.SemiMarkovCRF(autograd_leaf(edges), lengths=its_lengths).marginals
    bioes = spans_to_bioes(marginals.detach().sum(-2), n_labels)
    return bioes * token_mask(lengths, bioes.shape[1]).unsqueeze(-1)


def semi_markov_contenders(libraries: Libraries, max_width: int | None) -> list[Contender]:
    contenders = []
    structkd_spans = libraries.get("structkd.SemiMarkovSpans")
    if structkd_spans is not None:

        def structkd_model(inputs: Inputs) -> Any:
            return structkd_spans(
                span_scores=inputs["span_scores"], lengths=inputs["lengths"], max_width=max_width
            )

        contenders.append(
            Contender(
                "structkd",
                lambda inputs: structkd_model(inputs).bioes_marginals,
                lambda inputs: structkd_model(inputs).log_partition,
                {
                    TARGETS: "`SemiMarkovSpans(span_scores, lengths, max_width).bioes_marginals`",
                    TRAINING: "`SemiMarkovSpans(...).log_partition`",
                },
            )
        )

    torch_struct = libraries.get("torch-struct")
    if torch_struct is not None and max_width is not None:

        def torch_struct_reference(output: Tensor, inputs: Inputs) -> dict[str, Tensor]:
            native = torch_struct_bioes(torch_struct, inputs, max_width, own_lengths=True)
            return {"marginals": output, "marginals:its lengths=": native}

        def torch_struct_log_z(inputs: Inputs) -> Tensor:
            edges, its_lengths = torch_struct_span_edges(inputs, max_width, own_lengths=False)
            return torch_struct.SemiMarkovCRF(edges, lengths=its_lengths).partition

        contenders.append(
            Contender(
                "torch-struct",
                lambda inputs: torch_struct_bioes(torch_struct, inputs, max_width, False),
                torch_struct_log_z,
                {
                    TARGETS: "`SemiMarkovCRF(edges).marginals`, the edges requiring grad, in "
                    "`torch.enable_grad()`; BIOES summed from its segment marginals",
                    TRAINING: "`SemiMarkovCRF(edges).partition`",
                },
                torch_struct_reference,
                f"span scores laid out as [B, N, {max_width + 1}, 1+R, 1+R] edges (O = label 0, "
                "width 1; one dummy position after the sentence), the sentence ends written into "
                "the potentials. Its own `lengths=` masking, shown untimed as `its lengths=`, "
                "disagrees; from its code, a segment may only continue up to the shortest "
                "length of the batch (`end = torch.min(lengths) - 1` in "
                "`SemiMarkov.logpartition`)",
            )
        )
    return contenders


# --------------------------------------------------------------------------------------------------
# Rows


@dataclass
class Row:
    group: str
    name: str
    quantity: str  # what the targets use returns, e.g. "arc marginals"
    make_inputs: Callable[[], Inputs]
    contenders: list[Contender]
    # quantity ("marginals", "grad arc_scores", ...) -> True on the real entries (all if absent)
    valid_mask: Callable[[Inputs], dict[str, Tensor]]
    note: str = ""
    quick: bool = False


def crf_mask(inputs: Inputs) -> dict[str, Tensor]:
    lengths = inputs["lengths"]
    n_tokens, n_tags = inputs["emissions"].shape[1:]
    tokens = token_mask(lengths, n_tokens).unsqueeze(-1).expand(-1, -1, n_tags)
    pairs = token_mask(lengths - 1, n_tokens - 1)[..., None, None].expand(-1, -1, n_tags, n_tags)
    return {"marginals": tokens, "pair_marginals": pairs, "grad emissions": tokens}


def tree_mask(inputs: Inputs) -> dict[str, Tensor]:
    arcs = arc_mask(inputs["lengths"], inputs["arc_scores"].shape[1] - 1)
    masks = {"marginals": arcs, "grad arc_scores": arcs}
    if "sibling_scores" in inputs:
        inside = torch.arange(arcs.shape[1]) <= inputs["lengths"].unsqueeze(-1)
        masks["grad sibling_scores"] = (
            inside[:, :, None, None] & inside[:, None, :, None] & inside[:, None, None, :]
        )
    return masks


def span_mask(max_width: int | None) -> Callable[[Inputs], dict[str, Tensor]]:
    def masks(inputs: Inputs) -> dict[str, Tensor]:
        n_tokens, _, n_labels = inputs["span_scores"].shape[1:]
        tokens = token_mask(inputs["lengths"], n_tokens)
        positions = torch.arange(n_tokens)
        start, end = positions.view(-1, 1), positions.view(1, -1)
        shape_ok = (start <= end) & (end - start < (max_width or n_tokens))
        spans = shape_ok & (end < inputs["lengths"].view(-1, 1, 1))
        return {
            "marginals": tokens.unsqueeze(-1).expand(-1, -1, 1 + 4 * n_labels),
            "grad span_scores": spans.unsqueeze(-1).expand(-1, -1, -1, n_labels),
        }

    return masks


def build_rows(libraries: Libraries) -> list[Row]:
    rows = []
    seed = 0
    for n_tokens in (30, 100):
        for n_tags in (9, 17, 50):
            seed += 1
            rows.append(
                Row(
                    "Linear-chain CRF",
                    f"N={n_tokens}, L={n_tags}",
                    "unary marginals",
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
                        f"First-order trees, {title}",
                        f"N={n_words}, {'multi-root' if multiroot else 'single root'}",
                        "arc marginals",
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
                    "Second-order (sibling) projective trees",
                    f"N={n_words}, {'multi-root' if multiroot else 'single root'}",
                    "arc marginals",
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
                "Semi-Markov spans",
                f"N=40, R=4, W={max_width or 'N (any width)'}",
                "BIOES marginals",
                lambda s=seed: span_inputs(40, 4, s),
                semi_markov_contenders(libraries, max_width),
                span_mask(max_width),
                note=""
                if max_width
                else "structkd only; torch-struct not run: from its code, the first step of "
                "its scan at W=N broadcasts 32 x 32 x 200^3, about 8e9 elements (its state is "
                "width x label = 200 wide; 33 GB in float32, more than this machine's memory)",
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
class UseResult:
    timings: dict[str, Timing] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    differences: dict[str, dict[str, float]] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    # library -> quantity -> tolerance, for a quantity it returns in float32 from float64 scores
    float32_results: dict[str, dict[str, float]] = field(default_factory=dict)
    reference: str = ""


@dataclass
class RowResult:
    row: Row
    uses: dict[str, UseResult] = field(default_factory=dict)


SLOW_CALL_S = 2.0
SLOW_REPEATS = 5
VERY_SLOW_CALL_S = 10.0


def call(contender: Contender, use: str, inputs: Inputs) -> Any:
    """One use of one library: marginals (targets), or ``log Z`` after its backward (training)."""
    if use == TARGETS:
        return contender.marginals(inputs)
    log_z = contender.log_partition(inputs)
    log_z.sum().backward()
    return log_z.detach()


def check_finite(output: Tensor | dict[str, Tensor]) -> None:
    """Raise if a float32 result holds NaN or infinity (its row then shows it as failed)."""
    for name, value in (output if isinstance(output, dict) else {"result": output}).items():
        if not torch.isfinite(value).all():
            raise FloatingPointError(f"float32 {name} holds NaN or inf")


def time_row(
    contenders: list[Contender],
    use: str,
    inputs: Inputs,
    result: UseResult,
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
    slow library cannot take the whole run. Gradients are cleared before each call, untimed.
    """
    live = []
    own_inputs = {}
    quota = {}
    for contender in contenders:
        own = own_inputs[contender.library] = cast_inputs(inputs, torch.float32, use)
        try:
            for attempt in range(warmup):
                clear_grads(own)
                tick = time.perf_counter()
                output = call(contender, use, own)
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
            own = own_inputs[contender.library]
            clear_grads(own)
            tick = time.perf_counter()
            call(contender, use, own)
            seconds[contender.library].append(time.perf_counter() - tick)
        live = [c for c in live if len(seconds[c.library]) < quota[c.library]]
        repeat += 1
    result.timings.update({library: Timing(values) for library, values in seconds.items()})


def float64_outputs(contender: Contender, use: str, inputs: Inputs) -> dict[str, Tensor]:
    """The compared quantities of one library in float64, in structkd's layout."""
    own = cast_inputs(inputs, torch.float64, use)
    output = call(contender, use, own)
    if use == TARGETS:
        return {name: value.detach() for name, value in contender.reference(output, own).items()}
    values = {"log Z": output}
    for name, value in own.items():
        if value.requires_grad:
            values[f"grad {name}"] = torch.zeros_like(value) if value.grad is None else value.grad
    return values


def check_agreement(
    row: Row, use: str, contenders: list[Contender], inputs: Inputs, result: UseResult
) -> None:
    """Max abs difference of each library's float64 results to structkd's, on real entries.

    A library whose own result (not an untimed ``quantity:variant``) differs by more than
    ``AGREEMENT_TOLERANCE``, or holds NaN, is marked excluded (and not timed). A quantity that a
    library returns in float32 from float64 scores (SuPar's ``MatrixTree`` log Z) can only agree
    to float32 rounding: it is held to ``float32 eps * max |reference|`` instead, and marked.
    """
    outputs = {}
    for contender in contenders:
        try:
            outputs[contender.library] = float64_outputs(contender, use, inputs)
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
        beyond = {}
        for name, value in output.items():
            quantity = name.split(":")[0]  # "marginals:its lengths=" is compared with "marginals"
            if quantity not in reference:
                continue
            mask = masks.get(quantity, torch.ones_like(value, dtype=torch.bool))
            expected = reference[quantity][mask]
            difference = (value.to(expected.dtype)[mask] - expected).abs()
            if torch.isnan(difference).any():
                differences[name] = float("nan")
            else:
                differences[name] = float(difference.max()) if difference.numel() else 0.0
            tolerance = AGREEMENT_TOLERANCE
            if value.dtype == torch.float32 and expected.numel():
                tolerance = max(tolerance, EPS32 * float(expected.abs().max()))
                result.float32_results.setdefault(library, {})[name] = tolerance
            if ":" not in name and not differences[name] <= tolerance:  # NaN included
                beyond[name] = differences[name]
        result.differences[library] = differences
        if any(math.isnan(value) for value in beyond.values()):
            result.excluded[library] = "NaN in its float64 results"
        elif beyond:
            result.excluded[library] = (
                f"differs from {reference_library} by more than {AGREEMENT_TOLERANCE:.0e} in "
                + ", ".join(f"`{name}`" for name in beyond)
            )


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
        for use in USES:
            contenders = [contender for contender in row.contenders if contender.runs(use)]
            outcome = result.uses[use] = UseResult()
            check_agreement(row, use, contenders, inputs, outcome)
            timed = [
                contender
                for contender in contenders
                if contender.library not in outcome.errors
                and contender.library not in outcome.excluded
            ]
            time_row(timed, use, inputs, outcome, **settings)
            log(format_log_line(row, use, outcome))
    return results


def format_log_line(row: Row, use: str, result: UseResult) -> str:
    parts = [f"{row.group} | {row.name} | {use}:"]
    for library, timing in result.timings.items():
        parts.append(f"{library} {timing.median_ms:.2f} ms (n={len(timing.seconds)})")
    for library, differences in result.differences.items():
        shown = ", ".join(f"{name} {value:.1e}" for name, value in differences.items())
        parts.append(f"max|{library} - {result.reference}| {shown}")
    for library, reason in result.excluded.items():
        parts.append(f"{library} EXCLUDED {reason}")
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


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not on Linux
        return float("nan")


def format_factor(factor: float) -> str:
    if factor >= 100:
        return f"{factor:.0f}"
    return f"{factor:.1f}" if factor >= 10 else f"{factor:.2f}"


def format_ms(timing: Timing) -> str:
    if math.isnan(timing.iqr_ms):
        return f"{timing.median_ms:.2f} (n={len(timing.seconds)})"
    return f"{timing.median_ms:.2f} ± {timing.iqr_ms / 2:.2f}"


def speedup(result: UseResult, library: str) -> float | None:
    """The library's median over structkd's (above 1: structkd is faster)."""
    reference, other = result.timings.get("structkd"), result.timings.get(library)
    if reference is None or other is None:
        return None
    return other.median_ms / reference.median_ms


def format_cell(result: UseResult | None, library: str) -> str:
    if result is None:
        return "—"
    if library in result.errors:
        return "failed"
    if library in result.excluded:
        return "excluded"
    timing = result.timings.get(library)
    if timing is None:
        return "missing" if library == "structkd" else "—"
    factor = speedup(result, library)
    if library == "structkd" or factor is None:
        return format_ms(timing)
    return f"{format_ms(timing)} ({format_factor(factor)}×)"


QUANTITY_LABELS = {"pair_marginals": "pairs"}


def format_agreement(result: UseResult) -> str:
    """``library max|diff| [verdict] (variant: max|diff|)`` per library, ``;``-separated."""
    if not result.differences:
        return "—"
    cells = []
    for library, differences in result.differences.items():
        own: dict[str, float] = {}
        for name, value in differences.items():
            if ":" in name:
                continue
            label = "grads" if name.startswith("grad ") else QUANTITY_LABELS.get(name, name)
            own[label] = max(own.get(label, value), value)  # NaN stays NaN
        variants = {
            name.split(":", 1)[1]: value for name, value in differences.items() if ":" in name
        }
        rounded = {
            QUANTITY_LABELS.get(name, name) for name in result.float32_results.get(library, {})
        }

        def shown(name: str, value: float, rounded: set[str] = rounded) -> str:
            return f"{value:.0e}" + (" (float32)" if name in rounded else "")

        if len(own) > 1:
            detail = ", ".join(f"{name} {shown(name, value)}" for name, value in own.items())
        else:
            detail = ", ".join(shown(name, value) for name, value in own.items())
        if any(math.isnan(value) for value in own.values()):
            detail += " **NaN**"
        elif library in result.excluded:
            detail += " **DISAGREE**"
        # A variant of the library's own code (e.g. "its lengths=") that explains a difference.
        detail += "".join(f" ({name}: {value:.0e})" for name, value in variants.items())
        cells.append(f"{library} {detail}")
    prefix = "" if result.reference == "structkd" else f"(vs {result.reference}) "
    return prefix + "; ".join(cells)


INTRO = """
structkd's exact inference side by side with torch-struct, SuPar and pytorch-crf, in the two uses
a distiller has. Each row is one batch of 32 sentences with mixed lengths (drawn in `[N/2, N]`,
one at full length), random standard-normal scores (padding filled with random scores too, which
every library must ignore), on CPU with one thread, float32 inputs (some structkd classes compute
in float64 internally whatever the input dtype).

- **Targets from fixed scores**: the marginals of scores that do not require grad (a trained
  teacher's outputs, turned into the student's targets). torch-struct's, SuPar's and
  pytorch-crf's marginals are autograd of their log Z, so each gets the path that runs:
  torch-struct's potentials are made to require grad inside `torch.enable_grad()` (its
  projective `DependencyCRF` raises on potentials that do not), SuPar sets `requires_grad` itself
  and differentiates with `create_graph=True`, pytorch-crf (no marginals API) is differentiated
  through its private `_compute_normalizer`.
- **Teacher training: log Z + backward**: scores that require grad (the teacher's outputs; for the
  CRF also its transition, start and end parameters), then `log Z.sum().backward()` down to them.

A timed call starts from the shared scores (structkd's layout) and ends with the marginals
(targets) or with the gradients in place (training), including any conversion of the scores into
the library's input format (and the backward through it); converting marginals back for the
comparison is not timed. Times are medians in milliseconds per batch, ± half the interquartile
range, over round-robin repeats (each repeat runs every library once, in a rotating order, so
that load from other processes hits them alike); `(n=1)` marks a single call of over 10 s.
**(k×)** after a competitor's time = its median / structkd's median, how many times faster
structkd is (below 1: slower).

**Agreement**: before timing, every library runs once in float64 on the same scores; the column
gives the max absolute difference to structkd on the real (unpadded) entries, of the marginals
(targets), and of log Z and of the gradients w.r.t. every score tensor (training). A library that
differs by more than {tolerance:.0e} (or gives NaN) on a row is **excluded**: not timed on that
row, with the reason under the table. A figure in parentheses is an untimed variant of the same
library that explains a difference.
"""


def present_libraries(results: list[UseResult | None]) -> list[str]:
    """structkd, then every library that ran (or failed, or was excluded) in one of the results."""
    seen = set()
    for result in results:
        if result is not None:
            seen |= set(result.timings) | set(result.errors) | set(result.excluded)
            seen |= set(result.differences)
    return [library for library in LIBRARIES if library == "structkd" or library in seen]


def summary_table(groups: dict[str, list[RowResult]]) -> list[str]:
    columns = [
        library
        for library in present_libraries(
            [result.uses.get(use) for rows in groups.values() for result in rows for use in USES]
        )
        if library != "structkd"
    ]
    if not columns:
        return []
    lines = [
        "## Summary",
        "",
        "How many times faster structkd is than each library (its median / structkd's median), "
        "lowest to highest over the rows of each table below.",
        "",
        "| structure | use | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for group, rows in groups.items():
        for use in USES:
            cells = [group, USE_TITLES[use]]
            for library in columns:
                factors = []
                excluded = failed = 0
                for result in rows:
                    outcome = result.uses.get(use)
                    if outcome is None:
                        continue
                    factor = speedup(outcome, library)
                    if factor is not None:
                        factors.append(factor)
                    excluded += library in outcome.excluded
                    failed += library in outcome.errors
                if factors:
                    low, high = min(factors), max(factors)
                    cell = (
                        f"{format_factor(low)}×"
                        if len(factors) == 1
                        else f"{format_factor(low)}–{format_factor(high)}×"
                    )
                    if excluded or failed:
                        cell += f" ({excluded + failed} row(s) excluded or failed)"
                elif excluded:
                    cell = "excluded (disagrees)"
                elif failed:
                    cell = "failed"
                else:
                    cell = "—"
                cells.append(cell)
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def use_table(use: str, group_results: list[RowResult]) -> list[str]:
    outcomes = [result.uses.get(use) for result in group_results]
    present = present_libraries(outcomes)
    quantity = group_results[0].row.quantity if use == TARGETS else ""
    title = USE_TITLES[use][0].upper() + USE_TITLES[use][1:] + (f": {quantity}" if quantity else "")
    lines = ["", f"### {title}", ""]
    lines.append("| row | " + " | ".join(f"{library} ms" for library in present) + " | agreement |")
    lines.append("|---" * (len(present) + 2) + "|")
    calls: dict[str, str] = {}
    skipped: dict[tuple[str, str], list[str]] = {}
    rounded: dict[str, float] = {}
    for result, outcome in zip(group_results, outcomes, strict=True):
        cells = [result.row.name]
        cells += [format_cell(outcome, library) for library in present]
        cells.append(format_agreement(outcome) if outcome is not None else "—")
        lines.append("| " + " | ".join(cells) + " |")
        for contender in result.row.contenders:
            if contender.runs(use):
                calls.setdefault(contender.library, contender.calls.get(use, ""))
        if outcome is None:
            continue
        for library, reason in outcome.excluded.items():
            skipped.setdefault((library, f"excluded: {reason}"), []).append(result.row.name)
        for library, error in outcome.errors.items():
            skipped.setdefault((library, f"failed: `{error}`"), []).append(result.row.name)
        for library, tolerances in outcome.float32_results.items():
            rounded[library] = max(rounded.get(library, 0.0), *tolerances.values())
    lines.append("")
    lines += [f"- {library}: {text}" for library, text in calls.items() if text]
    for (library, what), row_names in skipped.items():
        where = "every row" if len(row_names) == len(group_results) else ", ".join(row_names)
        lines.append(f"- {library} {what} ({where}; not timed there)")
    for library, tolerance in rounded.items():
        lines.append(
            f"- {library}: `(float32)` marks a result it returns in float32 from float64 scores; "
            f"it is held to float32 rounding (float32 eps × its magnitude, at most "
            f"{tolerance:.0e} here) instead of {AGREEMENT_TOLERANCE:.0e}"
        )
    return lines


def markdown_report(
    results: list[RowResult],
    libraries: Libraries,
    command: str,
    quick: bool,
    loads: tuple[float, float],
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
        f"- machine: {cpu_model()}, {os.cpu_count()} cores; 1-minute load average "
        f"{loads[0]:.2f} at the start of the run and {loads[1]:.2f} at its end (this run "
        "itself keeps one core busy: more means other jobs shared the machine, so absolute "
        "times are noisy; the ratios within one row, libraries interleaved, are the numbers "
        "to read)",
        f"- torch {torch.__version__}, Python {platform.python_version()}, "
        f"{torch.get_num_threads()} thread(s)",
        "- versions: "
        + ", ".join(f"{name} {version}" for name, version in sorted(libraries.versions.items())),
    ]
    if quick:
        lines.append("- **quick smoke run** (`--quick`): few repeats, a subset of the rows.")
    if libraries.missing:
        lines += ["", "Not available in this run:", ""]
        lines += [f"- {name}: {reason}" for name, reason in sorted(libraries.missing.items())]
    groups: dict[str, list[RowResult]] = {}
    for result in results:
        groups.setdefault(result.row.group, []).append(result)
    summary = summary_table(groups)
    if summary:
        lines += ["", *summary]
    for group, group_results in groups.items():
        lines += ["", f"## {group}"]
        for use in USES:
            lines += use_table(use, group_results)
        notes: dict[str, str] = {}
        for result in group_results:
            for contender in result.row.contenders:
                if contender.note:
                    notes[contender.library] = contender.note
            if result.row.note:
                notes[result.row.name] = result.row.note
        if notes:
            lines += ["", "Layouts and conventions:", ""]
            lines += [f"- {name}: {note}" for name, note in notes.items()]
    lines.append("")
    return "\n".join(lines)


def json_report(
    results: list[RowResult], libraries: Libraries, loads: tuple[float, float]
) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average": {"start": loads[0], "end": loads[1]},
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": libraries.versions,
        "missing": libraries.missing,
        "rows": [
            {
                "group": result.row.group,
                "row": result.row.name,
                "use": use,
                "seconds": {library: timing.seconds for library, timing in outcome.timings.items()},
                "median_ms": {
                    library: timing.median_ms for library, timing in outcome.timings.items()
                },
                "max_abs_difference": outcome.differences,
                "reference": outcome.reference,
                "excluded": outcome.excluded,
                "float32_tolerance": outcome.float32_results,
                "errors": outcome.errors,
            }
            for result in results
            for use, outcome in result.uses.items()
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
    load_start = load_average()
    results = run_benchmark(rows, args.quick, lambda line: print(line, flush=True))
    loads = (load_start, load_average())
    print(f"total {time.perf_counter() - started:.0f} s", file=sys.stderr)

    command = shown_command(sys.argv[1:] if argv is None else argv)
    report = markdown_report(results, libraries, command, args.quick, loads)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(report)
    else:
        print(report)
    if args.json:
        args.json.write_text(json.dumps(json_report(results, libraries, loads), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
