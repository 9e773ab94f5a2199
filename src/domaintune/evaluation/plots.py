"""PNG figures for evaluation reports: confusion matrix, training curves, per-class F1.

Why this module exists and how it stays robust:

* Reports must be readable for *every* label set domaintune handles: 77-class
  banking77 with long snake_case names, and Chinese label sets (``正面``,
  ``负面``, ``新闻_体育``).  Figure and font sizes therefore scale with the
  number of classes, and counts are only printed in cells for small matrices.
* Matplotlib's bundled DejaVu Sans has no Han glyphs, so on a fresh machine
  Chinese labels come out as tofu boxes with "Glyph ... missing" warnings.  We
  cannot assume apt packages on a user's machine, so the pinned pip package
  ``pylopdf-fonts-zh-cn`` (Noto Sans SC, SIL OFL 1.1) supplies the font; it is
  located with :func:`importlib.util.find_spec` (nothing is imported) and
  registered with ``fontManager.addfont``.  ``DOMAINTUNE_CJK_FONT=/path/to/font``
  overrides it, and CJK fonts already known to matplotlib are the fallback.
* Plots are headless (Agg; figures are built with ``matplotlib.figure.Figure``
  so no window or pyplot global state is involved) and written atomically
  (temp file in the same directory, fsync, ``os.replace``) so a crashed or
  concurrent run never leaves a half-written PNG behind.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import numbers
import io
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

if "matplotlib.pyplot" not in sys.modules:  # never switch (and close) a live session's backend
    matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib import font_manager, rc_context  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import Normalize, PowerNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

logger = logging.getLogger("domaintune")

__all__ = ["cjk_font_family", "confusion_matrix_png", "per_class_f1_png", "training_curves_png"]

# Pip package shipping the font (pin it in requirements.lock) and its file.
_FONT_PACKAGE = "pylopdf_fonts_zh_cn"
_FONT_FILE = "NotoSansSC-Regular.otf"
# Families matplotlib may already know from the OS (Linux, macOS, Windows).
_SYSTEM_CJK_FAMILIES = (
    "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "Source Han Sans CN",
    "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Microsoft YaHei", "SimHei",
    "PingFang SC", "Hiragino Sans GB", "Heiti SC", "Noto Sans CJK JP", "Noto Sans CJK TC",
    "Source Han Sans", "AR PL UMing CN", "Droid Sans Fallback",
)
_LATIN_FAMILY = "DejaVu Sans"
_MAX_LABEL_CHARS = 50  # banking77's longest name has 48


def _bundled_font_path() -> Path | None:
    """Path of the font file shipped by the pinned pip package, if installed."""
    try:
        spec = importlib.util.find_spec(_FONT_PACKAGE)
    except (ImportError, ValueError):
        return None
    locations = (spec.submodule_search_locations or []) if spec else []
    return next((Path(d) / _FONT_FILE for d in locations if (Path(d) / _FONT_FILE).is_file()), None)


def _register(path: Path) -> str | None:
    """Add a font file to matplotlib's font manager; return its family name."""
    try:
        font_manager.fontManager.addfont(str(path))
        return font_manager.FontProperties(fname=str(path)).get_name()
    except (OSError, RuntimeError, ValueError) as exc:
        logger.debug("cannot load font %s: %s", path, exc)
        return None


@functools.lru_cache(maxsize=1)
def _cjk_families() -> tuple[str, ...]:
    found: list[str] = []
    override = os.environ.get("DOMAINTUNE_CJK_FONT")
    for path in (Path(override) if override else None, _bundled_font_path()):
        if path is not None and path.is_file() and (name := _register(path)) and name not in found:
            found.append(name)
    known = {entry.name for entry in font_manager.fontManager.ttflist}
    found += [name for name in _SYSTEM_CJK_FAMILIES if name in known and name not in found]
    if not found:
        logger.warning("No CJK font found: Chinese labels in plots will render as boxes. Install the "
                       "pinned font package (pip install -r requirements.lock) or set "
                       "DOMAINTUNE_CJK_FONT=/path/to/font.otf.")
    return tuple(found)


