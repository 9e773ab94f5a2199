"""Drift statistics against hand-computed values, and the sliding window against a brute-force recount."""

from __future__ import annotations

import math

import numpy as np
import pytest

from domaintune.monitoring.profile import Profile
from domaintune.monitoring.stats import Record, SlidingWindow, js_divergence, psi


def test_psi_by_hand():
    # (0.25-0.5)*ln(0.25/0.5) + (0.75-0.5)*ln(0.75/0.5) = 0.25*ln 2 + 0.25*ln 1.5
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5), abs=1e-12)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.274653, abs=1e-6)
    assert psi([10, 30, 60], [10, 30, 60]) == 0.0
    assert psi([1, 3], [2, 2]) == pytest.approx(psi([0.25, 0.75], [0.5, 0.5]))  # counts are normalised


def test_psi_empty_bin_is_floored_not_infinite():
    v = psi([0.5, 0.5, 0.0], [0.4, 0.4, 0.2])
    # the empty expected bin counts as 1e-4: 2 * (-0.1 * ln(0.8)) + (0.2 - 1e-4) * ln(0.2 / 1e-4)
    assert v == pytest.approx(2 * (-0.1) * math.log(0.4 / 0.5) + (0.2 - 1e-4) * math.log(0.2 / 1e-4), rel=1e-9)


def test_js_divergence_by_hand():
    p, q = [0.5, 0.5], [0.25, 0.75]
    m = [0.375, 0.625]
    kl = lambda a, b: sum(x * math.log2(x / y) for x, y in zip(a, b))  # noqa: E731
    expected = 0.5 * kl(p, m) + 0.5 * kl(q, m)
    assert expected == pytest.approx(0.0487949, abs=1e-6)
    assert js_divergence(p, q) == pytest.approx(expected, abs=1e-12)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_divergence([3, 1], [3, 1]) == pytest.approx(0.0, abs=1e-12)


def _profile() -> Profile:
    return Profile(labels=["neg", "neu", "pos"], predicted_share={"neg": 0.2, "neu": 0.5, "pos": 0.3},
                   confidence_share=[0.0] * 5 + [0.1, 0.1, 0.2, 0.3, 0.3], confidence_mean=0.8,
                   length_edges=[0, 5, 10, 1e6], length_share=[0.3, 0.4, 0.3], length_mean=8.0, oov_rate=0.01,
                   embedding={"components": 2, "seed": 0, "mean": [1.0, 0.0], "std": [1.0, 1.0]})


def test_window_statistics_by_hand():
    w = SlidingWindow(4, _profile())
    for lab, conf, toks, oov, emb in [(0, 0.9, 4, 0, [0, 1]), (0, 0.7, 12, 1, [0, 1]), (1, 0.5, 6, 0, [0, 1]),
                                      (2, 0.9, 8, 3, [0, 1])]:
        w.add(Record(lab, conf, toks, 0, oov, np.array(emb, float)))
    assert w.full and w.share("neg") == 0.5 and w.share("pos") == 0.25 and w.share("unknown") == 0.0
    assert w.value("label_psi") == pytest.approx(psi([0.2, 0.5, 0.3], [0.5, 0.25, 0.25]))
    assert w.value("confidence_mean") == pytest.approx(0.75)
    assert w.value("confidence_drop") == pytest.approx(0.05)
    assert w.value("length_mean") == pytest.approx(7.5) and w.value("length_shift") == pytest.approx(7.5 / 8 - 1)
    assert w.value("length_psi") == pytest.approx(psi([0.3, 0.4, 0.3], [0.25, 0.5, 0.25]))
    assert w.value("oov_rate") == pytest.approx(4 / 30) and w.value("oov_shift") == pytest.approx(4 / 30 - 0.01)
    assert w.value("embedding_cosine") == pytest.approx(1.0)          # orthogonal to the reference mean
    assert w.value("embedding_shift") == pytest.approx(1.0)           # sqrt(((0-1)^2 + (1-0)^2) / 2)


def test_sliding_window_matches_a_recount_after_many_evictions():
    rng = np.random.default_rng(0)
    w = SlidingWindow(50, _profile())
    recs = [Record(int(rng.integers(0, 4)), float(rng.random()), int(rng.integers(1, 30)), 0, int(rng.integers(0, 3)),
                   rng.standard_normal(2)) for _ in range(437)]
    for r in recs:
        w.add(r)
    last = recs[-50:]
    counts = np.bincount([r.label for r in last], minlength=4)
    assert w.share("neg") == pytest.approx(counts[0] / 50)
    assert w.value("confidence_mean") == pytest.approx(np.mean([r.confidence for r in last]))
    assert w.value("length_mean") == pytest.approx(np.mean([r.tokens for r in last]))
    mean = np.mean([r.embedding for r in last], axis=0)
    assert w.value("embedding_cosine") == pytest.approx(1 - mean[0] / np.linalg.norm(mean))
    assert w.stats()["label_share"].get("(other)") == pytest.approx(counts[3] / 50)


