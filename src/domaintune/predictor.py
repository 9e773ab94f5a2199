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

from domaintune.data import DataError, LabelMap, Problem, ReadOptions
from domaintune.data.readers import detect_format, stream_records
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
        """Copy a CSV/TSV/JSONL file with `label` and `score` added, streaming it in chunks.

        A first pass checks every row (so all problems come in one message and
        the progress bar knows its total); the second predicts `chunk` rows at a
        time, so memory stays flat however large the file. The output is a temp
        file renamed into place at the end: an interrupted run leaves any
        earlier output intact.
        """
        src, dst = Path(input_path), Path(output_path)
        opts = opts or ReadOptions(label_column=None)
        opts = ReadOptions(opts.format, opts.text_column, None, opts.delimiter, opts.encoding, opts.has_header)
        fmt = detect_format(src, opts.format)
        problems: list[Problem] = []
        total = sum(1 for _line, text, _rec in stream_records(src, opts, problems) if text is not None)
        if [p for p in problems if not p.warning]:
            raise DataError(problems)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
        n = 0
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
                if fmt == "jsonl":
                    def write(rec, pred):
                        rec.update(label=pred["label"], score=round(pred["score"], 6))
                        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                else:
                    writer = csv.writer(out, delimiter=opts.delimiter or ("," if fmt == "csv" else "\t"),
                                        quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE,
                                        escapechar=None if fmt == "csv" else "\\")

                    def write(rec, pred):
                        writer.writerow(rec + [pred["label"], f"{pred['score']:.6f}"])
                buf: list[tuple[str, object]] = []

                def flush() -> int:
                    for (_t, rec), pred in zip(buf, self.predict([t for t, _ in buf])):
                        write(rec, pred)
                    k = len(buf)
                    buf.clear()
                    return k

                for _line, text, rec in stream_records(src, opts, []):
                    if text is None:  # the header row of a delimited file
                        writer.writerow(list(rec) + ["label", "score"])
                        continue
                    buf.append((text, rec))
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
