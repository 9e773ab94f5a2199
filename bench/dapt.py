#!/usr/bin/env python
"""Benchmark: domain-adaptive pre-training (DAPT) + fine-tuning vs fine-tuning alone, tnews, 16 labels per class.

    nohup .venv/bin/python bench/dapt.py > /tmp/dapt_bench.log 2>&1 &
    .venv/bin/python bench/dapt.py --seeds 42 --dapt-steps 20 --epochs 1   # quick harness check

1. For each seed: sample 16 titles per class from tnews train.tsv for training and another
   16 per class (disjoint) as dev for checkpoint selection; written to --work (never the repo).
2. The remaining train titles (not in any seed's sample) are the unlabelled domain text.
3. `domaintune pretrain bench/configs/tnews_dapt.yaml` once (m3e-small, bounded by max_steps).
4. Per seed, `domaintune train bench/configs/tnews_dapt_finetune.yaml` from the base model and from
   the DAPT folder, on the same sample; test = a seeded sample of tnews dev.tsv (default 1,000 of its
   10,000 titles, `--test-sample 0` for all; tnews' test labels are hidden, dev is what papers report).
5. bench/results/dapt.json and dapt.md: mean ± std test accuracy / macro-F1 per arm, per-seed rows,
   wall seconds. Results are rewritten after every run, so an interrupted benchmark keeps what it measured.

Everything runs in this one process through the library (`domaintune.pretrain.pretrain`,
`domaintune.run.train_run`); the machine may be shared, so wall times are upper bounds.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
DATA = REPO.parent / "shared" / "datasets" / "tnews"
RESULTS = REPO / "bench" / "results"


def read_tsv(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return [(r[0], r[1]) for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) >= 2 and r[0].strip()]


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    """Written to a temp file and renamed: parallel processes (one per arm or seed) may be reading it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n")
        w.writerows(rows)
    os.replace(tmp, path)
    return path


def sample(rows: list[tuple[str, str]], k: int, seed: int) -> tuple[list[int], list[int]]:
    """k train + k dev row indices per class, disjoint, seeded."""
    by: dict[str, list[int]] = {}
    for i, (_t, lab) in enumerate(rows):
        by.setdefault(lab, []).append(i)
    rng = random.Random(seed)
    train, dev = [], []
    for lab in sorted(by):
        idx = rng.sample(by[lab], 2 * k)
        train += idx[:k]
        dev += idx[k:]
    return train, dev


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.mean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def write_results(res: dict) -> None:
    from domaintune.training.checkpoint import atomic_write_json, atomic_write_text

    RESULTS.mkdir(parents=True, exist_ok=True)
    for arm in ("base", "dapt"):
        runs = [r for r in res["runs"] if r["arm"] == arm]
        res["summary"][arm] = {"accuracy": mean_std([r["test_accuracy"] for r in runs]),
                               "macro_f1": mean_std([r["test_macro_f1"] for r in runs]),
                               "seconds": mean_std([r["wall_seconds"] for r in runs])}
    atomic_write_json(RESULTS / "dapt.json", res)
    atomic_write_text(RESULTS / "dapt.md", render(res))


