"""Method comparison (`domaintune compare`): methods x labels-per-class x seeds on the user's own data.

This is the first thing a user runs on new data: which method gets the most out
of 8, 64 or all of their labels, at what cost. Design choices:

* Every cell is `domaintune train CONFIG --set method=M --set data.k_shot=K
  --set train.seed=S` in its own subprocess. The peak RSS in metrics.json is a
  process-lifetime maximum, so cells run in one process would each report the
  largest so far; a subprocess per cell makes the memory column mean what it
  says (and a crash in one cell cannot take the grid down).
* Resumable: a finished cell leaves `cell.json` (with a fingerprint of its
  command); a rerun skips it, and reruns it only if the config changed.
* Methods that do not train (zero-shot) do not depend on k: they run once per
  seed on the full label set and appear as a flat line in the plot.
* Mean ± sample standard deviation (ddof=1) over seeds of the task's headline
  metric (accuracy for classification); wall seconds include process start,
  model loading and evaluation, train seconds only the method's fit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from domaintune.evaluation.markdown import md_cell
from domaintune.training.checkpoint import atomic_write_json, atomic_write_text

log = logging.getLogger("domaintune")

ALL = "all"


class CompareError(ValueError):
    """A bad --methods / --k-shot / --seeds value; the message lists the valid ones."""


@dataclass(frozen=True)
class Cell:
    method: str
    k: int | None          # labels per class; None: all labels
    seed: int
    trains: bool = True

    @property
    def name(self) -> str:
        k = "na" if not self.trains else (ALL if self.k is None else str(self.k))
        return f"{self.method}_k{k}_s{self.seed}"

    def overrides(self, run_dir: Path) -> list[str]:
        sets = [f"method={self.method}", f"train.seed={self.seed}", f"output_dir={run_dir}", "baseline=false"]
        if self.k is not None and self.trains:
            sets.append(f"data.k_shot={self.k}")
        return sets


def parse_methods(text: str | list[str]) -> list[str]:
    from domaintune.methods import METHODS

    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise CompareError(f"unknown method(s) {unknown or names!r}: registered methods are {', '.join(sorted(METHODS))}")
    return list(dict.fromkeys(names))


def parse_k_shot(text: str | list) -> list[int | None]:
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[int | None] = []
    for item in items:
        s = str(item).strip().lower()
        if s in (ALL, "none", ""):
            out.append(None)
        elif s.isdigit() and int(s) > 0:
            out.append(int(s))
        else:
            raise CompareError(f"--k-shot {item!r}: expected positive integers or 'all', e.g. --k-shot 8,64,all")
    return list(dict.fromkeys(out))


def seed_list(n: int, start: int = 42) -> list[int]:
    if n < 1:
        raise CompareError(f"--seeds {n}: need at least one seed")
    return [start + i for i in range(n)]


def _trains(method: str) -> bool:
    from domaintune.methods import get_method

    return bool(get_method(method).trains)


def grid(methods: list[str], k_shots: list[int | None], seeds: list[int]) -> list[Cell]:
    cells: list[Cell] = []
    for m in methods:
        trains = _trains(m)
        for k in (k_shots if trains else [None]):
            cells += [Cell(m, k, s, trains) for s in seeds]
    return cells


def _fingerprint(config: Path, overrides: list[str]) -> str:
    blob = Path(config).read_bytes() + json.dumps(overrides).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _headline(metrics: dict) -> str:
    return (metrics.get("headline") or [metrics.get("metric_for_best") or "accuracy"])[0]


def run_cell(config: Path, base_overrides: list[str], cell: Cell, compare_dir: Path, keep_model: bool = False,
             force: bool = False) -> dict:
    """Train one cell in a subprocess (or return its saved result); the record that goes into compare.json."""
    run_dir = compare_dir / cell.name
    sets = [*base_overrides, *cell.overrides(run_dir)]
    fp = _fingerprint(config, sets)
    done = run_dir / "cell.json"
    if done.exists() and not force:
        rec = json.loads(done.read_text(encoding="utf-8"))
        if rec.get("fingerprint") == fp:
            log.info("compare: %s done before, skipped", cell.name)
            return {**rec, "skipped": True}
    cmd = [sys.executable, "-m", "domaintune", "train", str(config), "--overwrite"]
    for s in sets:
        cmd += ["--set", s]
    log_dir = compare_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log.info("compare: %s ...", cell.name)
    t0 = time.perf_counter()
    with open(log_dir / f"{cell.name}.log", "w", encoding="utf-8") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t0
    base = {"cell": cell.name, "method": cell.method, "k": cell.k, "seed": cell.seed, "trains": cell.trains}
    if proc.returncode != 0:
        tail = (log_dir / f"{cell.name}.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        log.warning("compare: %s failed (exit %d): %s", cell.name, proc.returncode, " | ".join(tail))
        return {**base, "error": f"exit {proc.returncode}: " + " | ".join(tail), "log": str(log_dir / f"{cell.name}.log")}
    m = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    head = _headline(m)
    n_labels = max(len(m.get("labels") or []), 1)
    n_train = m["data"]["train_examples"]
    if cell.k is not None and cell.trains and n_train > cell.k * n_labels:
        return {**base, "error": f"data.k_shot={cell.k} was not applied: trained on {n_train} examples "
                                 f"for {n_labels} labels"}
    rec = {**base, "metric": head, "value": (m.get("test") or {}).get(head),
           "dev_value": (m.get("dev") or {}).get(head), "train_examples": n_train, "n_labels": n_labels,
           "wall_seconds": round(wall, 2), "train_seconds": m["train"]["seconds"],
           "peak_rss_mb": m["train"]["peak_rss_mb"], "run_dir": str(run_dir), "fingerprint": fp}
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    if not keep_model:
        shutil.rmtree(run_dir / "model", ignore_errors=True)
    atomic_write_json(done, rec)
    return rec


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


def aggregate(records: list[dict]) -> list[dict]:
    """One row per (method, k): mean ± std of the headline metric over seeds, mean seconds, max peak RSS."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["k"] if r.get("trains", True) else "na"), []).append(r)
    rows = []
    for (method, k), recs in groups.items():
        ok = [r for r in recs if "error" not in r]
        mean, std = _mean_std([r["value"] for r in ok])
        rows.append({"method": method, "k": None if k == "na" else k, "trains": k != "na",
                     "metric": next((r["metric"] for r in ok), None), "mean": mean, "std": std,
                     "n": len(ok), "failed": len(recs) - len(ok), "seeds": [r["seed"] for r in ok],
                     "values": [r["value"] for r in ok],
                     "train_examples": _mean_std([r["train_examples"] for r in ok])[0],
                     "n_labels": next((r["n_labels"] for r in ok), None),
                     "wall_seconds": _mean_std([r["wall_seconds"] for r in ok])[0],
                     "train_seconds": _mean_std([r["train_seconds"] for r in ok])[0],
                     "peak_rss_mb": max((r["peak_rss_mb"] for r in ok), default=None)})
    return rows


