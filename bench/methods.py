#!/usr/bin/env python
"""Benchmark: adaptation methods x labels per class x seeds, with the `setfit` library as the few-shot peer.

    .venv/bin/python bench/methods.py                       # the full grid (many CPU hours on 2 cores)
    .venv/bin/python bench/methods.py --datasets banking77 --k-shot 8 --methods full,fewshot,zeroshot --seeds 3

For each data set (banking77 with minilm-l6, chnsenticorp with m3e-small: the
models in bench/configs/<ds>.yaml) it runs `domaintune.compare.compare` - one
`domaintune train` subprocess per (method, k, seed), resumable - and, for the
peer, `bench/fewshot_peer.py:run_setfit` (SetFit 1.2 defaults, own subprocess)
on the *same* body model and the *same* sampled examples: `examples_for` reads
the data through `prepare_data` with `data.k_shot=K, train.seed=S`, exactly what
the domaintune cell trains on, and the same test split.

Writes bench/results/methods.md and methods.json (merged with earlier runs of
other subsets, so a subset run never erases measured rows) and a plot per data
set in the run directory. Ratios are vs setfit at the same data set and k:
accuracy difference in points, train seconds (each side's fit only: domaintune
`train.seconds`, setfit `trainer.train()`), wall seconds (process start to exit
for both) and peak RSS (each process's own ru_maxrss).

`zeroshot_lm` in --methods is `method: zeroshot` with `zeroshot.variant=lm`
(the embedding variant is plain `zeroshot`); the LM must be prepared once with
`domaintune models prepare smollm2-135m` (English) / `gemma3-270m` (multilingual).
`--peer-all` also runs setfit on all labels (400k+ pairs on banking77: hours).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
if not (REPO / "src" / "domaintune").is_dir():  # pragma: no cover
    raise SystemExit("run from a domaintune checkout")
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DATASETS = {"banking77": "bench/configs/banking77.yaml", "chnsenticorp": "bench/configs/chnsenticorp.yaml"}
RESULTS = REPO / "bench" / "results"
# Bench-only method aliases: label -> (method, extra overrides).
ALIASES = {"zeroshot_lm": ("zeroshot", ["zeroshot.variant=lm"])}


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


def setfit_cell(config: str, k: int | None, seed: int, overrides: list[str], out_dir: Path) -> dict:
    """One setfit peer run on the examples domaintune's cell (same k, seed) trains on; cached as JSON."""
    from fewshot_peer import examples_for, run_setfit

    name = f"setfit_k{'all' if k is None else k}_s{seed}"
    path = out_dir / f"{name}.json"
    base = {"cell": name, "method": "setfit", "k": k, "seed": seed, "trains": True}
    if path.exists():
        return {**json.loads(path.read_text(encoding="utf-8")), "skipped": True}
    model_dir, train, test = examples_for(config, k, seed, overrides)
    labels = sorted({e.label for e in train} | {e.label for e in test})
    print(f"[methods] {name}: {len(train)} train / {len(test)} test examples ...", flush=True)
    t0 = time.perf_counter()
    try:
        r = run_setfit(model_dir, [e.text for e in train], [e.label for e in train], [e.text for e in test],
                       [e.label for e in test], seed)
    except RuntimeError as e:
        return {**base, "error": str(e)[-500:]}
    rec = {**base, "metric": "accuracy", "value": r["accuracy"], "train_examples": len(train),
           "n_labels": len(labels), "wall_seconds": round(time.perf_counter() - t0, 2),
           "train_seconds": r["seconds"], "peak_rss_mb": r["peak_rss_mb"], "setfit": r}
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=2), encoding="utf-8")
    return rec


