"""An ONNX Runtime session that quacks like the run's torch model.

Every task scores through `model(**batch).logits` (see `training.loop.predict_logits`
and the tasks' `predict`), so the ONNX backend only has to accept the same
batch dict and return an object with `.logits` as a torch tensor. Nothing in the
tasks knows which backend runs: predictions have the same format by
construction, and length-sorted dynamic padding (done by the caller) applies to
both backends alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from domaintune.training.loop import physical_cores

#: backend name -> file under RUN_DIR/export
BACKEND_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}


class OnnxModel:
    """`OnnxModel(path)(**batch).logits` - the subset of `nn.Module` the Predictor and tasks use.

    Two ways to use the cores, each where it measured faster (banking77, int8
    MiniLM-L6, 2 cores, 2026-11-26):
    - one batch at a time (the service's micro-batches): one session with an
      intra-op thread per core. The HTTP event loop needs the cores between
      batches; lanes there cut `serve` from 411 to 250-270 req/s (wrk, c=32).
    - many batches at once (`map_logits`, offline prediction): one 1-thread
      session run from one Python thread ("lane") per core, each lane a whole
      batch - ORT sessions are thread-safe and release the GIL. On an encoder
      this small the per-operator work is too little for intra-op threads to
      split well: 1,023 texts/s with one 2-thread session, 1,212-1,272 with
      two lanes. The lane session is built on first use.
    """

    def __init__(self, path: str | Path, num_threads: int | None = None, config=None):
        self.path = Path(path)
        self.lanes = max(1, num_threads or physical_cores())
        self.session = self._session(self.lanes)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        self.config = config
        self.training = False
        self._lane_session = self._pool = None

    def _session(self, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1  # no parallelism across ops: on 2 cores it only adds contention
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting between runs: spinning threads would steal the cores the HTTP event loop (and any
        # other work on a small machine) needs; offline it bought ~1 % (1,021 vs 1,009 texts/s, banking77).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])

    # nn.Module look-alikes used by callers
    def eval(self):
        return self

    def to(self, *_a, **_k):
        return self

    def parameters(self):
        return iter(())

    def feed(self, batch: dict) -> dict[str, np.ndarray]:
        feed = {}
        for name in self.input_names:
            if name not in batch:
                raise ValueError(f"{self.path.name} needs input {name!r}; the batch has {sorted(batch)}")
            v = batch[name]
            arr = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            feed[name] = arr.astype(np.float32 if arr.dtype.kind == "f" else np.int64, copy=False)
        return feed

    def __call__(self, labels=None, **batch) -> SimpleNamespace:
        logits = self.session.run([self.output_name], self.feed(batch))[0]
        return SimpleNamespace(logits=torch.from_numpy(np.ascontiguousarray(logits)))

    def map_logits(self, items: Sequence, make_batch: Callable[[object], dict]) -> Iterator[tuple[object, torch.Tensor]]:
        """(item, logits) for each item, in order; `make_batch(item)` -> batch dict. Two or more items run
        side by side on the lanes (collation included); a single one runs on the multi-thread session."""
        if self.lanes == 1 or len(items) < 2:
            return ((item, self(**make_batch(item)).logits) for item in items)
        if self._lane_session is None:
            from concurrent.futures import ThreadPoolExecutor

            self._lane_session = self._session(1)
            self._pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="onnx-lane")

        def one(item):
            logits = self._lane_session.run([self.output_name], self.feed(make_batch(item)))[0]
            return item, torch.from_numpy(np.ascontiguousarray(logits))

        return self._pool.map(one, items)


def export_record(run_dir: str | Path) -> dict:
    """RUN_DIR/export/benchmark.json, or {} when the run was never exported."""
    path = Path(run_dir) / "export" / "benchmark.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def choose_backend(run_dir: str | Path, requested: str = "auto") -> str:
    """`torch`, `onnx` or `onnx-int8`; `auto` = the fastest exported backend that passed its gate.

    A file without a passing record in benchmark.json is never picked
    automatically: an int8 model that lost accuracy (or was kept with --force)
    only serves when asked for by name.
    """
    run_dir = Path(run_dir)
    if requested not in ("auto", "torch", *BACKEND_FILES):
        raise ValueError(f"unknown backend {requested!r}: use auto, torch, onnx or onnx-int8")
    if requested != "auto":
        if requested != "torch" and not (run_dir / "export" / BACKEND_FILES[requested]).is_file():
            raise FileNotFoundError(f"{run_dir}: no export/{BACKEND_FILES[requested]}; run "
                                    f"`domaintune export {run_dir} --format onnx"
                                    f"{' --quantize int8' if requested == 'onnx-int8' else ''}` first")
        return requested
    rec = export_record(run_dir).get("backends", {})
    passing = [(b["texts_per_second"], name) for name, b in rec.items()
               if name in BACKEND_FILES and b.get("gate_passed") and (run_dir / "export" / BACKEND_FILES[name]).is_file()]
    return max(passing)[1] if passing else "torch"
