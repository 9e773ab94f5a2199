"""Re-score a saved run on any labelled file, with the same keys as metrics.json's `test`."""

from __future__ import annotations

from pathlib import Path

from domaintune.data import DataError, Problem, ReadOptions, read_examples
from domaintune.predictor import Predictor
from domaintune.training.checkpoint import atomic_write_json


def evaluate_run(run_dir: str | Path, data_path: str | Path, opts: ReadOptions | None = None,
                 output: str | Path | None = None, predictor: Predictor | None = None) -> dict:
    predictor = predictor or Predictor(run_dir)
    if opts is None:
        d = predictor.config.get("data", {})
        opts = ReadOptions(format=d.get("format", "auto"), text_column=d.get("text_column", "text"),
                           label_column=d.get("label_column", "label"), delimiter=d.get("delimiter"),
                           encoding=d.get("encoding", "utf-8"), has_header=d.get("has_header", True))
    problems: list[Problem] = []
    examples = read_examples(data_path, opts, problems)
    known = {l: i for i, l in enumerate(predictor.labels)}
    for ex in examples:
        if ex.label not in known:
            problems.append(Problem(ex.source, ex.line, f"label {ex.label!r} is not one the model was trained on",
                                    f"use one of {predictor.labels[:10]}{' ...' if len(predictor.labels) > 10 else ''}"))
    if [p for p in problems if not p.warning]:
        raise DataError(problems)
    logits = predictor.logits([ex.text for ex in examples])
    metrics = predictor.task.metrics([known[ex.label] for ex in examples], predictor.task.predictions(logits), predictor.labels)
    if output:
        atomic_write_json(output, metrics)
    return metrics
