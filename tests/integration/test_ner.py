"""NER end to end: real MiniLM (English CoNLL) and real m3e-small (Chinese character-level BMES)."""

import json
import random

import pytest
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer
from typer.testing import CliRunner

from domaintune.cli import app
from domaintune.config import load_config
from domaintune.predictor import Predictor
from domaintune.run import train_run

PERSONS = ["Alice Smith", "Bob Jones", "Carol White", "David Brown", "Emma Davis", "Frank Miller", "Grace Lee",
           "Henry Wilson", "Irene Clark", "Jack Turner"]
ORGS = ["Acme Corp", "Globex", "Initech", "Umbrella Inc", "Stark Industries", "Wayne Enterprises", "Hooli"]
LOCS = ["Paris", "Berlin", "New York", "Tokyo", "Madrid", "Oslo", "Cairo"]
TEMPLATES = ["{PER} works at {ORG} in {LOC} .", "{PER} visited {LOC} last week .", "{ORG} opened an office in {LOC} .",
             "Yesterday {PER} joined {ORG} .", "the meeting with {PER} was moved to Friday ."]
ACCEPTANCE = "张三在ABC科技有限公司任CTO，电话13800000000"


def _sentences(n, seed, fill):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words, tags = [], []
        for part in rng.choice(TEMPLATES).split():
            if part.startswith("{"):
                kind = part[1:-1]
                ent = rng.choice({"PER": PERSONS, "ORG": ORGS, "LOC": LOCS}[kind]).split()
                words += ent
                tags += fill(kind, len(ent))
            else:
                words.append(part)
                tags.append("O")
        out.append(list(zip(words, tags)))
    return out


def _write_conll(path, sentences, sep="\t", docstart=False):
    lines = ["-DOCSTART- O", ""] if docstart else []
    for s in sentences:
        lines += [f"{w}{sep}{t}" for w, t in s] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _bio(kind, n):
    return [f"B-{kind}"] + [f"I-{kind}"] * (n - 1)


def _config(tmp, name, model, files, baseline=True, **train):
    settings = {"batch_size": 8, "lr": 1e-4, "max_length": 40, "log_every": 5, "eval_every": train.get("max_steps"), **train}
    lines = ["task: ner", f"model: {model}", f"output_dir: {tmp / name}", f"baseline: {str(baseline).lower()}", "data:",
             *(f"  {k}: {v}" for k, v in files.items()), "train:", *(f"  {k}: {v}" for k, v in settings.items())]
    p = tmp / f"{name}.yaml"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_config(p)


@pytest.fixture(scope="module")
def english_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ner_en")
    files = {"train": _write_conll(tmp / "train.conll", _sentences(80, 0, _bio), docstart=True),
             "dev": _write_conll(tmp / "dev.conll", _sentences(16, 1, _bio)),
             "test": _write_conll(tmp / "test.conll", _sentences(20, 2, _bio))}
    train_run(_config(tmp, "en", "minilm-l6", files, max_steps=30))
    return tmp / "en", files


def test_english_run_metrics_and_report(english_run):
    run, _ = english_run
    m = json.loads((run / "metrics.json").read_text())
    for key in ("f1", "precision", "recall", "token_accuracy"):
        assert 0 <= m["test"][key] <= 1, key
    assert set(m["test"]["per_class"]) == {"LOC", "ORG", "PER"}
    assert m["test"]["f1"] >= 0.5, m["test"]  # the templates are easy; an untrained head scores ~0
    assert m["baseline"]["majority"]["f1"] == 0 and "frozen_linear" in m["baseline"]
    state = json.loads((run / "task.json").read_text())
    assert state["scheme"] == "BIO" and state["char_level"] is False
    report = (run / "report.md").read_text()
    assert "strict" in report and "| PER |" in report


