"""The FAQ index: build, exact top-k search, incremental rebuilds, atomic writes, Chinese entries.

Vectors come from the real packaged encoders (minilm-l6, m3e-small for Chinese)
through RetrievalTask.embed_texts; a counting wrapper records which texts each
build sends to the model, so "re-embeds only what changed" is checked directly.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from domaintune.data import DataError
from domaintune.models import resolve_model
from domaintune.retrieval_index import FaqIndex, build_index, read_faq, top_k
from domaintune.tasks import EvalContext
from domaintune.tasks.retrieval import RetrievalTask

FAQ = [("a1", "How do I reset my password?", "Settings > Security > Reset password."),
       ("a2", "How can I change my delivery address?", "Edit it under Orders > Delivery before shipping."),
       ("a3", "What payment methods do you accept?", "Visa, Mastercard, PayPal and bank transfer."),
       ("a4", "How do I cancel my subscription?", "Account > Subscription > Cancel."),
       ("a5", "How long does shipping take?", "Three to five working days.")]


class Embedder:
    """A real encoder's embed function that records every text it is asked to embed."""

    def __init__(self, model_name: str):
        model_dir = resolve_model(model_name)
        self.task = RetrievalTask()
        self.model = self.task.load_model(model_dir)
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.ctx = EvalContext(tok, tok.pad_token_id or 0, batch_size=32, max_length=64)
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return self.task.embed_texts(self.model, texts, self.ctx)


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    return Embedder("minilm-l6")


def write_faq(path: Path, rows, header=("id", "question", "answer")) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def build(folder: Path, faq: Path, embed, model_sha: str = "m1", keyed_by: str = "id") -> dict:
    return build_index(folder, read_faq(faq), embed, model_sha256=model_sha, faq_file=str(faq), keyed_by=keyed_by)


def test_build_and_exact_search_ordering(tmp_path, minilm):
    faq = write_faq(tmp_path / "faq.csv", FAQ)
    minilm.calls.clear()
    m = build(tmp_path / "index", faq, minilm)
    assert m["count"] == 5 and m["embedded"] == 5 and m["reused"] == 0 and m["dim"] == 384
    assert m["changes"]["added"] == 5 and m["changes"]["added_ids"] == ["a1", "a2", "a3", "a4", "a5"]
    assert set(m["entry_hashes"]) == {"a1", "a2", "a3", "a4", "a5"} and len(minilm.calls) == 1
    index = FaqIndex.load(tmp_path / "index")
    assert np.allclose(np.linalg.norm(index.embeddings, axis=1), 1.0, atol=1e-5)
    assert [e["id"] for e in index.entries] == ["a1", "a2", "a3", "a4", "a5"]
    scores, idx = index.search(minilm(["I forgot my password and cannot log in", FAQ[4][1]]), k=3)
    assert idx[0, 0] == 0 and idx[1, 0] == 4
    assert scores[1, 0] == pytest.approx(1.0, abs=1e-4)          # the question itself
    assert np.all(np.diff(scores, axis=1) <= 0)                   # best first
    assert index.search(minilm(["refund"]), k=50)[1].shape == (1, 5)  # k larger than the FAQ: every entry once


def test_top_k_matches_full_sort_and_breaks_ties_by_position():
    rng = np.random.default_rng(0)
    cand = rng.normal(size=(300, 16)).astype(np.float32)
    q = rng.normal(size=(7, 16)).astype(np.float32)
    scores, idx = top_k(q, cand, 10, chunk=3)
    full = np.argsort(-(q @ cand.T), axis=1, kind="stable")[:, :10]
    assert np.array_equal(idx, full)
    tied = np.ones((4, 2), np.float32)
    assert top_k(np.ones((1, 2), np.float32), tied, 3)[1].tolist() == [[0, 1, 2]]


def test_incremental_rebuild_embeds_only_what_changed(tmp_path, minilm):
    faq, folder = tmp_path / "faq.csv", tmp_path / "index"
    build(folder, write_faq(faq, FAQ), minilm)
    first = FaqIndex.load(folder)
    vec = {e["id"]: v for e, v in zip(first.entries, first.embeddings)}

    # Answer edited: the entry is reported changed, its question vector is reused.
    rows = [list(r) for r in FAQ]
    rows[2][2] = "Visa, Mastercard, PayPal, Alipay and bank transfer."
    minilm.calls.clear()
    m = build(folder, write_faq(faq, rows), minilm)
    assert minilm.calls == [] and m["embedded"] == 0 and m["reused"] == 5
    assert m["changes"]["changed_ids"] == ["a3"] and m["changes"]["added"] == m["changes"]["removed"] == 0
    assert FaqIndex.load(folder).entries[2]["answer"].startswith("Visa, Mastercard, PayPal, Alipay")

    # Question edited, one row added, one removed: exactly two questions go to the model.
    rows[0][1] = "How do I change my password?"
    rows.append(["a6", "Can I return a damaged item?", "Yes, within 30 days."])
    del rows[3]  # a4
    minilm.calls.clear()
    m = build(folder, write_faq(faq, rows), minilm)
    assert minilm.calls == [["How do I change my password?", "Can I return a damaged item?"]]
    c = m["changes"]
    assert (c["added_ids"], c["changed_ids"], c["removed_ids"], c["unchanged"]) == (["a6"], ["a1"], ["a4"], 3)
    assert (m["embedded"], m["reused"], m["count"]) == (2, 3, 5)
    now = FaqIndex.load(folder)
    assert [e["id"] for e in now.entries] == ["a1", "a2", "a3", "a5", "a6"]
    for e, v in zip(now.entries, now.embeddings):
        if e["id"] in ("a2", "a3", "a5"):
            assert np.array_equal(v, vec[e["id"]])  # reused bit for bit
    assert not np.allclose(now.embeddings[0], vec["a1"])

    # Same file again: nothing to do. Other model weights: everything re-embedded.
    minilm.calls.clear()
    assert build(folder, faq, minilm)["embedded"] == 0 and minilm.calls == []
    m = build(folder, faq, minilm, model_sha="m2")
    assert m["embedded"] == 5 and "model weights changed" in m["build"]


