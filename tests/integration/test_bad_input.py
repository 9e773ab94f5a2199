"""Bad input exits non-zero naming file, row and problem; an existing run is not touched."""

import hashlib

from typer.testing import CliRunner

from domaintune.cli import app


def snapshot(run):
    return {p.relative_to(run): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*")) if p.is_file()}


def config(tmp_path, run, train, test, extra=""):
    p = tmp_path / "bad.yaml"
    p.write_text(f"output_dir: {run}\ndata:\n  train: {train}\n  test: {test}\n{extra}train:\n  max_steps: 2\n", encoding="utf-8")
    return p


def test_bad_inputs_fail_clearly_and_leave_run_intact(trained_run, tiny_splits, tmp_path):
    before = snapshot(trained_run)
    runner = CliRunner()
    good = tiny_splits["train"]

    missing_col = tmp_path / "missing.csv"
    missing_col.write_text("body,label\nhello,a\n", encoding="utf-8")
    r = runner.invoke(app, ["train", str(config(tmp_path, trained_run, good, missing_col)), "--overwrite"])
    assert r.exit_code == 2 and f"{missing_col}:1" in r.output and "no text column 'text'" in r.output

    bad_utf8 = tmp_path / "bad_utf8.csv"
    bad_utf8.write_bytes(good.read_bytes() + b"caf\xe9 machine stopped,electrical_fault\n")
    n_lines = good.read_bytes().count(b"\n") + 1
    r = runner.invoke(app, ["train", str(config(tmp_path, trained_run, bad_utf8, tiny_splits["test"])), "--overwrite"])
    assert r.exit_code == 2 and f"bad_utf8.csv:{n_lines}" in r.output and "not valid utf-8" in r.output

    unseen = tmp_path / "unseen.csv"
    unseen.write_text("text,label\n设备异响，需要检修,设备故障\n", encoding="utf-8")
    r = runner.invoke(app, ["train", str(config(tmp_path, trained_run, good, unseen)), "--overwrite"])
    assert r.exit_code == 2 and f"{unseen}:2" in r.output and "'设备故障' never appears in train" in r.output

    r = runner.invoke(app, ["train", str(config(tmp_path, trained_run, good, tiny_splits["test"], "model: no-such-model\n"))])
    assert r.exit_code == 2 and "unknown model 'no-such-model'" in r.output

    # a finished run is never replaced without --overwrite
    r = runner.invoke(app, ["train", str(config(tmp_path, trained_run, good, tiny_splits["test"]))])
    assert r.exit_code == 2 and "--overwrite" in r.output

    r = runner.invoke(app, ["evaluate", str(trained_run), "--data", str(unseen)])
    assert r.exit_code == 2 and "设备故障" in r.output
    assert snapshot(trained_run) == before
