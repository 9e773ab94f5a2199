"""method: zeroshot with the real packaged models: minilm-l6 / m3e-small (embedding) and smollm2-135m (LM scoring).

smollm2-135m is prepared from its GGUF inside the test (through the CLI) into a
temporary DOMAINTUNE_HOME, once per session (about a minute on a quiet CPU).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import write_csv
from domaintune.config import load_config
from domaintune.models import ModelNotFoundError
from domaintune.predictor import Predictor
from domaintune.run import train_run

EN_TRAIN = [("The striker scored twice in the final minutes of the match", "sports"),
            ("Our team won the basketball championship last night", "sports"),
            ("Heavy rain and strong winds are expected tomorrow", "weather"),
            ("It will be sunny and warm all weekend", "weather"),
            ("Whisk the eggs with sugar, then bake the cake for 30 minutes", "cooking"),
            ("Chop the onions and fry them in olive oil until golden", "cooking")]
EN_TEST = [("The goalkeeper saved a penalty and the club advanced to the semi-final", "sports"),
           ("The tennis player won the tournament in straight sets", "sports"),
           ("A cold front brings snow and freezing temperatures tonight", "weather"),
           ("The forecast says thunderstorms in the afternoon", "weather"),
           ("Simmer the tomato sauce and season it with basil and garlic", "cooking"),
           ("Knead the dough and let it rise before baking the bread", "cooking")]
ZH_TRAIN = [("酒店很干净，服务热情，下次还会再来", "pos"), ("质量很好，物流也快，非常满意", "pos"),
            ("房间又脏又吵，服务态度太差了", "neg"), ("质量太差，用了一天就坏了，非常失望", "neg")]
ZH_TEST = [("这本书内容精彩，印刷清晰，值得推荐", "pos"), ("环境优美，早餐丰富，性价比很高", "pos"),
           ("屏幕有坏点，客服也不理人，退货了", "neg"), ("菜又贵又难吃，再也不会去了", "neg")]
LM_TRAIN = [("I loved this movie, the acting was wonderful", "positive"),
            ("Great product, works perfectly and arrived early", "positive"),
            ("Terrible film, boring and far too long", "negative"),
            ("The blender broke after one day, awful quality", "negative")]
LM_TEST = [("An absolutely delightful experience, I loved every minute", "positive"),
           ("Fantastic value, works perfectly, highly recommended", "positive"),
           ("Worst purchase ever, it broke in a day and support was rude", "negative"),
           ("Awful service, cold food and rude staff", "negative")]


def _config(tmp_path, name, train, test, model="minilm-l6", extra=()):
    data = tmp_path / name
    paths = {"train": write_csv(data / "train.csv", train), "dev": write_csv(data / "dev.csv", test[::2]),
             "test": write_csv(data / "test.csv", test)}
    lines = [f"model: {model}", "method: zeroshot", f"output_dir: {tmp_path / 'runs' / name}", "baseline: true",
             "data:", f"  train: {paths['train']}", f"  dev: {paths['dev']}", f"  test: {paths['test']}",
             "train:", "  max_length: 48", "  seed: 7", *extra]
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_config(path), tmp_path / "runs" / name


def _manual_embedding_probs(model_name, label_texts, texts, scale=20.0):
    """The embedding variant recomputed by hand: softmax(scale * cos(mean-pooled text, mean-pooled label))."""
    from transformers import AutoModel, AutoTokenizer

    from domaintune.models import resolve_model

    folder = resolve_model(model_name)
    tok, enc = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()

    def emb(xs):
        b = tok(xs, padding=True, truncation=True, max_length=48, return_tensors="pt")
        with torch.inference_mode():
            h = enc(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    return torch.softmax(scale * emb(texts) @ emb(label_texts).T, -1)


def _check_run(run_dir, kind):
    for name in ("config.yaml", "labels.json", "metrics.json", "report.md", "model/domaintune_head.json"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "model" / "domaintune_head.json").read_text())["kind"] == kind
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["method"] == "zeroshot" and m["train"]["global_step"] == 0
    assert m["method_settings"]["trainable_parameters"] == 0
    assert "majority" in m["baseline"] and "frozen_linear" in m["baseline"]
    assert "majority class" in (run_dir / "report.md").read_text()
    return m


def test_embedding_english_label_names(tmp_path):
    cfg, run_dir = _config(tmp_path, "en", EN_TRAIN, EN_TEST)
    metrics = train_run(cfg)
    m = _check_run(run_dir, "pooled_classifier")
    assert m == metrics
    assert metrics["test"]["accuracy"] >= 5 / 6, metrics["test"]
    assert metrics["method_settings"]["label_texts"] == ["cooking", "sports", "weather"]
    texts = [t for t, _ in EN_TEST]
    got = Predictor(run_dir).predict(texts, top_k=3)
    want = _manual_embedding_probs("minilm-l6", ["cooking", "sports", "weather"], texts)
    labels = ["cooking", "sports", "weather"]
    got_probs = torch.tensor([[{d["label"]: d["score"] for d in p["top_k"]}[l] for l in labels] for p in got])
    assert torch.allclose(got_probs, want, atol=1e-4), (got_probs, want)


def test_embedding_chinese_descriptions(tmp_path):
    desc = ["labels:", "  descriptions:", "    pos: 正面评价，很满意", "    neg: 负面评价，很失望",
            "zeroshot:", "  embedding_template: '这是一条{label}'"]
    cfg, run_dir = _config(tmp_path, "zh", ZH_TRAIN, ZH_TEST, model="m3e-small", extra=desc)
    metrics = train_run(cfg)
    _check_run(run_dir, "pooled_classifier")
    assert metrics["test"]["accuracy"] >= 0.75, metrics["test"]
    texts = [t for t, _ in ZH_TEST]
    got = Predictor(run_dir).predict(texts, top_k=2)
    want = _manual_embedding_probs("m3e-small", ["这是一条负面评价，很失望", "这是一条正面评价，很满意"], texts)
    got_probs = torch.tensor([[{d["label"]: d["score"] for d in p["top_k"]}[l] for l in ("neg", "pos")] for p in got])
    assert torch.allclose(got_probs, want, atol=1e-4)


def test_unknown_description_key_is_a_clear_error(tmp_path):
    cfg, run_dir = _config(tmp_path, "typo", EN_TRAIN, EN_TEST,
                           extra=["labels:", "  descriptions:", "    sport: ball games"])
    with pytest.raises(ValueError, match=r"sport.*not in the training data"):
        train_run(cfg)


@pytest.fixture(scope="session")
def lm_home(tmp_path_factory):
    """smollm2-135m prepared from its GGUF through `domaintune models prepare`, in a private DOMAINTUNE_HOME."""
    from typer.testing import CliRunner

    from domaintune.cli import app

    home = tmp_path_factory.mktemp("dthome")
    old = os.environ.get("DOMAINTUNE_HOME")
    os.environ["DOMAINTUNE_HOME"] = str(home)
    try:
        r = CliRunner().invoke(app, ["models", "prepare", "smollm2-135m"])
        assert r.exit_code == 0, r.output
        assert "Apache-2.0" in r.output
        yield home
    finally:
        if old is None:
            os.environ.pop("DOMAINTUNE_HOME", None)
        else:
            os.environ["DOMAINTUNE_HOME"] = old


def test_unprepared_lm_names_the_prepare_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DOMAINTUNE_HOME", str(tmp_path / "empty_home"))
    cfg, run_dir = _config(tmp_path, "noprep", LM_TRAIN, LM_TEST, extra=["zeroshot:", "  variant: lm"])
    with pytest.raises(ModelNotFoundError, match="domaintune models prepare smollm2-135m"):
        train_run(cfg)
    assert not run_dir.exists(), "a missing model must fail before the run directory is written"


def test_lm_scoring_prefers_the_right_label_and_reloads(lm_home, tmp_path):
    from domaintune.methods.lm_scorer import build_prompt_parts

    extra = ["zeroshot:", "  variant: lm", "  lm: smollm2-135m", '  template: "Review: {text}\\nSentiment:"',
             "  k_examples: 2", "  calibrate: true", "labels:", "  descriptions:", "    positive: positive review",
             "    negative: negative review"]
    cfg, run_dir = _config(tmp_path, "lm", LM_TRAIN, LM_TEST, extra=extra)
    metrics = train_run(cfg)
    _check_run(run_dir, "lm_scorer")
    assert metrics["test"]["accuracy"] >= 0.75, metrics["test"]
    examples = metrics["method_settings"]["examples"]
    assert len(examples) == 2 and all(e["text"] in dict(LM_TRAIN) for e in examples)
    assert (run_dir / "model" / "model.safetensors").is_file()

    head = json.loads((run_dir / "model" / "domaintune_head.json").read_text())
    assert head["prefix_ids"] and "\nSentiment:" in head["template"]
    bias = metrics["method_settings"]["calibration_bias"]
    assert len(bias) == 2 and any(b != 0 for b in bias)  # contextual calibration was asked for

    # Reload through the Predictor and recompute every label's mean log-prob with plain full forwards
    # (one sequence per text and label, no cache), minus the calibration bias.
    texts = [t for t, _ in LM_TEST]
    predictor = Predictor(run_dir)
    got = predictor.predict(texts, top_k=2)
    tok, lm = predictor.tokenizer, predictor.model.lm
    parts = build_prompt_parts(tok, "Review: {text}\nSentiment:", ["negative review", "positive review"],
                               [(e["text"], e["label"]) for e in examples], max_example_tokens=48)
    rows = []
    with torch.inference_mode():
        for text in texts:
            row = []
            for label in parts["label_ids"]:
                ids = parts["prefix_ids"] + tok(text)["input_ids"] + parts["suffix_ids"] + label
                logp = torch.log_softmax(lm(torch.tensor([ids])).logits[0].float(), -1)
                n = len(label)
                row.append(sum(logp[len(ids) - n - 1 + j, label[j]] for j in range(n)) / n)
            rows.append(row)
    want = torch.softmax(torch.tensor(rows) - torch.tensor(head["bias"]), -1)
    got_probs = torch.tensor([[{d["label"]: d["score"] for d in p["top_k"]}[l] for l in ("negative", "positive")]
                              for p in got])
    assert torch.allclose(got_probs, want, atol=1e-4), (got_probs, want)
    # The LM's own (uncalibrated) scores prefer the obviously right label on every easy review.
    assert [("negative", "positive")[int(torch.tensor(r).argmax())] for r in rows] == [l for _, l in LM_TEST], rows
