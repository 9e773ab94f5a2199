"""report.md: a human summary of a run, always against the starting point."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from domaintune.evaluation.markdown import md_cell, md_code, md_fence
from domaintune.training.checkpoint import atomic_write_text

log = logging.getLogger("domaintune")


def _pct(v) -> str:
    return f"{100 * v:.2f}" if isinstance(v, (int, float)) else "–"


def write_plots(run_dir: Path, metrics: dict, labels: list[str]) -> dict[str, str]:
    """Confusion matrix, per-class F1 and training curves; a plotting failure never fails a run."""
    plots: dict[str, str] = {}
    try:
        import numpy as np

        from domaintune.evaluation import plots as P

        test = metrics.get("test") or {}
        if test.get("confusion_matrix"):
            P.confusion_matrix_png(np.asarray(test["confusion_matrix"]), labels, run_dir / "plots" / "confusion_matrix.png")
            plots["Confusion matrix (test)"] = "plots/confusion_matrix.png"
        if test.get("per_class"):
            P.per_class_f1_png(test["per_class"], run_dir / "plots" / "per_class_f1.png")
            plots["Per-class F1 (test)"] = "plots/per_class_f1.png"
        log_path = run_dir / "train_log.jsonl"
        if log_path.is_file():
            rows = [json.loads(l) for l in log_path.read_text(encoding="utf-8").splitlines() if l.strip()]
            if rows:
                P.training_curves_png(rows, run_dir / "plots" / "training_curves.png")
                plots["Training curves"] = "plots/training_curves.png"
    except Exception as e:  # noqa: BLE001
        log.warning("could not draw plots: %s", e)
    return plots


BASELINE_NAMES = {"majority": "majority class", "frozen_linear": "pretrained encoder, frozen + linear head",
                  "mean": "predict the training mean", "frozen_ridge": "pretrained encoder, frozen + ridge regression",
                  "frozen_cosine": "pretrained encoder, no training (cosine similarity)"}
PERCENT_KEYS = {"accuracy", "macro_f1", "weighted_f1", "micro_f1", "f1", "precision", "recall", "subset_accuracy",
                "token_accuracy", "in_scope_accuracy", "oos_recall", "recall_at_1", "recall_at_5", "mrr"}


def _fmt(key: str, v) -> str:
    if not isinstance(v, (int, float)):
        return "–"
    return f"{100 * v:.2f}" if key in PERCENT_KEYS else f"{v:.4f}"


def render_report(metrics: dict, config_text: str, labels: list[str], plots: dict[str, str], model_licence: str | None,
                  extra_lines: list[str] | None = None) -> str:
    test, dev, base, train = (metrics.get(k) or {} for k in ("test", "dev", "baseline", "train"))
    keys = [k for k in metrics.get("headline") or ("accuracy", "macro_f1", "weighted_f1")]
    best = metrics.get("metric_for_best") or keys[0]
    lines = [f"# Run report: {md_cell(metrics.get('name', ''))}", "",
             f"Model {md_code(metrics.get('model'), table=False)} · task `{metrics.get('task')}` · method `{metrics.get('method')}` · "
             + (f"{len(labels)} labels · " if labels else "") + f"{metrics.get('data', {}).get('train_examples', '?')} training examples", ""]
    if model_licence and "non-commercial" in model_licence:
        lines += [f"> **Licence:** the base model is {model_licence}. Do not use this run in a commercial product.", ""]
    head = " | ".join(f"{k}{' %' if k in PERCENT_KEYS else ''}" for k in keys)
    lines += ["## Test scores against the starting point", "", f"| model | {head} |", "|---|" + "---|" * len(keys)]
    for name, m in base.items():
        label = BASELINE_NAMES.get(name, name)
        if name == "majority" and m.get("predicted_label"):
            label += f" ({md_code(m['predicted_label'])})"
        lines.append(f"| {label} | " + " | ".join(_fmt(k, m.get(k)) for k in keys) + " |")
    if test:
        lines.append("| **fine-tuned (this run)** | " + " | ".join(f"**{_fmt(k, test.get(k))}**" for k in keys) + " |")
    if dev:
        lines += ["", f"Best dev {best}: {_fmt(best, dev.get(best))} (step {train.get('best_step')})."]
    lines += ["", "## Training", "",
              f"- wall time {train.get('seconds', 0):.1f} s, {train.get('samples_per_second', 0):.1f} samples/s, "
              f"{train.get('global_step')} optimizer steps, {train.get('epochs_completed', 0):.2f} epochs"
              f"{' (stopped early)' if train.get('stopped_early') else ''}",
              f"- precision {'bf16 autocast' if train.get('bf16') else 'fp32'}, {train.get('threads')} threads, "
              f"peak RSS {train.get('peak_rss_mb', 0):.0f} MB", ""]
    lines += list(extra_lines or [])
    if test.get("per_class"):
        lines += ["## Per-class scores (test)", "", "| label | precision % | recall % | F1 % | support |", "|---|---|---|---|---|"]
        for label, m in sorted(test["per_class"].items(), key=lambda kv: kv[1]["f1"]):
            lines.append(f"| {md_cell(label)} | {_pct(m['precision'])} | {_pct(m['recall'])} | {_pct(m['f1'])} | {m['support']} |")
        lines.append("")
    for title, rel in plots.items():
        lines += [f"## {title}", "", f"![{title}]({rel})", ""]
    lines += ["## Configuration", "", *md_fence(config_text, "yaml"), ""]
    return "\n".join(lines)


def write_report(run_dir: Path, metrics: dict, config_text: str, labels: list[str], model_licence: str | None = None,
                 task=None) -> Path:
    plots = write_plots(run_dir, metrics, labels)
    extra: list[str] = []
    if task is not None:
        try:
            plots.update(task.plots(run_dir, metrics))
        except Exception as e:  # noqa: BLE001 - a plotting failure never fails a run
            log.warning("could not draw task plots: %s", e)
        extra = task.report_lines(metrics)
    return atomic_write_text(run_dir / "report.md", render_report(metrics, config_text, labels, plots, model_licence, extra))
