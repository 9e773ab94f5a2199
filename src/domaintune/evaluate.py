"""Re-score a saved run on any labelled file, with the same keys as metrics.json's `test`."""

from __future__ import annotations

from pathlib import Path

from domaintune.config import DataConfig
from domaintune.data import DataError, Problem, ReadOptions
from domaintune.predictor import Predictor
from domaintune.training.checkpoint import atomic_write_json


def data_config_for(predictor: Predictor, opts: ReadOptions | None) -> DataConfig:
    """The run's own reader settings, with any reader options given on the command line on top."""
    d = DataConfig.model_validate({k: v for k, v in (predictor.config.get("data") or {}).items()
                                   if k in DataConfig.model_fields})
    if opts is not None:
        d = d.model_copy(update={"format": opts.format, "text_column": opts.text_column, "label_column": opts.label_column,
                                 "delimiter": opts.delimiter, "encoding": opts.encoding, "has_header": opts.has_header})
    return d


def evaluate_run(run_dir: str | Path, data_path: str | Path, opts: ReadOptions | None = None,
                 output: str | Path | None = None, predictor: Predictor | None = None) -> dict:
    predictor = predictor or Predictor(run_dir)
    problems: list[Problem] = []
    examples = predictor.task.read(str(data_path), data_config_for(predictor, opts), problems)
    predictor.task.check_known(examples, problems)
    if [p for p in problems if not p.warning]:
        raise DataError(problems)
    metrics = predictor.evaluate(examples)
    if output:
        atomic_write_json(output, metrics)
    return metrics