def run_dataset(ds: str, methods: list[str], ks: list, seeds: list[int], overrides: list[str], runs: Path,
                peer_all: bool, sink) -> None:
    """Run the data set's cells in the order of `methods` (`setfit` is the peer); `sink(record)` after each."""
    from domaintune.compare import compare

    config = DATASETS[ds]
    # Seed-major order: every method's first seed before any second seed, so a run cut short still compares.
    for seed in seeds:
        for label in methods:
            if label == "setfit":
                for k in ks:
                    if k is None and not peer_all:
                        if seed == seeds[0]:
                            print(f"[methods] {ds}: setfit on all labels skipped (--peer-all runs it)", flush=True)
                        continue
                    sink(setfit_cell(config, k, seed, overrides, runs / ds / "setfit"))
                continue
            method, extra = ALIASES.get(label, (label, []))
            rename = lambda rec, label=label, method=method: {**rec, "method": label,  # noqa: E731
                                                              "cell": rec["cell"].replace(method, label, 1)}
            compare(config, [method], ks, [seed], overrides=[*overrides, *extra], output=runs / ds / label,
                    on_cell=lambda rec, rename=rename: sink(rename(rec)))


def with_ratios(rows: list[dict]) -> list[dict]:
    peer = {r["k"]: r for r in rows if r["method"] == "setfit" and r["mean"] is not None}
    out = []
    for r in rows:
        p = peer.get(r["k"]) if r["trains"] else None
        if p is not None and r["method"] != "setfit" and r["mean"] is not None:
            r = {**r, "vs_setfit": {
                "accuracy_pt": round(100 * (r["mean"] - p["mean"]), 2),
                "train_seconds_ratio": round(r["train_seconds"] / p["train_seconds"], 3) if p["train_seconds"] else None,
                "wall_seconds_ratio": round(r["wall_seconds"] / p["wall_seconds"], 3) if p["wall_seconds"] else None,
                "peak_rss_ratio": round(r["peak_rss_mb"] / p["peak_rss_mb"], 3) if p["peak_rss_mb"] else None}}
        out.append(r)
    return out


def table(ds: str, model: str, rows: list[dict]) -> list[str]:
    f = lambda v, d=1: "" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [f"### {ds} ({model})", "",
             "| method | labels/class | seeds | test accuracy % | train s | wall s | peak RSS MB "
             "| Δ acc vs setfit (pt) | train s / setfit | wall s / setfit | RSS / setfit |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(["full", "lora", "fewshot", "setfit", "zeroshot", "zeroshot_lm"])}
    for r in sorted(rows, key=lambda r: (order.get(r["method"], 99), 1e9 if r["k"] is None else r["k"])):
        v = r.get("vs_setfit") or {}
        k = "none (no training)" if not r["trains"] else ("all" if r["k"] is None else str(r["k"]))
        acc = "failed" if r["mean"] is None else f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}"
        n = f"{r['n']}" + (f" ({r['failed']} failed)" if r["failed"] else "")
        lines.append(f"| {r['method']} | {k} | {n} | {acc} | {f(r['train_seconds'])} | {f(r['wall_seconds'])} | "
                     f"{f(r['peak_rss_mb'], 0)} | {f(v.get('accuracy_pt'), 2)} | {f(v.get('train_seconds_ratio'), 2)} | "
                     f"{f(v.get('wall_seconds_ratio'), 2)} | {f(v.get('peak_rss_ratio'), 2)} |")
    return lines + [""]


