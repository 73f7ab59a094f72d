"""A small fixed run of each task, for checking that a refactoring changes no number: prints the
dev F1 / LAS of a NER teacher, of two NER students (structural and Token KD at T = 2, half of the
data labeled) and of a TWT matrix-tree teacher and its structural-KD student. Run it before and
after a change (the same machine, one thread) and compare the JSON it prints.

    HF_HUB_OFFLINE=1 .venv/bin/python experiments/same_seed.py runs/same-seed

About 4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import sys

from structkd.api import DistillOptions, TrainOptions, distill, train


def main(out: str) -> dict[str, float]:
    common = {
        "epochs": 3,
        "learning_rate": 1e-2,
        "seed": 3,
        "progress": False,
        "cache_dir": f"{out}/cache",
        "patience": None,
        "max_train_sentences": 1200,
    }
    ner = {"task": "ner", "train": "conll03-en:train", "dev": "conll03-en:dev"}
    dep = {"task": "dep", "train": "twt-tr:train", "dev": "twt-tr:dev"}
    found = {}
    teacher = train(TrainOptions(out=f"{out}/ner-t", arch="student-crf", **ner, **common))
    found["ner_teacher_dev_f1"] = teacher["dev"]["f1"]
    for method in ("struct", "token"):
        student = distill(
            DistillOptions(
                out=f"{out}/ner-s-{method}",
                arch="student-crf",
                teachers=[f"{out}/ner-t"],
                method=method,
                arch_overrides={"lstm_hidden": 16},
                labeled_fraction=0.5,
                temperature=2.0,
                **ner,
                **common,
            )
        )
        found[f"ner_student_{method}_dev_f1"] = student["dev"]["f1"]
    parser = train(TrainOptions(out=f"{out}/dep-t", arch="parser-matrix-tree", **dep, **common))
    found["dep_teacher_dev_las"] = parser["dev"]["las"]
    student = distill(
        DistillOptions(
            out=f"{out}/dep-s",
            arch="student-dep-offset",
            teachers=[f"{out}/dep-t"],
            method="struct",
            temperature=2.0,
            **dep,
            **common,
        )
    )
    found["dep_student_struct_dev_las"] = student["dev"]["las"]
    return found


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1] if len(sys.argv) > 1 else "runs/same-seed"), indent=1))
