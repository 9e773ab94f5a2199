"""Task registry: name -> Task class. Adding a task touches one module and its test."""

from __future__ import annotations

from domaintune.tasks.base import Task
from domaintune.tasks.classification import ClassificationTask

TASKS: dict[str, type[Task]] = {ClassificationTask.name: ClassificationTask}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]()
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}") from None


__all__ = ["TASKS", "Task", "get_task"]