def test_plain_transformers_reload_and_predictor(english_run):
    run, _ = english_run
    model = AutoModelForTokenClassification.from_pretrained(run / "model").eval()
    tok = AutoTokenizer.from_pretrained(run / "model")
    labels = json.loads((run / "task.json").read_text())["labels"]
    assert [model.config.id2label[i] for i in range(len(labels))] == labels and labels[0] == "O"
    text = "Yesterday Grace Lee joined Hooli in Oslo, and Bob Jones visited Madrid."
    pred = Predictor(run).predict(text)[0]
    for e in pred["entities"]:
        assert text[e["start"]:e["end"]] == e["text"] and 0 < e["score"] <= 1 and e["type"] in {"PER", "ORG", "LOC"}
    assert {"Grace Lee", "Madrid"} & {e["text"] for e in pred["entities"]}, pred
    # The Predictor's word-level tags agree with plain transformers on the first sub-token of each word.
    enc = tok(pred["words"], is_split_into_words=True, return_tensors="pt")
    with torch.inference_mode():
        argmax = model(**enc).logits[0].argmax(-1).tolist()
    wids = enc.word_ids(0)
    first = [argmax[i] for i, w in enumerate(wids) if w is not None and (i == 0 or wids[i - 1] != w)]
    plain = [model.config.id2label[i] for i in first]
    agree = sum(a == b for a, b in zip(plain, pred["tags"])) / len(plain)
    assert agree >= 0.8, (plain, pred["tags"])  # Viterbi may repair an invalid transition


def test_long_text_is_windowed_and_offsets_slice(english_run):
    run, _ = english_run
    parts = [f"{p} works at {o} in {l} ." for p, o, l in zip(PERSONS, ORGS, LOCS)]
    text = "  ".join(parts)  # ~50 words, far beyond max_length 40 sub-tokens
    p = Predictor(run)
    feats = p.features(p.examples([text]))
    assert len(feats) > 2 and all(len(f["input_ids"]) <= 40 for f in feats)
    ents = p.predict(text)[0]["entities"]
    assert all(text[e["start"]:e["end"]] == e["text"] for e in ents)
    found = {e["text"] for e in ents}
    assert {"Alice Smith", "Grace Lee"} <= found or len(found) >= 8, found  # both ends of the text


def test_onnx_export_tags_like_torch_and_lanes_match_one_session(english_run, tmp_path):
    """Per-token logits through ONNX: same entities as torch; batches run side by side on lanes give the same
    logits as one at a time."""
    import shutil

    import numpy as np

    from domaintune.export import export_run
    from domaintune.export.onnx_model import OnnxModel

    run = shutil.copytree(english_run[0], tmp_path / "run")  # the fixture run stays torch-only for other tests
    rec = export_run(run, quantize=None)
    assert rec["backends"]["onnx"]["gate_passed"] and rec["backends"]["onnx"]["max_abs_logit_difference"] < 1e-3
    texts = ["Yesterday Grace Lee joined Hooli in Oslo .", "Bob Jones visited Madrid", "Paris",
             "  ".join(f"{p} works at {o} in {l} ." for p, o, l in zip(PERSONS, ORGS, LOCS))]
    spans = lambda preds: [[(e["start"], e["end"], e["type"]) for e in p["entities"]] for p in preds]  # noqa: E731
    torch_pred = Predictor(run, backend="torch").predict(texts)
    onnx_pred = Predictor(run, backend="onnx", num_threads=2).predict(texts)
    assert spans(onnx_pred) == spans(torch_pred)
    # lanes: several batches side by side on 1-thread sessions == one multi-thread session, batch by batch
    p = Predictor(run, backend="torch")
    feats = p.features(p.examples(texts))
    make = lambda idx: p.task.collate([feats[i] for i in idx], p.pad_id)  # noqa: E731
    batches = [[3, 0], [1], [2, 1]]
    model = OnnxModel(run / "export" / "model.onnx", num_threads=2)
    lanes = list(model.map_logits(batches, make))
    assert [idx for idx, _ in lanes] == batches and model._lane_session is not None
    for idx, logits in lanes:
        assert np.allclose(logits.numpy(), model(**{k: v for k, v in make(idx).items() if k != "labels"}).logits.numpy(),
                           atol=1e-5)


