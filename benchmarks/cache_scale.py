"""Teacher-target caches at corpus scale: build time and peak memory at 10k, 100k and 1M sentences.

The corpus is the CoNLL-2003 English train text (``conll03-en:train``, 14,041 sentences) repeated
to the size asked, written as a tokenized text file (one sentence per line) under the scale
directory; the cache is built from that file through ``TokenizedText`` (read a shard at a time),
exactly as ``structkd.tasks.ner.targets.ensure_targets`` builds any entry. The teacher is
``teacher-crf`` without its transformer (GloVe 50d + character CNN + BiLSTM 256 + CRF; trained
1 epoch on 500 sentences: the cost of a cache does not depend on the weights), so the measurement
is about the cache, not MiniLM. The targets are those of structural KD into a CRF student
(``struct``, ``student_kind="crf"``: token marginals ``[n, 17]`` and tag-pair marginals
``[n - 1, 17, 17]`` float32, about 16 KB a sentence, the largest per-sentence quantity of any
method) unless ``--student-kind factorized`` (token marginals only, 1 KB a sentence).

Each (size, workers) runs in a fresh child process (``build``) whose process tree (the child and
its worker processes) is polled through ``/proc`` every 0.1 s: ``peak_rss_mb`` is the largest sum
of the tree's resident set sizes (shared library pages counted once per process: an upper
bound), ``peak_pss_mb`` the same with proportional set sizes (a page shared by k processes counts
1/k in each: the tree's real footprint), ``max_process_rss_mb`` the largest single process
(``ru_maxrss`` of the child and of its workers). ``cpu_s``: CPU seconds (user + system) of the
child and its workers, less sensitive than wall time to the other jobs of a shared machine.
``seconds`` is the child's wall time from start (Python and torch imports) to exit; ``build_s``
the ``ensure_targets`` call alone; ``index_s`` the pass that opens the text file (offsets and
fingerprint). ``disk_mb`` is the entry's size on disk; the entry is removed after measuring.
``rss_trace``: ``(seconds, tree RSS MB)`` every 5 s (the third panel of the plot).

Usage::

    python benchmarks/cache_scale.py run --sizes 10000 100000 --workers 1 2
    python benchmarks/cache_scale.py run --sizes 1000000 --workers 2    # rows merged into the JSON
    python benchmarks/cache_scale.py report    # docs/cache-scale.png and the table of the JSON

Options: ``--scale-dir`` (default ``/work/scale``: corpora, the teacher, the caches; nothing is
written in the repository but ``--json``/``--png``), ``--shard-size`` (50,000), ``--batch-size``
(64), ``--threads`` (torch threads of each process, 1).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "docs" / "cache-scale.json"
DEFAULT_PNG = ROOT / "docs" / "cache-scale.png"


def corpus_file(scale_dir: Path, n_sentences: int) -> Path:
    """The CoNLL-2003 train text repeated to ``n_sentences`` lines (written once)."""
    path = scale_dir / f"conll03-train-x{n_sentences}.txt"
    if path.is_file():
        return path
    from structkd.data.datasets import load_dataset

    sentences = load_dataset("conll03-en:train")
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        for sentence in itertools.islice(itertools.cycle(sentences), n_sentences):
            handle.write(" ".join(sentence.tokens) + "\n")
    os.replace(temporary, path)
    return path


def teacher_dir(scale_dir: Path) -> Path:
    """``teacher-crf`` without a transformer, trained 1 epoch on 500 CoNLL-2003 sentences."""
    out = scale_dir / "teacher"
    if (out / "complete.json").is_file():
        return out
    from structkd.api import TrainOptions, train

    train(
        TrainOptions(
            train="conll03-en:train",
            dev="conll03-en:dev",
            out=str(out),
            arch="teacher-crf",
            arch_overrides={"transformer": None},
            max_train_sentences=500,
            epochs=1,
            patience=None,
            progress=False,
            cache_dir=str(scale_dir / "train-cache"),
        )
    )
    return out


def build(args: argparse.Namespace) -> None:
    """The child: open the text file, build the entry, print a JSON line of timings."""
    started = time.perf_counter()
    import torch

    from structkd.tasks.ner.targets import TargetSpec, TokenizedText, ensure_targets
    from structkd.train.store import ShardPlan, read_meta

    torch.set_num_threads(args.threads)
    imported = time.perf_counter()
    text = TokenizedText(args.corpus)
    indexed = time.perf_counter()
    spec = TargetSpec("struct", student_kind=args.student_kind)
    plan = ShardPlan(shard_size=args.shard_size, workers=args.workers, threads=args.threads)
    directory, built = ensure_targets(
        args.teacher,
        text,
        text.fingerprint,
        spec,
        args.cache_dir,
        batch_size=args.batch_size,
        plan=plan,
    )
    finished = time.perf_counter()
    assert directory is not None and built
    meta = read_meta(directory)
    usages = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    print(
        json.dumps(
            {
                "entry": os.fspath(directory),
                "tokens": meta["n_tokens"],
                "import_s": imported - started,
                "index_s": indexed - imported,
                "build_s": finished - indexed,
                "shards": len(meta["shards"]["starts"]),
                "max_process_rss_kb": max(usage.ru_maxrss for usage in usages),
                "cpu_s": sum(usage.ru_utime + usage.ru_stime for usage in usages),
            }
        ),
        flush=True,
    )


def tree_memory_kb(pid: int) -> tuple[int, int]:
    """The summed ``(VmRSS, Pss)`` (kB) of ``pid`` and its descendants (0 once it has exited)."""
    rss, pss, stack = 0, 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            rss += int(status.split("VmRSS:")[1].split()[0]) if "VmRSS:" in status else 0
            rollup = Path(f"/proc/{current}/smaps_rollup").read_text()
            pss += int(rollup.split("\nPss:")[1].split()[0]) if "\nPss:" in rollup else 0
            for task in Path(f"/proc/{current}/task").iterdir():
                stack.extend(int(child) for child in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError, ValueError):
            continue
    return rss, pss


def disk_mb(directory: Path) -> float:
    """Bytes allocated on disk under ``directory`` (sparse files count what is written), MB."""
    blocks = sum(path.stat().st_blocks for path in directory.rglob("*") if path.is_file())
    return blocks * 512 / 1e6


def measure(
    scale_dir: Path, teacher: Path, n_sentences: int, workers: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Build the entry of ``n_sentences`` with ``workers`` in a child process; its row."""
    corpus = corpus_file(scale_dir, n_sentences)
    cache = scale_dir / f"cache-{n_sentences}-w{workers}"
    shutil.rmtree(cache, ignore_errors=True)
    command = [
        sys.executable,
        os.fspath(Path(__file__).resolve()),
        "build",
        "--corpus",
        os.fspath(corpus),
        "--teacher",
        os.fspath(teacher),
        "--cache-dir",
        os.fspath(cache),
        "--workers",
        str(workers),
        "--student-kind",
        args.student_kind,
        "--shard-size",
        str(args.shard_size),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
    ]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    peak, peak_pss, trace = 0, 0, []
    while child.poll() is None:
        rss, pss = tree_memory_kb(child.pid)
        peak, peak_pss = max(peak, rss), max(peak_pss, pss)
        elapsed = time.perf_counter() - started
        if not trace or elapsed - trace[-1][0] >= 5:
            trace.append((round(elapsed, 1), round(rss / 1024)))
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    output = child.stdout.read() if child.stdout else ""
    if child.returncode != 0:
        raise SystemExit(f"the build of {n_sentences} sentences failed ({child.returncode})")
    result = json.loads(output.strip().splitlines()[-1])
    size = disk_mb(Path(result["entry"]))
    shutil.rmtree(cache, ignore_errors=True)
    return {
        "sentences": n_sentences,
        "tokens": result["tokens"],
        "workers": workers,
        "seconds": round(seconds, 1),
        "build_s": round(result["build_s"], 1),
        "index_s": round(result["index_s"], 1),
        "cpu_s": round(result["cpu_s"], 1),
        "peak_rss_mb": round(peak / 1024, 1),
        "peak_pss_mb": round(peak_pss / 1024, 1),
        "max_process_rss_mb": round(result["max_process_rss_kb"] / 1024, 1),
        "disk_mb": round(size, 1),
        "shards": result["shards"],
        "method": f"struct, {args.student_kind} student",
        "shard_size": args.shard_size,
        "batch_size": args.batch_size,
        "threads_per_process": args.threads,
        "rss_trace": trace,
    }


