"""Readers for CSV, TSV, JSONL, Parquet and Excel (.xlsx) that remember where each row came from.

Each reader yields `Example`s carrying their file and line, and collects every
problem it meets instead of stopping at the first, so a user fixing a 10,000-row
export sees all broken rows in one message. We read delimited files with the
stdlib `csv` module rather than pandas because pandas cannot tell us the
physical line of a row, nor keep going past an undecodable byte. Excel workbooks
are read by `domaintune.data.excel` (openpyxl) into the same rows, and their
problems name the file, the sheet, the Excel row and the column.

A file that says it is text but is a workbook, a zip or an .xls (a renamed
export) is refused with that diagnosis instead of "bytes not valid utf-8".
One CSV field may hold at most MAX_FIELD_CHARS characters: a bigger one is
almost always an unclosed quote that swallowed the rest of the file, and it is
reported with its line instead of escaping as `_csv.Error`.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from domaintune.data import excel

#: The longest CSV/TSV field we read (16 Mi characters; texts are truncated to a few hundred tokens anyway).
MAX_FIELD_CHARS = 1 << 24
csv.field_size_limit(MAX_FIELD_CHARS)


@dataclass(frozen=True)
class Example:
    """One input row. `label` is the raw label text; the task parses it (a class,
    a delimited label list, a number). `text_pair` and `features` are used by
    pair and regression tasks; `extra` carries task-specific data (NER tokens)."""

    text: str
    label: str | None
    source: str = ""
    line: int = 0
    text_pair: str | None = None
    features: tuple[float, ...] | None = None
    extra: Any = None


@dataclass(frozen=True)
class Problem:
    """One problem in an input file. `line` is the line (or, with `sheet`, the Excel row); `column` is set
    for workbooks, where a row number alone does not point at the cell."""

    file: str
    line: int | None
    message: str
    fix: str = ""
    warning: bool = False
    sheet: str | None = None
    column: str | None = None

    def __str__(self) -> str:
        if self.sheet is not None:
            where = f"{self.file}, sheet {self.sheet!r}" + (f", row {self.line}" if self.line else "")
            where += f", column {self.column}" if self.column else ""
        else:
            where = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{where}: {self.message}"
        return f"{text} -> {self.fix}" if self.fix else text


@dataclass(frozen=True)
class ReadOptions:
    format: str = "auto"
    text_column: str | int = "text"
    label_column: str | int | None = "label"
    delimiter: str | None = None
    encoding: str = "utf-8"
    has_header: bool = True
    text_pair_column: str | int | None = None
    feature_columns: tuple[str | int, ...] = ()


def detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = Path(excel.split_sheet(path)[0]).suffix.lower()
    return {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl",
            ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet", ".xlsx": "xlsx", ".xlsm": "xlsx",
            ".xls": "xls"}.get(suffix, "csv")


def _decode_lines(raw: bytes, path: str, encoding: str, problems: list[Problem]) -> tuple[str, set[int]]:
    """Decode line by line so one bad byte costs one row, not the file."""
    if raw.startswith(codecs.BOM_UTF8) and encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig"):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        return raw.decode(encoding), set()
    except UnicodeDecodeError:
        pass
    except LookupError:
        problems.append(Problem(path, None, f"unknown encoding {encoding!r}", "set data.encoding to e.g. utf-8, gbk or latin-1"))
        return "", set()
    out, bad = [], set()
    for i, line in enumerate(raw.split(b"\n"), start=1):
        try:
            out.append(line.decode(encoding))
        except UnicodeDecodeError as e:
            bad.add(i)
            problems.append(Problem(path, i, f"bytes not valid {encoding} at column {e.start + 1} ({line[e.start:e.start + 4]!r})",
                                    "re-save the file as UTF-8 or set data.encoding (e.g. gbk, latin-1)"))
            out.append("")
    return "\n".join(out), bad


def _column_index(header: list[str], column: str | int, role: str, path: str, problems: list[Problem]) -> int | None:
    if isinstance(column, int) or (isinstance(column, str) and column.isdigit() and column not in header):
        idx = int(column)
        if header and idx >= len(header):
            problems.append(Problem(path, 1, f"{role} column index {idx} is out of range: rows have {len(header)} fields",
                                    f"set data.{role}_column to 0..{len(header) - 1}"))
            return None
        return idx
    if column in header:
        return header.index(column)
    import difflib
    close = difflib.get_close_matches(str(column), header, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    problems.append(Problem(path, 1, f"no {role} column {column!r}; the header has {header}",
                            f"{hint}set data.{role}_column to one of the header names (or an index with has_header: false)"))
    return None


def _cell(value, path: str, line: int, role: str, problems: list[Problem]) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        problems.append(Problem(path, line, f"empty {role}", f"fill in the {role} or remove the row"))
        return None
    if role == "label" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return json.dumps(value, ensure_ascii=False)  # a JSONL label list (multi-label): the task parses it
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        problems.append(Problem(path, line, f"{role} is not text: {type(value).__name__} {str(value)[:40]!r}",
                                f"give the {role} as a string"))
        return None
    text = str(value)
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    if not text.strip():
        problems.append(Problem(path, line, f"empty {role}", f"fill in the {role} or remove the row"))
        return None
    return text


def _number(value, name: str, line: int, column, problems: list[Problem]) -> float | None:
    try:
        x = float(str(value).strip().replace(",", "")) if not isinstance(value, (int, float)) or isinstance(value, bool) else float(value)
    except ValueError:
        x = None
    if x is None or x != x or x in (float("inf"), float("-inf")):
        problems.append(Problem(name, line, f"feature column {column!r} is not a number: {str(value)[:40]!r}",
                                "give a plain number (e.g. 12.5), or remove the column from data.feature_columns"))
        return None
    return x


def _example(text, label, has_label: bool, name: str, line: int, problems: list[Problem],
             pair=None, has_pair: bool = False, feats: list | None = None, feat_names: list | None = None,
             cols: dict | None = None) -> Example | None:
    """Validate one row's cells into an Example; None (with problems recorded) when unusable.

    `cols` (workbooks): the sheet and each role's column, {"sheet", "text", "label", "text_pair", "features"},
    added to every problem so it points at one cell."""
    n_before = len(problems)

    def at(start: int, column: str | None) -> None:
        if cols is not None:
            for k in range(start, len(problems)):
                problems[k] = replace(problems[k], sheet=cols["sheet"], column=column)

    n = len(problems)
    t = _cell(text, name, line, "text", problems)
    at(n, (cols or {}).get("text"))
    n = len(problems)
    lab = _cell(label, name, line, "label", problems) if has_label else None
    at(n, (cols or {}).get("label"))
    n = len(problems)
    tp = _cell(pair, name, line, "second text (text_pair_column)", problems) if has_pair else None
    at(n, (cols or {}).get("text_pair"))
    numbers = None
    if feats is not None:
        numbers = []
        for k, (v, c) in enumerate(zip(feats, feat_names or [])):
            n = len(problems)
            numbers.append(_number(v, name, line, c, problems))
            at(n, ((cols or {}).get("features") or [None] * (k + 1))[k])
        numbers = tuple(numbers)
    if len(problems) > n_before:
        return None
    return Example(t, lab.strip() if lab is not None else None, name, line, text_pair=tp, features=numbers)


def _read_json_splits(path: str, opts: ReadOptions, problems: list[Problem]) -> list[Example]:
    """`file.json#train,oos_train`: a JSON object of named splits, each a list of [text, label]
    pairs or of objects (the clinc150 layout). Keys after '#' are read in order and joined."""
    file, _, keys = path.partition("#")
    try:
        obj = json.loads(Path(file).read_text(encoding=opts.encoding))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(Problem(file, None, f"cannot read JSON: {e}", "check the file is one JSON object of named splits"))
        return []
    if not isinstance(obj, dict):
        problems.append(Problem(file, None, "top level is not an object of named splits", "use file.json#split or a JSONL file"))
        return []
    out: list[Example] = []
    for key in [k.strip() for k in keys.split(",") if k.strip()]:
        if key not in obj:
            problems.append(Problem(file, None, f"no split {key!r}; the file has {sorted(obj)}", f"use {file}#<one of those>"))
            continue
        for i, item in enumerate(obj[key], start=1):
            where = f"{path}[{key}]"
            if isinstance(item, (list, tuple)) and len(item) == 2:
                text, label = item
            elif isinstance(item, dict):
                text, label = item.get(str(opts.text_column)), item.get(str(opts.label_column))
            else:
                problems.append(Problem(where, i, "item is neither [text, label] nor an object", "fix or remove this item"))
                continue
            ex = _example(text, label, opts.label_column is not None, where, i, problems)
            if ex is not None:
                out.append(ex)
    return out


def _rows_delimited(lines, path: str, opts: ReadOptions, fmt: str, problems: list[Problem]):
    """Yield `(first line, fields)` per record of a CSV/TSV; a record the csv module cannot take (a field past
    MAX_FIELD_CHARS, usually an unclosed quote) becomes a problem at its first line, and reading stops there."""
    delimiter = opts.delimiter or ("," if fmt == "csv" else "\t")
    # TSV exports rarely quote, and texts hold stray quotes: read them literally.
    quoting = csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE
    reader = csv.reader(lines, delimiter=delimiter, quoting=quoting)
    start = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            if "field larger than field limit" in str(e):
                runs = f" (the record runs on to line {reader.line_num})" if reader.line_num > start + 1 else ""
                problems.append(Problem(path, start + 1, f"a field is longer than {MAX_FIELD_CHARS:,} characters"
                                        f"{runs}; the rows after it were not read",
                                        "look for an opening quote that is never closed in this row; a real text "
                                        "this long must be shortened (models read a few hundred tokens of it)"))
            else:
                problems.append(Problem(path, start + 1, f"cannot parse this row as {fmt}: {e}; the rows after it "
                                        "were not read", "check the quoting and delimiter of this row"))
            return
        yield start + 1, row
        start = reader.line_num


def _not_text(raw_head: bytes, p: Path, name: str, fmt: str, problems: list[Problem]) -> bool:
    """Record a problem and return True when a file read as `fmt` text is really a workbook, a zip, an .xls."""
    kind = excel.sniff(p, raw_head)
    if kind is None:
        return False
    message, fix = excel.not_text_message(kind, fmt)
    problems.append(Problem(name, None, message, fix))
    return True


def _sheet_rows(name: str, problems: list[Problem]):
    """(sheet, [(Excel row, values)]) of a workbook path (`book.xlsx` or `book.xlsx#Sheet`); (None, []) with a
    problem recorded when it cannot be read."""
    file, sheet = excel.split_sheet(name)
    try:
        title, rows = excel.iter_sheet(file, sheet)
        return title, list(rows)
    except excel.ExcelReadError as e:
        problems.append(Problem(file, None, e.message, e.fix))
    except Exception as e:  # noqa: BLE001 - a broken part discovered while streaming rows
        problems.append(Problem(file, None, f"cannot read the workbook ({type(e).__name__}: {e})",
                                "open it in Excel and save it again as .xlsx, or export it as 'CSV UTF-8'"))
    return None, []


def read_examples(path: str | Path, opts: ReadOptions, problems: list[Problem]) -> list[Example]:
    """Read one file into Examples; append every problem found to `problems`."""
    p = Path(path)
    name = str(path)
    if "#" in name and Path(name.partition("#")[0]).suffix.lower() == ".json" and Path(name.partition("#")[0]).is_file():
        return _read_json_splits(name, opts, problems)
    fmt = detect_format(p, opts.format)
    file = excel.split_sheet(name)[0] if fmt == "xlsx" else name
    if not Path(file).is_file():
        problems.append(Problem(file, None, "file not found", "check data.train/dev/test; relative paths start from the current directory"))
        return []
    if fmt == "xls":
        problems.append(Problem(name, None, "legacy Excel 97-2003 workbooks (.xls) cannot be read",
                                "open it in Excel and save it as .xlsx or as 'CSV UTF-8'"))
        return []
    if fmt == "parquet":
        return _read_parquet(p, name, opts, problems)
    sheet = None
    if fmt == "xlsx":
        sheet, rows = _sheet_rows(name, problems)
        name = file
        if sheet is None:
            return []
    else:
        raw = p.read_bytes()
        if _not_text(raw[:8], p, name, fmt, problems):
            return []
        text, bad_lines = _decode_lines(raw, name, opts.encoding, problems)
        if fmt == "jsonl":
            return _read_jsonl(text, name, opts, problems, bad_lines)
        rows = [(ln, r) for ln, r in _rows_delimited(io.StringIO(text, newline=""), name, opts, fmt, problems)
                if ln not in bad_lines]
    return _table_examples(rows, name, opts, fmt, problems, sheet)


def table_header(rows: list, name: str, has_header: bool, problems: list[Problem],
                 sheet: str | None = None) -> tuple[int, list[str], list] | None:
    """(header line, column names, data rows) of a table's `(line, fields)` rows, blank rows left out.

    Without a header the columns are named "0", "1", ... by the most common row width. None, with a problem
    added, when the file or sheet has no rows. Shared by every table reader (examples and conversations)."""
    rows = [(ln, r) for ln, r in rows if r and any(excel.filled(c) for c in r)]
    if not rows:
        problems.append(Problem(name, None, "file has no rows" if sheet is None else f"sheet {sheet!r} has no rows",
                                "check the path and data.format" if sheet is None
                                else "fill in the sheet, or name another one after '#' (book.xlsx#Sheet2)"))
        return None
    if has_header:
        return rows[0][0], [str(h).strip() if h is not None else "" for h in rows[0][1]], rows[1:]
    width = Counter(len(r) for _, r in rows).most_common(1)[0][0]
    return 1, [str(i) for i in range(width)], rows


def _table_examples(rows: list, name: str, opts: ReadOptions, fmt: str, problems: list[Problem],
                    sheet: str | None = None) -> list[Example]:
    """Examples from the `(line, fields)` rows of a CSV/TSV, or the `(Excel row, values)` rows of a `sheet`."""
    where = {"sheet": sheet} if sheet is not None else None
    table = table_header(rows, name, opts.has_header, problems, sheet)
    if table is None:
        return []
    header_line, header, rows = table
    n_header = len(problems)
    ti = _column_index(header, opts.text_column, "text", name, problems)
    li = _column_index(header, opts.label_column, "label", name, problems) if opts.label_column is not None else None
    pi = _column_index(header, opts.text_pair_column, "text_pair", name, problems) if opts.text_pair_column is not None else None
    fi = [_column_index(header, c, "feature", name, problems) for c in opts.feature_columns]
    if where is not None:  # header problems point at the sheet's header row
        problems[n_header:] = [replace(q, line=header_line, sheet=sheet) for q in problems[n_header:]]
    if ti is None or (opts.label_column is not None and li is None) or (opts.text_pair_column is not None and pi is None) or None in fi:
        return []
    if where is not None:
        letter = lambda j: f"{excel.column_letter(j)} ({header[j]})" if j < len(header) and header[j] else excel.column_letter(j)  # noqa: E731
        where.update(text=letter(ti), label=letter(li) if li is not None else None,
                     text_pair=letter(pi) if pi is not None else None, features=[letter(j) for j in fi])
    width = len(header)
    out = []
    for line, row in rows:
        if sheet is not None:  # a sheet row ends at its last filled cell: pad it to the header
            row = row + [None] * (width - len(row))
        elif len(row) > width and ti == width - 1 or len(row) > width and ti == 0:
            # Surplus separators belong to the free-text column (e.g. an '@' inside
            # a financial_phrasebank sentence, whose format is `sentence@label`).
            extra = len(row) - width
            delim = opts.delimiter or ("," if fmt == "csv" else "\t")
            row = ([delim.join(row[: extra + 1])] + row[extra + 1:]) if ti == 0 else (row[:ti] + [delim.join(row[ti:])])
        if len(row) <= max(ti, li or 0, pi or 0, *fi):
            problems.append(Problem(name, line, f"row has {len(row)} fields, expected {width}",
                                    "check the delimiter (data.delimiter) and quoting of this row"))
            continue
        ex = _example(row[ti], row[li] if li is not None else None, li is not None, name, line, problems,
                      row[pi] if pi is not None else None, pi is not None,
                      [row[j] for j in fi] if fi else None, list(opts.feature_columns), where)
        if ex is not None:
            out.append(ex if sheet is None else replace(ex, source=f"{name}#{sheet}"))
    return out


def json_objects(lines, name: str, problems: list[Problem], example: str, skip: set[int] = frozenset()):
    """Yield `(line_number, object)` for each non-blank JSON-object line; record every bad line.

    Shared by the training readers, the streaming prediction reader and the NER
    readers, so all report broken JSONL the same way. `example` is the shape a
    fixed line should have; lines in `skip` (undecodable bytes) are passed over.
    """
    for i, line in enumerate(lines, start=1):
        if not line.strip() or i in skip:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(Problem(name, i, f"not valid JSON: {e.msg}", "each line must be one JSON object"))
            continue
        if not isinstance(obj, dict):
            problems.append(Problem(name, i, "line is not a JSON object", f"write {example} per line"))
            continue
        yield i, obj


def _read_jsonl(text: str, name: str, opts: ReadOptions, problems: list[Problem], bad: set[int]) -> list[Example]:
    out = []
    tcol, lcol = str(opts.text_column), (str(opts.label_column) if opts.label_column is not None else None)
    reported_missing = set()
    for i, obj in json_objects(text.split("\n"), name, problems, '{"text": ..., "label": ...}', bad):
        pcol = str(opts.text_pair_column) if opts.text_pair_column is not None else None
        fcols = [str(c) for c in opts.feature_columns]
        missing = [c for c in (tcol, lcol, pcol, *fcols) if c is not None and c not in obj]
        if missing:
            for c in missing:
                role = "text" if c == tcol else "label" if c == lcol else "text_pair" if c == pcol else "feature"
                if role in reported_missing:
                    continue
                reported_missing.add(role)
                problems.append(Problem(name, i, f"no {role} field {c!r}; keys are {sorted(obj)}",
                                        f"set data.{role}_column to the key that holds the {role}"))
            continue
        ex = _example(obj[tcol], obj[lcol] if lcol is not None else None, lcol is not None, name, i, problems,
                      obj.get(pcol) if pcol else None, pcol is not None, [obj[c] for c in fcols] if fcols else None, fcols)
        if ex is not None:
            out.append(ex)
    if not out and not problems:
        problems.append(Problem(name, None, "file has no rows"))
    return out


def _read_parquet(p: Path, name: str, opts: ReadOptions, problems: list[Problem]) -> list[Example]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for corrupt files
        problems.append(Problem(name, None, f"cannot read parquet: {e}", "check the file is a valid parquet file"))
        return []
    header = list(table.column_names)
    ti = _column_index(header, opts.text_column, "text", name, problems)
    li = _column_index(header, opts.label_column, "label", name, problems) if opts.label_column is not None else None
    pi = _column_index(header, opts.text_pair_column, "text_pair", name, problems) if opts.text_pair_column is not None else None
    fi = [_column_index(header, c, "feature", name, problems) for c in opts.feature_columns]
    if ti is None or (opts.label_column is not None and li is None) or (opts.text_pair_column is not None and pi is None) or None in fi:
        return []
    texts = table.column(ti).to_pylist()
    labels = table.column(li).to_pylist() if li is not None else [None] * len(texts)
    pairs = table.column(pi).to_pylist() if pi is not None else [None] * len(texts)
    fcols = [table.column(j).to_pylist() for j in fi]
    out = []
    for row, (t, lab, tp) in enumerate(zip(texts, labels, pairs), start=1):  # parquet "line" = 1-based row number
        ex = _example(t, lab, li is not None, name, row, problems, tp, pi is not None,
                      [c[row - 1] for c in fcols] if fcols else None, list(opts.feature_columns))
        if ex is not None:
            out.append(ex)
    return out


def read_texts(path: str | Path, opts: ReadOptions) -> tuple[list[Example], list[Problem]]:
    """Read texts only (labels optional) for prediction inputs."""
    problems: list[Problem] = []
    ex = read_examples(path, replace(opts, label_column=None), problems)
    return ex, problems


def _stream_lines(path: Path, encoding: str, problems: list[Problem]):
    """Decoded lines of a file, read one at a time: prediction inputs may not fit in memory.

    An undecodable line is recorded as a problem and replaced by an empty one,
    so line numbers stay true and the remaining rows are still checked.
    """
    name = str(path)
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            if i == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield raw.decode(encoding)
            except UnicodeDecodeError as e:
                problems.append(Problem(name, i, f"bytes not valid {encoding} at column {e.start + 1} ({raw[e.start:e.start + 4]!r})",
                                        "re-save the file as UTF-8 or set --encoding (e.g. gbk, latin-1)"))
                yield "\n"


def stream_records(path: str | Path, opts: ReadOptions, problems: list[Problem]):
    """Yield `(line, example, record)` for every row of a CSV/TSV/JSONL file or a sheet, without loading it whole.

    `record` is the parsed row (list of fields - cell values for a sheet; the
    header row comes first, with example None) or the JSON object, so a caller
    can write it back with columns added. Problems (bad bytes, missing column,
    empty text) are appended to `problems`; their rows yield example None.
    Labels are not read. For a sheet, `line` is the Excel row number.
    """
    p, name = Path(path), str(path)
    fmt = detect_format(p, opts.format)
    if fmt == "parquet":
        raise ValueError(f"{name}: parquet input cannot be streamed; convert it to CSV or JSONL")
    if fmt == "xlsx":
        name = excel.split_sheet(name)[0]
    if not Path(name).is_file():
        problems.append(Problem(name, None, "file not found", "check the --input path"))
        return
    if fmt == "xls":
        problems.append(Problem(name, None, "legacy Excel 97-2003 workbooks (.xls) cannot be read",
                                "open it in Excel and save it as .xlsx or as 'CSV UTF-8'"))
        return
    sheet = None
    if fmt == "xlsx":
        try:
            sheet, rows = excel.iter_sheet(name, excel.split_sheet(str(path))[1])
        except excel.ExcelReadError as e:
            problems.append(Problem(name, None, e.message, e.fix))
            return
    else:
        with open(p, "rb") as f:
            if _not_text(f.read(8), p, name, fmt, problems):
                return
    lines = _stream_lines(p, opts.encoding, problems) if sheet is None else None
    has_pair = opts.text_pair_column is not None
    if fmt == "jsonl":
        tcol, pcol = str(opts.text_column), str(opts.text_pair_column)
        fcols = [str(c) for c in opts.feature_columns]
        for i, obj in json_objects(lines, name, problems, '{"text": ...}'):
            if tcol not in obj or (has_pair and pcol not in obj) or any(c not in obj for c in fcols):
                problems.append(Problem(name, i, f"no text field {tcol!r}{f' or {pcol!r}' if has_pair else ''} (got {sorted(obj)})",
                                        "set --text-column to the key that holds the text"))
                continue
            yield i, _example(obj[tcol], None, False, name, i, problems, obj.get(pcol), has_pair,
                              [obj[c] for c in fcols] if fcols else None, fcols), obj
        return
    if sheet is None:
        rows = _rows_delimited(lines, name, opts, fmt, problems)
    ti = pi = None
    fi: list = []
    where = None
    try:
        for line, row in rows:
            if not row or not any(excel.filled(c) for c in row):
                continue
            if ti is None:
                n_header = len(problems)
                header = ([str(h).strip() if h is not None else "" for h in row] if opts.has_header
                          else [str(i) for i in range(len(row))])
                ti = _column_index(header, opts.text_column, "text", name, problems)
                pi = _column_index(header, opts.text_pair_column, "text_pair", name, problems) if has_pair else None
                fi = [_column_index(header, c, "feature", name, problems) for c in opts.feature_columns]
                if sheet is not None:
                    problems[n_header:] = [replace(q, line=line, sheet=sheet) for q in problems[n_header:]]
                if ti is None or (has_pair and pi is None) or None in fi:
                    return
                if sheet is not None:
                    letter = lambda j: f"{excel.column_letter(j)} ({header[j]})" if header[j] else excel.column_letter(j)  # noqa: E731
                    where = {"sheet": sheet, "text": letter(ti), "text_pair": letter(pi) if pi is not None else None,
                             "features": [letter(j) for j in fi]}
                if opts.has_header:
                    yield line, None, row
                    continue
            if sheet is not None:  # a sheet row ends at its last filled cell: pad it to the header
                row = row + [None] * (len(header) - len(row))
            if len(row) <= max(ti, pi or 0, *fi):
                problems.append(Problem(name, line, f"row has {len(row)} fields, text column is {ti}",
                                        "check the delimiter (--delimiter) and quoting of this row"))
                yield line, None, row
                continue
            yield line, _example(row[ti], None, False, name, line, problems, row[pi] if has_pair else None, has_pair,
                                 [row[j] for j in fi] if fi else None, list(opts.feature_columns), where), row
    except excel.EXCEL_ERRORS as e:
        if sheet is None:
            raise
        problems.append(Problem(name, None, f"cannot read sheet {sheet!r} ({type(e).__name__}: {e})",
                                "open it in Excel and save it again as .xlsx, or export it as 'CSV UTF-8'", sheet=sheet))