def _k_label(row: dict) -> str:
    if not row["trains"]:
        return "none (no training)"
    return ALL if row["k"] is None else str(row["k"])


def _pm(mean, std, scale: float = 100.0) -> str:
    if mean is None:
        return "failed"
    return f"{scale * mean:.2f} ± {scale * std:.2f}"


def markdown(rows: list[dict], title: str, note: str = "") -> str:
    metric = next((r["metric"] for r in rows if r["metric"]), "score")
    pct = metric not in ("mae", "rmse")
    lines = [f"# {title}", "", f"Test {metric}{' (%)' if pct else ''}: mean ± sample std over seeds. "
             "Wall seconds per run (process start to exit, mean over seeds), train seconds (the method's fit), "
             "peak RSS (max over seeds, one process per run).", ""]
    if note:
        lines += [note, ""]
    lines += [f"| method | labels per class | seeds | test {metric} | train examples | wall s | train s | peak RSS MB |",
              "|---|---|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(dict.fromkeys(r["method"] for r in rows))}
    for r in sorted(rows, key=lambda r: (order[r["method"]], math.inf if r["k"] is None else r["k"])):
        f = lambda v, d=1: "" if v is None else f"{v:.{d}f}"  # noqa: E731
        failed = f" ({r['failed']} failed)" if r["failed"] else ""
        lines.append(f"| {md_cell(r['method'])} | {_k_label(r)} | {r['n']}{failed} | "
                     f"{_pm(r['mean'], r['std'], 100.0 if pct else 1.0)} | {f(r['train_examples'], 0)} | "
                     f"{f(r['wall_seconds'])} | {f(r['train_seconds'])} | {f(r['peak_rss_mb'], 0)} |")
    return "\n".join(lines) + "\n"


def accuracy_plot(rows: list[dict], path: Path, title: str = "Test score vs labels per class") -> Path:
    """One line per method over labels per class (log x; `all` at the mean per-class count); flat lines for no training."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    from domaintune.evaluation.plots import _rc, _save_atomic

    metric = next((r["metric"] for r in rows if r["metric"]), "score")
    xs_all = [r["train_examples"] / r["n_labels"] if r["k"] is None and r["trains"] and r["train_examples"] else r["k"]
              for r in rows]
    trained_x = [x for r, x in zip(rows, xs_all) if r["trains"] and x]
    with rc_context(_rc()):
        fig = Figure(figsize=(7.5, 4.8), layout="constrained")
        ax = fig.add_subplot()
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = sorted((x, r["mean"], r["std"]) for r, x in zip(rows, xs_all)
                         if r["method"] == method and r["mean"] is not None and (x or not r["trains"]))
            if not pts:
                continue
            flat = not next(r for r in rows if r["method"] == method)["trains"]
            if flat:
                _, mean, std = pts[0]
                lo, hi = (min(trained_x), max(trained_x)) if trained_x else (1, 10)
                line = ax.plot([lo, hi], [mean, mean], linestyle="--", label=f"{method} (no training)")[0]
                ax.fill_between([lo, hi], mean - std, mean + std, color=line.get_color(), alpha=0.12)
                continue
            x, y, e = zip(*pts)
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ticks = sorted({x for x in trained_x})
        if ticks:
            ax.set_xticks(ticks, [str(int(round(t))) if any(r["k"] == t for r in rows) else f"all (~{t:.0f})"
                                  for t in ticks])
            ax.minorticks_off()
        ax.set_xlabel("labelled examples per class (log scale)")
        ax.set_ylabel(f"test {metric}")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        return _save_atomic(fig, path, 130)


def compare(config: str | Path, methods: list[str], k_shots: list[int | None], seeds: list[int],
            overrides: list[str] | None = None, output: str | Path | None = None, keep_models: bool = False,
            force: bool = False, on_cell: Callable[[dict], None] | None = None) -> dict:
    """Run (or resume) the grid and write compare.md, compare.json and compare.png; return compare.json's content."""
    from domaintune.config import load_config

    config = Path(config)
    overrides = list(overrides or [])
    cfg = load_config(config, overrides)          # fail fast on a bad config before any subprocess
    methods = parse_methods(methods)
    compare_dir = Path(output) if output else Path(cfg.output_dir) / "compare"
    compare_dir.mkdir(parents=True, exist_ok=True)
    cells = grid(methods, k_shots, seeds)
    log.info("compare: %d runs (%s) in %s", len(cells), ", ".join(methods), compare_dir)
    records = []
    for cell in cells:
        rec = run_cell(config, overrides, cell, compare_dir, keep_model=keep_models, force=force)
        records.append(rec)
        if on_cell:
            on_cell(rec)
        write_outputs(records, compare_dir, f"Method comparison: {config.name}", cfg)
    return write_outputs(records, compare_dir, f"Method comparison: {config.name}", cfg)


def write_outputs(records: list[dict], compare_dir: Path, title: str, cfg=None) -> dict:
    rows = aggregate(records)
    note = f"Model `{cfg.model}`, data `{cfg.data.train}`." if cfg is not None else ""
    atomic_write_text(compare_dir / "compare.md", markdown(rows, title, note))
    result = {"title": title, "dir": str(compare_dir), "rows": rows, "cells": records,
              "failed": [r for r in records if "error" in r]}
    try:
        accuracy_plot(rows, compare_dir / "compare.png", title)
    except Exception as e:  # noqa: BLE001 - the table matters more than the figure
        log.warning("compare plot failed: %s", e)
    atomic_write_json(compare_dir / "compare.json", result)
    return result


__all__ = ["Cell", "CompareError", "accuracy_plot", "aggregate", "compare", "grid", "markdown", "parse_k_shot",
           "parse_methods", "run_cell", "seed_list", "write_outputs"]
