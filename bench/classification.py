#!/usr/bin/env python
"""Benchmark: domaintune vs a plain Hugging Face `Trainer` script on one classification data set.

    .venv/bin/python bench/classification.py --dataset banking77
    .venv/bin/python bench/classification.py --dataset chnsenticorp --epochs 1
    .venv/bin/python bench/classification.py --dataset banking77 --skip-ours   # re-run only the peer

Runs, one after the other, (a) `python -m domaintune train bench/configs/<ds>.yaml`
and (b) `bench/peer_hf_trainer.py` on the same config, each in its own process
(so each has its own peak RSS and neither slows the other), then writes
bench/results/<ds>.md and bench/results/<ds>.json and prints the table.

Both sides read the same YAML, so they see the same train/test examples and the
same hyper-parameters. A side that is skipped is taken from its last run's
metrics file if there is one. Run from anywhere; paths resolve from the repo root.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
CONFIGS = BENCH / "configs"
RESULTS = BENCH / "results"
TOLERANCE_PT = 0.3  # accuracy points: "as accurate as the peer" means >= peer - 0.3 pt
BUSY_WARN = 0.2     # cores used by other processes during a run above which timings are flagged


# --------------------------------------------------------------------------- helpers

def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rel(path: str) -> str:
    """A path relative to the repo root when it is inside it (as a user would type it)."""
    try:
        return str(Path(path).absolute().relative_to(REPO))
    except ValueError:
        return path


def get(d: dict | None, dotted: str):
    """metrics['test']['accuracy'] for 'test.accuracy'; also accepts a flat 'test.accuracy' key."""
    if not d:
        return None
    if dotted in d:
        return d[dotted]
    node = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    info = {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "physical_cores": None, "ram_gb": None,
            "os": platform.platform(), "python": platform.python_version()}
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["ram_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:  # noqa: BLE001
        pass
    try:
        flags = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")).split()
        info["bf16_cpu"] = any(f in flags for f in ("avx512_bf16", "amx_bf16"))
    except (OSError, StopIteration):
        info["bf16_cpu"] = None
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def versions(python: str) -> dict:
    """Versions as the subprocesses see them (same interpreter)."""
    code = ("import json, torch, transformers, sklearn; "
            "from importlib.metadata import version\n"
            "try: dt = version('domaintune')\n"
            "except Exception: dt = None\n"
            "print(json.dumps({'torch': torch.__version__, 'transformers': transformers.__version__, "
            "'scikit-learn': sklearn.__version__, 'domaintune': dt}))")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, env=child_env(),
                             cwd=REPO, timeout=300)
        v = json.loads(out.stdout.strip().splitlines()[-1])
    except Exception as e:  # noqa: BLE001
        v = {"error": str(e)}
    try:  # read-only
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src"],
                               capture_output=True, text=True, cwd=REPO, timeout=10)
        v["domaintune_commit"] = (rev.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")) or None
    except Exception:  # noqa: BLE001
        v["domaintune_commit"] = None
    return v


def child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    src = str(REPO / "src")  # works from a checkout that was not `pip install -e`d too
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def cpu_snapshot() -> dict:
    """Machine-wide busy CPU seconds (/proc/stat) and the CPU seconds of this process and its reaped children."""
    busy = None
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"busy": busy, "ours": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, "t": time.perf_counter()}


def other_load(before: dict, after: dict) -> float | None:
    """Average number of cores that OTHER processes kept busy between two snapshots."""
    if before["busy"] is None or after["busy"] is None:
        return None
    wall = max(after["t"] - before["t"], 1e-9)
    other = (after["busy"] - before["busy"]) - (after["ours"] - before["ours"])
    return round(max(other, 0.0) / wall, 2)


def run_logged(cmd: list[str], log_path: Path) -> tuple[int, float, float | None]:
    """Run cmd from the repo root, streaming its output to the console and to log_path.

    Returns (exit code, wall seconds, cores kept busy by other processes meanwhile).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"\n$ {shlex.join(cmd)}\n  (log: {log_path.relative_to(REPO)})", flush=True)
    snap = cpu_snapshot()
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, encoding="utf-8", errors="replace", bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        rc = proc.wait()
    return rc, time.perf_counter() - t0, other_load(snap, cpu_snapshot())


def load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


# --------------------------------------------------------------------------- the two sides

