"""Score exported models against the PyTorch model they came from, and gate on the metric.

int8 can destroy accuracy silently (onnxruntime #9599, optimum #151), so every
export is scored here on the run's own test split (or dev, or a file the user
names) before it is kept: agreement of the arg-max with PyTorch, the task's
headline metric and its drop in points, texts/s for whole-set prediction
(tokenisation included, length-sorted batches of 32) and p50/p99 latency of
single-text requests. The result is `export/benchmark.json`, which is also what
`Predictor(backend="auto")` reads to pick the fastest model that passed.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch

from domaintune.export.onnx_model import OnnxModel
from domaintune.tasks import EvalContext

#: Metrics where lower is better; their gate is a relative change in percent, not points.
LOWER_IS_BETTER = {"mae", "rmse", "mse", "loss"}
LATENCY_SAMPLES = 200


def eval_examples(predictor, data: str | Path | None = None, max_examples: int | None = None):
    """(split name, labelled examples) to score on: `data`, else the run's test split, else its dev split."""
    from domaintune.data import DataError, Problem

    if data is not None:
        from domaintune.evaluate import data_config_for

        problems: list[Problem] = []
        examples = predictor.task.read(str(data), data_config_for(predictor, None), problems)
        if [p for p in problems if not p.warning]:
            raise DataError(problems)
        name = str(data)
    else:
        from domaintune.config import load_config
        from domaintune.data import prepare_data

        try:
            splits = prepare_data(load_config(predictor.run_dir / "config.yaml"))
        except (DataError, FileNotFoundError, OSError) as e:
            raise FileNotFoundError(f"{predictor.run_dir}: cannot read the run's data to check the export ({e}); "
                                    f"pass --data FILE (a labelled file) or --no-check") from e
        name, examples = ("test", splits.test) if splits.test else ("dev", splits.dev)
    if not examples:
        raise FileNotFoundError(f"{predictor.run_dir}: the run has no test or dev data to check the export on; "
                                f"pass --data FILE")
    return name, list(examples)[:max_examples] if max_examples else list(examples)


def _flat_argmax(logits: list[torch.Tensor]) -> np.ndarray:
    return np.concatenate([l.argmax(-1).reshape(-1).numpy() for l in logits])


def score_backend(predictor, model, examples, feats, ctx: EvalContext, metric: str) -> dict:
    """Metric, logits, whole-set texts/s and single-request latency of one backend."""
    from domaintune.training.loop import predict_logits

    task = predictor.task
    logits = predict_logits(model, feats, task.collate, ctx.pad_id, ctx.batch_size, stack=False)
    metrics = task.evaluate(model, examples, feats, ctx)
    inputs = list(examples)
    t0 = time.perf_counter()
    task.predict(model, inputs, predictor.features(inputs), ctx)  # end to end: tokenise + infer + decode
    seconds = time.perf_counter() - t0
    lat = []
    for e in inputs[:LATENCY_SAMPLES]:
        t = time.perf_counter()
        task.predict(model, [e], predictor.features([e]), ctx)
        lat.append(1000 * (time.perf_counter() - t))
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
    return {"metric": metric, "value": float(metrics[metric]), "metrics": metrics,
            "texts_per_second": round(len(inputs) / seconds, 1), "p50_ms": round(q[49], 2), "p99_ms": round(q[98], 2),
            "_logits": logits}


def drop_points(metric: str, ref: float, new: float) -> float:
    """How much worse `new` is, in points (fractions x 100); lower-is-better metrics as relative %."""
    if metric in LOWER_IS_BETTER:
        return 100.0 * (new - ref) / max(abs(ref), 1e-12)
    return 100.0 * (ref - new)


def check_export(predictor, files: dict[str, Path], data=None, gate: float = 1.0, max_examples: int | None = None,
                 batch_size: int = 32) -> dict:
    """benchmark.json's scoring part: {"eval", "torch", "backends": {"onnx": ..., "onnx-int8": ...}}."""
    from domaintune.export.onnx_model import BACKEND_FILES

    split, examples = eval_examples(predictor, data, max_examples)
    task = predictor.task
    feats = predictor.features(examples, with_targets=True)
    ctx = EvalContext(predictor.tokenizer, predictor.pad_id, batch_size, predictor.max_length, False)
    metric = task.headline[0]
    ref = score_backend(predictor, predictor.model, examples, feats, ctx, metric)
    ref_logits = ref.pop("_logits")
    ref_arg = _flat_argmax(ref_logits)
    per_example = ref_logits[0].dim() == 1 if ref_logits else True
    out = {"eval": {"split": split, "examples": len(examples), "batch_size": batch_size, "metric": metric,
                    "gate_points": gate, "threads": torch.get_num_threads()},
           "torch": ref, "backends": {}}
    names = {v: k for k, v in BACKEND_FILES.items()}
    for fname, path in files.items():
        name = names[Path(fname).name]
        model = OnnxModel(path, config=getattr(predictor.model, "config", None))
        res = score_backend(predictor, model, examples, feats, ctx, metric)
        logits = res.pop("_logits")
        diff = max(float((a - b).abs().max()) for a, b in zip(logits, ref_logits))
        agree = float((_flat_argmax(logits) == ref_arg).mean()) if ref_logits[0].shape[-1] > 1 else None
        drop = drop_points(metric, ref["value"], res["value"])
        res.update({"argmax_agreement": agree, "agreement_unit": "example" if per_example else "token",
                    "max_abs_logit_difference": diff, "drop_points": round(drop, 4),
                    "gate_passed": bool(drop <= gate),
                    "speedup_vs_torch": round(res["texts_per_second"] / ref["texts_per_second"], 2)})
        out["backends"][name] = res
    return out
