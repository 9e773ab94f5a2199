"""Escaping for text from user data (labels, column names, run names) that we put into Markdown reports.

Why: report.md, compare.md, trials.md and the continual and ensemble reports are read raw in a terminal and
rendered on GitHub, GitLab or an internal wiki. A label is whatever a user's data says: one holding `|` adds a
column to a table row, one holding a newline ends the row (the rest becomes a paragraph, or a heading when it
starts with `#`), and one holding `<img src=x onerror=...>` or `<a href=...>` is raw HTML to a renderer that
allows it. So every value that came from data goes through `md_cell` (or `md_code` inside a code span), and
tables keep their column count whatever the labels are.

- `md_cell`: HTML-escapes `& < >` (so no tag or entity from data survives), turns every kind of line break into
  `<br>` (our own tag: a cell stays one line, the renderer still shows the break), and backslash-escapes `\\`
  `|` `` ` `` `*` `[` `]` `~`: the pipe that would split the cell, and the characters that would open code,
  emphasis, strikethrough or a link. Underscores are left alone: CommonMark never emphasises inside a word,
  and labels such as `card_arrival` must stay readable in the raw file.
- `md_code`: for a value shown as `code`: inside a code span backslash escapes and entities are not decoded,
  so only what breaks the span or the table is changed (line breaks become spaces, `|` becomes `\\|`, which
  GitHub-flavoured tables unescape even in code spans) and the fence is longer than any backtick run inside.
- `md_fence`: a fenced block (the configuration in report.md) whose fence no backtick run inside can close.
"""

from __future__ import annotations

import html
import re

_LINE_BREAKS = re.compile(r"\r\n|[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]")
_MD_SPECIAL = re.compile(r"([\\|`*\[\]~])")


def md_cell(value) -> str:
    """`value` as plain text in one Markdown table cell (or list item, or heading): see the module docstring."""
    text = "" if value is None else str(value)
    text = html.escape(text, quote=False)
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return _LINE_BREAKS.sub("<br>", text)


def md_code(value, table: bool = True) -> str:
    """`value` as an inline code span that cannot end early, add a table column or span lines. Outside a table
    (`table=False`) a pipe is left as it is: only table rows unescape `\\|` inside code spans."""
    text = _LINE_BREAKS.sub(" ", "" if value is None else str(value))
    text = text.replace("|", "\\|") if table else text
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_fence(text: str, info: str = "") -> list[str]:
    """Lines of a fenced code block holding `text` verbatim; the fence is longer than any backtick run inside."""
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + info, text.rstrip("\n"), fence]
