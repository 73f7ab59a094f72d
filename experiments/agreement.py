"""How close each NER student of an experiment is to its teacher on text neither trained on.

For every finished student of a NER experiment (no KD included) and the teacher of each case it
belongs to, on the config's dev set (or ``--split test``):

- ``agreement``: the share of tokens where the student's best tag sequence (Viterbi for a CRF)
  has the teacher's best tag; ``entity_agreement``: the same over the tokens the teacher tags as
  part of an entity (not ``O``);
- ``kl``: the mean over tokens of KL(teacher || student) between their per-token tag marginals
  (nats): how far the student's distribution is from the one it was asked to match;
- ``gold_agreement``: the share of tokens where the student's best tag is the gold tag (accuracy,
  for reference; F1 is in the results file).

A student that learned the teacher's distribution from KD should sit closer to it on unseen text
than the no-KD student of the same seed does. Fold teachers (``train --folds``) are skipped.
Writes one JSON line per (student, case) to ``--out`` (with the code's commit) and prints the
mean ± std over seeds per (case, method, variant).

    HF_HUB_OFFLINE=1 .venv/bin/python experiments/agreement.py experiments/ner-folds.toml \\
        --out results/ner-folds-agreement.jsonl

Run it from the directory the experiment ran in (its ``output_dir`` is relative to it). Cost:
one teacher pass and one pass per student over the split (minutes on one core).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch

from structkd.data.batching import TaggingCollator
from structkd.data.tag_schemes import convert_tags
from structkd.experiment import code_commit, load_config, plan_experiment, read_result_keys
from structkd.experiment.plan import VARIANT_OPTIONS
from structkd.tasks.ner.data import load_labeled
from structkd.tasks.ner.features import make_collator
from structkd.tasks.ner.model import load_tagger
from structkd.train.folds import is_fold_directory

BATCH = 64


def model_outputs(directory: Path, source, cache_dir: Path) -> tuple[list[str], list, list]:
    """The model's label names, and per sentence of ``source`` (in order) its ``[n, L]`` token
    marginals and ``[n]`` best label ids."""
    tagger, info = load_tagger(directory)
    collator = make_collator(
        info.config, tagger, info.vocab, source.sentences, source.fingerprint, cache_dir
    )
    if not isinstance(collator, TaggingCollator):  # pragma: no cover - defensive
        raise TypeError(type(collator).__name__)
    marginals: list = [None] * len(source.sentences)
    best: list = [None] * len(source.sentences)
    order = sorted(range(len(source.sentences)), key=lambda i: len(source.sentences[i].tokens))
    with torch.inference_mode():
        for start in range(0, len(order), BATCH):
            indices = order[start : start + BATCH]
            batch = collator([(i, source.sentences[i]) for i in indices])
            token_marginals = tagger.token_marginals(batch)
            decoded = tagger.decode(batch)
            for row, index in enumerate(indices):
                n = int(batch.lengths[row])
                marginals[index] = token_marginals[row, :n].double()
                best[index] = decoded[row, :n]
    return list(info.vocab.labels), marginals, best


def compare(teacher, student, gold_labels: list[list[str]]) -> dict[str, float]:
    """Agreement, mean token KL(teacher || student) and gold accuracy of ``student`` (outputs of
    ``model_outputs``) against ``teacher``, in the teacher's label order."""
    t_labels, t_marginals, t_best = teacher
    s_labels, s_marginals, s_best = student
    if sorted(t_labels) != sorted(s_labels):
        raise ValueError(f"label sets differ: {t_labels} vs {s_labels}")
    to_teacher = torch.tensor([t_labels.index(label) for label in s_labels])
    from_student = torch.tensor([s_labels.index(label) for label in t_labels])
    tokens = agree = gold_agree = entity_tokens = entity_agree = 0
    outside = t_labels.index("O")
    kl_sum = 0.0
    for index, gold in enumerate(gold_labels):
        p = t_marginals[index]
        q = s_marginals[index][:, from_student]
        student_best = to_teacher[s_best[index]]
        same = student_best == t_best[index]
        agree += int(same.sum())
        entity = t_best[index] != outside
        entity_tokens += int(entity.sum())
        entity_agree += int(same[entity].sum())
        gold_ids = torch.tensor([t_labels.index(tag) for tag in gold])
        gold_agree += int((student_best == gold_ids).sum())
        positive = p > 0
        if bool((q[positive] <= 0).any()):
            raise FloatingPointError(f"sentence {index}: the student gives 0 where the teacher not")
        kl_sum += float((p[positive] * (p[positive].log() - q[positive].log())).sum())
        tokens += len(gold)
    return {
        "agreement": agree / tokens,
        "entity_agreement": entity_agree / max(entity_tokens, 1),
        "kl": kl_sum / tokens,
        "gold_agreement": gold_agree / tokens,
        "tokens": tokens,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--split", choices=("dev", "test"), default="dev")
    parser.add_argument("--out", required=True, help="JSON lines, one per student and case")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = load_config(args.config)
    if config.task != "ner":
        parser.error(f"{args.config}: a NER experiment is needed; got task {config.task!r}")
    plan = plan_experiment(config)
    finished = {run_id for run_id, _, _ in read_result_keys(config.results_path)}
    source = load_labeled(getattr(config, args.split), role=args.split)
    gold = [convert_tags(sentence.tags, source.scheme, "bioes") for sentence in source.sentences]
    outputs: dict[str, tuple] = {}

    def outputs_of(run_id: str):
        if run_id not in outputs:
            directory = plan.run(run_id).directory(config) / "model"
            outputs[run_id] = model_outputs(directory, source, config.cache_dir)
        return outputs[run_id]

    commit = code_commit()
    lines = []
    for run in plan.runs:
        if run.kind != "student" or run.run_id not in finished:
            continue
        for labels in plan.rows[run.run_id]:
            case = config.cases[labels["case"]]
            if len(case.teachers) != 1:
                continue  # an ensemble's mixture is not one tagger
            teacher_run = next(
                r
                for r in plan.runs
                if r.kind == "teacher"
                and r.options["arch"] == config.teachers[case.teachers[0]].arch
                and any(row["case"] == case.name for row in plan.rows[r.run_id])
            )
            if is_fold_directory(teacher_run.directory(config) / "model"):
                continue
            if teacher_run.run_id not in finished:
                continue
            found = compare(outputs_of(teacher_run.run_id), outputs_of(run.run_id), gold)
            variant = {name: labels[name] for name in VARIANT_OPTIONS if name in labels}
            line = {
                "case": case.name,
                "method": labels["method"],
                "seed": labels["seed"],
                "labeled_fraction": labels["labeled_fraction"],
                **variant,
                "split": args.split,
                "run_id": run.run_id,
                "teacher_run_id": teacher_run.run_id,
                **found,
                "commit": commit,
            }
            lines.append(line)
            print(json.dumps(line), file=sys.stderr)
    Path(args.out).write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for line in lines:
        variant = ", ".join(f"{name}={line[name]}" for name in VARIANT_OPTIONS if name in line)
        groups[(line["case"], line["labeled_fraction"], line["method"], variant)].append(line)
    print(
        "| case | labeled | method | variant | n | agreement % | on teacher's entities % | "
        "KL (nats/token) | accuracy % |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for (case, fraction, method, variant), members in sorted(groups.items()):
        cells = []
        scaled = (("agreement", 100), ("entity_agreement", 100), ("kl", 1), ("gold_agreement", 100))
        for name, scale in scaled:
            values = [scale * member[name] for member in members]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            digits = 2 if scale == 100 else 4
            cells.append(f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}")
        print(
            f"| {case} | {fraction:g} | {method} | {variant or '-'} | {len(members)} | "
            + " | ".join(cells)
            + " |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
