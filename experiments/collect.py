"""Merge the result files of several experiments into one and render its report.

Each experiment writes its own results file (one JSON line per run, case and split); a results
page that spans several of them (tier 1 and tier 2 of a task) reads their union. A line that two
files share (the same run, case and split: a run two configs of one output directory both list)
is kept once, from the first file that has it.

    python experiments/collect.py /tmp/ner.jsonl /tmp/ner-tables.md \\
        results/ner-tier1.jsonl results/ner-semi.jsonl results/ner-semi-tier2.jsonl

Writes the merged file and the report (markdown and a PNG beside it); prints how many lines each
input gave.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from structkd.experiment import write_report


def merge(inputs: list[Path]) -> tuple[list[str], dict[Path, int]]:
    """The lines of ``inputs`` in order, each (run_id, case, split) once; how many each gave."""
    kept: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    given: dict[Path, int] = {}
    for path in inputs:
        given[path] = 0
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = (row["run_id"], row["case"], row["split"])
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise SystemExit(f"{path}:{number}: not a result line ({error})") from None
            if key in seen:
                continue
            seen.add(key)
            kept.append(line)
            given[path] += 1
    return kept, given


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    out, report, *inputs = (Path(arg) for arg in argv)
    lines, given = merge(inputs)
    out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    command = "python experiments/collect.py " + " ".join(argv)
    markdown, plot = write_report(out, report, title=out.stem, rerender_command=command)
    for path, count in given.items():
        print(f"{path}: {count} lines")
    print(f"{out}: {len(lines)} lines; report {markdown}, plot {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
