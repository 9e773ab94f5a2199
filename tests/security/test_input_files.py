"""Input files that are not the CSV they seem (issue 13, item 6): Excel workbooks and a 20 MB CSV cell.

Before the fix an .xlsx was parsed as CSV ("bytes not valid utf-8" on line 1), a workbook renamed to .csv gave
the same puzzle, and a CSV field over the csv module's limit escaped as an unhandled `_csv.Error`. Workbooks
are real ones written with openpyxl; training data goes through `prepare_data` (what `train` reads with),
evaluation and prediction through the CLI and `Predictor.predict_file` on the shared trained run.
"""

from __future__ import annotations

import csv
import json
import shutil

import openpyxl
import pytest
from typer.testing import CliRunner

from domaintune.cli import app
from domaintune.config import load_config
from domaintune.data import DataError, prepare_data
from domaintune.predictor import Predictor
from support import tiny_config_path


def _csv_rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def _to_xlsx(rows, path, title="Tickets", lead_blank_rows=0, numbers=False):
    book = openpyxl.Workbook()
    ws = book.active
    ws.title = title
    for _ in range(lead_blank_rows):
        ws.append([])
    for row in rows:
        ws.append([int(c) if numbers and c.isdigit() else c for c in row])
    book.save(path)
    return path


def test_xlsx_training_data_reads_like_its_csv(tiny_splits, tmp_path):
    books = {k: _to_xlsx(_csv_rows(p), tmp_path / f"{k}.xlsx") for k, p in tiny_splits.items()}
    from_csv = prepare_data(load_config(tiny_config_path(tmp_path, tiny_splits, tmp_path / "csv_run")))
    from_xlsx = prepare_data(load_config(tiny_config_path(tmp_path, books, tmp_path / "xlsx_run")))
    for split in ("train", "dev", "test"):
        a, b = getattr(from_csv, split), getattr(from_xlsx, split)
        assert [(e.text, e.label, e.line) for e in a] == [(e.text, e.label, e.line) for e in b]
    assert from_csv.labels == from_xlsx.labels


def test_xlsx_evaluation_and_prediction(trained_run, tiny_splits, tmp_path):
    test_xlsx = _to_xlsx(_csv_rows(tiny_splits["test"]), tmp_path / "test.xlsx")
    out = tmp_path / "eval.json"
    r = CliRunner().invoke(app, ["evaluate", str(trained_run), "--data", str(test_xlsx), "--output", str(out)])
    assert r.exit_code == 0, r.output
    want = json.loads((trained_run / "metrics.json").read_text())["test"]
    assert json.loads(out.read_text())["confusion_matrix"] == want["confusion_matrix"]

    texts = [row[0] for row in _csv_rows(tiny_splits["test"])[1:6]]
    rows = [["id", "text"]] + [[str(i), t] for i, t in enumerate(texts)]
    book = _to_xlsx(rows, tmp_path / "in.xlsx", lead_blank_rows=2, numbers=True)  # header on Excel row 3
    n = Predictor(trained_run).predict_file(f"{book}", tmp_path / "out.csv")
    got = list(csv.DictReader(open(tmp_path / "out.csv", encoding="utf-8", newline="")))
    assert n == 5 and [g["text"] for g in got] == texts and [g["id"] for g in got] == ["0", "1", "2", "3", "4"]
    assert [g["label"] for g in got] == Predictor(trained_run).predict_labels(texts)


def test_xlsx_problems_name_file_sheet_row_and_column(tiny_splits, tmp_path):
    rows = _csv_rows(tiny_splits["train"])
    rows[4][1] = ""  # an empty label on Excel row 5 (header on row 1)
    book = _to_xlsx(rows, tmp_path / "train.xlsx", title="March")
    with pytest.raises(DataError) as err:
        prepare_data(load_config(tiny_config_path(tmp_path, {**tiny_splits, "train": book}, tmp_path / "run")))
    assert f"{book}, sheet 'March', row 5, column B (label): empty label" in str(err.value)
    book2 = tmp_path / "two.xlsx"
    shutil.copy(book, book2)
    with pytest.raises(DataError) as err:  # a sheet that does not exist: the message lists the real ones
        prepare_data(load_config(tiny_config_path(tmp_path, {**tiny_splits, "train": f"{book2}#April"}, tmp_path / "r2")))
    assert "no sheet 'April'" in str(err.value) and "['March']" in str(err.value)


def test_workbook_named_csv_is_refused_with_the_reason(trained_run, tiny_splits, tmp_path):
    fake = tmp_path / "train.csv"
    _to_xlsx(_csv_rows(tiny_splits["train"]), tmp_path / "real.xlsx")
    shutil.copy(tmp_path / "real.xlsx", fake)
    with pytest.raises(DataError) as err:
        prepare_data(load_config(tiny_config_path(tmp_path, {**tiny_splits, "train": fake}, tmp_path / "run")))
    assert f"{fake}: this file is an Excel workbook (.xlsx), not csv text" in str(err.value)
    assert "rename it to .xlsx" in str(err.value) and "utf-8" not in str(err.value)
    r = CliRunner().invoke(app, ["predict", str(trained_run), "--input", str(fake), "--output", str(tmp_path / "o.csv")])
    assert r.exit_code == 2 and "Excel workbook" in r.output and not (tmp_path / "o.csv").exists()


def test_huge_csv_cell_is_a_data_error_with_file_and_line(trained_run, tiny_splits, tmp_path):
    big = tmp_path / "big.csv"
    with open(big, "w", encoding="utf-8", newline="") as f:
        f.write("text,label\nPump seal leaking,spare_parts_request\n")
        f.write("x" * (20 << 20) + ",electrical_fault\n")  # a 20 MB cell on line 3
        f.write("Motor overheating,electrical_fault\n")
    with pytest.raises(DataError) as err:
        prepare_data(load_config(tiny_config_path(tmp_path, {**tiny_splits, "train": big}, tmp_path / "run")))
    assert f"{big}:3: a field is longer than" in str(err.value)
    r = CliRunner().invoke(app, ["predict", str(trained_run), "--input", str(big), "--output", str(tmp_path / "o.csv")])
    assert r.exit_code == 2 and f"{big}:3" in r.output
