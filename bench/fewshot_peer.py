#!/usr/bin/env python
"""The few-shot peer: the `setfit` library (1.2) on the same body, examples and seed as `method: fewshot`.

`run_setfit(model_dir, train_texts, train_labels, test_texts, test_labels, seed)`
trains `SetFitModel.from_pretrained(model_dir)` with SetFit's default recipe
(num_iterations=20, batch_size=16, num_epochs=1, body lr 2e-5, CosineSimilarityLoss,
LogisticRegression head) in a child process, so `peak_rss_mb` is that run's own
high-water mark (ru_maxrss of the child), not the benchmark driver's. Only
`trainer.train()` (pair generation + contrastive body + head fit) is timed as
`seconds`, like domaintune's `train.seconds`; `predict_seconds` is reported apart.
`cpu_seconds` (process CPU time of that call, all threads) is the fairer cost on a
shared machine, where wall time depends on what else runs.
Both sides use the same number of torch threads (one per physical core).

Standalone (from the repo root): the training examples come from
`domaintune.data.prepare_data` with the same overrides as the domaintune run,
so they are exactly the examples `--set data.k_shot=8 --set train.seed=S` trains on:

    .venv/bin/python bench/fewshot_peer.py bench/configs/banking77.yaml --k-shot 8 --seed 42 \
        --output runs/setfit8_42.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("domaintune") is None:
    sys.path.insert(0, str(REPO / "src"))


def _child(spec_path: str) -> None:
    """Runs inside the subprocess: train, predict, write the result JSON next to the spec."""
    import random
    import resource
    import time

    import numpy as np
    import torch

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    torch.set_num_threads(spec["threads"])
    random.seed(spec["seed"]), np.random.seed(spec["seed"]), torch.manual_seed(spec["seed"])
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    t0 = time.perf_counter()
    model = SetFitModel.from_pretrained(spec["model_dir"])
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, batch_size=spec["batch_size"], num_iterations=spec["num_iterations"],
                                 num_epochs=spec["num_epochs"], seed=spec["seed"], report_to="none",
                                 save_strategy="no", show_progress_bar=False)
        train = Dataset.from_dict({"text": spec["train_texts"], "label": spec["train_labels"]})
        trainer = Trainer(model=model, args=args, train_dataset=train)
        if spec.get("progress"):  # one line per 10 steps: how far a run got if it is stopped
            from transformers import TrainerCallback

            class Progress(TrainerCallback):
                def on_step_end(self, a, state, control, **kw):
                    if state.global_step % 10 == 0:
                        with open(spec["progress"], "a", encoding="utf-8") as f:
                            f.write(json.dumps({"step": state.global_step, "max_steps": state.max_steps,
                                                "seconds": round(time.perf_counter() - t0, 1)}) + "\n")

            trainer.add_callback(Progress())
        t1, c1 = time.perf_counter(), time.process_time()
        trainer.train()
        train_seconds, cpu_seconds = time.perf_counter() - t1, time.process_time() - c1
    t2 = time.perf_counter()
    preds = model.predict(spec["test_texts"], batch_size=64, as_numpy=True)
    probs = model.predict_proba(spec["test_texts"], batch_size=64, as_numpy=True)
    predict_seconds = time.perf_counter() - t2
    gold = np.asarray(spec["test_labels"])
    preds = np.asarray(preds)
    classes = np.asarray(model.model_head.classes_)
    result = {"accuracy": float((preds == gold).mean()), "seconds": round(train_seconds, 2),
              "cpu_seconds": round(cpu_seconds, 2),
              "predict_seconds": round(predict_seconds, 2), "total_seconds": round(time.perf_counter() - t0, 2),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
              # setfit #462: does argmax of predict_proba agree with predict? (reported, not fixed, here)
              "predict_proba_argmax_agrees": float((classes[np.asarray(probs).argmax(-1)] == preds).mean()),
              "train_examples": len(spec["train_texts"]), "test_examples": len(spec["test_texts"]),
              "threads": spec["threads"], "num_iterations": spec["num_iterations"],
              "batch_size": spec["batch_size"], "num_epochs": spec["num_epochs"], "seed": spec["seed"]}
    Path(spec["result"]).write_text(json.dumps(result, indent=2), encoding="utf-8")


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def run_setfit(model_dir, train_texts, train_labels, test_texts, test_labels, seed: int, num_iterations: int = 20,
               batch_size: int = 16, num_epochs: int = 1, threads: int | None = None, progress: str | None = None) -> dict:
    """SetFit with its defaults on these examples, in a child process; -> dict(accuracy, seconds, peak_rss_mb, ...).

    Labels may be strings or ints (they are mapped to ids by sorted label name,
    as domaintune does)."""
    names = sorted({str(l) for l in train_labels} | {str(l) for l in test_labels})
    ids = {n: i for i, n in enumerate(names)}
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"model_dir": str(model_dir), "train_texts": list(train_texts),
                "train_labels": [ids[str(l)] for l in train_labels], "test_texts": list(test_texts),
                "test_labels": [ids[str(l)] for l in test_labels], "seed": int(seed),
                "num_iterations": num_iterations, "batch_size": batch_size, "num_epochs": num_epochs,
                "threads": threads or physical_cores(), "result": str(Path(tmp) / "result.json"),
                "progress": progress}
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"setfit child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads(Path(spec["result"]).read_text(encoding="utf-8"))


def examples_for(config: str, k_shot: int | None, seed: int, overrides: list[str] = ()):
    """(model_dir, train, test) exactly as `domaintune train CONFIG --set data.k_shot=K --set train.seed=S` sees them."""
    from domaintune.config import load_config
    from domaintune.data import prepare_data
    from domaintune.models import resolve_model

    sets = [f"train.seed={seed}", *overrides] + ([f"data.k_shot={k_shot}"] if k_shot else [])
    cfg = load_config(config, sets)
    splits = prepare_data(cfg)
    return resolve_model(cfg.model), splits.train, splits.test


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config")
    ap.add_argument("--k-shot", type=int, default=8)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--set", action="append", default=[], help="config override, as for domaintune train")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: one per physical core)")
    ap.add_argument("--output", required=True)
    a = ap.parse_args()
    model_dir, train, test = examples_for(a.config, a.k_shot, a.seed, a.set)
    result = run_setfit(model_dir, [e.text for e in train], [e.label for e in train], [e.text for e in test],
                        [e.label for e in test], a.seed, threads=a.threads, progress=a.output + ".progress.jsonl")
    result.update(config=a.config, k_shot=a.k_shot)
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    Path(a.output).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
