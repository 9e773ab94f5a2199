"""Spreadsheet (CSV/TSV/XLSX formula) injection in the files `domaintune predict --output` writes (issue 13, item 4).

Before the fix, texts and label names beginning with = + - @ TAB or CR were written verbatim, so opening the
prediction file in Excel ran `=HYPERLINK(...)` or a DDE payload; an `.xlsx` output path got CSV bytes; and
there was no switch for machine consumers. Each test drives the real CLI or `Predictor.predict_file` on the
shared trained run (tests/conftest.py) and reads the output back with csv / openpyxl.
"""

from __future__ import annotations

import csv
import json
import shutil

import openpyxl
import pytest
from typer.testing import CliRunner

from domaintune.cli import app
from domaintune.predictor import Predictor

HYPERLINK = '=HYPERLINK("http://x")'
DDE = "+cmd|' /C calc'!A0"
ATTACKS = [HYPERLINK, DDE, "-1+2", "@SUM(1+1)", "\t=1+1"]
NORMAL = "Pump seal leaking on line 3"


def _input_csv(path, texts, ids=None):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows(zip(ids or [str(i) for i in range(len(texts))], texts))
    return path


def _predict(run, src, dst, *extra):
    r = CliRunner().invoke(app, ["predict", str(run), "--input", str(src), "--output", str(dst), *extra])
    assert r.exit_code == 0, r.output
    return dst


def test_csv_output_neutralises_formula_texts_but_not_numbers(trained_run, tmp_path):
    src = _input_csv(tmp_path / "in.csv", ATTACKS + [NORMAL], ids=["-1.5", "+3", "2e-5", "7", "-0.25", "-1-1"])
    rows = list(csv.reader(open(_predict(trained_run, src, tmp_path / "out.csv"), encoding="utf-8", newline="")))
    texts = [r[1] for r in rows[1:]]
    assert texts == ["'" + t for t in ATTACKS] + [NORMAL]
    # a plain number stays a number (a spreadsheet runs nothing); a formula-like id does not
    assert [r[0] for r in rows[1:]] == ["-1.5", "+3", "2e-5", "7", "-0.25", "'-1-1"]
    assert all(0 < float(r[3]) <= 1 for r in rows[1:])


def test_tsv_output_keeps_one_cell_per_field(trained_run, tmp_path):
    """A tab inside a text would start a new, unneutralised cell in Excel: it becomes a space."""
    src = _input_csv(tmp_path / "in.csv", [HYPERLINK, "harmless\t=1+1", NORMAL])
    out = _predict(trained_run, src, tmp_path / "out.tsv")
    lines = out.read_text(encoding="utf-8").splitlines()
    assert all(len(line.split("\t")) == 4 for line in lines)  # id, text, label, score
    cells = [line.split("\t")[1] for line in lines[1:]]
    assert cells == ["'" + HYPERLINK, "harmless =1+1", NORMAL]
    assert not any(c.startswith(("=", "+", "-", "@")) for line in lines for c in line.split("\t"))


def test_xlsx_output_has_no_formula_cells(trained_run, tmp_path):
    src = _input_csv(tmp_path / "in.csv", ATTACKS + [NORMAL])
    out = _predict(trained_run, src, tmp_path / "out.xlsx")
    ws = openpyxl.load_workbook(out).worksheets[0]
    rows = list(ws.iter_rows())
    assert [c.value for c in rows[0]] == ["id", "text", "label", "score"]
    assert all(c.data_type != "f" for row in rows for c in row)  # no cell is a formula
    texts = [row[1] for row in rows[1:]]
    assert [c.value for c in texts] == ATTACKS + [NORMAL]  # the text itself is kept exactly ...
    assert [c.quotePrefix for c in texts] == [True] * len(ATTACKS) + [False]  # ... and marked as typed text
    assert all(isinstance(row[3].value, float) and 0 < row[3].value <= 1 for row in rows[1:])  # scores are numbers
    labels = Predictor(trained_run).predict_labels(ATTACKS + [NORMAL])
    assert [row[2].value for row in rows[1:]] == labels


def test_no_safe_cells_writes_raw_values(trained_run, tmp_path):
    src = _input_csv(tmp_path / "in.csv", ATTACKS + [NORMAL])
    out = _predict(trained_run, src, tmp_path / "raw.csv", "--no-safe-cells")
    rows = list(csv.reader(open(out, encoding="utf-8", newline="")))
    assert [r[1] for r in rows[1:]] == ATTACKS + [NORMAL]


@pytest.fixture(scope="module")
def formula_label_run(trained_run, tmp_path_factory):
    """The shared run with its label names replaced by formulas: label names come from training data."""
    run = tmp_path_factory.mktemp("formula_labels") / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    labels = ['=HYPERLINK("http://x","ok")', "+cmd|' /C calc'!A0", "@SUM(1+1)"]
    for name in ("task.json", "labels.json"):
        path = run / name
        if path.is_file():
            state = json.loads(path.read_text(encoding="utf-8"))
            assert len(state["labels"]) == len(labels)
            state["labels"] = labels
            path.write_text(json.dumps(state), encoding="utf-8")
    return run, labels


def test_formula_label_names_are_neutralised(formula_label_run, tmp_path):
    run, labels = formula_label_run
    src = _input_csv(tmp_path / "in.csv", [NORMAL, "Motor overheating, tripped breaker", "Need spare bearings"])
    pred = Predictor(run)
    pred.predict_file(src, tmp_path / "out.csv")
    rows = list(csv.DictReader(open(tmp_path / "out.csv", encoding="utf-8", newline="")))
    assert {r["label"] for r in rows} <= {"'" + l for l in labels}
    pred.predict_file(src, tmp_path / "out.xlsx")
    ws = openpyxl.load_workbook(tmp_path / "out.xlsx").worksheets[0]
    cells = [row[2] for row in ws.iter_rows(min_row=2)]
    assert cells and all(c.data_type == "s" and c.quotePrefix and c.value in labels for c in cells)
    pred.predict_file(src, tmp_path / "raw.csv", safe=False)  # the library switch for machine consumers
    rows = list(csv.DictReader(open(tmp_path / "raw.csv", encoding="utf-8", newline="")))
    assert {r["label"] for r in rows} <= set(labels)


def test_jsonl_and_xlsx_inputs_to_spreadsheet_outputs(trained_run, tmp_path):
    """The output format follows the output's suffix whatever the input: JSONL keys become columns."""
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"text": t, "ref": i, **({"extra": "=1+1"} if i == 1 else {})})
                             for i, t in enumerate(ATTACKS)) + "\n", encoding="utf-8")
    book = _predict(trained_run, src, tmp_path / "out.xlsx")
    rows = list(openpyxl.load_workbook(book).worksheets[0].iter_rows(values_only=True))
    assert rows[0] == ("text", "ref", "extra", "label", "score")
    assert [r[0] for r in rows[1:]] == ATTACKS and [r[1] for r in rows[1:]] == list(range(len(ATTACKS)))
    assert [r[2] for r in rows[1:]] == [None, "=1+1", None, None, None]
    again = _predict(trained_run, book, tmp_path / "again.csv")  # an .xlsx input (our own output) to CSV
    rows = list(csv.DictReader(open(again, encoding="utf-8", newline="")))
    assert [r["text"] for r in rows] == ["'" + t for t in ATTACKS] and rows[1]["extra"] == "'=1+1"
