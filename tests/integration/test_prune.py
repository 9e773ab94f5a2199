"""Layer pruning of a real fine-tuned MiniLM run, with and without distillation."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from domaintune.export.prune import PruneError, kept_indices, prune_run
from domaintune.predictor import Predictor


def test_kept_indices():
    assert kept_indices(6, 3, "bottom") == [0, 1, 2]
    assert kept_indices(6, 3, "spread") == [0, 2, 5]
    assert kept_indices(12, 4, "spread") == [0, 4, 7, 11]
    with pytest.raises(PruneError, match="keep between 1 and 5"):
        kept_indices(6, 6, "bottom")


@pytest.mark.parametrize("distill", [False, True])
def test_prune_writes_a_smaller_run_with_its_trade_off(trained_run, tmp_path, distill):
    out = tmp_path / "pruned"
    rec = prune_run(trained_run, 3, out, epochs=2, distill=distill)
    assert AutoConfig.from_pretrained(out / "model").num_hidden_layers == 3
    saved = json.loads((out / "pruning.json").read_text())
    assert saved["layers_before"] == 6 and saved["layers_kept"] == [0, 2, 5]
    assert saved["pruned"]["parameters"] < saved["original"]["parameters"]
    assert saved["eval_examples"] == 30 and saved["distill"] is distill
    assert "| pruned | 3 |" in (out / "pruning.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert ("distillation" in json.dumps(metrics.get("method_settings", {}))) is distill
    preds = Predictor(out).predict(["The main breaker tripped", "Order two bearings"])
    assert all(p["label"] in ("electrical_fault", "safety_incident", "spare_parts_request") for p in preds)
    # the pruned model is still a useful classifier on the tiny data (3 balanced classes: chance is 0.33)
    assert rec["pruned"]["value"] > 0.5