def render(res: dict) -> str:
    pct = lambda s: "–" if s["mean"] is None else f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"  # noqa: E731
    d = res.get("dapt") or {}
    lines = ["# Domain-adaptive pre-training on tnews (16 labels per class)", "",
             f"Command: `{res['command']}`  ", f"Written {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; machine: {res['machine']}.", "",
             f"- Labelled: {res['k']} titles per class x 15 classes (seeded per seed), dev another {res['k']} per class "
             f"(disjoint); test: a seeded sample of {res.get('test_examples', '?')} tnews dev.tsv titles (all 10,000 "
             "cost too much CPU on the shared machine; the same sample for every run).",
             f"- DAPT: m3e-small, masked-LM on {d.get('texts', '?')} unlabelled train titles (all titles not sampled for any "
             f"seed), {d.get('global_step', '?')} steps x {res['dapt_batch']} titles "
             f"({d.get('epochs_completed', '?')} epochs), {d.get('seconds', '?')} s wall; held-out masked-LM loss "
             f"{d.get('loss_before', float('nan')):.3f} -> {d.get('loss_after', float('nan')):.3f}, masked-token accuracy "
             f"{100 * d.get('acc_before', float('nan')):.2f} % -> {100 * d.get('acc_after', float('nan')):.2f} %.",
             f"- Fine-tuning: bench/configs/tnews_dapt_finetune.yaml (full fine-tuning, {res['epochs']} epochs, best dev "
             "checkpoint), identical for both arms.", "",
             "| arm | seeds | test accuracy % (mean ± std) | test macro-F1 % | fine-tune wall s (mean) |", "|---|---|---|---|---|"]
    for arm, name in (("base", "fine-tune alone (m3e-small)"), ("dapt", "DAPT + fine-tune")):
        s = res["summary"].get(arm) or {}
        if not s:
            continue
        secs = s["seconds"]["mean"]
        lines.append(f"| {name} | {s['accuracy']['n']} | {pct(s['accuracy'])} | {pct(s['macro_f1'])} | "
                     f"{'–' if secs is None else f'{secs:.0f}'} |")
    lines += ["", "Per seed:", "", "| seed | arm | test accuracy % | test macro-F1 % | best step | wall s |", "|---|---|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(f"| {r['seed']} | {r['arm']} | {100 * r['test_accuracy']:.2f} | {100 * r['test_macro_f1']:.2f} | "
                     f"{r['best_step']} | {r['wall_seconds']:.0f} |")
    base, dapt = res["summary"].get("base", {}), res["summary"].get("dapt", {})
    if base and dapt and base["accuracy"]["mean"] is not None and dapt["accuracy"]["mean"] is not None:
        delta = 100 * (dapt["accuracy"]["mean"] - base["accuracy"]["mean"])
        lines += ["", f"DAPT - base: {delta:+.2f} accuracy points (mean over {min(base['accuracy']['n'], dapt['accuracy']['n'])} "
                      "seeds; reported whichever way it falls)."]
    full = [r for r in res["runs"] if r.get("full_test_accuracy") is not None]
    if full:
        lines += ["", f"Same models re-scored on all {full[0]['full_test_examples']} tnews dev.tsv titles "
                      "(`domaintune evaluate RUN --data ../shared/datasets/tnews/dev.tsv`):", "",
                  "| arm | seeds | accuracy % (mean ± std) | macro-F1 % | per seed (accuracy %) |", "|---|---|---|---|---|"]
        for arm in ("base", "dapt"):
            rs = [r for r in full if r["arm"] == arm]
            if rs:
                acc, f1 = mean_std([r["full_test_accuracy"] for r in rs]), mean_std([r["full_test_macro_f1"] for r in rs])
                lines.append(f"| {arm} | {len(rs)} | {pct(acc)} | {pct(f1)} | "
                             + ", ".join(f"{r['seed']}: {100 * r['full_test_accuracy']:.2f}" for r in rs) + " |")
        if len(full) < len(res["runs"]):
            lines += ["", f"Only {len(full)} of {len(res['runs'])} runs were re-scored on all titles before the deadline."]
    lines += ["", "Wall times are from a shared 2-core CPU with other jobs running (the DAPT's 200 steps took 70 min while "
                  "the machine was oversubscribed; its last 20 steps took 1 min once it was free), so they are upper bounds "
                  "and vary by 10x between identical runs.", ""]
    return "\n".join(lines)


