"""method: fewshot (SetFit-style contrastive body + logistic-regression head) on tiny data the test writes.

English on minilm-l6 with data.k_shot and dev early stopping; Chinese on m3e-small.
Checks: it trains and beats chance, the run reloads through the Predictor with the
same probabilities, every prediction's label is the label of its highest
probability (setfit #462 cannot happen), and the saved head *is* the logistic
regression fitted on the saved body's embeddings.
"""

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from conftest import write_csv
from domaintune.config import load_config
from domaintune.predictor import Predictor
from domaintune.run import train_run

EN = {
    "billing": ["my invoice shows a double charge", "refund the extra payment on my card", "why was I billed twice",
                "the monthly fee on my bill is wrong", "I was charged for a plan I cancelled",
                "please correct the amount on my invoice", "my credit card payment failed", "the bill total is too high",
                "I need a copy of last month's invoice", "charge on my statement I do not recognise",
                "can I pay my bill in instalments", "the discount is missing from my invoice",
                "refund for the duplicate charge please", "my payment went through twice",
                "update the card used for billing", "explain the extra fee on the invoice"],
    "delivery": ["where is my parcel", "the package has not arrived yet", "the courier left my box at the wrong door",
                 "track my shipment please", "my order is late by a week", "the delivery van never came",
                 "change the delivery address of my order", "the parcel arrived damaged",
                 "when will my package be shipped", "the tracking number does not work",
                 "can the courier come in the afternoon", "my box was delivered to a neighbour",
                 "shipping is taking too long", "the order shows delivered but nothing came",
                 "reschedule the delivery for Monday", "the driver could not find my house"],
    "password": ["I forgot my password", "reset my login password", "my account is locked after failed logins",
                 "the password reset email never arrives", "I cannot sign in to my account",
                 "how do I change my password", "two factor code is not accepted", "my login keeps failing",
                 "unlock my account please", "the reset link has expired", "I need a new password",
                 "the app says my password is wrong", "recover access to my account",
                 "sign in page rejects my credentials", "set up a stronger password", "locked out of my profile"],
}
ZH = {
    "物流": ["我的快递到哪里了", "包裹还没有送到", "快递员把包裹放错了地方", "请帮我查一下物流信息", "订单已经晚了一周",
           "快递一直没有派送", "修改收货地址", "包裹送到时已经破损", "什么时候发货", "物流单号查不到",
           "快递能不能下午送", "包裹被送到邻居家了", "运输太慢了", "显示已签收但没收到"],
    "退款": ["我要申请退款", "退款什么时候到账", "重复扣款请退回", "取消订单后钱没有退", "退款被拒绝了",
           "怎么办理退货退款", "多扣的钱请退给我", "退款进度怎么查", "退款金额不对", "商品退回了钱还没到",
           "我想退掉这个商品", "退款到哪个账户", "为什么退款这么慢", "请尽快处理我的退款"],
    "密码": ["我忘记密码了", "怎么重置登录密码", "账号被锁定了", "收不到重置密码的邮件", "登录不了我的账号",
           "如何修改密码", "验证码总是错误", "登录一直失败", "请帮我解锁账号", "重置链接过期了",
           "我需要一个新密码", "系统说密码错误", "找回账号", "密码输入后被拒绝"],
}
PROBE_TEXTS = ["I was charged twice on my invoice", "my parcel is lost", "cannot log in, password rejected"]


def split_rows(data: dict, n_train: int, n_dev: int, seed: int = 0):
    rng = random.Random(seed)
    train, dev, test = [], [], []
    for label, texts in data.items():
        texts = list(texts)
        rng.shuffle(texts)
        train += [(t, label) for t in texts[:n_train]]
        dev += [(t, label) for t in texts[n_train:n_train + n_dev]]
        test += [(t, label) for t in texts[n_train + n_dev:]]
    return train, dev, test


