"""task: retrieval end to end with the real MiniLM: train a few steps, index an FAQ, predict via CLI and Predictor."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer
from typer.testing import CliRunner

from domaintune.cli import app
from domaintune.config import load_config
from domaintune.data import DataError, prepare_data
from domaintune.predictor import Predictor
from domaintune.retrieval_index import FaqIndexMissingError

FAQ = [("pw", "How do I reset my password?", "Settings > Security > Reset password."),
       ("addr", "How can I change my delivery address?", "Edit it under Orders > Delivery before it ships."),
       ("pay", "What payment methods do you accept?", "Visa, Mastercard, PayPal and bank transfer."),
       ("cancel", "How do I cancel my subscription?", "Account > Subscription > Cancel."),
       ("refund", "Where is my refund?", "Refunds reach your card within 5 to 10 working days."),
       ("ship", "How long does shipping take?", "Three to five working days."),
       ("zh", "花呗怎么还款", "在支付宝首页打开花呗，点击“还款”。")]
QUERIES = {"pw": ["I forgot my password", "can't log in, need a new password", "password reset help", "lost my login password"],
           "addr": ["wrong delivery address on my order", "change shipping address", "I moved, update where you ship",
                    "send my parcel to another address"],
           "pay": ["can I pay with paypal", "which cards do you take", "do you take credit cards", "payment options"],
           "cancel": ["stop my monthly plan", "end my subscription", "unsubscribe from the service", "cancel membership"],
           "refund": ["I have not received my money back", "when will I get my refund", "refund status",
                      "still waiting for reimbursement"],
           "ship": ["when will my order arrive", "delivery time", "how many days for shipping", "how fast do you ship"],
           "zh": ["花呗的钱要怎么还", "花呗如何还钱", "怎样还花呗", "花呗还款方法"]}
QUESTION = {i: q for i, q, _ in FAQ}


def _write(path: Path, header, rows) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("faqdata")
    # train carries a 0/1 match flag: the 0 rows (wrong FAQ question) must be dropped by the task.
    train = [(q, QUESTION[i], 1) for i in QUERIES for q in QUERIES[i][:2]]
    train += [(QUERIES[i][0], QUESTION["ship" if i != "ship" else "pw"], 0) for i in QUERIES]
    return {"root": root,
            "train": _write(root / "train.csv", ("query", "faq_question", "label"), train),
            "dev": _write(root / "dev.csv", ("query", "faq_question"), [(QUERIES[i][2], QUESTION[i]) for i in QUERIES]),
            "test": _write(root / "test.csv", ("query", "faq_question"), [(QUERIES[i][3], QUESTION[i]) for i in QUERIES]),
            "faq": _write(root / "faq.csv", ("id", "question", "answer"), FAQ)}


def _config(data: dict, out: Path, **extra) -> Path:
    lines = ["task: retrieval", "model: minilm-l6", f"output_dir: {out}", "data:", f"  train: {data['train']}",
             f"  dev: {data['dev']}", f"  test: {data['test']}", "  text_column: query", "  text_pair_column: faq_question",
             f"  faq: {data['faq']}", "train:", "  batch_size: 8", "  lr: 5e-5", "  max_length: 32", "  max_steps: 2",
             "  eval_every: 2", "  log_every: 1"] + [f"  {k}: {v}" for k, v in extra.items()]
    p = out.parent / f"{out.name}.yaml"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def run(data) -> Path:
    out = data["root"] / "run"
    r = CliRunner().invoke(app, ["train", str(_config(data, out))])
    assert r.exit_code == 0, r.output
    return out


def test_run_metrics_and_plain_hf_model(run):
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["data"]["train_examples"] == 14  # the seven label-0 rows were dropped
    assert m["headline"] == ["recall_at_1", "recall_at_5", "mrr"] and m["metric_for_best"] == "mrr"
    for split in (m["test"], m["dev"], m["baseline"]["frozen_cosine"]):
        for key in ("recall_at_1", "recall_at_5", "mrr"):
            assert 0.0 <= split[key] <= 1.0, (key, split)
        assert split["candidates"] == len(FAQ) and split["n"] == len(QUERIES) and split["not_in_candidates"] == 0
    assert m["test"]["mrr"] >= 0.8, m["test"]  # a paraphrase encoder on seven FAQ entries must rank well
    assert "pretrained encoder, no training" in (run / "report.md").read_text(encoding="utf-8")
    assert (run / "model" / "model.safetensors").is_file() and not list((run / "model").glob("*.bin"))
    # run/model is a plain HF encoder: mean pooling of AutoModel reproduces the run's embeddings.
    tok = AutoTokenizer.from_pretrained(run / "model")
    enc = AutoModel.from_pretrained(run / "model").eval()
    with torch.inference_mode():
        b = tok(["I forgot my password", "花呗的钱要怎么还"], padding=True, return_tensors="pt")
        h = enc(**b).last_hidden_state
        mask = b["attention_mask"].unsqueeze(-1).float()
        ref = torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    p = Predictor(run)
    ours = p.task.embed_texts(p.model, ["I forgot my password", "花呗的钱要怎么还"], p.context())
    assert np.allclose(ours, ref, atol=1e-5)
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(run / "model"), device="cpu").encode(["I forgot my password", "花呗的钱要怎么还"])
    assert np.allclose(st, ref, atol=1e-4)


def test_predict_without_index_says_how_to_build_it(run):
    r = CliRunner().invoke(app, ["predict", str(run), "--text", "I forgot my password"])
    assert r.exit_code == 2 and "domaintune index" in r.output and "--faq" in r.output, r.output
    with pytest.raises(FaqIndexMissingError, match="domaintune index"):
        Predictor(run).predict("I forgot my password")


def test_index_then_predict_via_cli_and_predictor(run, data, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["index", str(run)])  # --faq defaults to the run's data.faq
    assert r.exit_code == 0, r.output
    assert "7 embedded" in r.output
    manifest = json.loads((run / "index" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["count"] == 7 and manifest["keyed_by"] == "id" and len(manifest["faq_sha256"]) == 64

    r = runner.invoke(app, ["predict", str(run), "--text", "I lost my login password", "--text", "怎样还花呗",
                            "--top-k", "2"])
    assert r.exit_code == 0, r.output
    assert "id pw: How do I reset my password?" in r.output and "Settings > Security" in r.output
    assert "id zh: 花呗怎么还款" in r.output

    p = Predictor(run)
    assert p.task.run_dir == run  # the Predictor attaches the run directory to the task
    hits = p.predict(["I lost my login password", "how fast do you ship"], top_k=3)
    assert [h["id"] for h in hits] == ["pw", "ship"]
    for h in hits:
        assert [x["score"] for x in h["top_k"]] == sorted((x["score"] for x in h["top_k"]), reverse=True)
        assert set(h["top_k"][0]) == {"id", "question", "answer", "score"} and len(h["top_k"]) == 3
    assert hits[0]["answer"] == FAQ[0][2]

    streamed = list(p.predict_stream(["which cards do you take", "花呗如何还钱"], chunk=1))
    assert [x["id"] for x in streamed] == ["pay", "zh"] and streamed[1]["answer"] == FAQ[6][2]
    assert p.task.output_fields(streamed[0]) == {"faq_id": "pay", "faq_question": QUESTION["pay"],
                                                  "faq_answer": FAQ[2][2], "score": streamed[0]["score"]}

    # `predict --input` on a file of bare queries (no pair column) writes the best FAQ entry per row.
    src = tmp_path / "in.csv"
    src.write_text("ref,text\n1,which cards do you take\n2,花呗如何还钱\n", encoding="utf-8")
    r = runner.invoke(app, ["predict", str(run), "--input", str(src), "--output", str(tmp_path / "out.csv")])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp_path / "out.csv", encoding="utf-8")))
    assert [row["ref"] for row in rows] == ["1", "2"] and [row["faq_id"] for row in rows] == ["pay", "zh"]

    # `domaintune evaluate` searches the index: same keys as metrics.json's test.
    r = runner.invoke(app, ["evaluate", str(run), "--data", str(data["test"]), "--output", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    e = json.loads((tmp_path / "e.json").read_text(encoding="utf-8"))
    test = json.loads((run / "metrics.json").read_text(encoding="utf-8"))["test"]
    assert e["candidate_source"] == "index" and e["mrr"] == pytest.approx(test["mrr"], abs=1e-4)

    # A second FAQ version: one answer edited, one entry added; only the new question is embedded.
    faq2 = _write(tmp_path / "faq2.csv", ("id", "question", "answer"),
                  [r if r[0] != "pay" else (r[0], r[1], "Visa and PayPal only.") for r in FAQ]
                  + [("damaged", "Can I return a damaged item?", "Yes, within 30 days.")])
    r = runner.invoke(app, ["index", str(run), "--faq", str(faq2)])
    assert r.exit_code == 0 and "1 embedded, 7 reused" in r.output and "1 added, 1 changed, 0 removed" in r.output, r.output
    assert Predictor(run).predict("the product arrived broken", top_k=1)[0]["id"] == "damaged"


def test_stale_index_after_new_weights(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    if not (copy / "index").exists():
        assert CliRunner().invoke(app, ["index", str(copy)]).exit_code == 0
    weights = load_file(str(copy / "model" / "model.safetensors"))
    name = next(k for k in weights if k.endswith("LayerNorm.weight"))
    weights[name] = weights[name] * 1.01
    save_file(weights, str(copy / "model" / "model.safetensors"), metadata={"format": "pt"})
    r = CliRunner().invoke(app, ["predict", str(copy), "--text", "refund status"])
    assert r.exit_code == 2 and "other model weights" in r.output and "domaintune index" in r.output, r.output


def test_data_convention_errors(data, tmp_path):
    cfg = load_config(_config(data, tmp_path / "nopair"), ["data.text_pair_column=null"])
    with pytest.raises(DataError, match="text_pair_column"):
        prepare_data(cfg)
    bad = _write(tmp_path / "bad.csv", ("query", "faq_question", "label"),
                 [("refund status", QUESTION["refund"], "yes-ish"), ("delivery time", QUESTION["ship"], 1)])
    with pytest.raises(DataError, match=r"bad.csv:2: label 'yes-ish' is not a match flag"):
        prepare_data(load_config(_config(data, tmp_path / "badlabel"), [f"data.train={bad}"]))
    missing = _write(tmp_path / "missing.csv", ("query", "faq_question"), [("refund status", "Is there a loyalty card?")])
    with pytest.raises(DataError, match=r"missing.csv:2: test query's FAQ question 'Is there a loyalty card\?' is not in the FAQ"):
        prepare_data(load_config(_config(data, tmp_path / "missingfaq"), [f"data.test={missing}"]))
