"""``structkd demo``: the main job (``structkd.demo.main``: teacher, student without KD and
student with structural KD on CoNLL-2003, the table and ``report.md``; what ``make demo`` runs)
and, with ``--quick``, the structures-only demo (``structkd.demo.quick``: a count-based CRF teacher
distilled into a softmax tagger, no neural network).

Importing this package imports torch; the command line imports it only when ``demo`` runs.
"""

from __future__ import annotations

from structkd.demo.main import DemoOptions, parse_arch_overrides, run_demo
from structkd.demo.quick import run_quick_demo

__all__ = ["DemoOptions", "parse_arch_overrides", "run_demo", "run_quick_demo"]