def machine() -> str:
    """The CPU model, its core count and the load at the start (the machine is shared)."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0]
    return f"{model}, {os.cpu_count()} cores, load {load:.1f} at start, {platform.platform()}"


def run(args: argparse.Namespace) -> None:
    scale_dir = Path(args.scale_dir)
    scale_dir.mkdir(parents=True, exist_ok=True)
    teacher = teacher_dir(scale_dir)
    path = Path(args.json)
    found = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    for n_sentences in args.sizes:
        for workers in args.workers:
            row = measure(scale_dir, teacher, n_sentences, workers, args)
            row["machine"] = machine()
            print(json.dumps(row), flush=True)
            found["rows"] = [
                old
                for old in found["rows"]
                if (old["sentences"], old["workers"], old["method"])
                != (row["sentences"], row["workers"], row["method"])
            ] + [row]
            found["rows"].sort(key=lambda r: (r["method"], r["workers"], r["sentences"]))
            path.write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
        if not args.keep_corpus:
            corpus_file(scale_dir, n_sentences).unlink(missing_ok=True)


def slope(xs: list[float], ys: list[float]) -> float:
    """The least-squares slope of ``log y`` on ``log x`` (1: linear, 0: constant)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx
    )


def xs_max(rows: list[dict[str, Any]]) -> int:
    return max(row["sentences"] for row in rows)


