"""task: pair - mode detection, STS-B/AFQMC-style files through config alone, cross-encoding, state (no training)."""

import json

import pytest
from transformers import AutoTokenizer

from domaintune.config import RunConfig
from domaintune.data import DataError, prepare_data
from domaintune.data.readers import Example
from domaintune.models import resolve_model
from domaintune.tasks import get_task
from domaintune.tasks.pair import detect_mode

# STS-B layout: genre, file, year, id, score, sentence1, sentence2 [, extra source fields]; stray quotes, no quoting.
STS_ROWS = [
    'main-captions\tMSRvid\t2012test\t0001\t5.000\tA plane is taking off.\tAn air plane is taking off.',
    'main-captions\tMSRvid\t2012test\t0004\t3.800\tA man is playing a large flute.\tA man is playing a flute.',
    'main-news\theadlines\t2013\t0010\t0.600\t"Obama signs "budget" deal\tQuake hits Japan"\tsrc1\tsrc2',
    'main-forums\tdeft-forum\t2014\t0012\t2.250\tHe said "no.\tShe said yes.',
    'main-captions\tMSRvid\t2012test\t0020\t1.400\tA woman is slicing onions.\tA man is playing guitar.',
    'main-captions\tMSRvid\t2012test\t0021\t4.200\tA cat sleeps.\tA cat is sleeping.',
]
# AFQMC layout: sentence1, sentence2, label (0/1), no header.
AFQMC_ROWS = ["花呗怎么还款\t花呗如何还钱\t1", "借呗额度怎么提升\t花呗可以分期吗\t0", "蚂蚁借呗能提前还吗\t借呗可以提前还款吗\t1",
              "花呗逾期有什么影响\t余额宝收益怎么算\t0", "支付宝怎么开通花呗\t如何开通蚂蚁花呗\t1", "花呗账单在哪看\t借呗利息多少\t0"]


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sts_config(tmp_path, rows=STS_ROWS):
    path = write_lines(tmp_path / "sts-train.csv", rows)
    return RunConfig.model_validate({"task": "pair", "data": {
        "train": str(path), "dev": str(path), "test": str(path), "format": "tsv", "has_header": False,
        "text_column": 5, "text_pair_column": 6, "label_column": 4}})


def afqmc_config(tmp_path):
    path = write_lines(tmp_path / "train.txt", AFQMC_ROWS)
    return RunConfig.model_validate({"task": "pair", "model": "m3e-small", "data": {
        "train": str(path), "dev": str(path), "test": str(path), "format": "tsv", "has_header": False,
        "text_column": 0, "text_pair_column": 1, "label_column": 2}})


def test_detect_mode():
    assert detect_mode(["5.000", "3.800", "0.600"])[0] == "scoring"
    assert detect_mode(["0", "1", "1", "0"]) == ("classification", "labels are 2 distinct integers (at most 20): treated as classes")
    assert detect_mode([str(i) for i in range(1, 51)])[0] == "scoring"          # a 1-50 rating is a score
    assert detect_mode([str(i % 5) for i in range(100)])[0] == "classification"  # 5 integer grades are classes
    assert detect_mode(["entailment", "neutral", "contradiction"])[0] == "classification"
    assert detect_mode(["相同", "不同"])[0] == "classification"
    mode, reason = detect_mode(["1.5"] * 99 + ["3.x"])                           # one typo among scores
    assert mode == "scoring" and "non-integer" in reason


def test_stsb_layout_loads_through_config_alone(tmp_path):
    cfg = sts_config(tmp_path)
    task = get_task("pair")
    splits = prepare_data(cfg, task)
    assert task.mode == "scoring" and task.default_metric == "spearman" and "spearman" in task.headline
    ex = {e.line: e for e in splits.test}
    assert ex[1].text == "A plane is taking off." and ex[1].text_pair == "An air plane is taking off." and ex[1].label == "5.000"
    assert ex[3].text == '"Obama signs "budget" deal' and ex[3].text_pair == 'Quake hits Japan"'  # 9 fields, quotes literal
    assert ex[4].text == 'He said "no.' and len(splits.test) == 6
    state = task.state()
    assert state["mode"] == "scoring" and "non-integer" in state["mode_reason"] and state["target"]["std"] > 0


def test_bad_score_is_a_problem_with_file_and_line(tmp_path):
    rows = STS_ROWS * 4 + ["main-captions\tMSRvid\t2012test\t0099\tfour\tA dog runs.\tA dog is running."]
    cfg = sts_config(tmp_path, rows)
    with pytest.raises(DataError) as err:
        prepare_data(cfg, get_task("pair"))
    assert f"{tmp_path / 'sts-train.csv'}:25: score 'four' is not a number" in str(err.value)