def test_without_ids_rows_are_numbered_and_keyed_by_question(tmp_path, minilm):
    faq, folder = tmp_path / "faq.csv", tmp_path / "index"
    rows = [r[1:] for r in FAQ]
    build(folder, write_faq(faq, rows, ("question", "answer")), minilm, keyed_by="question")
    assert [e["id"] for e in FaqIndex.load(folder).entries] == ["1", "2", "3", "4", "5"]
    minilm.calls.clear()
    m = build(folder, write_faq(faq, [("Where is my refund?", "5-10 working days.")] + rows, ("question", "answer")),
              minilm, keyed_by="question")
    assert minilm.calls == [["Where is my refund?"]]
    assert (m["changes"]["added"], m["changes"]["changed"], m["changes"]["removed"]) == (1, 0, 0)
    assert m["changes"]["added_ids"] == ["1"]


def test_crash_while_writing_keeps_the_previous_index(tmp_path, minilm, monkeypatch):
    import domaintune.retrieval_index as ri

    faq, folder = tmp_path / "faq.csv", tmp_path / "index"
    build(folder, write_faq(faq, FAQ), minilm)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def torn(path, *a, **k):
        path.write_text('{"id": "half', encoding="utf-8")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ri, "_write_entries", torn)
    with pytest.raises(KeyboardInterrupt):
        build(folder, write_faq(faq, FAQ + [("a9", "A new question?", "A new answer.")]), minilm)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faq.csv", "index"]  # no temp folder left behind
    assert len(FaqIndex.load(folder)) == 5


def test_chinese_faq_with_m3e(tmp_path):
    zh = Embedder("m3e-small")
    faq = tmp_path / "faq.tsv"
    with open(faq, "w", encoding="utf-8", newline="") as f:  # TSV, read through the same readers
        f.write("id\tquestion\tanswer\n")
        f.write("q1\t花呗怎么还款\t在支付宝首页打开花呗，点击“还款”。\n")
        f.write("q2\t借呗可以提前还款吗\t可以，提前还款不收手续费。\n")
        f.write("q3\t如何提升花呗额度\t保持良好的还款记录，系统会定期评估。\n")
        f.write("q4\t余额宝的收益怎么计算\t按每日万份收益计算。\n")
    build(tmp_path / "index", faq, zh)
    index = FaqIndex.load(tmp_path / "index")
    _, idx = index.search(zh(["花呗的钱要怎么还", "我的花呗额度太低了，怎么提高"]), k=2)
    assert [index.entries[i]["id"] for i in idx[:, 0]] == ["q1", "q3"]
    raw = (tmp_path / "index" / "entries.jsonl").read_text(encoding="utf-8")
    assert "花呗怎么还款" in raw and "提前还款不收手续费" in raw  # stored as readable UTF-8, not \u escapes


def test_faq_problems_are_listed_together(tmp_path):
    bad = write_faq(tmp_path / "bad.csv", [("x1", "Question one?", "Answer."), ("x1", "Question two?", "Answer."),
                                           ("x3", "", "Answer."), ("x4", "Question four?", "")])
    with pytest.raises(DataError) as e:
        read_faq(bad)
    msg = str(e.value)
    assert "already used on line 2" in msg and "bad.csv:3" in msg and "bad.csv:4" in msg and "bad.csv:5" in msg
    with pytest.raises(DataError, match="no answer column 'answer'"):
        read_faq(write_faq(tmp_path / "q.csv", [("1", "Q?")], ("id", "question")))
    jl = tmp_path / "faq.jsonl"
    jl.write_text("\n".join(json.dumps({"q": q, "a": a}, ensure_ascii=False) for _, q, a in FAQ) + "\n", encoding="utf-8")
    entries = read_faq(jl, question_column="q", answer_column="a")
    assert [e.id for e in entries] == ["1", "2", "3", "4", "5"] and entries[0].answer == FAQ[0][2]