def make_config(tmp, rows, name, model, fewshot: dict, data_extra=(), **train):
    train_rows, dev_rows, test_rows = rows
    paths = {k: write_csv(tmp / name / f"{k}.csv", r) for k, r in
             (("train", train_rows), ("dev", dev_rows), ("test", test_rows))}
    settings = {"batch_size": 8, "max_length": 32, "log_every": 1, "seed": 7, **train}
    lines = [f"model: {model}", "method: fewshot", f"output_dir: {tmp / name / 'run'}", "baseline: false", "data:",
             f"  train: {paths['train']}", f"  dev: {paths['dev']}", f"  test: {paths['test']}", *data_extra, "train:"]
    lines += [f"  {k}: {v}" for k, v in settings.items()]
    if fewshot:
        lines += ["fewshot:"] + [f"  {k}: {v}" for k, v in fewshot.items()]
    cfg_path = tmp / name / "config.yaml"
    cfg_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_config(cfg_path), tmp / name / "run"


@pytest.fixture(scope="module")
def en_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fewshot_en")
    cfg, run_dir = make_config(tmp, split_rows(EN, 10, 3), "en", "minilm-l6",
                               {"batch_size": 12, "samples_per_class": 4, "pair_budget": 660, "contrastive_lr": 5e-5,
                                "early_stopping_patience": 3, "eval_steps": 5},
                               data_extra=["  k_shot: 6"])
    metrics = train_run(cfg)
    return run_dir, metrics


def test_fewshot_trains_with_k_shot_and_beats_chance(en_run):
    run_dir, m = en_run
    assert m["method"] == "fewshot"
    # k_shot sampled train only (3 classes x 6); dev and test stayed whole.
    assert m["data"]["train_examples"] == 18 and m["data"]["dev_examples"] == 9 and m["data"]["test_examples"] == 9
    assert any("k_shot=6" in w for w in m["data"]["warnings"])
    s = m["method_settings"]
    assert s["contrastive_steps"] == 10 and s["pairs_per_step"] == 66 and s["pairs_seen"] == 660
    assert len(m["history"]) == 2 and m["train"]["best_step"] in (5, 10)
    assert m["test"]["accuracy"] >= 0.75, m["test"]  # chance is 1/3
    for name in ("pooled_head.safetensors", "domaintune_head.json", "model.safetensors", "config.json"):
        assert (run_dir / "model" / name).is_file(), name
    head = json.loads((run_dir / "model" / "domaintune_head.json").read_text())
    assert head["kind"] == "pooled_classifier" and head["method"] == "fewshot" and head["normalize"] is True