def test_cli_predict_text_file_and_evaluate(english_run, tmp_path):
    run, files = english_run
    runner = CliRunner()
    r = runner.invoke(app, ["predict", str(run), "--text", "Carol White works at Globex in Tokyo ."])
    assert r.exit_code == 0, r.output
    src = tmp_path / "in.jsonl"
    texts = ["Emma Davis visited Cairo last week.", "nothing to see here"]
    src.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)) + "\n", encoding="utf-8")
    r = runner.invoke(app, ["predict", str(run), "--input", str(src), "--output", str(tmp_path / "out.jsonl")])
    assert r.exit_code == 0, r.output
    rows = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [0, 1]
    for row in rows:
        assert all(row["text"][e["start"]:e["end"]] == e["text"] for e in row["entities"])
    csv_in = tmp_path / "in.csv"
    csv_in.write_text("text\nJack Turner joined Initech .\n", encoding="utf-8")
    r = runner.invoke(app, ["predict", str(run), "--input", str(csv_in), "--output", str(tmp_path / "out.csv")])
    assert r.exit_code == 0, r.output
    header, row = (tmp_path / "out.csv").read_text(encoding="utf-8").splitlines()[:2]
    assert header == "text,entities" and isinstance(json.loads(row.split(",", 1)[1].strip('"').replace('""', '"')), list)
    out = tmp_path / "eval.json"
    r = runner.invoke(app, ["evaluate", str(run), "--data", str(files["test"]), "--output", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads((run / "metrics.json").read_text())["test"]
    assert abs(json.loads(out.read_text())["f1"] - m["f1"]) < 1e-9


# ---- Chinese: character-level BMES with m3e-small -------------------------------------------------------
NAMES = ["张三", "李四", "王小明", "赵六", "陈静", "刘洋", "周杰", "吴敏"]
ZH_ORGS = ["ABC科技有限公司", "华为技术有限公司", "腾讯公司", "阿里巴巴集团", "XYZ数据有限公司", "中国银行"]
TITLES = ["CTO", "总经理", "董事长", "CEO", "副总裁"]
ZH_TEMPLATES = ["{NAME}在{ORG}任{TITLE}，电话13800000000", "{NAME}，现任{ORG}{TITLE}。", "{NAME}曾任{ORG}{TITLE}，2019年离职。"]


def _bmes(kind, n):
    return [f"S-{kind}"] if n == 1 else [f"B-{kind}"] + [f"M-{kind}"] * (n - 2) + [f"E-{kind}"]


def _zh_sentences(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tmpl = rng.choice(ZH_TEMPLATES)
        chars = []
        for piece in tmpl.replace("{", "|{").replace("}", "}|").split("|"):
            if piece.startswith("{"):
                kind = piece[1:-1]
                ent = rng.choice({"NAME": NAMES, "ORG": ZH_ORGS, "TITLE": TITLES}[kind])
                chars += list(zip(ent, _bmes(kind, len(ent))))
            else:
                chars += [(c, "O") for c in piece]
        out.append(chars)
    return out


@pytest.fixture(scope="module")
def chinese_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ner_zh")
    files = {"train": _write_conll(tmp / "train.char.bmes", _zh_sentences(60, 0), sep=" "),
             "dev": _write_conll(tmp / "dev.char.bmes", _zh_sentences(12, 1), sep=" "),
             "test": _write_conll(tmp / "test.char.bmes", _zh_sentences(12, 2), sep=" ")}
    train_run(_config(tmp, "zh", "m3e-small", files, baseline=False, max_steps=25, lr=2e-4, max_length=48))
    return tmp / "zh"


def test_chinese_bmes_offsets_slice_exactly(chinese_run):
    state = json.loads((chinese_run / "task.json").read_text())
    assert state["scheme"] == "BMES" and state["internal_scheme"] == "BIOES" and state["char_level"] is True
    m = json.loads((chinese_run / "metrics.json").read_text())
    assert set(m["test"]["per_class"]) == {"NAME", "ORG", "TITLE"} and m["test"]["f1"] > 0.3, m["test"]
    pred = Predictor(chinese_run).predict([ACCEPTANCE, "李四，现任腾讯公司总经理。"])
    assert pred[0]["words"] == list(ACCEPTANCE)  # every character is its own word, digits too
    assert all(t[0] in "BMESO" for t in pred[0]["tags"])  # tags are shown in the files' scheme
    ents = [e for p in pred for e in p["entities"]]
    assert ents, pred  # trained enough to find entities
    for text, p in zip([ACCEPTANCE, "李四，现任腾讯公司总经理。"], pred):
        for e in p["entities"]:
            assert text[e["start"]:e["end"]] == e["text"], e
    r = CliRunner().invoke(app, ["predict", str(chinese_run), "--text", ACCEPTANCE])
    assert r.exit_code == 0 and "[" in r.output, r.output
