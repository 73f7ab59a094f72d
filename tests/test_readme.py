"""The README's Python example runs as written and does what its comment says."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_opens_with_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make demo", "make test"]


def test_readme_example_runs() -> None:
    text = README.read_text(encoding="utf-8")
    example = re.search(r"```python\n(.*?)```", text, re.S)
    assert example is not None
    namespace: dict[str, object] = {}
    torch.manual_seed(0)
    exec(compile(example.group(1), str(README), "exec"), namespace)
    logits = namespace["student_logits"]
    teacher, student = namespace["teacher"], namespace["student"]
    assert isinstance(logits, torch.Tensor) and logits.grad is not None
    expected = student.marginals.detach() - teacher.marginals  # type: ignore[attr-defined]
    torch.testing.assert_close(logits.grad, expected)
