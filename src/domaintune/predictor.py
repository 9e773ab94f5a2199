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
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
import yaml
from transformers import AutoTokenizer

from domaintune.data import DataError, LabelMap, Problem, ReadOptions, read_examples
from domaintune.data.readers import detect_format
from domaintune.tasks import get_task
from domaintune.training.batching import inference_batches
from domaintune.training.loop import set_threads

log = logging.getLogger("domaintune")


class Predictor:
    def __init__(self, run_dir: str | Path, batch_size: int = 64, num_threads: int | None = None):
        self.run_dir = Path(run_dir)
        model_dir = self.run_dir / "model"
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{self.run_dir}: not a finished run directory (no model/config.json); "
                                    f"train one with `domaintune train CONFIG`")
        cfg_path = self.run_dir / "config.yaml"
        self.config = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
        self.task = get_task(self.config.get("task", "classification"))
        self.max_length = int(self.config.get("train", {}).get("max_length", 512))
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = self.task.auto_class.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        labels_path = self.run_dir / "labels.json"
        if labels_path.is_file():
            self.labels = list(LabelMap.load(labels_path).labels)
        else:
            self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.batch_size = batch_size
        set_threads(num_threads)

    @torch.inference_mode()
    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        feats = self.task.encode(self.tokenizer, texts, None, self.max_length)
        lengths = [len(f["input_ids"]) for f in feats]
        out = torch.empty((len(texts), self.model.config.num_labels))
        for idx in inference_batches(lengths, self.batch_size):
            batch = self.task.collate([feats[i] for i in idx], self.pad_id)
            out[idx] = self.model(**batch).logits.float()
        return out

    def predict(self, texts: str | Sequence[str], top_k: int = 1) -> list[dict]:
        """Label, score and the top-k labels for each text (a single string gives a one-item list)."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            return []
        return self.task.decode(self.logits(list(texts)), self.labels, top_k)

    def predict_labels(self, texts: Sequence[str]) -> list[str]:
        return [p["label"] for p in self.predict(texts)]

    def predict_stream(self, texts: Iterable[str], chunk: int = 1024, top_k: int = 1) -> Iterator[dict]:
        """Predict an arbitrarily long stream in bounded memory."""
        buf: list[str] = []
        for t in texts:
            buf.append(t)
            if len(buf) >= chunk:
                yield from self.predict(buf, top_k)
                buf = []
        if buf:
            yield from self.predict(buf, top_k)

    def predict_file(self, input_path: str | Path, output_path: str | Path, opts: ReadOptions | None = None,
                     chunk: int = 1024, progress=None) -> int:
        """Copy a CSV/TSV/JSONL file with `label` and `score` added; written atomically."""
        src, dst = Path(input_path), Path(output_path)
        opts = opts or ReadOptions(label_column=None)
        opts = ReadOptions(opts.format, opts.text_column, None, opts.delimiter, opts.encoding, opts.has_header)
        fmt = detect_format(src, opts.format)
        problems: list[Problem] = []
        examples = read_examples(src, opts, problems)
        if [p for p in problems if not p.warning]:
            raise DataError(problems)
        by_line = {ex.line: ex.text for ex in examples}
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
        n = 0
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
                if fmt == "jsonl":
                    lines = src.read_text(encoding=opts.encoding).lstrip("\ufeff").split("\n")
                    keyed = [(i, json.loads(l)) for i, l in enumerate(lines, start=1) if l.strip()]
                    for start in range(0, len(keyed), chunk):
                        part = keyed[start:start + chunk]
                        preds = self.predict([by_line[i] for i, _ in part])
                        for (_, obj), p in zip(part, preds):
                            obj.update(label=p["label"], score=round(p["score"], 6))
                            out.write(json.dumps(obj, ensure_ascii=False) + "\n")
                        n += len(part)
                        if progress:
                            progress(n, len(keyed))
                else:
                    n = self._predict_delimited(src, out, opts, fmt, by_line, chunk, progress)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return n

    def _predict_delimited(self, src, out, opts, fmt, by_line, chunk, progress) -> int:
        from domaintune.data.readers import _rows_delimited  # same parsing as training data

        text = src.read_bytes().decode(opts.encoding).lstrip("\ufeff")
        delimiter = opts.delimiter or ("," if fmt == "csv" else "\t")
        writer = csv.writer(out, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE,
                            escapechar=None if fmt == "csv" else "\\")
        rows = [(ln, r) for ln, _last, r in _rows_delimited(text, str(src), opts, fmt) if r and any(c.strip() for c in r)]
        if opts.has_header and rows:
            writer.writerow(rows[0][1] + ["label", "score"])
            rows = rows[1:]
        n = 0
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            preds = self.predict([by_line.get(ln, "") for ln, _ in part])
            for (_, row), p in zip(part, preds):
                writer.writerow(row + [p["label"], f"{p['score']:.6f}"])
            n += len(part)
            if progress:
                progress(n, len(rows))
        return n
