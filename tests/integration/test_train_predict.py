"""Fine-tune the real packaged MiniLM on a tiny set, then use the run everywhere."""

import csv
import json

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

from domaintune.cli import app
from domaintune.predictor import Predictor

TEXTS = ["Breaker on the welding cell tripped twice this morning",
         "Operator slipped on hydraulic oil near press 4, first aid given",
         "Please order two spare drive belts for conveyor C2"]


def test_run_directory_contract(trained_run):
    for name in ("config.yaml", "labels.json", "metrics.json", "report.md", "train_log.jsonl", "model/config.json",
                 "model/model.safetensors", "checkpoints/latest.json", "checkpoints/best/model.safetensors",
                 "plots/confusion_matrix.png"):
        assert (trained_run / name).exists(), name
    assert not list((trained_run / "model").glob("*.bin")), "runs must be written as safetensors only"
    assert list((trained_run / "tensorboard").glob("events.out.tfevents.*"))
    m = json.loads((trained_run / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "weighted_f1", "per_class"):
        assert key in m["test"] and key in m["dev"]
    for key in ("seconds", "samples_per_second", "peak_rss_mb"):
        assert m["train"][key] > 0
    assert m["baseline"]["majority"]["accuracy"] < m["test"]["accuracy"]
    assert "frozen_linear" in m["baseline"]
    log = [json.loads(l) for l in (trained_run / "train_log.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in log) and any("eval" in r for r in log)
    report = (trained_run / "report.md").read_text()
    assert "majority class" in report and "fine-tuned (this run)" in report


def test_plain_transformers_gives_identical_predictions(trained_run):
    tok = AutoTokenizer.from_pretrained(trained_run / "model")
    model = AutoModelForSequenceClassification.from_pretrained(trained_run / "model").eval()
    labels = json.loads((trained_run / "labels.json").read_text())["labels"]
    assert [model.config.id2label[i] for i in range(len(labels))] == labels
    with torch.inference_mode():
        probs = torch.softmax(model(**tok(TEXTS, padding=True, return_tensors="pt")).logits, -1)
    ours = Predictor(trained_run).predict(TEXTS)
    assert [p["label"] for p in ours] == [labels[i] for i in probs.argmax(-1).tolist()]
    assert torch.allclose(torch.tensor([p["score"] for p in ours]), probs.max(-1).values, atol=1e-4)


def test_learned_something(trained_run):
    m = json.loads((trained_run / "metrics.json").read_text())
    assert m["test"]["accuracy"] >= 0.8, m["test"]["accuracy"]


def test_predict_cli_text_and_files(trained_run, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["predict", str(trained_run), "--text", TEXTS[0], "--top-k", "2"])
    assert r.exit_code == 0, r.output
    assert "top-2" in r.output
    src = tmp_path / "in.csv"
    with open(src, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows([(i, t) for i, t in enumerate(TEXTS)])
    r = runner.invoke(app, ["predict", str(trained_run), "--input", str(src), "--output", str(tmp_path / "out.csv")])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp_path / "out.csv", encoding="utf-8")))
    assert [r["id"] for r in rows] == ["0", "1", "2"] and all(r["label"] and 0 < float(r["score"]) <= 1 for r in rows)
    assert [r["label"] for r in rows] == Predictor(trained_run).predict_labels(TEXTS)
    j = tmp_path / "in.jsonl"
    j.write_text("\n".join(json.dumps({"text": t, "ref": i}) for i, t in enumerate(TEXTS)) + "\n")
    r = runner.invoke(app, ["predict", str(trained_run), "--input", str(j), "--output", str(tmp_path / "out.jsonl")])
    assert r.exit_code == 0, r.output
    out = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["ref"] for o in out] == [0, 1, 2] and all("label" in o and "score" in o for o in out)


def test_evaluate_cli_matches_metrics_json(trained_run, tiny_splits, tmp_path):
    out = tmp_path / "eval.json"
    r = CliRunner().invoke(app, ["evaluate", str(trained_run), "--data", str(tiny_splits["test"]), "--output", str(out)])
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())
    want = json.loads((trained_run / "metrics.json").read_text())["test"]
    assert set(got) == set(want)
    assert abs(got["accuracy"] - want["accuracy"]) < 1e-9 and got["confusion_matrix"] == want["confusion_matrix"]


def test_predict_file_streams_in_chunks_and_keeps_rows(trained_run, tmp_path):
    """More rows than one chunk, a quoted multi-line text, a BOM: every row comes back, in order."""
    texts = [TEXTS[i % 3] + f" (ticket {i})" for i in range(23)]
    texts[5] = "Line one of a long note,\nline two: 电机过热，已停机"
    src = tmp_path / "many.csv"
    with open(src, "w", newline="", encoding="utf-8-sig") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows([(i, t) for i, t in enumerate(texts)])
    seen = []
    pred = Predictor(trained_run)
    n = pred.predict_file(src, tmp_path / "many_out.csv", chunk=4, progress=lambda done, total: seen.append((done, total)))
    rows = list(csv.DictReader(open(tmp_path / "many_out.csv", encoding="utf-8")))
    assert n == 23 and [r["id"] for r in rows] == [str(i) for i in range(23)]
    assert rows[5]["text"] == texts[5]
    assert [r["label"] for r in rows] == pred.predict_labels(texts)
    assert seen[-1] == (23, 23) and len(seen) == 6


def test_predict_file_bad_rows_listed_and_old_output_kept(trained_run, tmp_path):
    src = tmp_path / "bad.csv"
    src.write_bytes(b"id,text\n1,Pump seal leaking\n2,\xff\xfe broken bytes\n3,\n")
    dst = tmp_path / "out.csv"
    dst.write_text("previous output\n")
    r = CliRunner().invoke(app, ["predict", str(trained_run), "--input", str(src), "--output", str(dst)])
    assert r.exit_code != 0
    assert f"{src}:3" in r.output and "utf-8" in r.output and f"{src}:4" in r.output and "empty text" in r.output
    assert dst.read_text() == "previous output\n"
