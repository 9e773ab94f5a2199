"""report.md: a human summary of a run, always against the starting point."""

from __future__ import annotations

import json
import logging
from pathlib import Path

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


def render_report(metrics: dict, config_text: str, labels: list[str], plots: dict[str, str], model_licence: str | None) -> str:
    test, dev, base, train = (metrics.get(k) or {} for k in ("test", "dev", "baseline", "train"))
    lines = [f"# Run report: {metrics.get('name', '')}", "",
             f"Model `{metrics.get('model')}` · task `{metrics.get('task')}` · method `{metrics.get('method')}` · "
             f"{len(labels)} labels · {metrics.get('data', {}).get('train_examples', '?')} training examples", ""]
    if model_licence and "non-commercial" in model_licence:
        lines += [f"> **Licence:** the base model is {model_licence}. Do not use this run in a commercial product.", ""]
    lines += ["## Test scores against the starting point", "",
              "| model | accuracy % | macro-F1 % | weighted-F1 % |", "|---|---|---|---|"]
    if base.get("majority"):
        m = base["majority"]
        lines.append(f"| majority class (`{m.get('predicted_label')}`) | {_pct(m['accuracy'])} | {_pct(m['macro_f1'])} | {_pct(m['weighted_f1'])} |")
    if base.get("frozen_linear"):
        m = base["frozen_linear"]
        lines.append(f"| pretrained encoder, frozen + linear head | {_pct(m['accuracy'])} | {_pct(m['macro_f1'])} | {_pct(m['weighted_f1'])} |")
    if test:
        lines.append(f"| **fine-tuned (this run)** | **{_pct(test['accuracy'])}** | **{_pct(test['macro_f1'])}** | **{_pct(test['weighted_f1'])}** |")
    if dev:
        lines += ["", f"Best dev {metrics.get('metric_for_best', 'macro_f1')}: {_pct(dev.get(metrics.get('metric_for_best', 'macro_f1')))} % "
                  f"(dev accuracy {_pct(dev.get('accuracy'))} %, step {train.get('best_step')})."]
    lines += ["", "## Training", "",
              f"- wall time {train.get('seconds', 0):.1f} s, {train.get('samples_per_second', 0):.1f} samples/s, "
              f"{train.get('global_step')} optimizer steps, {train.get('epochs_completed', 0):.2f} epochs"
              f"{' (stopped early)' if train.get('stopped_early') else ''}",
              f"- precision {'bf16 autocast' if train.get('bf16') else 'fp32'}, {train.get('threads')} threads, "
              f"peak RSS {train.get('peak_rss_mb', 0):.0f} MB", ""]
    if test.get("per_class"):
        lines += ["## Per-class scores (test)", "", "| label | precision % | recall % | F1 % | support |", "|---|---|---|---|---|"]
        for label, m in sorted(test["per_class"].items(), key=lambda kv: kv[1]["f1"]):
            lines.append(f"| {label} | {_pct(m['precision'])} | {_pct(m['recall'])} | {_pct(m['f1'])} | {m['support']} |")
        lines.append("")
    for title, rel in plots.items():
        lines += [f"## {title}", "", f"![{title}]({rel})", ""]
    lines += ["## Configuration", "", "```yaml", config_text.rstrip(), "```", ""]
    return "\n".join(lines)


def write_report(run_dir: Path, metrics: dict, config_text: str, labels: list[str], model_licence: str | None = None) -> Path:
    plots = write_plots(run_dir, metrics, labels)
    return atomic_write_text(run_dir / "report.md", render_report(metrics, config_text, labels, plots, model_licence))
