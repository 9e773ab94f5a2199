"""ewc: the Fisher is stored as safetensors and the weights the old stage needs move less than under naive."""

import json

import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from domaintune.continual import continue_run


def weighted_drift(model_dir, anchor_dir, fisher) -> float:
    new = dict(AutoModelForSequenceClassification.from_pretrained(model_dir).named_parameters())
    old = dict(AutoModelForSequenceClassification.from_pretrained(anchor_dir).named_parameters())
    total = 0.0
    for n, a in old.items():
        sl = tuple(slice(0, s) for s in a.shape)
        total += float((fisher[n][sl] * (new[n][sl] - a) ** 2).sum())
    return total


def test_ewc_runs_stores_fisher_and_holds_important_weights(stage0, naive_cli):
    out = stage0["root"] / "runs" / "b-ewc"
    res = continue_run(stage0["run"], stage0["b"], out, strategy="ewc", overrides=["train.epochs=2", "data.test_fraction=0.2"])
    fisher_path = out / "continual" / "ewc" / "fisher.safetensors"
    assert fisher_path.is_file() and json.loads((fisher_path.parent / "meta.json").read_text())["stages"] == [0, 1]
    fisher = load_file(str(fisher_path))
    assert fisher["classifier.weight"].shape[0] == 6 and all(torch.isfinite(v).all() for v in fisher.values())
    assert res["record"]["settings"]["ewc_lambda"] == 100.0
    d_ewc = weighted_drift(out / "model", stage0["run"] / "model", fisher)
    d_naive = weighted_drift(naive_cli["run"] / "model", stage0["run"] / "model", fisher)
    assert d_ewc < 0.5 * d_naive, (d_ewc, d_naive)
    assert res["matrix"][1][1] > 0.5          # the new stage is still learnt under the penalty
