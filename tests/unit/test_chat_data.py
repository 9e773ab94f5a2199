"""Generation data (data/chat.py): tables and chat JSONL into conversations, and every bad input reported with
file:line and field in one DataError before anything else happens."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from domaintune.data import DataError
from domaintune.data.chat import ChatReadOptions, load_conversations


def _csv(path: Path, header, rows) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _jsonl(path: Path, lines) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines),
                    encoding="utf-8")
    return path


def _chat(*turns):
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def _fails(tmp_path: Path, path, opts=ChatReadOptions()) -> list[str]:
    """Problems of a bad input, as text; checks that reading wrote nothing."""
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(DataError) as e:
        load_conversations(path, opts)
    assert sorted(tmp_path.rglob("*")) == before
    assert "nothing was trained" in str(e.value)
    return [str(p) for p in e.value.problems]


def test_csv_with_context_and_system_prompt(tmp_path):
    path = _csv(tmp_path / "qa.csv", ["question", "answer", "history"], [
        ["How do I reset the PLC?", "Hold RESET for five seconds.\n", ""],
        ["And then?", "Wait for the green LED,\nthen restart the line.", "user: the line stopped"],
        ["设备报警E04怎么办？", "请检查冷却液液位，并补充至刻度线。", "用户：三号机停机"],
    ])
    convs = load_conversations(path, ChatReadOptions(prompt_column="question", response_column="answer",
                                                     context_column="history", system_prompt="You help technicians."))
    assert [c.line for c in convs] == [2, 4, 6]  # quoted cells with a newline span two lines: first line counts
    assert convs[0].messages == [{"role": "system", "content": "You help technicians."},
                                 {"role": "user", "content": "How do I reset the PLC?"},
                                 {"role": "assistant", "content": "Hold RESET for five seconds."}]
    assert convs[1].messages[1]["content"] == "user: the line stopped\n\nAnd then?"  # context first, blank line
    assert convs[1].messages[2]["content"] == "Wait for the green LED,\nthen restart the line."
    assert convs[2].messages[1:] == [{"role": "user", "content": "用户：三号机停机\n\n设备报警E04怎么办？"},
                                     {"role": "assistant", "content": "请检查冷却液液位，并补充至刻度线。"}]
    assert convs[2].where == f"{path}:6"


def test_chat_jsonl_multi_turn_chinese(tmp_path):
    path = _jsonl(tmp_path / "chat.jsonl", [
        _chat(("system", "你是物流客服。"), ("user", "我的快递到哪了？"), ("assistant", "请提供运单号。"),
              ("user", "SF1234567"), ("assistant", "您的包裹已到达上海转运中心。")),
        "",
        _chat(("user", "Where is my parcel?"), ("assistant", "Please give me the tracking number.")),
    ])
    convs = load_conversations(path, ChatReadOptions(system_prompt="Default system."))
    assert [c.line for c in convs] == [1, 3]
    assert [m["role"] for m in convs[0].messages] == ["system", "user", "assistant", "user", "assistant"]
    assert convs[0].messages[0]["content"] == "你是物流客服。"  # its own system message is kept
    assert convs[0].messages[4]["content"] == "您的包裹已到达上海转运中心。"
    assert convs[1].messages[0] == {"role": "system", "content": "Default system."}  # added where missing


def test_table_jsonl_tsv_and_xlsx(tmp_path):
    rows = [("用户：你好，推荐一家酒店", "推荐北京饭店。"), ("How late are you open?", "Until 9 pm.")]
    j = _jsonl(tmp_path / "t.jsonl", [{"context": p, "response": r, "turn": 1} for p, r in rows])
    convs = load_conversations(j, ChatReadOptions(prompt_column="context"))
    assert [c.messages[-1]["content"] for c in convs] == [r for _, r in rows]
    tsv = tmp_path / "t.tsv"
    tsv.write_text("prompt\tresponse\n" + "".join(f"{p}\t{r}\n" for p, r in rows), encoding="utf-8")
    assert [c.messages for c in load_conversations(tsv, ChatReadOptions())] == [c.messages for c in convs]
    from openpyxl import Workbook

    wb = Workbook()
    wb.active.title = "QA"
    wb.active.append(["prompt", "response"])
    for r in rows:
        wb.active.append(list(r))
    wb.save(tmp_path / "t.xlsx")
    got = load_conversations(tmp_path / "t.xlsx", ChatReadOptions())
    assert [c.messages for c in got] == [c.messages for c in convs] and got[0].where == f"{tmp_path / 't.xlsx'}#QA:2"


def test_missing_columns_name_the_ones_that_exist(tmp_path):
    path = _csv(tmp_path / "qa.csv", ["instruction", "reply"], [["a", "b"]])
    problems = _fails(tmp_path, path, ChatReadOptions(prompt_column="question", response_column="response"))
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}:1: no prompt column 'question'; the header has ['instruction', 'reply']")
    assert "set data.prompt_column" in problems[0]
    assert problems[1].startswith(f"{path}:1: no response column 'response'")
    j = _jsonl(tmp_path / "qa.jsonl", [{"q": "a", "response": "b"}])
    assert _fails(tmp_path, j) == [f"{j}:1: no prompt field 'prompt'; keys are ['q', 'response'] -> "
                                   "set data.prompt_column to the key that holds the prompt"]


def test_empty_cells_every_row_reported(tmp_path):
    path = _csv(tmp_path / "qa.csv", ["prompt", "response"], [["ok", "fine"], ["no answer", "  "], ["", "x"],
                                                              ["ok", "fine"], ["again", ""]])
    problems = _fails(tmp_path, path)
    assert [p.split(" -> ")[0] for p in problems] == [f"{path}:3: empty response", f"{path}:4: empty prompt",
                                                      f"{path}:6: empty response"]
    from openpyxl import Workbook

    wb = Workbook()
    wb.active.append(["prompt", "response"])
    wb.active.append(["question", None])
    wb.save(tmp_path / "qa.xlsx")
    (p,) = _fails(tmp_path, tmp_path / "qa.xlsx")
    assert p.startswith(f"{tmp_path / 'qa.xlsx'}, sheet 'Sheet', row 2, column B (response): empty response")


def test_bad_chats_all_reported_with_line_and_field(tmp_path):
    path = _jsonl(tmp_path / "chat.jsonl", [
        _chat(("user", "hi"), ("assistant", "hello")),                                 # 1 good
        _chat(("user", "hi"), ("assistant", "hello"), ("user", "and?")),               # 2 last turn is the user's
        _chat(("user", "hi"), ("bot", "hello")),                                       # 3 unknown role
        _chat(("user", "hi"), ("assistant", "ok"), ("system", "late"), ("user", "x"), ("assistant", "y")),  # 4
        _chat(("user", "你好"), ("assistant", "   ")),                                  # 5 empty content
        '{"messages": [{"role": "user", "content": "hi"}, ',                           # 6 invalid JSON
        _chat(("assistant", "Welcome!"), ("user", "hi"), ("assistant", "hello")),      # 7 starts with the assistant
        {"conversation": []},                                                          # 8 no messages
        {"messages": [{"role": "user", "content": ["image"]}, {"role": "assistant"}]},  # 9 not text, missing
    ])
    problems = _fails(tmp_path, path)
    want = [
        (2, "messages[2].role: the last turn is the user's, not the assistant's"),
        (3, "messages[1].role: 'bot' is not one of system/user/assistant"),
        (4, "messages[2].role: a system message must be the first message"),
        (5, "messages[1].content: empty assistant"),
        (6, "not valid JSON"),
        (7, "messages[0].role: the first turn after the system message is the assistant's"),
        (8, "no 'messages' field; keys are ['conversation']"),
        (9, "messages[0].content: is list, not text"),
        (9, "messages[1].content: empty assistant"),
    ]
    assert len(problems) == len(want), problems
    for got, (line, text) in zip(problems, want):
        assert got.startswith(f"{path}:{line}: {text}"), (got, line, text)
        assert " -> " in got  # every problem says how to fix it


def test_undecodable_bytes_and_forced_chat_format(tmp_path):
    path = tmp_path / "chat.txt"
    good = json.dumps(_chat(("user", "你好"), ("assistant", "您好！")), ensure_ascii=False).encode()
    path.write_bytes(good + b"\n" + "坏".encode("gbk") + b"\n")
    (p,) = _fails(tmp_path, path, ChatReadOptions(format="chat"))
    assert p.startswith(f"{path}:2: bytes not valid utf-8")
    path.write_bytes(good + b"\n")
    assert load_conversations(path, ChatReadOptions(format="chat"))[0].messages[1]["content"] == "您好！"