def test_window_not_full_and_unknown_statistic():
    w = SlidingWindow(3, _profile())
    assert math.isnan(w.value("label_psi")) and not w.full
    with pytest.raises(KeyError, match="unknown statistic"):
        w.value("nope")


def test_offline_plots_render_chinese_labels(tmp_path, caplog):
    import datetime as dt
    import logging
    import warnings

    from domaintune.monitoring.offline import plot_windows, stats_table, window_stats

    t = dt.datetime(2026, 11, 26, 8, 0)
    rows = [(t, f"文本{i}", {"label": "负面" if i % 3 == 0 or i >= 60 else "正面", "score": 0.9}) for i in range(90)]
    windows, profile = window_stats(rows, 30)
    assert profile.labels == ["负面", "正面"] and [w["n"] for w in windows] == [30, 30, 30]
    assert windows[0]["label_share"]["负面"] == pytest.approx(1 / 3) and windows[2]["label_share"]["负面"] == 1.0
    assert stats_table(windows, profile, "t").row_count == 3
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, "domaintune"):
        warnings.simplefilter("always")
        paths = plot_windows(windows, profile, tmp_path, "情感")
    assert [p.name for p in paths] == ["情感_label_share.png", "情感_drift.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    assert not [w for w in caught if "Glyph" in str(w.message) and "missing" in str(w.message)]
    assert "No CJK font" not in caplog.text


def _ml(*names):
    """A multi-label prediction as the service returns it."""
    return {"labels": [{"label": n, "score": 0.9} for n in names], "label": "|".join(names), "scores": {}}


def test_multilabel_window_counts_every_label_of_a_text_and_none_as_a_category():
    from domaintune.monitoring.profile import label_indices, prediction_labels

    assert prediction_labels(_ml("设备故障", "安全隐患")) == ["设备故障", "安全隐患"]
    assert prediction_labels(_ml()) == ["(none)"]
    assert prediction_labels({"label": None, "score": 0.2}) == ["(abstain)"]
    assert prediction_labels({"value": 3.2}) is None
    profile = Profile(labels=["设备故障", "安全隐患", "(none)"],
                      predicted_share={"设备故障": 0.5, "安全隐患": 0.5, "(none)": 0.25})
    w = SlidingWindow(4, profile)
    preds = [_ml("设备故障", "安全隐患"), _ml("设备故障"), _ml(), _ml("安全隐患", "新标签"), _ml("设备故障")]
    for p in preds:
        w.add(Record(label_indices(p, profile.label_index), float("nan")), has_text=False)
    # the last 4 texts: {设备故障}, {(none)}, {安全隐患, a label the profile lacks}, {设备故障}
    assert w.share("设备故障") == pytest.approx(2 / 4) and w.share("安全隐患") == pytest.approx(1 / 4)
    assert w.share("(none)") == pytest.approx(1 / 4)
    assert w.label_share() == pytest.approx({"设备故障": 0.5, "安全隐患": 0.25, "(none)": 0.25, "(other)": 0.25})
    # label PSI compares label occurrences (5 here) with the profile's, both normalised
    assert w.value("label_psi") == pytest.approx(psi([0.5, 0.5, 0.25, 0.0], [2, 1, 1, 1]))


def test_multilabel_profile_shares_are_per_text_fractions():
    from domaintune.monitoring.profile import build_profile

    class NoTokens:  # the label part of a profile needs no tokenizer
        tensor_name, components, seed = None, 0, 0

        def token_ids(self, texts):
            return [[1, 2] for _ in texts]

        def set_vocab(self, vocab):
            pass

        def records(self, texts, labels, scores):
            return [Record(0, s, 2) for s in scores]

    preds = [_ml("a", "b"), _ml("a"), _ml(), _ml("b")]
    gold = [("a", "b"), ("a",), (), ("a",)]
    p = build_profile(NoTokens(), ["t"] * 4, preds, gold, labels=["a", "b"])
    assert p.labels == ["a", "b", "(none)"]
    assert p.predicted_share == {"a": 0.5, "b": 0.5, "(none)": 0.25}
    assert p.gold_share == {"a": 0.75, "b": 0.25, "(none)": 0.25}
