import json
import os

import pytest

from domaintune.training.checkpoint import atomic_dir, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "m.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_json(p, {"a": 2, "标签": "负面"})
    assert json.loads(p.read_text(encoding="utf-8")) == {"a": 2, "标签": "负面"}
    assert [f.name for f in tmp_path.iterdir()] == ["m.json"]  # no temp files left behind


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "metrics.json"
    atomic_write_text(p, "old")

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write_text(p, "new and half written")
    monkeypatch.undo()
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_dir_swaps_or_keeps_old(tmp_path):
    target = tmp_path / "model"

    def good(d):
        (d / "w.bin").write_text("v1")

    atomic_dir(target, good)
    assert (target / "w.bin").read_text() == "v1"

    def bad(d):
        (d / "w.bin").write_text("partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_dir(target, bad)
    assert (target / "w.bin").read_text() == "v1"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["model"]
