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
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from domaintune.training.loop import physical_cores

#: backend name -> file under RUN_DIR/export
BACKEND_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}


class OnnxModel:
    """`OnnxModel(path)(**batch).logits` - the subset of `nn.Module` the Predictor and tasks use.

    Parallelism is ours, not ONNX Runtime's: the session runs each call on one
    thread, and `lanes` Python threads (one per physical core) call it at the
    same time - ORT sessions are thread-safe and release the GIL. On a small
    encoder the per-operator work is too small for ORT's intra-op threads to
    split well: on banking77 (2 cores, int8 MiniLM-L6) one 2-thread session
    ran 1,023 texts/s, two 1-thread lanes 1,212-1,272 (measured 2026-11-26).
    A single batch (the service's micro-batch) is split by rows across the
    lanes; many batches (`map_logits`, used by offline prediction) run whole
    batches side by side.
    """

    def __init__(self, path: str | Path, num_threads: int | None = None, config=None):
        import onnxruntime as ort

        self.path = Path(path)
        self.lanes = max(1, num_threads or physical_cores())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting between runs: spinning threads would steal the cores the HTTP event loop (and any
        # other work on a small machine) needs; offline it bought ~1 % (1,021 vs 1,009 texts/s, banking77).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        self.config = config
        self.training = False
        self._pool = None

    # nn.Module look-alikes used by callers
    def eval(self):
        return self

    def to(self, *_a, **_k):
        return self

    def parameters(self):
        return iter(())

    @property
    def pool(self):
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="onnx-lane")
        return self._pool

    def feed(self, batch: dict) -> dict[str, np.ndarray]:
        feed = {}
        for name in self.input_names:
            if name not in batch:
                raise ValueError(f"{self.path.name} needs input {name!r}; the batch has {sorted(batch)}")
            v = batch[name]
            arr = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            feed[name] = arr.astype(np.float32 if arr.dtype.kind == "f" else np.int64, copy=False)
        return feed

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.output_name], feed)[0]

    def __call__(self, labels=None, **batch) -> SimpleNamespace:
        feed = self.feed(batch)
        rows = len(next(iter(feed.values())))
        if self.lanes == 1 or rows < 2:
            logits = self.run(feed)
        else:
            parts = [trim_padding({k: v[sl] for k, v in feed.items()})
                     for sl in row_slices(rows, min(self.lanes, rows))]
            logits = concat_padded(list(self.pool.map(self.run, parts)))
        return SimpleNamespace(logits=torch.from_numpy(np.ascontiguousarray(logits)))

    def map_logits(self, items: Iterable, make_batch: Callable[[object], dict]) -> Iterator[tuple[object, torch.Tensor]]:
        """(item, logits) for each item, in order; `make_batch(item)` -> batch dict runs on a lane thread,
        so whole batches (collation included) run side by side, one per core."""
        def one(item):
            return item, torch.from_numpy(np.ascontiguousarray(self.run(self.feed(make_batch(item)))))

        if self.lanes == 1:
            return map(one, items)
        return self.pool.map(one, items)


def row_slices(rows: int, parts: int) -> list[slice]:
    """`parts` contiguous, nearly equal row ranges (length-sorted batches keep similar lengths together)."""
    bounds = np.linspace(0, rows, parts + 1).round().astype(int)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def trim_padding(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop trailing columns that are padding for every row of this slice (rows of a split batch are shorter)."""
    mask = feed.get("attention_mask")
    if mask is None or mask.ndim != 2:
        return feed
    used = int(mask.any(axis=0).nonzero()[0].max()) + 1 if mask.any() else mask.shape[1]
    if used == mask.shape[1]:
        return feed
    return {k: (v[:, :used] if v.ndim == 2 and v.shape[1] == mask.shape[1] and v.dtype == np.int64 else v)
            for k, v in feed.items()}


def concat_padded(parts: list[np.ndarray]) -> np.ndarray:
    """Stack row slices back; per-token outputs of trimmed slices are zero-padded to the longest (callers cut
    each row to its own length, as with torch)."""
    if parts[0].ndim < 3:
        return np.concatenate(parts)
    width = max(p.shape[1] for p in parts)
    return np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0))) for p in parts])


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
