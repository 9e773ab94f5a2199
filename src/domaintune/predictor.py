"""One Predictor over a run directory; the CLI, the service and recipes all use it.

It loads `run/model` with plain transformers (the run directory is a normal
Hugging Face model), so what domaintune predicts is what a user gets from
`AutoModelForSequenceClassification.from_pretrained(run/model)`.
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from transformers import AutoTokenizer

from domaintune.data import DataError, LabelMap, Problem, ReadOptions
from domaintune.data.readers import Example, detect_format, stream_records
from domaintune.data.writers import XLSX_MAX_ROWS, TableWriteError, TableWriter, atomic_text, output_format
from domaintune.model_io import load_run_model
from domaintune.security.safe_yaml import load_yaml_file
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
        self.config = (load_yaml_file(cfg_path) or {}) if cfg_path.is_file() else {}  # bounded: run dirs come from elsewhere
        self.task = get_task(self.config.get("task", "classification"))
        state_path, labels_path = self.run_dir / "task.json", self.run_dir / "labels.json"
        if state_path.is_file():
            self.task.load_state(json.loads(state_path.read_text(encoding="utf-8")))
        elif labels_path.is_file():
            self.task.load_state({"labels": list(LabelMap.load(labels_path).labels)})
        self.max_length = int(self.config.get("train", {}).get("max_length", 512))
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        from domaintune.export.onnx_model import BACKEND_FILES, OnnxModel, choose_backend

        self._generator = None
        if self.task.output_kind == "text":  # a generator decodes with torch, fp32 or the gated int8 path
            from domaintune.generation.fast_path import choose_generation_backend

            self.backend = choose_generation_backend(self.run_dir, backend)
        else:
            self.backend = choose_backend(self.run_dir, backend)
        if self.backend in ("torch", "int8"):
            self.model = load_run_model(self.task, model_dir)
        else:  # no torch weights in memory: the ONNX file is the whole model
            from transformers import AutoConfig

            hf_config = AutoConfig.from_pretrained(str(model_dir)) if (model_dir / "config.json").is_file() else None
            self.model = OnnxModel(self.run_dir / "export" / BACKEND_FILES[self.backend], num_threads, config=hf_config)
        self.task.attach(self.run_dir)  # tasks with run-directory side files (the retrieval index)
        if not self.task.labels and self.task.labels_from_model_config and getattr(self.model.config, "id2label", None):
            self.task.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.labels = self.task.labels
        declared = self.task.pair_input  # None: pairs exactly when the run trained on a second text column
        self.pair_input = declared if declared is not None else (self.config.get("data") or {}).get("text_pair_column") is not None
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.batch_size = batch_size or (64 if self.backend == "torch" else 16)
        set_threads(num_threads)

    # ---- generation runs (task: generation) --------------------------------------------------------
    @property
    def is_generator(self) -> bool:
        """Whether this run writes replies (chat, generate) rather than labels or values."""
        return self.task.output_kind == "text"

    def generator(self):
        """The run's ChatGenerator (built once; int8 linear layers when the backend is `int8`)."""
        if not self.is_generator:
            raise ValueError(f"{self.run_dir}: {self.task.described_as} does not generate text; use predict")
        if self._generator is None:
            from domaintune.generation.engine import ChatGenerator, quantize_int8

            model = self.model
            if hasattr(model, "merge_and_unload"):  # a LoRA/IA3 run: fold the adapter in, one matmul per layer
                model = self.model = model.merge_and_unload()
            if self.backend == "int8":  # smoothed with the calibration `export --format int8` saved, if any
                from domaintune.generation.fast_path import saved_maxima

                model = quantize_int8(model, saved_maxima(self.run_dir))
            self._generator = ChatGenerator(model, self.tokenizer, self.task.chat_template,
                                            int(self.task.generation.get("context_tokens", 2048)))
        return self._generator

    def sampling(self, **overrides):
        """The run's decoding settings (generation.* of its config) with `overrides` (None values ignored)."""
        from dataclasses import replace as _replace

        base = self.task.settings()
        given = {k: (tuple(v) if k == "stop" else v) for k, v in overrides.items() if v is not None}
        return _replace(base, **given)

    def use_faq(self, faq_run: str | Path | None, top_k: int = 3) -> None:
        """Ground every reply in the top `top_k` entries of a `task: retrieval` run's FAQ index (--faq-index)."""
        if faq_run is None:
            self._faq = None
            return
        faq = Predictor(faq_run)
        if faq.task.output_kind != "ranking":
            raise ValueError(f"--faq-index {faq_run}: not a `task: retrieval` run (it is {faq.task.described_as})")
        self._faq, self._faq_top_k = faq, top_k

    def _messages(self, messages) -> list[dict]:
        from domaintune.generation.grounding import ground
        from domaintune.tasks.generation import prompt_messages

        msgs = prompt_messages(self.task.as_example(messages))
        return ground(msgs, getattr(self, "_faq", None), getattr(self, "_faq_top_k", 3))

    def chat(self, messages, settings=None):
        """One reply (GenerationResult) to OpenAI-shaped `messages` (or a prompt string)."""
        return self.generator().generate([self._messages(messages)], settings or self.sampling())[0]

    def chat_stream(self, messages, settings=None):
        """Text pieces of the reply as they are decoded, then one GenerationResult."""
        return self.generator().stream(self._messages(messages), settings or self.sampling())

    def generate(self, prompts, settings=None) -> list:
        """Replies to many prompts (strings or message lists), batched by length; in input order."""
        return self.generator().generate([self._messages(p) for p in prompts], settings or self.sampling(),
                                         int(self.task.generation.get("eval_batch_size", 8)))

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
        if self.is_generator:  # through the run's generator: the gated int8 path when it is the backend
            return [{"text": r.text, "finish_reason": r.finish_reason, "completion_tokens": r.completion_tokens}
                    for r in self.generate(examples)]
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
                     chunk: int = 1024, progress=None, safe: bool = True) -> int:
        """Copy a CSV/TSV/JSONL file or an Excel sheet with `label` and `score` added, streaming it in chunks.

        A first pass checks every row (so all problems come in one message and
        the progress bar knows its total); the second predicts `chunk` rows at a
        time, so memory stays flat however large the file. The output is a temp
        file renamed into place at the end: an interrupted run leaves any
        earlier output intact.

        The output's format follows its suffix (.csv, .tsv, .xlsx, .jsonl), else the input's. Tables are
        written by `domaintune.data.writers`: with `safe` (the default), cells that a spreadsheet would run
        as formulas - texts and labels come from user data - are neutralised; `safe=False` (`predict
        --no-safe-cells`) writes them verbatim for programs that read the file back.
        """
        src, dst = Path(input_path), Path(output_path)
        opts = replace(opts or ReadOptions(), label_column=None)
        if self.is_generator and opts.text_column == "text":  # the default: read prompts from the run's column
            opts = replace(opts, text_column=(self.config.get("data") or {}).get("prompt_column") or "prompt")
        # Pair tasks read their second text from the run's pair column; retrieval queries come alone.
        run_pair = (self.config.get("data") or {}).get("text_pair_column") if self.pair_input else None
        if opts.text_pair_column is None and run_pair is not None:
            opts = replace(opts, text_pair_column=run_pair)
        run_feats = tuple((self.config.get("data") or {}).get("feature_columns") or ())
        if not opts.feature_columns and run_feats:  # a regression run with numeric features reads them from the file
            opts = replace(opts, feature_columns=run_feats)
        in_fmt = detect_format(src, opts.format)
        out_fmt = output_format(dst, in_fmt)
        problems: list[Problem] = []
        total, keys = 0, {}  # keys: the columns of a JSONL input written as a table (every key, first-seen order)
        for _line, ex, rec in stream_records(src, opts, problems):
            if ex is not None:
                total += 1
                if in_fmt == "jsonl" and out_fmt != "jsonl":
                    keys.update(dict.fromkeys(rec))
        if [p for p in problems if not p.warning]:
            raise DataError(problems)
        if out_fmt == "xlsx" and total + 1 > XLSX_MAX_ROWS:
            raise TableWriteError(f"{dst}: {total:,} rows do not fit in an Excel sheet ({XLSX_MAX_ROWS:,} rows with "
                                  f"the header); write the predictions as .csv")
        names = list(self.task.output_fields({}))
        header: list | None = None

        def out_cells(pred) -> list:
            values = self.task.output_fields(pred).values()
            return list(values) if out_fmt == "xlsx" else [_cell_text(v) for v in values]

        with ExitStack() as stack:
            if out_fmt == "jsonl":
                out = stack.enter_context(atomic_text(dst))

                def write(rec, pred):
                    obj = rec if isinstance(rec, dict) else dict(zip(header or map(str, range(len(rec))), rec))
                    obj.update(self.task.output_fields(pred))
                    out.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
            else:
                table = stack.enter_context(TableWriter(dst, out_fmt, safe=safe,
                                                        delimiter=opts.delimiter if out_fmt == in_fmt else None))
                if in_fmt == "jsonl":
                    table.write_row(list(keys) + names)

                def write(rec, pred):
                    cells = [rec.get(k) for k in keys] if isinstance(rec, dict) else list(rec)
                    table.write_row(cells + out_cells(pred))
            buf: list[tuple[Example, object]] = []
            n = 0

            def flush() -> int:
                for (_ex, rec), pred in zip(buf, self.predict([ex for ex, _ in buf])):
                    write(rec, pred)
                k = len(buf)
                buf.clear()
                return k

            for _line, ex, rec in stream_records(src, opts, []):
                if ex is None:  # the header row of a table
                    header = [str(h) if h is not None else "" for h in rec]
                    if out_fmt != "jsonl":
                        table.write_row(list(rec) + names)
                    continue
                buf.append((ex, rec))
                if len(buf) >= chunk:
                    n += flush()
                    if progress:
                        progress(n, total)
            n += flush()
            if progress:
                progress(n, total)
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
