"""The continual section of report.md and the accuracy heat-map (plots/continual_accuracy.png)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from domaintune.evaluation.markdown import md_cell

log = logging.getLogger("domaintune")


def accuracy_heatmap_png(matrix, names: list[str], path, title: str = "Test accuracy (%) after each stage") -> Path:
    """Rows: after training stage i; columns: test set of stage j; blank above the diagonal. CJK names render."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    from domaintune.evaluation.plots import _rc, _save_atomic, _short

    n = len(matrix)
    values = np.full((n, n), np.nan)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if v is not None:
                values[i, j] = 100.0 * v
    labels = [f"{j}: {_short(name, 24)}" for j, name in enumerate(names)]
    side = 3.0 + 0.9 * n
    with rc_context(_rc()):
        fig = Figure(figsize=(side + 1.5, side), layout="constrained")
        ax = fig.add_subplot()
        image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100, interpolation="nearest")
        ax.set_xticks(range(n), labels, rotation=30, ha="right", rotation_mode="anchor", fontsize=9)
        ax.set_yticks(range(n), [f"after {label}" for label in labels], fontsize=9)
        ax.set_xlabel("test set of stage")
        ax.set_ylabel("model")
        ax.set_title(title, fontsize=11)
        for i in range(n):
            for j in range(n):
                if not np.isnan(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=9,
                            color="black" if values[i, j] > 60 else "white")
        fig.colorbar(image, ax=ax, shrink=0.8).set_label("accuracy (%)")
        return _save_atomic(fig, path, 130)


def _p(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def matrix_table(matrix, names: list[str]) -> list[str]:
    n = len(matrix)
    lines = ["| model \\ test set | " + " | ".join(f"{j}: {md_cell(names[j])}" for j in range(n)) + " |",
             "|---|" + "---|" * n]
    for i, row in enumerate(matrix):
        cells = ["" if j >= len(row) or row[j] is None else f"{100 * row[j]:.2f}" for j in range(n)]
        lines.append(f"| after {i}: {md_cell(names[i])} | " + " | ".join(cells) + " |")
    return lines


def continual_section(stages: list[dict], matrix, summary: dict, gate: dict, plot: str | None) -> str:
    names = [s["name"] for s in stages]
    out = ["", "## Continual learning", "",
           f"Stage {len(stages) - 1} of a continual sequence; strategy **{stages[-1]['strategy']}**. Every stage's "
           "test set is kept in `continual/tests/` and scored by every later model.", "",
           "| stage | name | kind | strategy | train rows | replayed rows | new labels |", "|---|---|---|---|---|---|---|"]
    for s in stages:
        new = s.get("new_labels") or []
        shown = ", ".join(map(md_cell, new[:6])) + (f" … (+{len(new) - 6})" if len(new) > 6 else "")
        out.append(f"| {s['index']} | {md_cell(s['name'])} | {md_cell(s['kind'])} | {md_cell(s['strategy'])} | {s.get('train_examples', '–')} | "
                   f"{s.get('replayed_rows', 0)} | {shown or '–'} |")
    out += ["", "Test accuracy (%) of the model after each stage (rows) on each stage's test set (columns):", "",
            *matrix_table(matrix, names), "",
            f"- average accuracy after this stage: **{_p(summary['average_accuracy'])} %**",
            f"- average forgetting: **{_p(summary['average_forgetting'])} points** (best earlier accuracy minus now, "
            "mean over earlier stages)",
            f"- backward transfer: **{_p(summary['backward_transfer'])} points** (now minus just-after-training, "
            "mean over earlier stages; negative = forgetting)", ""]
    gate_word = "promotable" if gate["promotable"] else "**NOT promotable**"
    out.append(f"Regression gate (`continual/gate.json`): {gate_word}; {gate['reason']}.")
    if gate["drops"]:
        out += ["", "| earlier stage | before (%) | after (%) | drop (points) | blocked |", "|---|---|---|---|---|"]
        out += [f"| {d['stage']}: {md_cell(d['name'])} | {d['accuracy_before']:.2f} | {d['accuracy_after']:.2f} | "
                f"{d['drop_points']:.2f} | {'yes' if d['blocked'] else 'no'} |" for d in gate["drops"]]
    if plot:
        out += ["", f"![accuracy matrix]({plot})"]
    return "\n".join(out) + "\n"
