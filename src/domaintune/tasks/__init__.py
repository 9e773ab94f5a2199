"""Task registry: name -> Task class. Adding a task touches one module, one line here and its test.

Entries are import paths so that `import domaintune` stays light and a task's
heavy dependencies (seqeval, faiss) load only when that task is used.
"""

from __future__ import annotations

import importlib

from domaintune.tasks.base import EvalContext, Task

TASKS: dict[str, str] = {
    "classification": "domaintune.tasks.classification:ClassificationTask",
    "multilabel": "domaintune.tasks.multilabel:MultiLabelTask",
    "ner": "domaintune.tasks.ner:NerTask",
    "regression": "domaintune.tasks.regression:RegressionTask",
    "pair": "domaintune.tasks.pair:PairTask",
    "retrieval": "domaintune.tasks.retrieval:RetrievalTask",
}


def get_task(name: str) -> Task:
    """A fresh (stateful) task instance: it holds the label space learnt from train."""
    try:
        module, cls = TASKS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}") from None
    return getattr(importlib.import_module(module), cls)()


__all__ = ["TASKS", "EvalContext", "Task", "get_task"]