def cjk_font_family() -> list[str]:
    """Font families for ``rcParams["font.sans-serif"]``: CJK-capable first, DejaVu Sans last.

    The CJK font also covers Latin, digits and punctuation, so labels in one
    figure share one typeface; DejaVu Sans stays in the list as the per-glyph
    fallback for anything it lacks.  Logs one warning if no CJK font exists.
    """
    return [*_cjk_families(), _LATIN_FAMILY]


def _rc() -> dict:
    return {"font.family": "sans-serif", "font.sans-serif": cjk_font_family()}


def _short(label: object, limit: int = _MAX_LABEL_CHARS) -> str:
    text = str(label)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _save_atomic(fig: Figure, path: str | os.PathLike, dpi: int) -> Path:
    """Render ``fig`` to PNG and write it at ``path`` atomically (temp file, fsync, rename)."""
    from domaintune.training.checkpoint import atomic_write_bytes

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


def confusion_matrix_png(matrix, labels: Sequence[str], path, title: str = "Confusion matrix (test)",
                         normalize: bool = True) -> Path:
    """Heatmap of ``matrix`` (rows = true, cols = predicted) written to ``path``."""
    counts = np.asarray(matrix)
    n = len(labels)
    if counts.ndim != 2 or counts.shape != (n, n):
        raise ValueError(f"matrix shape {counts.shape} does not match {n} labels")
    row_sums = counts.sum(axis=1, keepdims=True)
    values = np.divide(counts, row_sums, out=np.zeros(counts.shape, float), where=row_sums > 0) \
        if normalize else counts
    tick_size = 10 if n <= 10 else 8 if n <= 20 else 7 if n <= 40 else 6
    side = min(max(4.5 + 0.21 * n, 6.0), 26.0)
    names = [_short(label) for label in labels]
    with rc_context(_rc()):
        fig = Figure(figsize=(side + 1.5, side), layout="constrained")
        ax = fig.add_subplot()
        vmax = 1 if normalize else max(int(counts.max()), 1)
        # Many classes: sqrt colour scale so rare confusions stay visible next to the diagonal.
        norm = PowerNorm(0.5, vmin=0, vmax=vmax) if n > 20 else Normalize(vmin=0, vmax=vmax)
        image = ax.imshow(values, cmap="Blues", norm=norm, interpolation="nearest", aspect="equal")
        ax.set_xticks(range(n), names, fontsize=tick_size,
                      rotation=90 if n > 10 else 45, ha="center" if n > 10 else "right",
                      rotation_mode="default" if n > 10 else "anchor")
        ax.set_yticks(range(n), names, fontsize=tick_size)
        ax.set_xlabel("Predicted label")
        ax.set_ylabel("True label")
        ax.set_title(title, fontsize=12 if n <= 20 else 14)
        if n > 20:  # faint cell grid so rows/columns can be followed by eye
            ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
            ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
            ax.grid(which="minor", color="0.9", linewidth=0.3)
            ax.tick_params(which="minor", length=0)
        if n <= 20:
            cell_size = 10 if n <= 8 else 8 if n <= 14 else 6
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, f"{counts[i, j]:g}", ha="center", va="center", fontsize=cell_size,
                            color="white" if values[i, j] / vmax > 0.5 else "black")
        bar = fig.colorbar(image, ax=ax, shrink=0.6 if n > 20 else 0.8)
        bar.set_label(("fraction of true class" if normalize else "count")
                      + (" (sqrt scale)" if n > 20 else ""))
        dpi = 150 if n <= 20 else 110
        return _save_atomic(fig, path, dpi)


