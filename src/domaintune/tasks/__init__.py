"""Task registry: name -> Task class. Adding a task touches one module, one line here and its test.

Entries are import paths so that `import domaintune` stays light and a task's
heavy dependencies (seqeval, faiss) load only when that task is used.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from domaintune.tasks.base import EvalContext, Task

TASKS: dict[str, str] = {
    "classification": "domaintune.tasks.classification:ClassificationTask",
    "multilabel": "domaintune.tasks.multilabel:MultiLabelTask",
    "ner": "domaintune.tasks.ner:NerTask",
    "regression": "domaintune.tasks.regression:RegressionTask",
    "pair": "domaintune.tasks.pair:PairTask",
    "retrieval": "domaintune.tasks.retrieval:RetrievalTask",
    "generation": "domaintune.tasks.generation:GenerationTask",
}


def get_task(name: str) -> Task:
    """A fresh (stateful) task instance: it holds the label space learnt from train."""
    try:
        module, cls = TASKS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}") from None
    return getattr(importlib.import_module(module), cls)()


def task_names_where(test: Callable[[Task], Any]) -> list[str]:
    """Names of the registered tasks whose fresh instance passes `test`, in registry order: a message
    that says which tasks support a feature is built from the tasks' own declarations (it imports
    every task module, so it is for error paths)."""
    return [name for name in TASKS if test(get_task(name))]


__all__ = ["TASKS", "EvalContext", "Task", "get_task", "task_names_where"]
