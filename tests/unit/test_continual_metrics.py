"""Continual-learning scores and the gate on a hand-computed accuracy matrix."""

import warnings

import numpy as np
import pytest
from matplotlib.image import imread

from domaintune.continual.metrics import (average_accuracy, average_forgetting, backward_transfer, forgetting_per_stage,
                                          gate, summarize)
from domaintune.continual.report import accuracy_heatmap_png, continual_section

# R[i][j]: accuracy on stage j's test set after training stage i.
R = [[0.90],
     [0.95, 0.80],          # stage 0 improved after stage 1 (positive transfer): forgetting uses its best
     [0.50, 0.70, 0.95]]


def test_average_accuracy_by_hand():
    assert average_accuracy(R, 0) == pytest.approx(90.0)
    assert average_accuracy(R, 1) == pytest.approx(87.5)
    assert average_accuracy(R) == pytest.approx((50 + 70 + 95) / 3)


def test_forgetting_uses_the_best_earlier_accuracy():
    # stage 0: best 95 (after stage 1) - 50 = 45; stage 1: 80 - 70 = 10
    assert forgetting_per_stage(R) == pytest.approx([45.0, 10.0])
    assert average_forgetting(R) == pytest.approx(27.5)
    assert average_forgetting(R, 1) == pytest.approx(-5.0)  # after stage 1, stage 0 got better: negative forgetting
    assert average_forgetting(R, 0) is None


def test_backward_transfer_uses_the_just_trained_accuracy():
    # (50 - 90) and (70 - 80): mean -25, which differs from forgetting's 27.5
    assert backward_transfer(R) == pytest.approx(-25.0)
    assert backward_transfer(R, 1) == pytest.approx(5.0)
    assert backward_transfer(R, 0) is None
    s = summarize(R)
    assert s["average_accuracy_per_stage"] == pytest.approx([90.0, 87.5, 215 / 3])


def test_gate_compares_with_the_previous_run_and_names_the_stage():
    g = gate(R, 20.0, ["tickets", "invoices", "emails"])
    assert g["promotable"] is False
    assert [d["drop_points"] for d in g["drops"]] == pytest.approx([45.0, 10.0])
    assert [d["blocked"] for d in g["drops"]] == [True, False]
    assert "stage 0 (tickets) dropped 45.00 points" in g["reason"]
    assert gate(R, 50.0, ["a", "b", "c"])["promotable"] is True
    assert gate(R, None, ["a", "b", "c"])["promotable"] is True


def test_missing_entry_is_an_error():
    with pytest.raises(ValueError, match="no entry for stage 1"):
        average_accuracy([[0.9], [0.8, None]])


def test_heatmap_renders_chinese_stage_names(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = accuracy_heatmap_png(R, ["酒店评论", "外卖评论", "banking77"], tmp_path / "plots" / "h.png")
    assert not [w for w in caught if "missing from font" in str(w.message)]
    image = imread(out)
    assert image.shape[0] > 200 and image.shape[1] > 200
    assert not np.allclose(image[..., 0], image[0, 0, 0])
    text = continual_section([{"index": i, "name": n, "kind": "k", "strategy": "replay"} for i, n in enumerate("abc")],
                             R, summarize(R), gate(R, 20.0, list("abc")), "plots/h.png")
    assert "| after 2: c | 50.00 | 70.00 | 95.00 |" in text and "NOT promotable" in text
