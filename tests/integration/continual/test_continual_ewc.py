"""ewc: the Fisher is stored as safetensors and the weights the old stage needs move less than under naive."""

import json

import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from domaintune.continual import continue_run


def weighted_drift(model_dir, anchor_dir, fisher) -> float:
    new = {n: p.detach() for n, p in AutoModelForSequenceClassification.from_pretrained(model_dir).named_parameters()}
    old = {n: p.detach() for n, p in AutoModelForSequenceClassification.from_pretrained(anchor_dir).named_parameters()}
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


def test_a_stage_without_ewc_carries_the_fisher_with_its_own_importance_added(stage0, tmp_path):
    """ewc -> naive -> ewc: the middle stage adds its Fisher to the stored sum, so the last ewc stage covers all."""
    ewc_run = stage0["root"] / "runs" / "b-ewc"
    if not (ewc_run / "continual" / "ewc" / "meta.json").is_file():  # this module's first test makes it
        continue_run(stage0["run"], stage0["b"], ewc_run, strategy="ewc", overrides=["train.max_steps=3"])
    before = load_file(str(ewc_run / "continual" / "ewc" / "fisher.safetensors"))
    mid = continue_run(ewc_run, stage0["a"], tmp_path / "c", strategy="naive", overrides=["train.max_steps=3"])
    carried = tmp_path / "c" / "continual" / "ewc"
    assert mid["record"]["fisher_carried"] == [0, 1, 2]
    assert json.loads((carried / "meta.json").read_text())["stages"] == [0, 1, 2]
    after = load_file(str(carried / "fisher.safetensors"))
    assert set(after) == set(before)
    assert all((after[n] >= before[n]).all() for n in before)      # a sum of non-negative terms only grows
    assert any((after[n] > before[n]).any() for n in before)       # and this stage's importance was added
    last = continue_run(tmp_path / "c", stage0["b"], tmp_path / "d", strategy="ewc", overrides=["train.max_steps=3"])
    assert last["record"]["fisher_stages"] == [0, 1, 2, 3]
