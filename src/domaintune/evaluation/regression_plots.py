"""Predicted-vs-true scatter plot for regression reports.

One figure tells a reader more than five numbers: whether the model
compresses the range (regression to the mean), fails on one end, or has a few
wild outliers. The font set-up (Chinese-capable) and the atomic PNG write are
reused from `domaintune.evaluation.plots`, so all report figures look alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure

from domaintune.evaluation.plots import _save_atomic, cjk_font_family

__all__ = ["scatter_png"]


def scatter_png(y_true: Sequence[float], y_pred: Sequence[float], path, title: str = "Predicted vs true (test)",
                subtitle: str = "") -> Path:
    """Scatter of predictions against gold values with the y = x diagonal; large sets get small, faint dots."""
    t, p = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    if t.shape != p.shape:
        raise ValueError(f"{len(t)} true values but {len(p)} predictions")
    n = len(t)
    with rc_context({"font.family": "sans-serif", "font.sans-serif": cjk_font_family()}):
        fig = Figure(figsize=(6.5, 6.0), layout="constrained")
        ax = fig.add_subplot()
        if n:
            lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
            pad = 0.03 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "--", color="0.4", linewidth=1, label="y = x")
            ax.scatter(t, p, s=14 if n < 500 else 6, alpha=0.6 if n < 500 else 0.35, color="tab:blue",
                       edgecolors="none", label=f"test examples (n={n})")
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
            ax.set_aspect("equal")
            ax.legend(loc="upper left", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no test examples", ha="center", va="center", transform=ax.transAxes, color="0.5")
        ax.set_xlabel("true value")
        ax.set_ylabel("predicted value")
        ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
        ax.grid(alpha=0.3)
        return _save_atomic(fig, path, dpi=120)
