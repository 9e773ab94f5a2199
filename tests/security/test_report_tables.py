"""Labels from user data inside Markdown report tables (issue 13, item 6).

Before the fix a label holding `|` added a column to its row, one holding a newline ended the row (the rest
became a paragraph or a heading), and `<img onerror=...>` went into report.md as raw HTML. The tests render
the real report writers with such labels and count each table row's cells the way GitHub-flavoured Markdown
splits them (on pipes not escaped by a backslash).
"""

from __future__ import annotations

import re

from domaintune.continual.report import continual_section
from domaintune.evaluation.report import render_report
from domaintune.tasks.multilabel import MultiLabelTask

NASTY = ["a|b", "first line\nsecond | line", "<img src=x onerror=alert(1)>", "back\\|slash", "ok\r\n# heading | x |",
         "`code` *bold* [link](http://x)"]


def _cells(row: str) -> int:
    """Cells of a GFM table row: split on pipes that no backslash escapes, without the outer pipes."""
    parts = re.split(r"(?<!\\)\|", row.strip())
    return len(parts) - 2


def _tables(markdown: str) -> list[list[str]]:
    """Every table (header, delimiter and body rows) in `markdown`; a table ends at its first non-row line."""
    lines, tables, i = markdown.split("\n"), [], 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip()):
            j = i + 2
            while j < len(lines) and lines[j].strip():
                j += 1
            tables.append(lines[i:j])
            i = j
        else:
            i += 1
    return tables


def _assert_tables_intact(markdown: str, expect_rows: int) -> None:
    tables = _tables(markdown)
    assert tables
    body_rows = 0
    for table in tables:
        width = _cells(table[0])
        for row in table:
            assert row.startswith("|") and row.rstrip().endswith("|"), f"row broken out of its table: {row!r}"
            assert _cells(row) == width, f"{_cells(row)} cells instead of {width}: {row!r}"
        body_rows += len(table) - 2
    assert body_rows >= expect_rows
    assert "<img" not in markdown and "&lt;img src=x onerror=alert(1)&gt;" in markdown
    assert not re.search(r"^# heading", markdown, re.M)


def test_run_report_per_class_table_survives_any_label():
    per_class = {label: {"precision": 0.5, "recall": 0.5, "f1": 0.5 + i / 100, "support": 3}
                 for i, label in enumerate(NASTY)}
    metrics = {"name": "run|x", "model": "m", "task": "classification", "method": "full",
               "headline": ["accuracy", "macro_f1"], "data": {"train_examples": 10},
               "test": {"accuracy": 0.5, "macro_f1": 0.5, "per_class": per_class},
               "baseline": {"majority": {"accuracy": 0.2, "macro_f1": 0.1, "predicted_label": NASTY[1]}},
               "train": {"seconds": 1.0, "samples_per_second": 1.0, "global_step": 1, "epochs_completed": 1.0}}
    md = render_report(metrics, "model: m\nnote: \"```\"\n", NASTY, {}, None)
    _assert_tables_intact(md, expect_rows=len(NASTY) + 2)


def test_multilabel_threshold_table_survives_any_label():
    task = MultiLabelTask()
    metrics = {"calibration": {"thresholds": {label: 0.4 for label in NASTY}, "untuned_labels": [NASTY[0]],
                               "dev_micro_f1_at_0.5": 0.5, "dev_micro_f1_tuned": 0.6}}
    _assert_tables_intact("\n".join(task.report_lines(metrics)), expect_rows=len(NASTY))


def test_continual_tables_survive_any_stage_name_and_label():
    stages = [{"index": i, "name": name, "kind": "new_data", "strategy": "replay", "train_examples": 5,
               "new_labels": [NASTY[(i + 1) % len(NASTY)]]} for i, name in enumerate(NASTY)]
    n = len(stages)
    matrix = [[0.5] * (i + 1) for i in range(n)]
    gate = {"promotable": False, "reason": "forgot", "drops": [
        {"stage": i, "name": name, "accuracy_before": 90.0, "accuracy_after": 80.0, "drop_points": 10.0, "blocked": True}
        for i, name in enumerate(NASTY)]}
    summary = {"average_accuracy": 50.0, "average_forgetting": 1.0, "backward_transfer": -1.0}
    _assert_tables_intact(continual_section(stages, matrix, summary, gate, None), expect_rows=3 * n)
