"""Excel workbooks (.xlsx, .xlsm) as input for training, evaluation and prediction, and file-type sniffing.

Why openpyxl directly and not `pandas.read_excel`: errors must name the Excel row a user sees (pandas renumbers
rows and drops the blank ones), and prediction inputs are streamed - openpyxl's read-only mode yields one row at
a time, so a workbook of a million rows is read in flat memory. Cells are read as Excel last calculated them
(`data_only=True`): a formula cell gives its cached value, never the formula text, and a workbook written by a
program that never calculated it gives an empty cell (reported as such). No macro in an .xlsm file is run -
openpyxl does not execute anything. XML entity expansion in the workbook's parts is bounded by expat itself
(expat >= 2.4 refuses "billion laughs" amplification), and the declared uncompressed size is capped before
reading so a zip bomb is refused up front.

The first worksheet is read unless the path names one: `tickets.xlsx#March` reads the sheet "March".
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Iterator
from xml.etree.ElementTree import ParseError

EXCEL_SUFFIXES = (".xlsx", ".xlsm")
#: Refuse workbooks that would inflate past this: Excel's own limits (1,048,576 rows) fit well below it.
MAX_UNCOMPRESSED = 4 << 30


#: What a damaged workbook raises while its rows are streamed (a truncated zip member, broken XML, a bad value).
EXCEL_ERRORS = (ParseError, zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError, TypeError)


class ExcelReadError(ValueError):
    """The workbook cannot be read: `message` says why, `fix` what to do; str() names the file too."""

    def __init__(self, path, message: str, fix: str = ""):
        self.path, self.message, self.fix = str(path), message, fix
        super().__init__(f"{path}: {message}" + (f" -> {fix}" if fix else ""))


def split_sheet(path: str | Path) -> tuple[str, str | None]:
    """`'book.xlsx#Sheet 2'` -> `('book.xlsx', 'Sheet 2')`; any other path -> `(path, None)`."""
    text = str(path)
    head, sep, sheet = text.rpartition("#")
    if sep and Path(head).suffix.lower() in EXCEL_SUFFIXES:
        return head, sheet or None
    return text, None


def column_letter(index: int) -> str:
    """Excel's column name for a 0-based index: 0 -> A, 27 -> AB."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


def sniff(path: str | Path, head: bytes | None = None) -> str | None:
    """What a file that should be text really is, from its first bytes: xlsx, zip, xls, gzip, or None (text).

    Catches an Excel workbook renamed to .csv (today it fails as "bytes not valid utf-8" on line 1)."""
    if head is None:
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError:
            return None
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                return "xlsx" if "xl/workbook.xml" in z.namelist() else "zip"
        except (OSError, zipfile.BadZipFile):
            return "zip"
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "xls"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    return None


def not_text_message(kind: str, fmt: str) -> tuple[str, str]:
    """(message, fix) for a file that `sniff` found is not `fmt` text."""
    return {
        "xlsx": (f"this file is an Excel workbook (.xlsx), not {fmt} text",
                 "rename it to .xlsx (or set data.format / --format to xlsx) to read it as a workbook, "
                 "or save it from Excel as 'CSV UTF-8'"),
        "zip": (f"this file is a zip archive, not {fmt} text", "unzip it and give the data file inside"),
        "xls": (f"this file is a legacy Excel 97-2003 workbook (.xls), not {fmt} text",
                "open it in Excel and save it as .xlsx or as 'CSV UTF-8'"),
        "gzip": (f"this file is gzip-compressed, not {fmt} text", "decompress it first (gunzip)"),
    }[kind]


def iter_sheet(path: str | Path, sheet: str | None = None) -> tuple[str, Iterator[tuple[int, list[Any]]]]:
    """(sheet name, iterator of (Excel row number, cell values)) for one worksheet of a workbook.

    Blank rows are yielded too (as empty lists), so row numbers are exactly the ones Excel shows. Raises
    ExcelReadError for a file that is not a readable workbook or has no such sheet."""
    from openpyxl import load_workbook

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            inflated = sum(info.file_size for info in z.infolist())
    except (OSError, zipfile.BadZipFile) as e:
        kind = sniff(path)
        hint = ("it is a legacy .xls workbook: save it from Excel as .xlsx" if kind == "xls"
                else "check the file is an Excel .xlsx workbook (or set data.format / --format to csv)")
        raise ExcelReadError(path, f"not an .xlsx workbook ({e})", hint) from None
    if inflated > MAX_UNCOMPRESSED:
        raise ExcelReadError(path, f"the workbook inflates to {inflated / (1 << 30):.1f} GiB, more than the "
                                   f"{MAX_UNCOMPRESSED >> 30} GiB accepted", "export the data as CSV")
    handle = open(path, "rb")  # a file object: openpyxl refuses file *names* without an Excel suffix
    try:
        book = load_workbook(handle, read_only=True, data_only=True)
    except Exception as e:  # noqa: BLE001 - openpyxl raises KeyError, ValueError, XML errors for broken parts
        handle.close()
        raise ExcelReadError(path, f"cannot read the workbook ({type(e).__name__}: {e})",
                             "open it in Excel and save it again as .xlsx, or export it as 'CSV UTF-8'") from None
    names = [ws.title for ws in book.worksheets]
    if sheet is not None and sheet not in names:
        book.close()
        handle.close()
        raise ExcelReadError(path, f"no sheet {sheet!r}; the workbook has {names}",
                             f"name one of them after '#', e.g. {path}#{names[0] if names else 'Sheet1'}")
    if not names:
        book.close()
        handle.close()
        raise ExcelReadError(path, "the workbook has no worksheet", "add a sheet with a header row and data")
    ws = book[sheet] if sheet is not None else book.worksheets[0]
    ws.reset_dimensions()  # trust the rows present, not the declared size (which a crafted file can inflate)

    def rows() -> Iterator[tuple[int, list[Any]]]:
        try:
            for number, values in enumerate(ws.iter_rows(values_only=True), start=1):
                yield number, list(values)
        finally:
            book.close()
            handle.close()

    return ws.title, rows()


def filled(value: Any) -> bool:
    """Whether a cell holds anything (None and blank text do not)."""
    return value is not None and (not isinstance(value, str) or bool(value.strip()))