def run_ours(python: str, config: Path, out_dir: str, overrides: list[str], log: Path):
    cmd = [python, "-m", "domaintune", "train", str(config.relative_to(REPO)), "--set", f"output_dir={out_dir}"]
    for o in overrides:
        cmd += ["--set", o]
    cmd.append("--overwrite")
    return (cmd, *run_logged(cmd, log))


def run_peer(python: str, config: Path, out_dir: str, overrides: list[str], log: Path):
    cmd = [python, str((BENCH / "peer_hf_trainer.py").relative_to(REPO)), str(config.relative_to(REPO)),
           "--output", f"{out_dir}/metrics.json", "--set", f"output_dir={out_dir}"]
    for o in overrides:
        cmd += ["--set", o]
    return (cmd, *run_logged(cmd, log))


# --------------------------------------------------------------------------- report

ROWS = [  # (key, label, format, higher is better)
    ("test.accuracy", "test accuracy", "{:.4f}", True),
    ("test.macro_f1", "test macro-F1", "{:.4f}", True),
    ("train.seconds", "train wall s", "{:.1f}", False),
    ("train.samples_per_second", "samples/s", "{:.1f}", True),
    ("train.peak_rss_mb", "peak RSS MB", "{:.0f}", False),
]


def fmt(value, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


def ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


def summarize(dataset: str, ours: dict | None, peer: dict | None) -> dict:
    rows = {}
    for key, _label, _pat, _hib in ROWS:
        a, b = get(ours, key), get(peer, key)
        rows[key] = {"domaintune": a, "hf_trainer": b, "ratio": ratio(a, b)}
    acc_o, acc_p = get(ours, "test.accuracy"), get(peer, "test.accuracy")
    sec_o, sec_p = get(ours, "train.seconds"), get(peer, "train.seconds")
    verdict = {
        "time_ratio": ratio(sec_o, sec_p),
        "accuracy_delta_pt": None if acc_o is None or acc_p is None else round(100 * (acc_o - acc_p), 2),
        "as_accurate": None if acc_o is None or acc_p is None else bool(acc_o >= acc_p - TOLERANCE_PT / 100),
        "tolerance_pt": TOLERANCE_PT,
    }
    return {"dataset": dataset, "rows": rows, "verdict": verdict}


def table(summary: dict) -> str:
    head = "| | " + " | ".join(label for _k, label, _p, _h in ROWS) + " |"
    sep = "|---|" + "---:|" * len(ROWS)
    lines = [head, sep]
    for who, name in (("domaintune", "domaintune"), ("hf_trainer", "HF Trainer")):
        cells = [fmt(summary["rows"][k][who], p) for k, _l, p, _h in ROWS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cells = [fmt(summary["rows"][k]["ratio"], "{:.2f}×") for k, _l, _p, _h in ROWS]
    lines.append("| ratio (ours/theirs) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict_lines(summary: dict, ours: dict | None, peer: dict | None) -> list[str]:
    v = summary["verdict"]
    out = []
    if v["time_ratio"] is not None:
        faster = 1 / v["time_ratio"] if v["time_ratio"] else float("inf")
        speed = f"{faster:.2f}× faster" if faster >= 1 else f"{v['time_ratio']:.2f}× slower"
        out.append(f"- Time to train: domaintune {get(ours, 'train.seconds'):.1f} s vs HF Trainer "
                   f"{get(peer, 'train.seconds'):.1f} s = {v['time_ratio']:.2f}× the peer's time "
                   f"({speed}). domaintune's seconds include its "
                   f"per-epoch dev evaluation; the peer's do not (it evaluates nothing during training).")
    if v["as_accurate"] is not None:
        out.append(f"- Accuracy: domaintune {100 * get(ours, 'test.accuracy'):.2f} vs HF Trainer "
                   f"{100 * get(peer, 'test.accuracy'):.2f} ({v['accuracy_delta_pt']:+.2f} pt); "
                   f"final test accuracy ≥ peer − {TOLERANCE_PT} pt: **{'yes' if v['as_accurate'] else 'NO'}**.")
    return out


def history_lines(ours: dict | None) -> list[str]:
    hist = (ours or {}).get("history") or []
    if not hist:
        return []
    out = ["", "### domaintune dev history", "", "| epoch | elapsed s | dev accuracy | dev macro-F1 |", "|---:|---:|---:|---:|"]
    for h in hist:
        dev = h.get("dev", {})
        out.append(f"| {h.get('epoch', '—')} | {fmt(h.get('elapsed_seconds'), '{:.1f}')} | "
                   f"{fmt(dev.get('accuracy'), '{:.4f}')} | {fmt(dev.get('macro_f1'), '{:.4f}')} |")
    return out


def hyperparameters(config: Path, overrides: list[str]) -> dict:
    try:
        sys.path.insert(0, str(REPO / "src"))
        from domaintune.config import load_config

        cfg = load_config(config, overrides)
        return {"model": cfg.model, **{k: getattr(cfg.train, k) for k in
                ("epochs", "batch_size", "grad_accum", "lr", "max_length", "warmup_ratio", "weight_decay",
                 "max_grad_norm", "seed", "precision", "group_by_length", "max_steps")}}
    except Exception as e:  # noqa: BLE001 - the report must still be written
        return {"error": str(e)}


def markdown(dataset: str, summary: dict, ours, peer, meta: dict) -> str:
    m, v, hp = meta["machine"], meta["versions"], meta["hyperparameters"]
    lines = [f"# Benchmark: {dataset} — domaintune vs Hugging Face Trainer", "",
             f"Date (UTC): {meta['date']}  ", f"Command: `{meta['command']}`  ",
             f"Machine: {m['cpu']}, {m.get('physical_cores')} physical / {m['logical_cores']} logical cores, "
             f"{m.get('ram_gb')} GB RAM, bf16 in CPU: {m.get('bf16_cpu')}, load average at start {m.get('load_average_at_start')}  ",
             f"Versions: python {m['python']}, torch {v.get('torch')}, transformers {v.get('transformers')}, "
             f"scikit-learn {v.get('scikit-learn')}, domaintune {v.get('domaintune')} (commit {v.get('domaintune_commit')})  ",
             "Hyper-parameters (both sides): " + ", ".join(f"{k}={val}" for k, val in hp.items()), "",
             table(summary), "", *verdict_lines(summary, ours, peer)]
    busy = {k: v for k, v in meta.get("other_cores_busy", {}).items() if v is not None}
    if busy:
        lines.append("- Other processes kept " + ", ".join(f"{v:.2f} cores busy during the {k} run" for k, v in busy.items())
                     + f" (of {m['logical_cores']}).")
        if max(busy.values()) > BUSY_WARN:
            lines.append("- **Warning: the machine was not idle; timings are inflated and the ratio is unreliable. "
                         "Re-run on an idle machine before quoting them.**")
    notes = []
    if ours:
        notes.append(f"- domaintune: precision bf16={get(ours, 'train.bf16')}, threads {get(ours, 'train.threads')}, "
                     f"{get(ours, 'data.train_examples')} train / {get(ours, 'data.dev_examples')} dev / "
                     f"{get(ours, 'data.test_examples')} test examples, best step {get(ours, 'train.best_step')} "
                     f"(test scored on the best dev checkpoint), process wall {fmt(meta['process_seconds'].get('domaintune'), '{:.0f}')} s.")
    if peer:
        notes.append(f"- HF Trainer: fp32, threads {get(peer, 'train.threads')}, optimizer {get(peer, 'hyperparameters.optim')}, "
                     f"{get(peer, 'data.train_examples')} train / {get(peer, 'data.test_examples')} test examples "
                     f"(test scored on the final weights; predictions came back in {get(peer, 'test.prediction_order')} order "
                     f"and were scored against the returned label_ids), process wall "
                     f"{fmt(meta['process_seconds'].get('hf_trainer'), '{:.0f}')} s.")
    for side, status in meta["status"].items():
        if status not in ("ok", "reused"):
            notes.append(f"- {side}: {status}")
        elif status == "reused":
            notes.append(f"- {side}: not re-run; numbers reused from its previous metrics file.")
    if notes:
        lines += ["", "Notes:", *notes]
    lines += history_lines(ours)
    lines += ["", "Commands run:", "", *[f"    {c}" for c in meta["commands"]], ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, help="a config name in bench/configs (e.g. banking77, chnsenticorp)")
    ap.add_argument("--skip-peer", action="store_true", help="do not run the HF Trainer script (reuse its last metrics)")
    ap.add_argument("--skip-ours", action="store_true", help="do not run domaintune (reuse its last metrics)")
    ap.add_argument("--epochs", type=float, default=None, help="override train.epochs on both sides")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override applied to BOTH sides, e.g. train.max_steps=20; repeatable")
    ap.add_argument("--with-baseline", action="store_true",
                    help="let domaintune also score its baselines (off by default: not part of the comparison, and "
                         "the frozen-encoder baseline would inflate domaintune's peak RSS)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for both sides (default: this one)")
    args = ap.parse_args(argv)

    config = CONFIGS / f"{args.dataset}.yaml"
    if not config.is_file():
        names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
        ap.error(f"no config {config.relative_to(REPO)}; available: {', '.join(names)}")

    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs:g}")
    ours_dir, peer_dir = f"runs/bench-{args.dataset}-domaintune", f"runs/bench-{args.dataset}-hf"
    logs = REPO / "runs" / "bench-logs"
    command = shlex.join([rel(sys.executable), "bench/classification.py", *(sys.argv[1:] if argv is None else argv)])
    meta = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), "command": command,
            "machine": machine_info(), "versions": versions(args.python),
            "hyperparameters": hyperparameters(config, overrides), "commands": [], "status": {},
            "process_seconds": {}, "other_cores_busy": {}}

    failed = False
    if args.skip_ours:
        meta["status"]["domaintune"] = "reused" if (REPO / ours_dir / "metrics.json").is_file() else "skipped"
    else:
        ours_over = overrides + ([] if args.with_baseline else ["baseline=false"])
        cmd, rc, secs, busy = run_ours(args.python, config, ours_dir, ours_over, logs / f"{args.dataset}-domaintune.log")
        meta["other_cores_busy"]["domaintune"] = busy
        meta["commands"].append(shlex.join([rel(cmd[0]), *cmd[1:]]))
        meta["process_seconds"]["domaintune"] = round(secs, 1)
        meta["status"]["domaintune"] = "ok" if rc == 0 else f"FAILED (exit {rc}; see runs/bench-logs/{args.dataset}-domaintune.log)"
        failed |= rc != 0
    if args.skip_peer:
        meta["status"]["hf_trainer"] = "reused" if (REPO / peer_dir / "metrics.json").is_file() else "skipped"
    else:
        cmd, rc, secs, busy = run_peer(args.python, config, peer_dir, overrides, logs / f"{args.dataset}-hf.log")
        meta["other_cores_busy"]["hf_trainer"] = busy
        meta["commands"].append(shlex.join([rel(cmd[0]), *cmd[1:]]))
        meta["process_seconds"]["hf_trainer"] = round(secs, 1)
        meta["status"]["hf_trainer"] = "ok" if rc == 0 else f"FAILED (exit {rc}; see runs/bench-logs/{args.dataset}-hf.log)"
        failed |= rc != 0

    ours = load_json(REPO / ours_dir / "metrics.json") if meta["status"]["domaintune"] in ("ok", "reused") else None
    peer = load_json(REPO / peer_dir / "metrics.json") if meta["status"]["hf_trainer"] in ("ok", "reused") else None
    summary = summarize(args.dataset, ours, peer)

    md = markdown(args.dataset, summary, ours, peer, meta)
    result = {**summary, "meta": meta,
              "domaintune": {k: v for k, v in (ours or {}).items() if k in ("train", "test", "history", "data", "model")},
              "hf_trainer": {k: v for k, v in (peer or {}).items() if k in ("train", "test", "data", "hyperparameters", "model")}}
    for side in ("domaintune", "hf_trainer"):  # keep the results file small and readable
        for part in ("test",):
            if isinstance(result[side].get(part), dict):
                result[side][part] = {k: v for k, v in result[side][part].items() if not isinstance(v, (dict, list))}
    atomic_write_text(RESULTS / f"{args.dataset}.md", md)
    atomic_write_text(RESULTS / f"{args.dataset}.json", json.dumps(result, ensure_ascii=False, indent=2) + "\n")

    print("\n" + table(summary))
    for line in verdict_lines(summary, ours, peer):
        print(line)
    busy = [v for v in meta["other_cores_busy"].values() if v is not None]
    if busy and max(busy) > BUSY_WARN:
        print(f"WARNING: other processes kept up to {max(busy):.2f} cores busy during the runs; timings are unreliable.")
    print(f"\nwrote {(RESULTS / f'{args.dataset}.md').relative_to(REPO)} and .json")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
