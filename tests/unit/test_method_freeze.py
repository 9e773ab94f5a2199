"""Freezing strategies (`freeze:` with method full): exactly the intended weights train."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

from domaintune.config_methods import FreezeSection
from domaintune.methods.freeze import FreezeError, apply_freezing, trainable_names
from domaintune.methods.full import FullFineTuning
from domaintune.models import resolve_model

LAYERS = 6  # minilm-l6


@pytest.fixture(scope="module")
def model_dir():
    return resolve_model("minilm-l6")


def _seq(model_dir):
    return AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=3)


def _prepared(model_dir, **freeze):
    """A model as FullFineTuning.prepare leaves it with the given freeze section."""
    from domaintune.config import RunConfig

    method = FullFineTuning()
    method.configure(RunConfig(data={"train": "x.csv"}, freeze=freeze))
    model = method.prepare(_seq(model_dir))
    return model, method


def test_no_freeze_trains_everything(model_dir):
    model, method = _prepared(model_dir)
    assert all(p.requires_grad for p in model.parameters())
    assert method.settings() == {}


def test_head_only_is_a_linear_probe(model_dir):
    model, method = _prepared(model_dir, head_only=True)
    assert sorted(trainable_names(model)) == ["classifier.bias", "classifier.weight"]
    assert method.settings()["freeze"]["frozen"] == ["bert"]


def test_top_k_layers_trains_top_layers_pooler_and_head(model_dir):
    model, method = _prepared(model_dir, top_k_layers=2)
    names = trainable_names(model)
    layers = {int(n.split(".")[3]) for n in names if n.startswith("bert.encoder.layer.")}
    assert layers == {4, 5}
    assert not [n for n in names if "embeddings" in n]
    assert {n for n in names if not n.startswith("bert.encoder.")} == {
        "bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}
    s = method.settings()["freeze"]
    assert s["frozen"] == ["bert.encoder.layer.0-3", "bert.embeddings"]
    assert "bert.encoder.layer.5" in s["trainable_modules"]


def test_top_k_zero_and_all(model_dir):
    model, _ = _prepared(model_dir, top_k_layers=0)
    assert sorted(trainable_names(model)) == ["bert.pooler.dense.bias", "bert.pooler.dense.weight",
                                             "classifier.bias", "classifier.weight"]
    model, _ = _prepared(model_dir, top_k_layers=LAYERS)
    names = trainable_names(model)
    assert not [n for n in names if "embeddings" in n]
    assert {int(n.split(".")[3]) for n in names if n.startswith("bert.encoder.layer.")} == set(range(LAYERS))


def test_freeze_embeddings_only(model_dir):
    model, _ = _prepared(model_dir, freeze_embeddings=True)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("bert.embeddings.") for n in frozen)
    assert len(frozen) == len([n for n, _ in model.named_parameters() if n.startswith("bert.embeddings.")])


def test_token_classification_model(model_dir):
    model = AutoModelForTokenClassification.from_pretrained(str(model_dir), num_labels=5)
    apply_freezing(model, FreezeSection(top_k_layers=1))
    names = trainable_names(model)
    assert {n for n in names if not n.startswith("bert.encoder.layer.5.")} == {"classifier.weight", "classifier.bias"}


def test_custom_encoder_head(model_dir):
    """domaintune's own heads (FeatureRegressor) keep the encoder as `.encoder`: the rest is the head."""
    from domaintune.tasks.regression import FeatureRegressor

    model = FeatureRegressor(AutoModel.from_pretrained(str(model_dir)), n_features=2)
    apply_freezing(model, FreezeSection(head_only=True))
    assert {n.split(".")[0] for n in trainable_names(model)} == {"mlp", "wide"}


def test_bad_options_say_what_to_change(model_dir):
    with pytest.raises(FreezeError, match="exclude each other"):
        apply_freezing(_seq(model_dir), FreezeSection(head_only=True, top_k_layers=2))
    with pytest.raises(FreezeError, match="has 6 layers"):
        apply_freezing(_seq(model_dir), FreezeSection(top_k_layers=7))
    from domaintune.tasks.retrieval import BiEncoder

    with pytest.raises(FreezeError, match="no task head"):
        apply_freezing(BiEncoder(AutoModel.from_pretrained(str(model_dir))), FreezeSection(head_only=True))


def test_head_only_run_keeps_the_encoder_bitwise(tmp_path, tiny_splits, model_dir):
    """A real run with head_only: the saved encoder equals the pretrained one, the head moved."""
    from support import tiny_config_path

    from domaintune.config import load_config
    from domaintune.run import train_run

    cfg = load_config(tiny_config_path(tmp_path, tiny_splits, tmp_path / "probe", baseline_off=True, max_steps=3,
                                       lr=1e-2, head_init="random"), ["freeze.head_only=true"])
    metrics = train_run(cfg)
    saved = load_file(str(tmp_path / "probe" / "model" / "model.safetensors"))
    pretrained = load_file(str(model_dir / "model.safetensors"))
    for name in ("encoder.layer.0.attention.self.query.weight", "embeddings.word_embeddings.weight",
                 "pooler.dense.weight"):
        assert torch.equal(saved[f"bert.{name}"], pretrained[name]), name
    assert metrics["method_settings"]["trainable_parameters"] == 384 * 3 + 3
    assert metrics["method_settings"]["freeze"]["head_only"] is True
    written = json.loads((tmp_path / "probe" / "metrics.json").read_text(encoding="utf-8"))
    assert written["method_settings"]["freeze"]["frozen"] == ["bert"]