def test_missing_pair_column_is_reported(tmp_path):
    path = write_lines(tmp_path / "t.tsv", AFQMC_ROWS)
    cfg = RunConfig.model_validate({"task": "pair", "data": {"train": str(path), "has_header": False, "text_column": 0,
                                                              "label_column": 2}})
    with pytest.raises(DataError, match="text_pair_column"):
        prepare_data(cfg, get_task("pair"))


def test_chinese_afqmc_pairs_are_classification_with_segment_ids(tmp_path):
    cfg = afqmc_config(tmp_path)
    task = get_task("pair")
    splits = prepare_data(cfg, task)
    assert task.mode == "classification" and task.labels == ["0", "1"] and task.default_metric == "macro_f1"
    assert "accuracy" in task.headline and task.supports_probe_init
    tok = AutoTokenizer.from_pretrained(str(resolve_model("m3e-small")))
    feats = task.encode(tok, splits.train, 64)
    first = next(f for f, e in zip(feats, splits.train) if e.text == "花呗怎么还款")
    assert set(first["token_type_ids"]) == {0, 1}                 # two segments: a cross-encoder input
    n_a = first["token_type_ids"].index(1)
    assert tok.decode(first["input_ids"][1:n_a - 1]).replace(" ", "") == "花呗怎么还款"
    batch = task.collate(feats, tok.pad_token_id)
    assert batch["token_type_ids"].shape == batch["input_ids"].shape and batch["labels"].tolist() == [f["labels"] for f in feats]


def test_state_roundtrip_and_prediction_inputs(tmp_path):
    task = get_task("pair")
    prepare_data(afqmc_config(tmp_path), task)
    again = get_task("pair")
    again.load_state(json.loads(json.dumps(task.state())))
    assert again.mode == "classification" and again.labels == ["0", "1"]
    ex = again.as_example(("花呗怎么还款", "花呗如何还钱"))
    assert ex.text_pair == "花呗如何还钱"
    assert again.as_example({"text": "a", "text_pair": "b"}).text_pair == "b"
    with pytest.raises(ValueError, match="two texts"):
        again.as_example("只有一句")
    scoring = get_task("pair")
    scoring.load_state({"mode": "scoring", "mode_reason": "r", "target": {"mean": 2.5, "std": 1.5}})
    assert scoring.mode == "scoring" and scoring.inner.target_mean == 2.5
    assert scoring.output_fields({"prediction": 3.2}) == {"prediction": 3.2}
    assert "scoring" in "\n".join(scoring.report_lines({}))
    assert isinstance(again.as_example(Example("a", None, text_pair="b")), Example)


def test_symmetric_pairs_train_on_both_orders_and_predict_order_free(tmp_path):
    cfg = sts_config(tmp_path)
    cfg.data.symmetric_pairs = True
    task = get_task("pair")
    task.configure(cfg)
    splits = prepare_data(cfg, task)
    train = task.training_examples(splits.train)
    assert len(train) == 2 * len(splits.train)
    assert (train[len(splits.train)].text, train[len(splits.train)].text_pair) == (splits.train[0].text_pair, splits.train[0].text)
    assert train[len(splits.train)].label == splits.train[0].label
    state = json.loads(json.dumps(task.state()))
    reloaded = get_task("pair")
    reloaded.load_state(state)
    assert reloaded.symmetric and reloaded.mode == "scoring"

    # Prediction averages both orders: (a, b) and (b, a) get the same score from an untrained model.
    from domaintune.tasks import EvalContext

    model_dir = resolve_model("minilm-l6")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = reloaded.build_model(model_dir).eval()
    ctx = EvalContext(tok, tok.pad_token_id, 8, 64)
    ab = [Example("A cat sleeps.", None, text_pair="A dog barks loudly.")]
    ba = [Example("A dog barks loudly.", None, text_pair="A cat sleeps.")]
    p_ab = reloaded.predict(model, ab, reloaded.encode(tok, ab, 64, with_targets=False), ctx)[0]["prediction"]
    p_ba = reloaded.predict(model, ba, reloaded.encode(tok, ba, 64, with_targets=False), ctx)[0]["prediction"]
    assert p_ab == pytest.approx(p_ba, abs=1e-5)
    plain = get_task("pair")
    plain.load_state({**state, "symmetric": False})
    q_ab = plain.predict(model, ab, plain.encode(tok, ab, 64, with_targets=False), ctx)[0]["prediction"]
    q_ba = plain.predict(model, ba, plain.encode(tok, ba, 64, with_targets=False), ctx)[0]["prediction"]
    assert q_ab != pytest.approx(q_ba, abs=1e-5)  # the cross-encoder itself is order-dependent
