"""The task registry: ``TASKS[name]`` is the ``Task`` plug-in of a task (``structkd.tasks.base``).

Built in: ``ner`` (``structkd.tasks.ner``) and ``dep`` (``structkd.tasks.dep``). A third task is a
``Task`` subclass registered with ``register_task``; nothing else changes. Importing this module is
cheap (no torch): each task imports its machinery when a hook runs.
"""

from __future__ import annotations

from structkd.tasks.base import CaseSpec, Task
from structkd.tasks.dep import DepTask
from structkd.tasks.ner import NerTask

__all__ = ["TASKS", "CaseSpec", "Task", "get_task", "register_task", "task_names"]

TASKS: dict[str, Task] = {}
"""The registry: task name -> its plug-in."""


def register_task(task: Task, *, replace: bool = False) -> Task:
    """Add ``task`` under ``task.name`` (``replace=True`` overwrites an existing one)."""
    if not isinstance(task, Task):
        raise TypeError(f"a task must be a structkd.tasks.Task; got {type(task).__name__}")
    if task.name in TASKS and not replace:
        raise ValueError(f"a task named {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The task called ``name`` (``ValueError`` naming the registered ones otherwise)."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None


def task_names() -> tuple[str, ...]:
    """The registered task names, in registration order."""
    return tuple(TASKS)


register_task(NerTask())
register_task(DepTask())
