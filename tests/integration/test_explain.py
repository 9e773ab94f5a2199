"""`domaintune explain`: per-token attributions on the real tiny MiniLM run (IG and occlusion), HTML, CLI."""

from __future__ import annotations

import copy
import html
import json
import math
import re
from types import SimpleNamespace

import pytest
import torch
import typer
from typer.testing import CliRunner

from domaintune.commands.explain import register
from domaintune.explain import explain, input_embeddings, to_html
from domaintune.predictor import Predictor
from domaintune.tasks import get_task

ELECTRICAL = "the main breaker tripped again in hall 3"
SAFETY = "the worker slipped on the wet floor and fell"
CHINESE = "车间配电柜跳闸，三号线停机"
STEPS = 16


@pytest.fixture(scope="module")
def predictor(trained_run) -> Predictor:
    return Predictor(trained_run, backend="torch")


def attributions(result: dict) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for t in result["tokens"]:
        out.setdefault(t["token"], []).append(t["attribution"])
    return out


def test_ig_one_entry_per_token_with_exact_offsets(predictor):
    for text in (ELECTRICAL, "Please order two spare drive-belts for conveyor C2", CHINESE):
        predictor.model.train()  # explain must leave the model in eval mode whatever it found
        r = explain(predictor, text, n_steps=STEPS)
        ids = predictor.tokenizer(text)["input_ids"]
        assert r["method"] == "integrated_gradients"
        assert len(r["tokens"]) == len(ids) - 2  # [CLS] and [SEP] dropped, every other token kept
        assert [t["token"] for t in r["tokens"]] == predictor.tokenizer.convert_ids_to_tokens(ids[1:-1])
        for t in r["tokens"]:
            piece = text[t["start"]:t["end"]]
            assert piece and (t["token"] == "[UNK]" or piece.lower() == t["token"].removeprefix("##")), (t, piece)
        attr = [t["attribution"] for t in r["tokens"]]
        assert all(math.isfinite(a) for a in attr)
        assert sum(abs(a) for a in attr) == pytest.approx(1.0, abs=1e-5)
        assert len({a > 0 for a in attr}) == 2 or len(attr) < 3  # signed, not absolute values
        pred = predictor.predict([text])[0]
        assert r["label"] == pred["label"] and r["score"] == pytest.approx(pred["score"], abs=1e-4)
        assert r["text"] == text
        assert not predictor.model.training
        assert all(p.grad is None for p in predictor.model.parameters())  # gradients only w.r.t. embeddings
    # each Chinese character is one token, and the offsets tile the text exactly
    assert "".join(CHINESE[t["start"]:t["end"]] for t in r["tokens"]) == CHINESE
    assert all(t["end"] - t["start"] == 1 for t in r["tokens"])


def test_ig_completeness_delta_is_small_relative_to_logit_difference(predictor):
    r = explain(predictor, ELECTRICAL, n_steps=STEPS)
    index = predictor.labels.index(r["label"])
    enc = predictor.tokenizer(ELECTRICAL, return_tensors="pt")
    baseline = enc["input_ids"].clone()
    baseline[0, 1:-1] = predictor.pad_id
    with torch.no_grad():
        at_text = predictor.model(**enc).logits[0, index]
        at_baseline = predictor.model(input_ids=baseline, attention_mask=enc["attention_mask"]).logits[0, index]
    diff = float(at_text - at_baseline)
    assert abs(diff) > 0.5, diff  # the text really moves the logit away from the all-padding baseline
    assert r["convergence_delta"] is not None and abs(r["convergence_delta"]) < 0.05 * abs(diff)


@pytest.mark.parametrize("text,word", [(ELECTRICAL, "breaker"), (SAFETY, "slipped")])
def test_indicative_word_outweighs_stop_word(predictor, text, word):
    r = explain(predictor, text, n_steps=STEPS)
    a = attributions(r)
    assert a[word][0] > 0, a
    assert abs(a[word][0]) > 3 * max(abs(x) for x in a["the"]), a


