"""Unit tests of the continual plug-ins' pieces: strategy parsing, replay buffer, Fisher algebra, distillation, head growth."""

import json

import pytest
import torch

from domaintune.continual import ContinualOptions, make_strategies, parse_strategy
from domaintune.continual.ewc import add_fisher
from domaintune.continual.lwf import distillation_loss
from domaintune.continual.method import ContinualClassification
from domaintune.continual.replay import ReplayBuffer, ReplayBufferError
from domaintune.data.readers import Example


def rows(label: str, n: int, stage: int = 0) -> list[Example]:
    return [Example(f"{label} text {stage}-{i}", label, source=f"s{stage}.csv", line=i + 2) for i in range(n)]


def test_parse_strategy_combinations_and_errors():
    assert parse_strategy("replay+lwf") == ["replay", "lwf"]
    assert [s.name for s in make_strategies("ewc+replay", ContinualOptions())] == ["ewc", "replay"]
    for bad, msg in (("replya", "unknown continual strategy 'replya'"), ("naive+ewc", "cannot be combined"),
                     ("lwf+lwf", "twice"), ("", "unknown continual strategy")):
        with pytest.raises(ValueError, match=msg):
            parse_strategy(bad)


def test_replay_buffer_is_bounded_balanced_and_seeded():
    buf = ReplayBuffer(capacity=12, seed=3)
    buf.add(rows("a", 50) + rows("b", 5), stage=0)
    assert buf.counts() == {"a": 6, "b": 5}
    buf.add(rows("c", 30, stage=1) + rows("d", 30, stage=1), stage=1)   # quota shrinks to 12 // 4 = 3
    assert buf.counts() == {"a": 3, "b": 3, "c": 3, "d": 3} and len(buf) == 12
    again = ReplayBuffer(capacity=12, seed=3)
    again.add(rows("a", 50) + rows("b", 5), stage=0)
    again.add(rows("c", 30, stage=1) + rows("d", 30, stage=1), stage=1)
    assert [e.text for e in again.examples()] == [e.text for e in buf.examples()]
    other = ReplayBuffer(capacity=12, seed=4)
    other.add(rows("a", 50) + rows("b", 5), stage=0)
    first = ReplayBuffer(capacity=12, seed=3)
    first.add(rows("a", 50) + rows("b", 5), stage=0)
    assert [e.text for e in other.examples()] != [e.text for e in first.examples()]


def test_replay_reservoir_keeps_later_domains_in_proportion():
    buf = ReplayBuffer(capacity=40, seed=0)
    buf.add(rows("pos", 200, stage=0), stage=0)
    buf.add(rows("pos", 200, stage=1), stage=1)
    stages = [r["stage"] for r in buf.items["pos"]]
    assert len(stages) == 40 and 8 <= stages.count(1) <= 32   # about half from each domain, not all old or all new


def test_replay_buffer_roundtrip_and_tamper_detection(tmp_path):
    buf = ReplayBuffer(capacity=6, seed=1)
    buf.add(rows("x", 10) + rows("新类", 10), stage=0)
    meta = buf.save(tmp_path / "replay")
    back = ReplayBuffer.load(tmp_path / "replay")
    assert back.counts() == buf.counts() and back.seen == {"x": 10, "新类": 10} and meta["rows"] == 6
    assert [e.text for e in back.examples()] == [e.text for e in buf.examples()]
    path = tmp_path / "replay" / "buffer.jsonl"
    path.write_text(path.read_text(encoding="utf-8").replace("x text", "y text"), encoding="utf-8")
    with pytest.raises(ReplayBufferError, match="do not match the sha256"):
        ReplayBuffer.load(tmp_path / "replay")
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        ReplayBuffer(capacity=0)


def test_add_fisher_pads_a_grown_head():
    old = {"w": torch.ones(2, 3), "b": torch.ones(2)}
    new = {"w": torch.full((4, 3), 2.0), "b": torch.full((4,), 2.0)}
    total = add_fisher(old, new)
    assert total["w"][:2].eq(3).all() and total["w"][2:].eq(2).all() and total["b"].tolist() == [3, 3, 2, 2]


def test_distillation_is_zero_for_the_teacher_itself_and_cuts_new_classes():
    teacher = torch.tensor([[2.0, -1.0, 0.5]])
    student = torch.cat([teacher, torch.tensor([[9.0]])], dim=1)   # a new class's logit is ignored
    assert float(distillation_loss(student, teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(torch.tensor([[0.0, 0.0, 0.0, 0.0]]), teacher, 2.0)) > 0.1


def test_label_space_appends_new_labels_after_old_ones():
    task = ContinualClassification(["zeta", "alpha"])
    task.fit([Example("t", "beta"), Example("t", "alpha"), Example("t", "aardvark")])
    assert task.labels == ["zeta", "alpha", "aardvark", "beta"]   # old ids kept even though not sorted


def test_label_that_differs_only_in_case_is_flagged():
    task = ContinualClassification(["Card_Arrival"])
    problems = []
    task.check([Example("t", "card_arrival", "new.csv", 2), Example("u", "card_arrival", "new.csv", 3)],
               {"test": [Example("v", "Card_Arrival", "new.csv", 9), Example("w", "refund", "new.csv", 10)]}, problems)
    text = [str(p) for p in problems]
    assert any("new.csv:2" in t and "only in case" in t for t in text)
    assert any("new.csv:10" in t and "'refund'" in t for t in text) and not any("new.csv:9" in t for t in text)