def _finite(value) -> bool:  # numbers.Real also covers numpy scalars
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def training_curves_png(log_rows: Sequence[Mapping], path) -> Path:
    """Training loss (top) and dev metrics (bottom) against the global step."""
    train = [(r["step"], r["loss"]) for r in log_rows if "loss" in r and _finite(r.get("loss"))
             and _finite(r.get("step"))]
    dev: dict[str, list[tuple[float, float]]] = {}
    for row in log_rows:
        if "loss" in row or not _finite(row.get("step")):
            continue
        metrics = dict(row.get("eval") or {})
        metrics.update({k[5:]: v for k, v in row.items() if k.startswith("eval_")})
        for name, value in metrics.items():
            if _finite(value):
                dev.setdefault(name, []).append((row["step"], value))
    dev_loss = dev.pop("loss", [])
    with rc_context(_rc()):
        fig = Figure(figsize=(8, 7), layout="constrained")
        ax_loss, ax_dev = fig.subplots(2, 1, sharex=True)
        if train:
            ax_loss.plot(*zip(*train), color="tab:blue", linewidth=1.2, label="train loss")
        if dev_loss:
            ax_loss.plot(*zip(*dev_loss), "o--", color="tab:red", label="dev loss")
        ax_loss.set_ylabel("loss")
        ax_loss.set_title("Training loss")
        for name, points in sorted(dev.items()):
            ax_dev.plot(*zip(*points), "o-", label=name)
        ax_dev.set_xlabel("step")
        ax_dev.set_ylabel("score")
        ax_dev.set_title("Dev metrics")
        for ax, has_data in ((ax_loss, train or dev_loss), (ax_dev, dev)):
            ax.grid(alpha=0.3)
            if has_data:
                ax.legend(loc="best", fontsize=8)
            else:
                ax.text(0.5, 0.5, "no data logged", ha="center", va="center",
                        transform=ax.transAxes, color="0.5")
        return _save_atomic(fig, path, dpi=120)


def per_class_f1_png(per_class: Mapping[str, Mapping], path) -> Path:
    """Horizontal bars of per-class F1, worst class on top, with support annotated."""
    rows = []
    for label, stats in per_class.items():
        if not isinstance(stats, Mapping) or str(label).endswith(" avg"):
            continue  # tolerate sklearn's classification_report(output_dict=True) extras
        f1 = stats.get("f1", stats.get("f1-score"))
        if _finite(f1):
            rows.append((float(f1), _short(label), int(stats.get("support", 0) or 0)))
    rows.sort(key=lambda r: (-r[0], r[1]))  # barh draws index 0 at the bottom -> worst on top
    n = len(rows)
    font = 10 if n <= 20 else 8 if n <= 40 else 7
    with rc_context(_rc()):
        fig = Figure(figsize=(9, min(max(2.0 + 0.2 * n, 3.5), 40.0)), layout="constrained")
        ax = fig.add_subplot()
        macro = float(np.mean([r[0] for r in rows])) if rows else float("nan")
        if rows:
            scores = np.array([r[0] for r in rows])
            ax.barh(range(n), scores, color=matplotlib.colormaps["RdYlGn"](0.1 + 0.8 * scores),
                    edgecolor="0.4", linewidth=0.3)
            ax.set_yticks(range(n), [r[1] for r in rows], fontsize=font)
            ax.axvline(macro, color="0.3", linestyle="--", linewidth=0.8, zorder=1)
            for i, (f1, _, support) in enumerate(rows):
                ax.text(min(f1, 1.0) + 0.01, i, f"{f1:.2f} (n={support})", va="center", zorder=3,
                        fontsize=font - 1, bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
        else:
            ax.text(0.5, 0.5, "no per-class scores", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(0, 1.18)
        ax.set_ylim(-0.6, max(n, 1) - 0.4)
        ax.set_xlabel("F1")
        suffix = f"; dashed line = macro F1 {macro:.3f}" if rows else ""
        ax.set_title(f"Per-class F1 ({n} classes{suffix})")
        ax.grid(axis="x", alpha=0.3)
        return _save_atomic(fig, path, dpi=120)
