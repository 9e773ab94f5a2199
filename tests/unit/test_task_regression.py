"""task: regression - target parsing, standardisation, metrics, feature fusion, save/load (tiny models, no training)."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

from domaintune.config import DataConfig
from domaintune.data import DataError
from domaintune.data.readers import Example
from domaintune.models import resolve_model
from domaintune.tasks import EvalContext, get_task
from domaintune.tasks.regression import FeatureRegressor, parse_number, regression_metrics


def write_rows(path, rows, header):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def tiny_bert_config():
    return BertConfig(vocab_size=40000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(resolve_model("minilm-l6")))


def test_parse_number():
    assert parse_number("3.8") == 3.8 and parse_number(" 1,234.5 ") == 1234.5 and parse_number("-2") == -2.0
    for bad in ("abc", "", None, "nan", "inf", "3.8 units", "高"):
        assert parse_number(bad) is None


def test_non_numeric_targets_are_problems_with_file_and_line(tmp_path):
    path = write_rows(tmp_path / "sales.csv", [("good product", "12.5"), ("bad row", "twelve"), ("新品上市", "n/a"),
                                               ("fine", "3")], ("text", "label"))
    task = get_task("regression")
    problems = []
    examples = task.read(path, DataConfig(), problems)
    assert len(examples) == 4
    msgs = [str(p) for p in problems]
    assert len(msgs) == 2
    assert msgs[0].startswith(f"{path}:3:") and "'twelve' is not a number" in msgs[0] and "->" in msgs[0]
    assert msgs[1].startswith(f"{path}:4:") and "'n/a'" in msgs[1]


def test_bad_feature_value_is_a_problem_through_prepare_data(tmp_path):
    from domaintune.config import RunConfig
    from domaintune.data import prepare_data

    rows = [(f"item {i}", str(i), "9.5" if i != 5 else "cheap") for i in range(12)]
    path = write_rows(tmp_path / "t.csv", rows, ("text", "label", "price"))
    cfg = RunConfig.model_validate({"task": "regression", "data": {"train": str(path), "feature_columns": ["price"]}})
    with pytest.raises(DataError) as err:
        prepare_data(cfg)
    assert f"{path}:7" in str(err.value) and "price" in str(err.value) and "not a number" in str(err.value)


def test_constant_target_is_reported(tmp_path):
    from domaintune.config import RunConfig
    from domaintune.data import prepare_data

    path = write_rows(tmp_path / "t.csv", [(f"item {i}", "5") for i in range(20)], ("text", "label"))
    cfg = RunConfig.model_validate({"task": "regression", "data": {"train": str(path)}})
    with pytest.raises(DataError, match="every training target is 5"):
        prepare_data(cfg)


def test_metrics_match_definitions():
    y, p = [1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.5, 5.0]
    m = regression_metrics(y, p)
    assert m["mae"] == pytest.approx((0.5 + 0 + 0.5 + 1) / 4)
    assert m["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 0.25 + 1) / 4))
    assert m["r2"] == pytest.approx(1 - 1.5 / 5.0)
    assert m["spearman"] == pytest.approx(1.0) and 0.9 < m["pearson"] < 1.0 and m["n"] == 4
    perfect = regression_metrics(y, y)
    assert perfect["mae"] == 0 and perfect["r2"] == 1 and perfect["pearson"] == pytest.approx(1)
    const = regression_metrics(y, [2.5] * 4)  # a constant prediction ranks nothing: 0, not NaN
    assert const["pearson"] == 0.0 and const["spearman"] == 0.0 and const["r2"] == pytest.approx(0.0)
    json.dumps(const, allow_nan=False)


def test_target_standardisation_fit_state_and_undo(tokenizer):
    task = get_task("regression")
    train = [Example(f"t{i}", str(v)) for i, v in enumerate([10.0, 20.0, 30.0, 40.0])]
    task.fit(train)
    assert task.target_mean == pytest.approx(25.0) and task.target_std == pytest.approx(np.std([10, 20, 30, 40]))
    feats = task.encode(tokenizer, train, 16)
    assert np.mean([f["labels"] for f in feats]) == pytest.approx(0) and np.std([f["labels"] for f in feats]) == pytest.approx(1)
    state = json.loads(json.dumps(task.state()))
    assert "standardised" in state["model_output"] and state["target"]["mean"] == pytest.approx(25.0)
    again = get_task("regression")
    again.load_state(state)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**{**tiny_bert_config().to_dict(), "num_labels": 1})).eval()
    ctx = EvalContext(tokenizer, 0, 8, 16)
    raw = again.raw_predictions(model, feats, ctx)
    logits = model(**task.collate([{k: v for k, v in f.items() if k != "labels"} for f in feats], 0)).logits[:, 0]
    assert raw == pytest.approx((logits.detach().numpy() * task.target_std + 25.0).tolist(), abs=1e-4)
    preds = again.predict(model, train, feats, ctx)
    assert set(preds[0]) == {"prediction"} and isinstance(preds[0]["prediction"], float)
    assert again.output_fields(preds[0]) == {"prediction": preds[0]["prediction"]}
    assert again.format_prediction({"prediction": 3.14159}) == "3.1416"


def test_feature_standardisation_and_prediction_inputs(tokenizer):
    task = get_task("regression")
    task.feature_columns = ["price", "week"]
    train = [Example("咖啡豆", "10", features=(10.0, 1.0)), Example("矿泉水", "30", features=(2.0, 3.0)),
             Example("coffee", "20", features=(6.0, 5.0))]
    task.fit(train)
    assert task.feature_mean == pytest.approx([6.0, 3.0])
    feats = task.encode(tokenizer, train, 16)
    x = np.asarray([f["features"] for f in feats])
    assert x.mean(0) == pytest.approx([0, 0]) and x.std(0) == pytest.approx([1, 1])
    batch = task.collate(feats, 0)
    assert batch["features"].shape == (3, 2) and batch["labels"].dtype == torch.float32
    ex = task.as_example({"text": "咖啡豆", "features": {"week": 2, "price": "8.5"}})
    assert ex.features == (8.5, 2.0)
    assert task.as_example({"text": "water", "price": 1.0, "week": 7}).features == (1.0, 7.0)  # a flat row works too
    assert task.as_example({"text": "water", "features": [3, 4]}).features == (3.0, 4.0)
    with pytest.raises(ValueError, match="week"):
        task.as_example({"text": "water", "features": {"price": 1.0}})
    with pytest.raises(ValueError, match="numeric features"):
        task.as_example("water")
    with pytest.raises(ValueError, match="not numbers"):
        task.as_example({"text": "water", "features": {"price": "cheap", "week": 1}})


def test_wide_path_starts_from_least_squares_fit():
    task = get_task("regression")
    task.feature_columns = ["price"]
    rng = np.random.default_rng(0)
    prices = rng.uniform(1, 10, 200)
    train = [Example("x", str(100 - 8 * p), features=(float(p),)) for p in prices]
    task.fit(train)
    w, _ = task._wide_init
    assert w[0] == pytest.approx(-1.0, abs=0.01)  # standardised target is a perfect negative line in price


def test_feature_model_save_load_roundtrip_with_safetensors_only(tmp_path, tokenizer):
    task = get_task("regression")
    task.feature_columns = ["price", "week"]
    train = [Example("coffee beans", "12", features=(9.0, 3.0)), Example("矿泉水", "40", features=(2.0, 30.0)),
             Example("ice cream", "25", features=(5.0, 28.0))]
    task.fit(train)
    torch.manual_seed(0)
    model = FeatureRegressor(BertModel(tiny_bert_config()), 2)
    with torch.no_grad():
        for p in model.mlp.parameters():
            p.normal_(0, 0.5)
    model.eval()
    task.save_model(model, tokenizer, tmp_path)
    assert (tmp_path / "regression_head.safetensors").is_file() and (tmp_path / "config.json").is_file()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    head = json.loads((tmp_path / "regression_head.json").read_text())
    assert head["n_features"] == 2 and head["feature_columns"] == ["price", "week"] and "standardised" in head["output"]
    loaded = get_task("regression")
    loaded.load_state(json.loads(json.dumps(task.state())))
    again = loaded.load_model(tmp_path)
    ctx = EvalContext(tokenizer, 0, 8, 16)
    feats = task.encode(tokenizer, train, 16, with_targets=False)
    assert loaded.raw_predictions(again, feats, ctx) == pytest.approx(task.raw_predictions(model, feats, ctx).tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="needs 2 numeric"):
        again(**task.collate([{"input_ids": [101, 102]}], 0))


def test_loss_choice_huber_trains_through_the_plain_hf_model():
    from domaintune.config import RunConfig

    task = get_task("regression")
    task.configure(RunConfig.model_validate({"task": "regression", "train": {"loss": "huber"}}))
    assert task.loss == "huber"
    default = get_task("regression")
    default.configure(RunConfig.model_validate({"task": "regression"}))
    assert default.loss == "mse"
    torch.manual_seed(0)
    from domaintune.tasks.regression import _LossOverride

    model = _LossOverride(BertForSequenceClassification(BertConfig(**{**tiny_bert_config().to_dict(), "num_labels": 1})), "huber")
    batch = task.collate([{"input_ids": [101, 2000, 102], "labels": 10.0}, {"input_ids": [101, 102], "labels": -10.0}], 0)
    out = model(**batch)
    pred = out.logits[:, 0]
    expected = torch.nn.functional.huber_loss(pred, batch["labels"])
    assert out.loss.item() == pytest.approx(expected.item()) and out.loss.item() < torch.nn.functional.mse_loss(pred, batch["labels"]).item()