def write_results(all_records: dict[str, list[dict]], meta: dict, runs: Path) -> None:
    from domaintune.compare import accuracy_plot, aggregate
    from domaintune.config import load_config

    path = RESULTS / "methods.json"
    old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    merged: dict[str, dict[str, dict]] = {ds: {c["cell"]: c for c in d.get("cells", [])}
                                          for ds, d in (old.get("datasets") or {}).items()}
    for ds, recs in all_records.items():
        for rec in recs:
            if "error" not in rec or rec["cell"] not in merged.get(ds, {}):
                merged.setdefault(ds, {})[rec["cell"]] = {k: v for k, v in rec.items() if k != "skipped"}
    doc = {"generated": meta, "datasets": {}}
    md = ["# Adaptation methods benchmark (bench/methods.py)", "",
          "Test accuracy mean ± sample std over seeds (42, 43, 44, ...); k labelled examples per class sampled "
          "with the seed (`data.k_shot`), the same examples for every method and for the `setfit` peer. "
          "train s = the method's fit only; wall s = process start to exit; peak RSS = that process's ru_maxrss. "
          "Ratios are against setfit at the same k.", "",
          f"Last run: {meta['finished']} UTC on {meta['machine']}; load average {meta['load_before']} before, "
          f"{meta['load_after']} after (the 2 cores were shared with other jobs, so seconds are inflated and "
          "noisy; ratios from runs in the same session are the fairer reading). Command: "
          f"`{meta['command']}`", ""]
    for ds, cells in merged.items():
        recs = list(cells.values())
        rows = with_ratios(aggregate(recs))
        model = load_config(DATASETS[ds]).model if ds in DATASETS else "?"
        doc["datasets"][ds] = {"config": DATASETS.get(ds), "model": model, "rows": rows, "cells": recs}
        md += table(ds, model, rows)
        try:
            png = accuracy_plot(rows, runs / ds / "methods.png", f"{ds} ({model}): test accuracy vs labels per class")
            md += [f"Plot: `{os.path.relpath(png, REPO)}` (not committed).", ""]
        except Exception as e:  # noqa: BLE001
            print(f"[methods] plot failed: {e}", flush=True)
    not_run = meta.get("not_run")
    if not_run:
        md += ["Not run yet (commands to complete the grid):", "", *[f"    {c}" for c in not_run], ""]
    doc["not_run"] = not_run
    RESULTS.mkdir(parents=True, exist_ok=True)
    from domaintune.training.checkpoint import atomic_write_json, atomic_write_text

    atomic_write_json(path, doc)
    atomic_write_text(RESULTS / "methods.md", "\n".join(md) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="banking77,chnsenticorp")
    ap.add_argument("--methods", default="full,lora,fewshot,setfit,zeroshot",
                    help="domaintune methods, zeroshot_lm, and setfit (the peer library)")
    ap.add_argument("--k-shot", default="8,64,all")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--peer-all", action="store_true", help="also run setfit on all labels (very slow)")
    ap.add_argument("--set", action="append", default=[], help="config override for every run (as domaintune train)")
    ap.add_argument("--runs", default="runs/bench_methods", help="run directories (resumable cache)")
    ap.add_argument("--not-run", action="append", default=[], help="a command to list as not run in methods.md")
    a = ap.parse_args()
    os.chdir(REPO)  # bench configs use data paths relative to the repo root

    from domaintune.compare import parse_k_shot, parse_methods, seed_list

    datasets = [d.strip() for d in a.datasets.split(",") if d.strip()]
    bad = [d for d in datasets if d not in DATASETS]
    if bad:
        raise SystemExit(f"unknown data set(s) {bad}: choose from {sorted(DATASETS)}")
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    parse_methods([ALIASES.get(m, (m,))[0] for m in methods if m != "setfit"] or ["full"])  # unknown names
    ks, seeds = parse_k_shot(a.k_shot), seed_list(a.seeds)
    meta = {"started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"), "load_before": _load(),
            "machine": f"{platform.machine()} {os.cpu_count()} logical cores",
            "command": "python bench/methods.py " + " ".join(sys.argv[1:]), "not_run": a.not_run}
    runs = Path(a.runs)
    records: dict[str, list[dict]] = {}

    def sink(ds: str, rec: dict) -> None:  # results are rewritten after every run: a crash keeps what was measured
        records.setdefault(ds, []).append(rec)
        meta.update(finished=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"), load_after=_load())
        write_results(records, meta, runs)

    for ds in datasets:
        run_dataset(ds, methods, ks, seeds, a.set, runs, a.peer_all, lambda rec, ds=ds: sink(ds, rec))
    print((RESULTS / "methods.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
