"""One Predictor over a run directory; the CLI, the service and recipes all use it.

It loads `run/model` with plain transformers (the run directory is a normal
Hugging Face model), so what domaintune predicts is what a user gets from
`AutoModelForSequenceClassification.from_pretrained(run/model)`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
import yaml
from transformers import AutoTokenizer

from domaintune.data import DataError, LabelMap, Problem, ReadOptions
from domaintune.data.readers import Example, detect_format, stream_records
from domaintune.model_io import load_run_model
from domaintune.tasks import EvalContext, get_task
from domaintune.training.loop import set_threads

log = logging.getLogger("domaintune")


class Predictor:
    """Loads a run directory once; predicts for strings, (text, text_pair) pairs or whole files."""

    def __init__(self, run_dir: str | Path, batch_size: int | None = None, num_threads: int | None = None,
                 backend: str = "auto"):
        """`backend`: torch, onnx, onnx-int8, or auto (the fastest exported model that passed its accuracy
        gate in export/benchmark.json, else torch). The output format is the same for every backend.

        `batch_size` default: 64 for torch, 16 for ONNX - the ONNX backend runs one batch per core side by
        side, and smaller batches pad less (int8 banking77: 1,218 texts/s at 16 vs 1,092 at 64)."""
        self.run_dir = Path(run_dir)
        model_dir = self.run_dir / "model"
        if not any((model_dir / f).is_file() for f in ("config.json", "adapter_config.json", "domaintune_head.json")):
            raise FileNotFoundError(f"{self.run_dir}: not a finished run directory (no model/config.json); "
                                    f"train one with `domaintune train CONFIG`")
        cfg_path = self.run_dir / "config.yaml"
        self.config = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
        self.task = get_task(self.config.get("task", "classification"))
        state_path, labels_path = self.run_dir / "task.json", self.run_dir / "labels.json"
        if state_path.is_file():
            self.task.load_state(json.loads(state_path.read_text(encoding="utf-8")))
        elif labels_path.is_file():
            self.task.load_state({"labels": list(LabelMap.load(labels_path).labels)})
        self.max_length = int(self.config.get("train", {}).get("max_length", 512))
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        from domaintune.export.onnx_model import BACKEND_FILES, OnnxModel, choose_backend

        self.backend = choose_backend(self.run_dir, backend)
        if self.backend == "torch":
            self.model = load_run_model(self.task, model_dir)
        else:  # no torch weights in memory: the ONNX file is the whole model
            from transformers import AutoConfig

            hf_config = AutoConfig.from_pretrained(str(model_dir)) if (model_dir / "config.json").is_file() else None
            self.model = OnnxModel(self.run_dir / "export" / BACKEND_FILES[self.backend], num_threads, config=hf_config)
        attach = getattr(self.task, "attach", None)  # tasks with run-directory side files (the retrieval index)
        if attach is not None:
            attach(self.run_dir)
        if not self.task.labels and getattr(self.model.config, "id2label", None) and self.task.name == "classification":
            self.task.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.labels = self.task.labels
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.batch_size = batch_size or (64 if self.backend == "torch" else 16)
        set_threads(num_threads)

    def context(self) -> EvalContext:
        return EvalContext(self.tokenizer, self.pad_id, self.batch_size, self.max_length, False)

    def examples(self, inputs) -> list[Example]:
        return [self.task.as_example(x) for x in inputs]

    def features(self, examples: Sequence[Example], with_targets: bool = False) -> list[dict]:
        return self.task.encode(self.tokenizer, examples, self.max_length, with_targets=with_targets)

    @torch.inference_mode()
    def predict(self, inputs, top_k: int = 1) -> list[dict]:
        """Predictions for each input (a single string or (text, text_pair) gives a one-item list)."""
        if isinstance(inputs, (str, Example)) or (isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[0], str)):
            inputs = [inputs]
        examples = self.examples(inputs)
        if not examples:
            return []
        return self.task.predict(self.model, examples, self.features(examples), self.context(), top_k)

    def predict_labels(self, texts: Sequence[str]) -> list[str]:
        return [p["label"] for p in self.predict(list(texts))]

    def evaluate(self, examples: Sequence[Example]) -> dict:
        """Metrics on labelled examples, with the same keys as metrics.json's `test`."""
        return self.task.evaluate(self.model, examples, self.features(examples, with_targets=True), self.context())

    def predict_stream(self, texts: Iterable, chunk: int = 1024, top_k: int = 1) -> Iterator[dict]:
        """Predict an arbitrarily long stream in bounded memory."""
        buf: list = []
        for t in texts:
            buf.append(t)
            if len(buf) >= chunk:
                yield from self.predict(buf, top_k)
                buf = []
        if buf:
            yield from self.predict(buf, top_k)

    def predict_file(self, input_path: str | Path, output_path: str | Path, opts: ReadOptions | None = None,
                     chunk: int = 1024, progress=None) -> int:
        """Copy a CSV/TSV/JSONL file with `label` and `score` added, streaming it in chunks.

        A first pass checks every row (so all problems come in one message and
        the progress bar knows its total); the second predicts `chunk` rows at a
        time, so memory stays flat however large the file. The output is a temp
        file renamed into place at the end: an interrupted run leaves any
        earlier output intact.
        """
        src, dst = Path(input_path), Path(output_path)
        opts = replace(opts or ReadOptions(), label_column=None)
        # Pair tasks read their second text from the run's pair column; retrieval queries come alone.
        run_pair = (self.config.get("data") or {}).get("text_pair_column") if getattr(self.task, "pair_input", True) else None
        if opts.text_pair_column is None and run_pair is not None:
            opts = replace(opts, text_pair_column=run_pair)
        run_feats = tuple((self.config.get("data") or {}).get("feature_columns") or ())
        if not opts.feature_columns and run_feats:  # a regression run with numeric features reads them from the file
            opts = replace(opts, feature_columns=run_feats)
        fmt = detect_format(src, opts.format)
        problems: list[Problem] = []
        total = sum(1 for _line, ex, _rec in stream_records(src, opts, problems) if ex is not None)
        if [p for p in problems if not p.warning]:
            raise DataError(problems)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
        n = 0
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
                if fmt == "jsonl":
                    def write(rec, pred):
                        rec.update(self.task.output_fields(pred))
                        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                else:
                    writer = csv.writer(out, delimiter=opts.delimiter or ("," if fmt == "csv" else "\t"),
                                        quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE,
                                        escapechar=None if fmt == "csv" else "\\")

                    def write(rec, pred):
                        writer.writerow(rec + [_cell_text(v) for v in self.task.output_fields(pred).values()])
                buf: list[tuple[str, object]] = []

                def flush() -> int:
                    for (_t, rec), pred in zip(buf, self.predict([t for t, _ in buf])):
                        write(rec, pred)
                    k = len(buf)
                    buf.clear()
                    return k

                for _line, ex, rec in stream_records(src, opts, []):
                    if ex is None:  # the header row of a delimited file
                        writer.writerow(list(rec) + list(self.task.output_fields({})))
                        continue
                    buf.append((ex, rec))
                    if len(buf) >= chunk:
                        n += flush()
                        if progress:
                            progress(n, total)
                n += flush()
                if progress:
                    progress(n, total)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return n


def _cell_text(v) -> str:
    """A prediction value as one CSV cell: floats with 6 decimals, lists/dicts as JSON."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6f}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)