def test_occlusion_agrees_with_ig_on_the_top_token(predictor):
    ig = explain(predictor, ELECTRICAL, method="ig", n_steps=STEPS)
    occ = explain(predictor, ELECTRICAL, method="occlusion")
    assert occ["method"] == "occlusion" and occ["convergence_delta"] is None
    assert occ["label"] == ig["label"] and occ["score"] == pytest.approx(ig["score"], abs=1e-6)
    assert [t["start"] for t in occ["tokens"]] == [t["start"] for t in ig["tokens"]]
    assert sum(abs(t["attribution"]) for t in occ["tokens"]) == pytest.approx(1.0, abs=1e-5)
    top = max(range(len(ig["tokens"])), key=lambda i: abs(ig["tokens"][i]["attribution"]))
    assert ig["tokens"][top]["token"] == "breaker"
    assert math.copysign(1, occ["tokens"][top]["attribution"]) == math.copysign(1, ig["tokens"][top]["attribution"])
    assert abs(occ["tokens"][top]["attribution"]) > abs(attributions(occ)["the"][0])


def test_target_label_by_name_and_unknown_label(predictor):
    r = explain(predictor, ELECTRICAL, target="spare_parts_request", n_steps=STEPS)
    probs = {a["label"]: a["score"] for a in predictor.predict([ELECTRICAL], top_k=3)[0]["top_k"]}
    assert r["label"] == "spare_parts_request" and r["score"] == pytest.approx(probs["spare_parts_request"], abs=1e-4)
    assert attributions(r)["breaker"][0] < 0  # evidence for an electrical fault is evidence against a parts request
    with pytest.raises(ValueError) as e:
        explain(predictor, ELECTRICAL, target="fire")
    assert "'fire'" in str(e.value) and all(label in str(e.value) for label in predictor.labels)
    with pytest.raises(ValueError, match="method"):
        explain(predictor, ELECTRICAL, method="shap")


def test_html_escapes_input_and_colours_tokens(predictor):
    text = '<script>alert("x")</script> the worker fell & broke an arm'
    r = explain(predictor, text, n_steps=STEPS)
    assert "<script" not in r["html"] and "&lt;" in r["html"] and "&amp;" in r["html"]
    body = r["html"].split("</div>", 1)[1]  # after the header line: the text, token by token
    assert html.unescape(re.sub(r"<[^>]+>", "", body)) == text  # every character shown once, markup only ours
    assert r["html"] == to_html(r)
    assert "rgba(220, 38, 38" in r["html"] and 'title="' in r["html"]
    manual = to_html({"label": "<b>", "score": 0.5, "method": "occlusion", "text": "<u>a <i>", "text_pair": None,
                      "tokens": [{"token": "a", "start": 3, "end": 4, "attribution": -1.0}]})
    assert "<b>" not in manual and "<u>" not in manual and "<i>" not in manual and "rgba(37, 99, 235, 0.850)" in manual


def test_pair_input_offsets_point_into_each_text(predictor):
    a, b = "breaker tripped in hall 3", "please order a new breaker"
    r = explain(predictor, a, text_pair=b, n_steps=STEPS)
    assert {t["segment"] for t in r["tokens"]} == {0, 1}
    for t in r["tokens"]:
        source = a if t["segment"] == 0 else b
        assert source[t["start"]:t["end"]] == t["token"].removeprefix("##")
    assert r["text_pair"] == b and r["html"].count('<div style="white-space: pre-wrap;">') == 2


class _NoGradModel:
    """A forward-only stand-in for an exported (ONNX) model: callable, returns `.logits`, no nn.Module."""

    def __init__(self, model):
        self.model = model

    def eval(self):
        return self

    def __call__(self, **batch):
        with torch.no_grad():
            return SimpleNamespace(logits=self.model(**batch).logits.numpy())


def test_auto_uses_occlusion_without_gradients(predictor):
    q = copy.copy(predictor)
    q.model = _NoGradModel(predictor.model)
    r = explain(q, ELECTRICAL)
    assert r["method"] == "occlusion"
    expected = explain(predictor, ELECTRICAL, method="occlusion")
    assert [t["attribution"] for t in r["tokens"]] == pytest.approx([t["attribution"] for t in expected["tokens"]], abs=1e-5)
    with pytest.raises(ValueError, match="occlusion"):
        explain(q, ELECTRICAL, method="ig")