def report(args: argparse.Namespace) -> None:
    """Plot time and peak memory against sentences (log-log) and print the table and slopes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads(Path(args.json).read_text())["rows"]
    figure, (left, right, trace_axis) = plt.subplots(1, 3, figsize=(15, 4))
    print(
        "| sentences | tokens | workers | seconds | ms / sentence | CPU s | peak RSS MB "
        "| peak PSS MB | disk MB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (method, workers), group in itertools.groupby(
        sorted(rows, key=lambda r: (r["method"], r["workers"], r["sentences"])),
        key=lambda r: (r["method"], r["workers"]),
    ):
        group = list(group)
        xs = [r["sentences"] for r in group]
        label = f"{method}, {workers} worker{'s' if workers > 1 else ''}"
        left.plot(xs, [r["seconds"] for r in group], "o-", label=label)
        right.plot(xs, [r["peak_rss_mb"] for r in group], "o-", label=label)
        for r in group:
            per = 1000 * r["seconds"] / r["sentences"]
            print(
                f"| {r['sentences']:,} | {r['tokens']:,} | {r['workers']} | {r['seconds']:,.0f} "
                f"| {per:.2f} | {r['cpu_s']:,.0f} | {r['peak_rss_mb']:,.0f} "
                f"| {r['peak_pss_mb']:,.0f} | {r['disk_mb']:,.0f} |"
            )
        if len(group) > 1:
            keys = ("seconds", "build_s", "cpu_s", "peak_rss_mb")
            slopes = ", ".join(f"{key} {slope(xs, [r[key] for r in group]):.2f}" for key in keys)
            print(f"{label}: log-log slopes: {slopes}")
    for r in rows:
        if r["sentences"] == xs_max(rows) and r.get("rss_trace"):
            times, memory = zip(*r["rss_trace"], strict=True)
            trace_axis.plot(times, memory, label=f"{r['workers']} worker(s)")
    trace_axis.set_xlabel("seconds")
    trace_axis.set_title(f"RSS of the process tree while building {xs_max(rows):,} sentences")
    trace_axis.axhline(2048, color="red", linestyle=":", label="2 GB")
    trace_axis.set_ylim(bottom=0)
    trace_axis.grid(True, alpha=0.3)
    trace_axis.legend(fontsize=7)
    xs = sorted({r["sentences"] for r in rows})
    base = min(rows, key=lambda r: r["sentences"])
    left.plot(
        xs,
        [base["seconds"] * x / base["sentences"] for x in xs],
        ":",
        color="grey",
        label="linear from the smallest",
    )
    right.axhline(2048, color="red", linestyle=":", label="2 GB")
    for axis, title in ((left, "build time (s)"), (right, "peak RSS of the process tree (MB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("sentences (CoNLL-2003 train repeated)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(args.png, dpi=120)
    print(f"wrote {args.png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--student-kind", default="crf", choices=["crf", "factorized"])
    common.add_argument("--shard-size", type=int, default=50_000)
    common.add_argument("--batch-size", type=int, default=64)
    common.add_argument("--threads", type=int, default=1)
    run_parser = commands.add_parser("run", parents=[common], help="measure sizes x workers")
    run_parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    run_parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    run_parser.add_argument("--scale-dir", default="/work/scale")
    run_parser.add_argument("--json", default=os.fspath(DEFAULT_JSON))
    run_parser.add_argument("--keep-corpus", action="store_true")
    build_parser = commands.add_parser("build", parents=[common], help="(the measured child)")
    build_parser.add_argument("--corpus", required=True)
    build_parser.add_argument("--teacher", required=True)
    build_parser.add_argument("--cache-dir", required=True)
    build_parser.add_argument("--workers", type=int, default=1)
    report_parser = commands.add_parser("report", help="the plot and the table of the JSON")
    report_parser.add_argument("--json", default=os.fspath(DEFAULT_JSON))
    report_parser.add_argument("--png", default=os.fspath(DEFAULT_PNG))
    args = parser.parse_args()
    {"run": run, "build": build, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
