"""Run every non-classification task on its shared data set and tabulate the results.

    .venv/bin/python bench/tasks.py                 # train each config in turn (long: ~1-2 h on 2 cores)
    .venv/bin/python bench/tasks.py --only stsb     # one task
    .venv/bin/python bench/tasks.py --from-runs     # tabulate the runs already in runs/ (no training)

For each task the table gives the acceptance metric, the published anchor from
../shared/datasets/README.md, the starting point (the untrained encoder, where
the task defines one), our score and the training wall time, and writes
bench/results/tasks.md and tasks.json. Figures are copied from each run's
metrics.json exactly as measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (config, [(metric key in metrics.json, shown name, published anchor, acceptance threshold)])
TASKS: dict[str, tuple[str, list[tuple[str, str, str, float | None]]]] = {
    "wnut17": ("bench/configs/wnut17.yaml", [
        ("test.f1", "entity F1 (test, strict)", "BERTweet 56.5 (Nguyen et al. 2020)", 0.38)]),
    "resume_ner": ("bench/configs/resume_ner.yaml", [
        ("test.f1", "entity F1 (test, strict)", "FLAT+BERT 95.86 (Li et al. 2020)", 0.92)]),
    "stsb": ("bench/configs/stsb.yaml", [
        ("test.spearman", "Spearman (test)", "BERT-base GLUE test 85.8", 0.84),
        ("test.pearson", "Pearson (test)", "BERT-base-cased GLUE dev 88.64", None)]),
    "afqmc": ("bench/configs/afqmc.yaml", [
        ("test.accuracy", "accuracy (official dev)", "BERT-base 73.70 (CLUE)", 0.68)]),
    "clinc150": ("bench/configs/clinc150.yaml", [
        ("test.in_scope_accuracy", "in-scope accuracy (test)", "BERT-base 96.2 (oos-threshold, Larson et al. 2019)", 0.93),
        ("test.oos_recall", "out-of-scope recall (test)", "BERT-base 52.3 (oos-threshold)", 0.55)]),
    "afqmc_faq": ("bench/configs/afqmc_faq.yaml", [
        ("test.recall_at_1", "FAQ recall@1 (held-out queries)", "none published", None),
        ("test.mrr", "FAQ MRR", "none published", None)]),
}


def get(d: dict | None, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def output_dir(config: Path) -> Path:
    import yaml

    return ROOT / yaml.safe_load(config.read_text(encoding="utf-8")).get("output_dir", "runs/default")


def train(config: Path, log: Path) -> int:
    cmd = [sys.executable, "-m", "domaintune", "train", str(config), "--overwrite"]
    with open(log, "w", encoding="utf-8") as f:
        return subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ)).returncode


def starting_point(metrics: dict, key: str):
    """The best untrained-encoder baseline score for this metric, if the task computed one."""
    _, name = key.split(".", 1)
    values = [b.get(name) for b in (metrics.get("baseline") or {}).values() if isinstance(b.get(name), (int, float))]
    return max(values) if values else None


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", choices=sorted(TASKS), help="run only these tasks (repeatable)")
    ap.add_argument("--from-runs", action="store_true", help="do not train; tabulate existing runs/<name>/metrics.json")
    args = ap.parse_args(argv)
    names = args.only or list(TASKS)
    rows, records = [], {}
    for name in names:
        config_rel, metrics_spec = TASKS[name]
        config = ROOT / config_rel
        if not config.is_file():
            print(f"{name}: {config_rel} missing, skipped", file=sys.stderr)
            continue
        run = output_dir(config)
        if not args.from_runs:
            log = ROOT / "runs" / f"bench-tasks-{name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            print(f"training {name} ({config_rel}), log {log.relative_to(ROOT)}", flush=True)
            rc = train(config, log)
            if rc != 0:
                print(f"{name}: training failed (exit {rc}); see {log}", file=sys.stderr)
        mpath = run / "metrics.json"
        if not mpath.is_file():
            print(f"{name}: no {mpath.relative_to(ROOT)}", file=sys.stderr)
            continue
        m = json.loads(mpath.read_text(encoding="utf-8"))
        records[name] = {"config": config_rel, "model": m.get("model"), "seconds": get(m, "train.seconds"),
                         "samples_per_second": get(m, "train.samples_per_second"), "metrics": {}}
        for key, shown, anchor, threshold in metrics_spec:
            ours = get(m, key)
            records[name]["metrics"][key] = ours
            start = starting_point(m, key)
            ok = "–" if threshold is None or ours is None else ("yes" if ours >= threshold else "**no**")
            if ours is not None and start is not None and ours <= start:
                ok += " (not above the starting point)"
            rows.append(f"| {name} | {m.get('model')} | {shown} | {anchor} | {pct(start)} | "
                        f"**{pct(ours)}** | {pct(threshold) if threshold is not None else '–'} | {ok} | "
                        f"{get(m, 'train.seconds') or 0:.0f} |")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    md = ["# Benchmark: domaintune tasks on the shared data sets", "",
          f"Date (UTC): {stamp}  ", f"Command: `.venv/bin/python bench/tasks.py {' '.join(argv or sys.argv[1:])}`".rstrip(), "",
          "| task | model | metric | published anchor | starting point | domaintune | acceptance | met | train s |",
          "|---|---|---|---|---:|---:|---:|---|---:|", *rows, "",
          "Starting point = the pretrained encoder without fine-tuning (frozen features + a fitted linear/ridge head, "
          "or plain cosine similarity for retrieval), scored on the same test split.", ""]
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    for path, text in ((out / "tasks.md", "\n".join(md)), (out / "tasks.json", json.dumps(records, indent=2))):
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