def test_peft_model_finds_the_base_embeddings(predictor):
    from peft import LoraConfig, get_peft_model

    q = copy.copy(predictor)
    q.model = get_peft_model(copy.deepcopy(predictor.model),
                             LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"]))
    assert input_embeddings(q.model) is input_embeddings(q.model.get_base_model())
    r, plain = explain(q, ELECTRICAL, n_steps=STEPS), explain(predictor, ELECTRICAL, n_steps=STEPS)
    assert r["method"] == "integrated_gradients"
    # a fresh LoRA adapter is the identity, so the explanation must be the plain model's
    assert [t["attribution"] for t in r["tokens"]] == pytest.approx([t["attribution"] for t in plain["tokens"]], abs=1e-4)


class _CustomRegressor(torch.nn.Module):
    """A custom (non-HF) module with one output: explain only relies on `.logits`."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder, self.head = encoder, torch.nn.Linear(encoder.config.hidden_size, 1)

    def forward(self, input_ids, attention_mask, token_type_ids=None, **_):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return SimpleNamespace(logits=self.head(hidden[:, 0]))


def test_multilabel_regression_and_ner_runs(predictor):
    multi = copy.copy(predictor)
    multi.task = get_task("multilabel")
    multi.task.load_state({"labels": list(predictor.labels)})
    r = explain(multi, SAFETY, n_steps=STEPS)
    scores = multi.predict([SAFETY])[0]["scores"]
    assert r["label"] == max(scores, key=scores.get) and r["score"] == pytest.approx(scores[r["label"]], abs=1e-4)
    assert explain(multi, SAFETY, target="electrical_fault", n_steps=STEPS)["label"] == "electrical_fault"

    reg = copy.copy(predictor)
    reg.task = get_task("regression")
    reg.task.load_state({"target": {"mean": 10.0, "std": 2.0}})
    torch.manual_seed(0)
    reg.model = _CustomRegressor(predictor.model.bert)
    reg.labels = []
    r = explain(reg, SAFETY, n_steps=STEPS)
    assert r["label"] is None and r["score"] == pytest.approx(reg.predict([SAFETY])[0]["prediction"], abs=1e-4)
    assert r["method"] == "integrated_gradients" and len(r["tokens"]) == 9
    with pytest.raises(ValueError, match="no labels"):
        explain(reg, SAFETY, target="electrical_fault")

    ner = copy.copy(predictor)
    ner.task = get_task("ner")
    with pytest.raises(ValueError, match="NER are not supported.*spans"):
        explain(ner, SAFETY)


def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_cli_json_table_and_html(trained_run, tmp_path):
    out = tmp_path / "why.html"
    r = CliRunner().invoke(cli(), [str(trained_run), "--text", ELECTRICAL, "--json", "--steps", "8", "--html", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["label"] == "electrical_fault" and data["method"] == "integrated_gradients"
    assert [t["token"] for t in data["tokens"]][:3] == ["the", "main", "breaker"]
    assert out.read_text(encoding="utf-8").strip() == data["html"]
    r = CliRunner().invoke(cli(), [str(trained_run), "--text", ELECTRICAL, "--method", "occlusion"])
    assert r.exit_code == 0, r.output
    assert "breaker" in r.output and "occlusion" in r.output and "label electrical_fault" in r.output


def test_cli_clear_errors(trained_run, predictor, monkeypatch):
    r = CliRunner().invoke(cli(), [str(trained_run), "--text", ELECTRICAL, "--label", "fire"])
    assert r.exit_code == 2 and "unknown label 'fire'" in r.output and "spare_parts_request" in r.output
    assert "Traceback" not in r.output
    ner = copy.copy(predictor)
    ner.task = get_task("ner")
    monkeypatch.setattr("domaintune.predictor.Predictor", lambda *_a, **_k: ner)
    r = CliRunner().invoke(cli(), [str(trained_run), "--text", ELECTRICAL])
    assert r.exit_code == 2 and "NER are not supported" in r.output and "Traceback" not in r.output
