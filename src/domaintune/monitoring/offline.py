"""`domaintune monitor --model NAME --since 24h`: the service's statistics recomputed from the audit log.

The audit log stores every request's masked input and output, so the same
`SlidingWindow` the service uses can replay them offline: texts are cut into
consecutive windows of `window` texts and each window's statistics are computed
against the run's profile. Inputs are PII-masked in the log (an e-mail becomes
`<EMAIL>`), so token statistics can differ slightly from what the service saw
live; label and confidence statistics are exact.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

from sqlalchemy import create_engine, select

from domaintune.monitoring.profile import Profile, TextFeaturizer, label_indices, load_profile, prediction_labels, prediction_score
from domaintune.monitoring.stats import SlidingWindow

PLOT_STATS = ("label_psi", "label_js", "confidence_mean", "length_psi", "oov_rate", "embedding_cosine")


def parse_since(since: str) -> dt.datetime:
    """'24h', '30m', '7d' (ago) or an ISO time (UTC when it has no offset)."""
    from domaintune.monitoring.rules import parse_duration

    now = dt.datetime.now(dt.timezone.utc)
    try:
        return now - dt.timedelta(seconds=parse_duration(since))
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(since)
    except ValueError:
        raise ValueError(f"--since {since!r}: give a duration (24h, 30m, 7d) or an ISO time "
                         f"(2026-11-26T08:00)") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def read_predictions(audit_db: str | Path, model: str, since: dt.datetime) -> list[tuple[dt.datetime, str, dict]]:
    """(time, masked text, prediction) per text of successful predict requests, oldest first."""
    from domaintune.serving.audit import predictions, to_url

    url = to_url(audit_db)
    if "://" not in str(audit_db) and not Path(audit_db).is_file():
        raise FileNotFoundError(f"{audit_db}: no audit log there; pass --audit-db (serve writes audit.db beside "
                                f"the first run directory by default)")
    engine = create_engine(url)
    t = since.astimezone(dt.timezone.utc)
    if engine.dialect.name == "sqlite":
        t = t.replace(tzinfo=None)
    q = (select(predictions.c.created_at, predictions.c.n_texts, predictions.c.input_masked, predictions.c.output)
         .where(predictions.c.model == model, predictions.c.endpoint == "predict", predictions.c.status == 200,
                predictions.c.created_at >= t).order_by(predictions.c.id))
    out = []
    try:
        with engine.connect() as conn:
            for created, n, masked, output in conn.execute(q):
                texts = [masked] if n == 1 else json.loads(masked)
                outs = output if isinstance(output, list) else [output]
                out.extend((created, txt, o if isinstance(o, dict) else {}) for txt, o in zip(texts, outs))
    finally:
        engine.dispose()
    return out


def window_stats(rows: list[tuple], window: int, run_dir: str | Path | None = None) -> tuple[list[dict], Profile]:
    """Statistics of consecutive windows of `window` texts (a last partial window counts if at least half full)."""
    profile = load_profile(run_dir) if run_dir else None
    featurizer = None
    if run_dir is not None:
        if profile is None:
            from domaintune.monitoring.online import _run_labels

            profile = Profile(labels=_run_labels(Path(run_dir)), embedding=None)
        emb = profile.embedding or {}
        featurizer = TextFeaturizer(run_dir, profile.vocab_ids, int(emb.get("components", 0)), int(emb.get("seed", 0)))
    if profile is None:  # no run: labels as they appear, no token statistics
        seen: list[str] = []
        for _, _, p in rows:
            for lab in prediction_labels(p) or []:
                if lab not in seen:
                    seen.append(lab)
        profile = Profile(labels=seen, embedding=None)
    out = []
    for start in range(0, len(rows), window):
        chunk = rows[start:start + window]
        if len(chunk) < max(1, window // 2) and out:
            break
        w = SlidingWindow(len(chunk), profile)
        idx = [label_indices(p, profile.label_index) for _, _, p in chunk]
        scores = [prediction_score(p) for _, _, p in chunk]
        if featurizer is not None:
            recs = featurizer.records([t for _, t, _ in chunk], idx, scores)
            for r in recs:
                w.add(r)
        else:
            from domaintune.monitoring.stats import Record

            for i, s in zip(idx, scores):
                w.add(Record(i, s), has_text=False)
        st = w.stats()
        st.update({"window": len(out), "start": chunk[0][0], "end": chunk[-1][0], "first_text": start})
        out.append(st)
    return out, profile


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def stats_table(rows: list[dict], profile: Profile, title: str):
    from rich.table import Table

    table = Table(title=title)
    labels = list(profile.labels)[:6]
    for col in ["#", "start (UTC)", "n", *[f"share {x}" for x in labels], *PLOT_STATS]:
        table.add_column(col, no_wrap=True)
    if profile.predicted_share:
        table.add_row("ref", "profile", str(profile.meta.get("reference_texts", "")),
                      *[_fmt(profile.predicted_share.get(x)) for x in labels], "0", "0",
                      _fmt(profile.confidence_mean), "0", _fmt(profile.oov_rate), "0", style="dim")
    for r in rows:
        start = r["start"].strftime("%Y-%m-%d %H:%M:%S") if hasattr(r["start"], "strftime") else str(r["start"])
        table.add_row(str(r["window"]), start, str(r["n"]), *[_fmt(r["label_share"].get(x, 0.0)) for x in labels],
                      *[_fmt(r.get(s)) for s in PLOT_STATS])
    return table


def plot_windows(rows: list[dict], profile: Profile, out_dir: str | Path, model: str) -> list[Path]:
    """Two PNGs: label shares per window (with the profile's shares dashed) and the drift statistics."""
    import io

    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from domaintune.evaluation.plots import cjk_font_family
    from domaintune.training.checkpoint import atomic_write_bytes

    out_dir = Path(out_dir)
    xs = [r["window"] for r in rows]
    written = []

    def save(fig, name):
        FigureCanvasAgg(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        written.append(atomic_write_bytes(out_dir / name, buf.getvalue()))

    with rc_context({"font.family": "sans-serif", "font.sans-serif": cjk_font_family()}):
        fig = Figure(figsize=(9, 4.5), layout="constrained")
        ax = fig.add_subplot()
        labels = list(profile.labels) or sorted({k for r in rows for k in r["label_share"]})
        for i, label in enumerate(labels):
            color = f"C{i % 10}"
            ax.plot(xs, [r["label_share"].get(label, 0.0) for r in rows], "o-", color=color, label=str(label),
                    markersize=3)
            if label in profile.predicted_share:
                ax.axhline(profile.predicted_share[label], color=color, linestyle="--", linewidth=0.8)
        ax.set_xlabel("window (consecutive texts)")
        ax.set_ylabel("share of predictions")
        ax.set_title(f"{model}: predicted label shares (dashed: training profile)")
        ax.legend(fontsize=8, ncol=min(4, max(1, len(labels))), loc="best")
        save(fig, f"{model}_label_share.png")

        fig = Figure(figsize=(10, 6.5), layout="constrained")
        axes = fig.subplots(2, 3, sharex=True).ravel()
        for ax, stat in zip(axes, PLOT_STATS):
            ax.plot(xs, [r.get(stat, math.nan) for r in rows], "o-", markersize=3)
            ax.set_title(stat, fontsize=10)
            ax.grid(alpha=0.3)
        for ax in axes[3:]:
            ax.set_xlabel("window")
        fig.suptitle(f"{model}: drift against the training profile")
        save(fig, f"{model}_drift.png")
    return written


def monitor_report(model: str, since: str, audit_db: str | Path, run_dir: str | Path | None = None,
                   window: int = 200) -> tuple[list[dict], Profile, int]:
    """(window rows, profile, texts read): the library call behind `domaintune monitor`."""
    rows = read_predictions(audit_db, model, parse_since(since))
    if not rows:
        return [], load_profile(run_dir) if run_dir else Profile(), 0
    stats, profile = window_stats(rows, window, run_dir)
    return stats, profile, len(rows)
