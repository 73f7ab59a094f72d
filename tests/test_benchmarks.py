"""The structures benchmark runs (structkd columns only; competitors live in .venv-bench)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_quick_smoke_run(tmp_path: Path) -> None:
    output = tmp_path / "performance.md"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "structures.py"),
            "--quick",
            "--only",
            "N=20",
            "--write",
            str(output),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = output.read_text(encoding="utf-8")
    assert "| row | structkd ms" in text
    assert "N=20, single root" in text
