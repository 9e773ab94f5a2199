#!/usr/bin/env python
"""Benchmark: zero-shot, embedding vs LM-scoring variants side by side, against the majority class.

    .venv/bin/domaintune models prepare smollm2-135m && .venv/bin/domaintune models prepare gemma3-270m
    .venv/bin/python bench/zeroshot.py                          # all four cells
    .venv/bin/python bench/zeroshot.py --only chnsenticorp_lm --lm-sample 200

Cells: banking77 (77 intents, English) with minilm-l6 embeddings and with
smollm2-135m label scoring; chnsenticorp (2 classes, Chinese) with m3e-small
embeddings and gemma3-270m scoring; configs bench/configs/<ds>_zeroshot.yaml.

The LM cells score 77 (or 2) continuations per text with a 135M/268M LM,
which on a 2-core CPU is far slower than an encoder pass, so they run on a
seeded random sample of the test set (`--lm-sample`, 0 = all), written to a
temporary folder (the data never enters the repo), with a 10-row dev sampled from
train (dev scores are not meaningful there) and without the frozen-encoder baseline. The majority class is always taken from
train and scored on exactly the test rows the cell used. Wall seconds are the
whole `train_run` (model load, label encoding, scoring dev+test, saving).

Writes bench/results/zeroshot.json (merged with earlier cells) and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "zeroshot.json"

CELLS = {
    "banking77_embedding": ("banking77", []),
    # label names, not the sentence descriptions: 77 x ~3 continuation tokens per text instead of 77 x ~9
    "banking77_lm": ("banking77", ["zeroshot.variant=lm", "zeroshot.lm=smollm2-135m", "labels.descriptions={}"]),
    "chnsenticorp_embedding": ("chnsenticorp", []),
    "chnsenticorp_lm": ("chnsenticorp", ["zeroshot.variant=lm", "zeroshot.lm=gemma3-270m",
                                         "labels.descriptions.0=很差", "labels.descriptions.1=很好"]),
}


def _sample_test(cfg, n: int, seed: int, out_dir: Path, part: str = "test") -> Path:
    """A seeded random sample of the test (or train) file, same format and header."""
    src = Path(getattr(cfg.data, part))
    delim = "\t" if cfg.data.format == "tsv" else ","
    with open(src, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter=delim))
    header, body = rows[0], rows[1:]
    keep = sorted(random.Random(seed).sample(range(len(body)), min(n, len(body))))
    path = out_dir / f"{part}_sample{n}{src.suffix}"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter=delim)
        w.writerow(header)
        w.writerows(body[i] for i in keep)
    return path


def run_cell(name: str, lm_sample: int, seed: int, out_root: Path) -> dict:
    from domaintune.config import load_config
    from domaintune.run import train_run

    dataset, sets = CELLS[name]
    config = REPO / "bench" / "configs" / f"{dataset}_zeroshot.yaml"
    overrides = [f"output_dir={out_root / name}", *sets]
    tmp = Path(tempfile.mkdtemp(prefix="zs_bench_"))
    sampled = name.endswith("_lm") and lm_sample > 0
    if sampled:
        base = load_config(config, overrides)
        # a 10-row dev from train: the run needs a non-empty dev file, and dev scoring would double the cost
        overrides += [f"data.test={_sample_test(base, lm_sample, seed, tmp)}", "baseline=false",
                      f"data.dev={_sample_test(base, 10, seed, tmp, 'train')}"]
    cfg = load_config(config, overrides)
    t0 = time.perf_counter()
    m = train_run(cfg, overwrite=True)
    wall = time.perf_counter() - t0
    train_labels = [m["labels"].index(e) for e in _labels_of(cfg, "train")]
    test_labels = [m["labels"].index(e) for e in _labels_of(cfg, "test")]
    majority_id = Counter(train_labels).most_common(1)[0][0]
    majority = sum(t == majority_id for t in test_labels) / len(test_labels)
    acc = m["test"]["accuracy"]
    return {"cell": name, "dataset": dataset, "variant": cfg.zeroshot.variant,
            "model": cfg.zeroshot.lm if cfg.zeroshot.variant == "lm" else cfg.model,
            "test_rows": len(test_labels), "test_sample_seed": seed if sampled else None,
            "accuracy": round(acc, 4), "macro_f1": round(m["test"]["macro_f1"], 4),
            "majority_accuracy": round(majority, 4), "points_above_majority": round(100 * (acc - majority), 2),
            "dev_rows": m["data"]["dev_examples"], "wall_seconds": round(wall, 1),
            "texts_scored_per_second": round((len(test_labels) + m["data"]["dev_examples"]) / wall, 2),
            "peak_rss_mb": m["train"]["peak_rss_mb"], "settings": m["method_settings"], "run_dir": cfg.output_dir}


def _labels_of(cfg, part: str) -> list[str]:
    from domaintune.data import prepare_data
    from domaintune.tasks import get_task

    task = get_task(cfg.task)
    task.configure(cfg)
    splits = prepare_data(cfg, task)
    return [e.label for e in getattr(splits, part)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", choices=sorted(CELLS), help="cells to run (default: all)")
    ap.add_argument("--lm-sample", type=int, default=200, help="test rows for the LM cells (0: the full test set)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the test sample")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_zeroshot", help="run directories")
    args = ap.parse_args()
    for name in args.only or list(CELLS):
        row = run_cell(name, args.lm_sample, args.seed, args.out)
        results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}  # re-read: cells may run in parallel
        results[name] = row
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, ensure_ascii=False, indent=2))
        print(json.dumps({k: v for k, v in row.items() if k != "settings"}, ensure_ascii=False), flush=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    print("\n| cell | model | test rows | accuracy | majority | points above | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in results.values():
        print(f"| {r['cell']} | {r['model']} | {r['test_rows']} | {100 * r['accuracy']:.2f} | "
              f"{100 * r['majority_accuracy']:.2f} | {r['points_above_majority']:+.2f} | {r['wall_seconds']} |")


if __name__ == "__main__":
    sys.exit(main())
