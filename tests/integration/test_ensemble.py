"""`domaintune ensemble`: averaged probabilities, a self-contained run directory the Predictor serves, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from domaintune.config import load_config
from domaintune.ensemble import EnsembleError, EnsembleModel, build_ensemble
from domaintune.predictor import Predictor
from domaintune.run import train_run

TEXTS = ["the main breaker tripped again in hall 3", "we need two spare bearings for the conveyor",
         "a worker slipped near the loading dock", "配电柜冒烟，需要马上断电"]


@pytest.fixture(scope="module")
def members(tmp_path_factory, tiny_splits):
    from support import tiny_config_path

    root = tmp_path_factory.mktemp("ens")
    runs = []
    for seed in (1, 2):
        out = root / f"member{seed}"
        cfg = load_config(tiny_config_path(root, tiny_splits, out, baseline_off=True, max_steps=3, seed=seed,
                                           lr=3e-4, head_init="random"))
        train_run(cfg)
        runs.append(out)
    return root, runs


def probs(run_dir, texts) -> torch.Tensor:
    p = Predictor(run_dir)
    rows = p.predict(texts, top_k=len(p.labels))
    return torch.tensor([[next(a["score"] for a in r["top_k"] if a["label"] == lab) for lab in p.labels] for r in rows])


def test_ensemble_averages_probabilities_and_is_self_contained(members):
    root, runs = members
    out = root / "ensemble"
    metrics = build_ensemble(runs, out)
    head = json.loads((out / "model" / "domaintune_head.json").read_text())
    assert head["kind"] == "ensemble" and head["members"] == ["members/0", "members/1"]
    assert (out / "model" / "members" / "1" / "config.json").is_file()
    assert json.loads((out / "labels.json").read_text()) == json.loads((runs[0] / "labels.json").read_text())
    assert yaml.safe_load((out / "config.yaml").read_text())["output_dir"] == str(out)

    expected = (probs(runs[0], TEXTS) + probs(runs[1], TEXTS)) / 2
    got = probs(out, TEXTS)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(probs(runs[0], TEXTS), probs(runs[1], TEXTS), atol=1e-3)  # members really differ

    # scored on the members' test split: one row per member plus the ensemble
    assert len(metrics["member_test"]) == 2 and 0 <= metrics["test"]["accuracy"] <= 1
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["method"] == "ensemble" and saved["test"]["accuracy"] == metrics["test"]["accuracy"]
    assert "**ensemble**" in (out / "report.md").read_text()

    # self-contained: the member runs can go away
    moved = root / "moved"
    moved.mkdir()
    for r in runs:
        shutil.move(str(r), moved / r.name)
    try:
        assert torch.allclose(probs(out, TEXTS), got, atol=1e-6)
    finally:
        for r in runs:
            shutil.move(str(moved / r.name), r)

    with pytest.raises(EnsembleError, match="already exists"):
        build_ensemble(runs, out)
    build_ensemble(runs, out, overwrite=True, evaluate=False)
    assert (out / "model" / "domaintune_head.json").is_file()


def test_log_mean_probability_logits():
    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = torch.tensor(logits)

        def forward(self, **_):
            from transformers.modeling_outputs import SequenceClassifierOutput

            return SequenceClassifierOutput(logits=self.logits)

    a, b = [[4.0, 0.0, -2.0]], [[-1.0, 3.0, 0.0]]
    ens = EnsembleModel([Fixed(a), Fixed(b)], "softmax")
    mean = (torch.tensor(a).softmax(-1) + torch.tensor(b).softmax(-1)) / 2
    assert torch.allclose(ens(input_ids=None).logits.softmax(-1), mean, atol=1e-6)
    sig = EnsembleModel([Fixed(a), Fixed(b)], "sigmoid")(input_ids=None).logits
    assert torch.allclose(torch.sigmoid(sig), (torch.sigmoid(torch.tensor(a)) + torch.sigmoid(torch.tensor(b))) / 2, atol=1e-5)
    assert torch.equal(EnsembleModel([Fixed(a), Fixed(b)], "mean")(input_ids=None).logits, (torch.tensor(a) + torch.tensor(b)) / 2)


def test_incompatible_members_are_clear_errors(members, tmp_path):
    root, runs = members
    other = tmp_path / "other"
    shutil.copytree(runs[1], other)
    state = json.loads((other / "task.json").read_text())
    state["labels"] = [*state["labels"][:-1], "conveyor_jam"]
    (other / "task.json").write_text(json.dumps(state))
    with pytest.raises(EnsembleError, match="label maps differ.*conveyor_jam"):
        build_ensemble([runs[0], other], tmp_path / "e1")

    shutil.rmtree(other)
    shutil.copytree(runs[1], other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["task"] = "multilabel"
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(EnsembleError, match="same task"):
        build_ensemble([runs[0], other], tmp_path / "e2")

    shutil.rmtree(other)
    shutil.copytree(runs[1], other)
    from domaintune.models import resolve_model

    zh = resolve_model("m3e-small")  # a Chinese vocabulary: a different tokenizer
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (other / "model" / name).unlink(missing_ok=True)
        if (zh / name).is_file():
            shutil.copy2(zh / name, other / "model" / name)
    with pytest.raises(EnsembleError, match="different tokenizer"):
        build_ensemble([runs[0], other], tmp_path / "e3")

    with pytest.raises(EnsembleError, match="at least two"):
        build_ensemble([runs[0]], tmp_path / "e4")
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    with pytest.raises(EnsembleError, match="not a finished run"):
        build_ensemble([runs[0], not_a_run], tmp_path / "e5")
    with pytest.raises(EnsembleError, match="must not be one of the members"):
        build_ensemble([runs[0], runs[1]], runs[1] / "inside")
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e3").exists()


def test_cli_ensemble(members):
    from typer.testing import CliRunner

    from domaintune.cli import app

    root, runs = members
    out = root / "cli-ensemble"
    res = CliRunner().invoke(app, ["ensemble", str(runs[0]), str(runs[1]), "-o", str(out), "--no-eval"])
    assert res.exit_code == 0, res.output
    assert "ensemble run written" in res.output
    res = CliRunner().invoke(app, ["predict", str(out), "--text", TEXTS[3]])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["ensemble", str(runs[0]), "-o", str(root / "x")])
    assert res.exit_code == 2 and "at least two" in res.output