def collect(res: dict, work: Path) -> dict:
    """Merge what every process of this benchmark has finished so far (runs are files under WORK/done)."""
    res["runs"] = sorted((json.loads(p.read_text()) for p in (work / "done").glob("*.json")),
                         key=lambda r: (r["seed"], r["arm"]))
    for r in res["runs"]:  # optional: the same model scored on all of tnews dev (WORK/full_test/ARM-SEED.json)
        f = work / "full_test" / f"{r['arm']}-{r['seed']}.json"
        if f.is_file():
            m = json.loads(f.read_text())
            r.update(full_test_accuracy=m.get("accuracy"), full_test_macro_f1=m.get("macro_f1"), full_test_examples=m.get("n"))
    pj = work / "dapt" / "pretrain.json"
    if pj.is_file():
        m = json.loads(pj.read_text())
        b, a = m.get("held_out_before") or {}, m.get("held_out_after") or {}
        res["dapt"] = {"texts": m["texts"], "global_step": m["global_step"], "epochs_completed": m["epochs_completed"],
                       "seconds": m["train"]["seconds"], "loss_before": b.get("mlm_loss", float("nan")),
                       "loss_after": a.get("mlm_loss", float("nan")), "acc_before": b.get("mlm_accuracy", float("nan")),
                       "acc_after": a.get("mlm_accuracy", float("nan")), "model_dir": m["model_dir"]}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--arms", nargs="+", default=["base", "dapt"], choices=["base", "dapt"],
                    help="which arms this process runs (two processes may share WORK: base and dapt)")
    ap.add_argument("--k", type=int, default=16, help="labelled titles per class")
    ap.add_argument("--test-sample", type=int, default=1000,
                    help="score on a seeded sample of this many tnews dev titles (0: all 10,000)")
    ap.add_argument("--dapt-steps", type=int, default=None, help="override train.max_steps of the DAPT config")
    ap.add_argument("--epochs", type=float, default=None, help="override fine-tuning epochs")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dapt_bench"), help="scratch directory (data samples, runs)")
    ap.add_argument("--reuse-dapt", action="store_true", help="reuse WORK/dapt/model if it exists")
    ap.add_argument("--report-only", action="store_true", help="only merge the finished runs in WORK into bench/results")
    ap.add_argument("--command-note", default=None, help="how the benchmark was invoked (shown in the report)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    import platform

    from domaintune.config import load_config
    from domaintune.pretrain import pretrain
    from domaintune.run import train_run

    os.chdir(REPO)  # config paths are relative to the repo root
    work = args.work
    (work / "done").mkdir(parents=True, exist_ok=True)
    rows = read_tsv(DATA / "train.tsv")
    samples = {s: sample(rows, args.k, s) for s in (42, 43, 44, *args.seeds)}  # DAPT text excludes every seed's sample
    used = {i for tr, dv in samples.values() for i in tr + dv}
    unlabelled = work / "unlabelled.tsv"
    write_tsv(unlabelled, [(t, "_") for i, (t, _l) in enumerate(rows) if i not in used])
    test_rows = read_tsv(DATA / "dev.tsv")
    if args.test_sample and args.test_sample < len(test_rows):
        test_rows = random.Random(0).sample(test_rows, args.test_sample)
    test_file = write_tsv(work / "test.tsv", test_rows)

    ft_cfg = load_config(REPO / "bench/configs/tnews_dapt_finetune.yaml")
    dcfg = load_config(REPO / "bench/configs/tnews_dapt.yaml",
                       [f"pretrain.text_file={unlabelled}"] + ([f"train.max_steps={args.dapt_steps}"] if args.dapt_steps else []))
    res = {"command": "python bench/dapt.py " + " ".join(sys.argv[1:]), "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs (shared)",
           "k": args.k, "seeds": args.seeds, "epochs": args.epochs or ft_cfg.train.epochs, "dapt_batch": dcfg.train.batch_size,
           "test_examples": len(test_rows), "unlabelled_texts": len(rows) - len(used), "dapt": {}, "runs": [], "summary": {}}

    if args.command_note:
        res["command"] = args.command_note
    if args.report_only:
        write_results(collect(res, work))
        print(render(collect(res, work)))
        return
    dapt_dir = work / "dapt"
    if "dapt" in args.arms and not (args.reuse_dapt and (dapt_dir / "model" / "config.json").is_file()):
        pretrain(dcfg, dapt_dir, overwrite=True)
    write_results(collect(res, work))

    for seed in args.seeds:
        tr, dv = samples[seed]
        train_file = write_tsv(work / f"seed{seed}" / "train.tsv", [rows[i] for i in tr])
        dev_file = write_tsv(work / f"seed{seed}" / "dev.tsv", [rows[i] for i in dv])
        for arm in args.arms:
            model = "m3e-small" if arm == "base" else str(dapt_dir / "model")
            sets = [f"model={model}", f"data.train={train_file}", f"data.dev={dev_file}", f"data.test={test_file}",
                    f"train.seed={seed}", f"output_dir={work / f'{arm}-{seed}'}"] + \
                   ([f"train.epochs={args.epochs}"] if args.epochs else [])
            cfg = load_config(REPO / "bench/configs/tnews_dapt_finetune.yaml", sets)
            t0 = time.perf_counter()
            metrics = train_run(cfg, overwrite=True)
            run = {"seed": seed, "arm": arm, "model": model, "test_accuracy": metrics["test"]["accuracy"],
                   "test_macro_f1": metrics["test"]["macro_f1"], "dev_macro_f1": metrics["dev"].get("macro_f1"),
                   "best_step": metrics["train"]["best_step"], "train_seconds": metrics["train"]["seconds"],
                   "wall_seconds": round(time.perf_counter() - t0, 1)}
            (work / "done" / f"{arm}-{seed}.json").write_text(json.dumps(run))
            logging.info("seed %d %s: test accuracy %.4f", seed, arm, metrics["test"]["accuracy"])
            write_results(collect(res, work))
    print(render(collect(res, work)))


if __name__ == "__main__":
    main()