def _probs_by_hand(run_dir, texts):
    """softmax(W · normalize(mean-pool(encoder(x))) + b) from the saved files, without domaintune's loader."""
    tok = AutoTokenizer.from_pretrained(run_dir / "model")
    enc = AutoModel.from_pretrained(run_dir / "model").eval()
    head = load_file(str(run_dir / "model" / "pooled_head.safetensors"))
    with torch.inference_mode():
        batch = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        hidden = enc(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        return emb, torch.softmax(emb @ head["weight"].T + head["bias"], -1)


def test_predictor_probabilities_agree_with_labels_and_saved_head(en_run):
    run_dir, _ = en_run
    pred = Predictor(run_dir)
    labels = json.loads((run_dir / "labels.json").read_text())["labels"]
    assert pred.labels == labels
    out = pred.predict(PROBE_TEXTS, top_k=3)
    _, probs = _probs_by_hand(run_dir, PROBE_TEXTS)
    for p, row in zip(out, probs):
        by_label = {t["label"]: t["score"] for t in p["top_k"]}
        assert np.allclose([by_label[l] for l in labels], row.numpy(), atol=1e-5)
        assert p["label"] == labels[int(row.argmax())] == max(by_label, key=by_label.get)
        assert abs(sum(by_label.values()) - 1) < 1e-5
    assert [p["label"] for p in out] == ["billing", "delivery", "password"]
    # Reloading twice gives identical probabilities.
    again = Predictor(run_dir).predict(PROBE_TEXTS, top_k=3)
    assert [[t["score"] for t in p["top_k"]] for p in again] == [[t["score"] for t in p["top_k"]] for p in out]


def test_saved_head_is_the_fitted_logistic_regression(en_run):
    """The head is sklearn's LR on the final body's train embeddings, copied exactly: its
    predict_proba and the saved model's softmax are the same numbers."""
    from sklearn.linear_model import LogisticRegression

    run_dir, _ = en_run
    cfg = load_config(run_dir / "config.yaml")
    from domaintune.data import prepare_data

    splits = prepare_data(cfg)
    labels = json.loads((run_dir / "labels.json").read_text())["labels"]
    x_train, _ = _probs_by_hand(run_dir, [e.text for e in splits.train])
    lr = LogisticRegression(C=cfg.fewshot.head_c, max_iter=2000, random_state=cfg.train.seed)
    lr.fit(x_train.numpy(), [labels.index(e.label) for e in splits.train])
    x_probe, probs = _probs_by_hand(run_dir, PROBE_TEXTS)
    assert np.allclose(lr.predict_proba(x_probe.numpy()), probs.numpy(), atol=2e-3)
    assert (lr.predict(x_probe.numpy()) == probs.argmax(-1).numpy()).all()


def test_fewshot_chinese_m3e_small(tmp_path):
    cfg, run_dir = make_config(tmp_path, split_rows(ZH, 6, 2), "zh", "m3e-small",
                               {"batch_size": 12, "samples_per_class": 4, "pair_budget": 400, "contrastive_lr": 5e-5})
    m = train_run(cfg)  # no early stopping configured: dev is scored once, at the end
    assert m["history"] == [] and m["method_settings"]["contrastive_steps"] == 7
    assert m["test"]["accuracy"] >= 0.6, m["test"]  # chance is 1/3
    out = Predictor(run_dir).predict(["我的包裹一直没到", "请把钱退给我", "忘了登录密码"], top_k=3)
    for p in out:
        assert p["label"] == p["top_k"][0]["label"] and p["score"] == max(t["score"] for t in p["top_k"])
    assert [p["label"] for p in out] == ["物流", "退款", "密码"]


def test_fewshot_rejects_unsupported_task(tmp_path):
    from domaintune.methods import get_method

    cfg, _ = make_config(tmp_path, split_rows(EN, 4, 2), "reg", "minilm-l6", {})
    cfg.task = "regression"
    with pytest.raises(ValueError, match="method fewshot supports task classification"):
        get_method("fewshot").configure(cfg)


def test_fewshot_multilabel_with_k_shot(tmp_path):
    """Multi-label: k_shot by label presence, in-batch positives = texts sharing a label, one LR per label."""
    from data_multilabel import LABELS, make_rows

    rows = (make_rows(96, seed=1), make_rows(24, seed=2), make_rows(24, seed=3))
    cfg, run_dir = make_config(tmp_path, rows, "ml", "minilm-l6",
                               {"batch_size": 12, "samples_per_class": 3, "pair_budget": 330, "contrastive_lr": 5e-5},
                               data_extra=["  k_shot: 8"])
    cfg.task = "multilabel"
    m = train_run(cfg)
    assert m["data"]["train_examples"] < 96 and any("k_shot=8" in w for w in m["data"]["warnings"])
    assert m["method_settings"]["contrastive_steps"] == 5
    assert m["test"]["micro_f1"] >= 0.5, m["test"]
    head = json.loads((run_dir / "model" / "domaintune_head.json").read_text())
    assert head["problem"] == "multi_label"
    out = Predictor(run_dir).predict(["三号线主电机突然停转，并且操作工差点在地面油渍上滑倒"])
    assert {x["label"] for x in out[0]["labels"]} <= set(LABELS)
    assert all(0 <= x["score"] <= 1 for x in out[0]["labels"])
