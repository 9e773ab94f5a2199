"""Generation data as conversations: prompt/response tables and chat JSONL, validated before anything trains.

A conversation is a list of `{"role", "content"}` messages with roles system/user/assistant - the shape every
Hugging Face chat template and the OpenAI API take - so one encoder (`tasks/generation_encoding.py`) serves
both inputs:

* a table (CSV, TSV, JSONL, Parquet, .xlsx) with `prompt_column` and `response_column` becomes
  `[system?, user, assistant]`. An optional `context_column` is put *before* the prompt in the same user
  message, separated by a blank line (`context\\n\\nprompt`): the context (a dialogue history, a log excerpt, a
  retrieved document) is what the question is about, and a reader expects it first. An empty context cell is
  allowed (that row has none). `system_prompt` adds one system message to every conversation.
* chat JSONL, one `{"messages": [{"role": ..., "content": ...}, ...]}` per line, multi-turn. A file is read as
  chat JSONL when `format` is "chat", or when its first JSON object has a "messages" key. `system_prompt`
  is prepended to the conversations that have no system message of their own.

Like `data.readers`, every problem of every file is collected with file:line (and the field, e.g.
`messages[2].role`) and raised once as a `DataError`, so a user fixes a 10,000-line export in one pass instead
of one error per run. We reuse the readers' decoding, CSV record, workbook, column-lookup and JSON-line helpers,
so byte errors, unclosed quotes, renamed workbooks and missing columns read exactly as for the other tasks.

Message content is stripped of surrounding whitespace (exports often end cells with a newline, and some
templates trim anyway, which would make the labelled tokens differ from the data).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from domaintune.data import excel
from domaintune.data.readers import (Problem, ReadOptions, _cell, _column_index, _decode_lines, _not_text,
                                     _rows_delimited, _sheet_rows, detect_format, json_objects, table_header)
from domaintune.data.splits import DataError

ROLES = ("system", "user", "assistant")
CHAT_EXAMPLE = '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'


@dataclass(frozen=True)
class Conversation:
    """One training example: its messages and where it came from (file, line - or Excel row)."""

    messages: list[dict[str, str]]
    source: str = ""
    line: int = 0

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line else self.source


@dataclass(frozen=True)
class ChatReadOptions:
    """How to read generation data; mirrors the `data.*` config keys of the generation task."""

    prompt_column: str | int = "prompt"
    response_column: str | int = "response"
    context_column: str | int | None = None
    system_prompt: str | None = None
    format: str = "auto"  # auto, csv, tsv, jsonl, xlsx, parquet, or chat (chat JSONL)
    delimiter: str | None = None
    encoding: str = "utf-8"
    has_header: bool = True
    context_separator: str = "\n\n"


def user_content(prompt: str, context: str | None, separator: str = "\n\n") -> str:
    """The user message of a table row: the context first (what the question is about), then the prompt."""
    return f"{context}{separator}{prompt}" if context else prompt


def check_messages(messages: Any, name: str, line: int, problems: list[Problem],
                   system_prompt: str | None = None) -> list[dict[str, str]] | None:
    """Validate one chat; return its cleaned messages, or None with every problem of it recorded.

    Rules (each breaks training silently otherwise): roles are system/user/assistant; a system message only
    comes first; every content is non-empty text; the first non-system turn is the user's (an assistant turn
    answering nothing cannot be learned from); the last turn is the assistant's (a trailing user turn would be
    trained on nothing - its answer is missing)."""
    n_before = len(problems)
    if not isinstance(messages, list) or not messages:
        problems.append(Problem(name, line, "messages: " + ("is empty" if isinstance(messages, list) else
                                f"is {type(messages).__name__}, not a list"), f"write {CHAT_EXAMPLE}"))
        return None
    clean: list[dict[str, str]] = []
    for k, msg in enumerate(messages):
        at = f"messages[{k}]"
        if not isinstance(msg, dict):
            problems.append(Problem(name, line, f"{at}: is {type(msg).__name__}, not an object",
                                    'write {"role": ..., "content": ...}'))
            continue
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            got = "missing" if role is None else f"{role!r}"
            hint = " ('bot'/'model'/'gpt' mean assistant, 'human' means user)" if isinstance(role, str) else ""
            problems.append(Problem(name, line, f"{at}.role: {got} is not one of system/user/assistant",
                                    f"use system, user or assistant{hint}"))
        elif role == "system" and k != 0:
            problems.append(Problem(name, line, f"{at}.role: a system message must be the first message, "
                                    f"this one is message {k}", "move it to the start or make it a user message"))
        if content is None or (isinstance(content, str) and not content.strip()):
            problems.append(Problem(name, line, f"{at}.content: empty {role if role in ROLES else 'message'}",
                                    "fill in the content or remove the message"))
        elif not isinstance(content, str):
            problems.append(Problem(name, line, f"{at}.content: is {type(content).__name__}, not text",
                                    "give the content as a string (multimodal parts are not supported)"))
        else:
            clean.append({"role": role, "content": content.strip()})
    if len(problems) > n_before:
        return None
    turns = [m for m in clean if m["role"] != "system"]
    if not turns:
        problems.append(Problem(name, line, "messages: only a system message", "add a user and an assistant turn"))
        return None
    if turns[0]["role"] != "user":
        problems.append(Problem(name, line, f"messages[{len(clean) - len(turns)}].role: the first turn after the "
                                "system message is the assistant's; it answers nothing",
                                "start the conversation with a user turn"))
    if clean[-1]["role"] != "assistant":
        problems.append(Problem(name, line, f"messages[{len(clean) - 1}].role: the last turn is the "
                                f"{clean[-1]['role']}'s, not the assistant's, so the reply to learn is missing",
                                "end every conversation with the assistant's reply (or drop the trailing turn)"))
    if len(problems) > n_before:
        return None
    if system_prompt and clean[0]["role"] != "system":
        clean.insert(0, {"role": "system", "content": system_prompt.strip()})
    return clean


def _row_conversation(prompt, response, context, name: str, line: int, opts: ChatReadOptions,
                      problems: list[Problem], cols: dict | None = None) -> Conversation | None:
    """A table row (cell values) -> Conversation, or None with its problems recorded (with sheet/column
    for workbooks, `cols` = {"sheet", "prompt", "response", "context"})."""
    n_before = len(problems)
    cells = {}
    for role, value in (("prompt", prompt), ("response", response), ("context", context)):
        if role == "context" and (opts.context_column is None or not excel.filled(value)):
            cells[role] = None  # an empty context cell: this row has no context
            continue
        n = len(problems)
        cells[role] = _cell(value, name, line, role, problems)
        if cols is not None:
            problems[n:] = [replace(q, sheet=cols["sheet"], column=cols.get(role)) for q in problems[n:]]
    if len(problems) > n_before:
        return None
    messages = [{"role": "system", "content": opts.system_prompt.strip()}] if opts.system_prompt else []
    messages.append({"role": "user", "content": user_content(cells["prompt"].strip(),
                                                              (cells["context"] or "").strip(),
                                                              opts.context_separator)})
    messages.append({"role": "assistant", "content": cells["response"].strip()})
    source = name if cols is None else f"{name}#{cols['sheet']}"
    return Conversation(messages, source, line)


def _table(rows: list, name: str, opts: ChatReadOptions, problems: list[Problem],
           sheet: str | None = None) -> list[Conversation]:
    """Conversations from the `(line, fields)` records of a CSV/TSV, or the `(Excel row, values)` of a sheet."""
    table = table_header(rows, name, opts.has_header, problems, sheet)
    if table is None:
        return []
    header_line, header, rows = table
    n_header = len(problems)
    # _column_index names the columns that exist and suggests a close match ("did you mean 'answer'?").
    pi = _column_index(header, opts.prompt_column, "prompt", name, problems)
    ri = _column_index(header, opts.response_column, "response", name, problems)
    ci = (_column_index(header, opts.context_column, "context", name, problems)
          if opts.context_column is not None else None)
    if sheet is not None:
        problems[n_header:] = [replace(q, line=header_line, sheet=sheet) for q in problems[n_header:]]
    if pi is None or ri is None or (opts.context_column is not None and ci is None):
        return []
    cols = None
    if sheet is not None:
        def letter(j: int) -> str:
            return f"{excel.column_letter(j)} ({header[j]})" if header[j] else excel.column_letter(j)

        cols = {"sheet": sheet, "prompt": letter(pi), "response": letter(ri),
                "context": letter(ci) if ci is not None else None}
    out = []
    need = max(pi, ri, ci if ci is not None else 0)
    for line, row in rows:
        if sheet is not None:
            row = row + [None] * (len(header) - len(row))
        if len(row) <= need:
            problems.append(Problem(name, line, f"row has {len(row)} fields, expected {len(header)}",
                                    "check the delimiter (data.delimiter) and quoting of this row"))
            continue
        conv = _row_conversation(row[pi], row[ri], row[ci] if ci is not None else None, name, line, opts,
                                 problems, cols)
        if conv is not None:
            out.append(conv)
    return out


def _jsonl(text: str, name: str, opts: ChatReadOptions, problems: list[Problem], bad: set[int],
           fmt: str) -> list[Conversation]:
    """JSONL: chat lines ({"messages": [...]}) or table lines keyed by the prompt/response columns."""
    out: list[Conversation] = []
    chat = fmt == "chat" or None  # None: decided by the first JSON object
    keys = [(str(opts.prompt_column), "prompt"), (str(opts.response_column), "response")]
    if opts.context_column is not None:
        keys.append((str(opts.context_column), "context"))
    shape = CHAT_EXAMPLE if chat else f'{{"{keys[0][0]}": ..., "{keys[1][0]}": ...}} or {CHAT_EXAMPLE}'
    for i, obj in json_objects(text.split("\n"), name, problems, shape, bad):
        if chat is None:
            chat = "messages" in obj
        if chat:
            if "messages" not in obj:
                problems.append(Problem(name, i, f"no 'messages' field; keys are {sorted(obj)}",
                                        f"write {CHAT_EXAMPLE} on every line of a chat file"))
                continue
            messages = check_messages(obj["messages"], name, i, problems, opts.system_prompt)
            if messages is not None:
                out.append(Conversation(messages, name, i))
            continue
        missing = [(k, role) for k, role in keys if k not in obj]
        for k, role in missing:
            problems.append(Problem(name, i, f"no {role} field {k!r}; keys are {sorted(obj)}",
                                    f"set data.{role}_column to the key that holds the {role}"))
        if missing:
            continue
        conv = _row_conversation(obj[keys[0][0]], obj[keys[1][0]], obj.get(str(opts.context_column)),
                                 name, i, opts, problems)
        if conv is not None:
            out.append(conv)
    if not out and not any(p.file == name for p in problems):
        problems.append(Problem(name, None, "file has no rows"))
    return out


def _parquet(path: Path, name: str, opts: ChatReadOptions, problems: list[Problem]) -> list[Conversation]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for corrupt files
        problems.append(Problem(name, None, f"cannot read parquet: {e}", "check the file is a valid parquet file"))
        return []
    header = list(rows[0]) if rows else []
    records = [(0, header)] + [(k, [r.get(c) for c in header]) for k, r in enumerate(rows, start=1)]
    return _table(records, name, replace(opts, has_header=True), problems)


def read_conversations(path: str | Path, opts: ChatReadOptions, problems: list[Problem]) -> list[Conversation]:
    """Read one file into Conversations; append every problem found to `problems` (nothing is raised)."""
    name = str(path)
    fmt = "chat" if opts.format == "chat" else detect_format(Path(name), opts.format)
    file = excel.split_sheet(name)[0] if fmt == "xlsx" else name
    if not Path(file).is_file():
        problems.append(Problem(file, None, "file not found",
                                "check data.train/dev/test; relative paths start from the current directory"))
        return []
    if fmt == "xls":
        problems.append(Problem(name, None, "legacy Excel 97-2003 workbooks (.xls) cannot be read",
                                "open it in Excel and save it as .xlsx or as 'CSV UTF-8'"))
        return []
    if fmt == "parquet":
        return _parquet(Path(name), name, opts, problems)
    if fmt == "xlsx":
        sheet, rows = _sheet_rows(name, problems)
        return _table(rows, file, opts, problems, sheet) if sheet is not None else []
    raw = Path(name).read_bytes()
    if _not_text(raw[:8], Path(name), name, "jsonl" if fmt == "chat" else fmt, problems):
        return []
    text, bad = _decode_lines(raw, name, opts.encoding, problems)
    if fmt in ("jsonl", "chat"):
        return _jsonl(text, name, opts, problems, bad, fmt)
    ropts = ReadOptions(format=fmt, delimiter=opts.delimiter, encoding=opts.encoding)
    rows = [(ln, r) for ln, r in _rows_delimited(io.StringIO(text, newline=""), name, ropts, fmt, problems)
            if ln not in bad]
    return _table(rows, name, opts, problems)


def load_conversations(paths: str | Path | list, opts: ChatReadOptions) -> list[Conversation]:
    """Read every file; raise one DataError listing all problems of all files, or return the conversations."""
    problems: list[Problem] = []
    out: list[Conversation] = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        out.extend(read_conversations(path, opts, problems))
    if any(not p.warning for p in problems):
        raise DataError(problems)
    return out
