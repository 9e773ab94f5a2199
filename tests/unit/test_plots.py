"""Report figures: valid PNGs, readable at 77 classes, and Chinese labels drawn with real glyphs."""

from __future__ import annotations

import logging
import warnings

import matplotlib
import numpy as np
import pytest
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font
from matplotlib.image import imread

from domaintune.evaluation import plots
from domaintune.evaluation.plots import (
    cjk_font_family,
    confusion_matrix_png,
    per_class_f1_png,
    training_curves_png,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHINESE_LABELS = ["正面", "负面", "新闻_体育"]
_PARTS = ["card", "payment", "wrong", "exchange", "rate", "transfer", "pending", "declined",
          "top", "up", "verify", "identity", "cash", "withdrawal", "refund", "beneficiary"]


def _long_labels(n: int) -> list[str]:
    rng = np.random.default_rng(7)
    labels = ["card_payment_wrong_exchange_rate", "balance_not_updated_after_cheque_or_cash_deposit"]
    while len(labels) < n:
        name = "_".join(rng.choice(_PARTS, size=rng.integers(2, 6), replace=False))
        if name not in labels:
            labels.append(name)
    return labels


def _confusion(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    matrix = rng.integers(0, 3, (n, n)) * (rng.random((n, n)) < 0.1)
    matrix[np.arange(n), np.arange(n)] = rng.integers(20, 60, n)
    return matrix


def _assert_png(path, min_side: int) -> np.ndarray:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert min(image.shape[:2]) >= min_side
    assert image[..., :3].std() > 0.02, "image is (almost) blank"
    assert not list(path.parent.glob(".*.tmp")), "atomic write left a temp file behind"
    return image


def _glyph_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "missing from font" in str(w.message)]


def test_confusion_matrix_77_long_labels(tmp_path):
    labels = _long_labels(77)
    out = confusion_matrix_png(_confusion(77), labels, tmp_path / "nested" / "dir" / "cm.png")
    assert out == tmp_path / "nested" / "dir" / "cm.png"
    image = _assert_png(out, min_side=1500)  # scaled up so 77 tick labels don't overlap
    small = imread(confusion_matrix_png(_confusion(3), CHINESE_LABELS, tmp_path / "small.png"))
    assert image.shape[0] > small.shape[0] and image.shape[1] > small.shape[1]


def test_confusion_matrix_chinese_labels(tmp_path):
    out = confusion_matrix_png(np.array([[50, 3, 1], [4, 40, 2], [0, 5, 30]]), CHINESE_LABELS,
                               tmp_path / "cm_zh.png", title="混淆矩阵 (test)")
    _assert_png(out, min_side=400)


def test_confusion_matrix_overwrites_and_counts_mode(tmp_path):
    path = tmp_path / "cm.png"
    confusion_matrix_png(_confusion(4), list("abcd"), path)
    first = path.read_bytes()
    confusion_matrix_png(_confusion(4, seed=1), list("abcd"), path, normalize=False)
    assert path.read_bytes() != first
    _assert_png(path, min_side=300)


def test_confusion_matrix_rejects_label_mismatch(tmp_path):
    with pytest.raises(ValueError):
        confusion_matrix_png(_confusion(3), ["a", "b"], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_cjk_font_family_selects_font_with_chinese_glyphs():
    family = cjk_font_family()
    assert family[-1] == "DejaVu Sans"
    assert len(family) >= 2, "no CJK-capable font registered"
    path = font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
    font = FT2Font(path)
    for char in "正负面新闻体育":
        assert font.get_char_index(ord(char)) != 0, f"{path} has no glyph for {char!r}"


def test_pinned_font_package_is_installed():
    """The pip-only route must work: requirements.lock pins the package that ships the font."""
    path = plots._bundled_font_path()
    assert path is not None and path.stat().st_size > 1_000_000
    assert FT2Font(str(path)).get_char_index(ord("负")) != 0


def test_chinese_renders_real_glyphs_not_tofu():
    """Different characters must produce different pixels; tofu boxes all look alike."""
    def render(char: str) -> np.ndarray:
        with matplotlib.rc_context({"font.family": "sans-serif", "font.sans-serif": cjk_font_family()}):
            fig = Figure(figsize=(1, 1), dpi=50)
            fig.text(0.5, 0.5, char, fontsize=30, ha="center", va="center")
            canvas = FigureCanvasAgg(fig)
            canvas.draw()
            return np.asarray(canvas.buffer_rgba())[..., 0].copy()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        zheng, fu = render("正"), render("负")
    assert not _glyph_warnings(caught)
    assert (zheng < 128).any() and (fu < 128).any()
    assert not np.array_equal(zheng, fu)


def test_no_missing_glyph_warning_for_chinese_plots(tmp_path, caplog):
    per_class = {label: {"precision": 0.8, "recall": 0.7, "f1": 0.75, "support": 12}
                 for label in CHINESE_LABELS}
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, "domaintune"):
        warnings.simplefilter("always")
        confusion_matrix_png(_confusion(3), CHINESE_LABELS, tmp_path / "cm.png", title="测试集混淆矩阵")
        per_class_f1_png(per_class, tmp_path / "f1.png")
    assert not _glyph_warnings(caught), _glyph_warnings(caught)
    assert "No CJK font" not in caplog.text


def test_missing_glyph_detection_works_without_cjk_font():
    """Guard for the test above: with only DejaVu Sans the warning *is* emitted."""
    fig = Figure()
    fig.text(0.5, 0.5, "负面", family="DejaVu Sans")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FigureCanvasAgg(fig).draw()
    assert _glyph_warnings(caught)


def test_training_curves(tmp_path):
    rows = []
    for step in range(10, 610, 10):
        rows.append({"step": step, "epoch": step / 300, "loss": 2.0 * np.exp(-step / 200) + 0.1,
                     "lr": 5e-5, "samples_per_second": 110.0})
        if step % 300 == 0:
            rows.append({"step": step, "epoch": step / 300,
                         "eval": {"accuracy": 0.8 + step / 6000, "macro_f1": 0.75 + step / 6000}})
    _assert_png(training_curves_png(rows, tmp_path / "curves.png"), min_side=400)


def test_training_curves_tolerates_empty_and_eval_only(tmp_path):
    _assert_png(training_curves_png([], tmp_path / "empty.png"), min_side=400)
    rows = [{"step": 5, "epoch": 1.0, "eval": {"accuracy": 0.5}}]
    _assert_png(training_curves_png(rows, tmp_path / "eval_only.png"), min_side=400)


def test_per_class_f1_77_classes(tmp_path):
    rng = np.random.default_rng(3)
    per_class = {label: {"precision": p, "recall": p, "f1": p, "support": 40}
                 for label, p in zip(_long_labels(77), rng.uniform(0.3, 1.0, 77))}
    per_class["macro avg"] = {"precision": 0.7, "recall": 0.7, "f1": 0.7, "support": 3080}
    image = _assert_png(per_class_f1_png(per_class, tmp_path / "f1.png"), min_side=800)
    assert image.shape[0] > image.shape[1], "77 bars need a tall figure"
