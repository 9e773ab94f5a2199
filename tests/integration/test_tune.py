"""`domaintune tune`: a real Optuna search over tiny MiniLM runs, killed mid-way and resumed."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from typer.testing import CliRunner

from domaintune.cli import app
from domaintune.config import load_config
from domaintune.tune import TuneError, resolve_space, tune
from support import tiny_config_path

SPACE = ["tune:", "  space:", "    train.lr: {low: 1.0e-5, high: 3.0e-4, log: true}",
         "    train.warmup_ratio: {low: 0.0, high: 0.2}", "    train.batch_size: {choices: [8, 16]}"]


def _config(tmp_path, tiny_splits, name="tuned"):
    p = tiny_config_path(tmp_path, tiny_splits, tmp_path / name, baseline_off=True, max_steps=6, eval_every=3)
    p.write_text(p.read_text(encoding="utf-8") + "\n".join(SPACE) + "\n", encoding="utf-8")
    return p


def _trials(db):
    return optuna.load_study(study_name="tuned", storage=f"sqlite:///{db}").trials


def _completed_yet(db) -> bool:
    """While polling: read-only SQL, never Optuna's storage - opening that creates and stamps the schema, which
    races the tune process doing the same (UNIQUE constraint failed: alembic_version)."""
    import sqlite3

    if not db.exists():
        return False
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0] > 0
        finally:
            con.close()
    except sqlite3.OperationalError:  # no such table yet, or the writer holds the lock: poll again
        return False


def test_tune_killed_then_resumed_runs_only_missing_trials(tmp_path, tiny_splits):
    cfg_path = _config(tmp_path, tiny_splits)
    tune_dir = tmp_path / "tuned" / "tune"
    db = tune_dir / "study.db"
    proc = subprocess.Popen([sys.executable, "-m", "domaintune", "tune", str(cfg_path), "--trials", "3"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "tune.log", "w"), cwd=os.getcwd(),
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:  # kill -9 as soon as the first trial (the default config) has finished: no chance to clean up
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if _completed_yet(db):
                break
            time.sleep(0.3)
        assert proc.poll() is None, (tmp_path / "tune.log").read_text()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {t.number: (t.state.name, t.datetime_start, t.value) for t in _trials(db)}
    finished = {n for n, (state, *_) in before.items() if state in ("COMPLETE", "PRUNED")}
    assert 0 in finished and before[0][0] == "COMPLETE"
    assert len(finished) < 3, "the kill came too late to test resuming"
    default_metrics = tune_dir / "trial_0" / "metrics.json"
    stamp = default_metrics.stat().st_mtime_ns

    summary = tune(load_config(cfg_path), trials=3)

    after = _trials(db)
    for t in after:  # finished trials are untouched, never run again
        if t.number in finished:
            assert (t.state.name, t.datetime_start, t.value) == before[t.number]
    assert default_metrics.stat().st_mtime_ns == stamp
    done = [t for t in after if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 3, [(t.number, t.state.name) for t in after]
    interrupted = [t for t in after if t.user_attrs.get("interrupted")]
    for t in interrupted:  # a trial cut off by the kill is failed and its parameters (if it drew any) run again
        assert t.state.name == "FAIL"
        if t.params:
            assert any(o.params == t.params and o.number > t.number for o in done)
    requeued = {t.number for t in interrupted}
    seen = [tuple(sorted(t.params.items())) for t in done if t.number not in requeued]
    assert len(seen) == len(set(seen)), "a resumed search ran a finished parameter set again"
    # The default config is trial 0, so the best dev score is >= the default's by construction.
    assert after[0].user_attrs["default"] and after[0].params == {"train.lr": 1e-4, "train.warmup_ratio": 0.06,
                                                                   "train.batch_size": 8}
    assert summary["best"]["dev"] >= summary["default_dev"]
    assert summary["best"]["dev"] == max(t.value for t in done if t.state.name == "COMPLETE")

    best_cfg = load_config(tune_dir / "best_config.yaml")
    for key, value in summary["best"]["params"].items():
        section, field = key.split(".")
        assert getattr(getattr(best_cfg, section), field) == value
    assert best_cfg.output_dir == str(tmp_path / "tuned")
    rows = list(csv.DictReader(open(tune_dir / "trials.csv", encoding="utf-8")))
    assert len(rows) == len(after) and {"number", "state", "dev_macro_f1", "seconds", "train.lr"} <= set(rows[0])
    assert "(default)" in (tune_dir / "trials.md").read_text(encoding="utf-8")
    assert (tune_dir / "optimization_history.png").read_bytes()[:4] == b"\x89PNG"
    best_dir = tune_dir / f"trial_{summary['best']['number']}"
    assert (best_dir / "model" / "model.safetensors").exists()
    for t in done:  # checkpoints are gone; only the best trial keeps its model
        d = tune_dir / f"trial_{t.number}"
        assert not (d / "checkpoints").exists()
        assert (d / "model").exists() == (d == best_dir)
        if t.state.name == "COMPLETE":
            assert json.loads((d / "metrics.json").read_text())["dev"]["macro_f1"] == t.value

    # A rerun with the same count has nothing to do; the CLI prints the best and exits 0.
    r = CliRunner().invoke(app, ["tune", str(cfg_path), "--trials", "3"])
    assert r.exit_code == 0, r.output
    assert "best: trial" in r.output and len(_trials(db)) == len(after)


def test_space_errors_are_clear(tmp_path, tiny_splits):
    cfg = load_config(_config(tmp_path, tiny_splits, "bad"), ["tune.space={train.learning_rate: {low: 1, high: 2}}"])
    with pytest.raises(TuneError, match="train.learning_rate.*not a config key"):
        resolve_space(cfg)
    cfg = load_config(_config(tmp_path, tiny_splits, "bad"), ["tune.space={train.dropout: {low: 0.5, high: 1.5}}"])
    with pytest.raises(TuneError, match="numeric range but the config's value is None"):
        resolve_space(cfg)
    cfg = load_config(_config(tmp_path, tiny_splits, "bad"), ["tune.space={train.dropout: {low: 0.0, high: 1.5}}",
                                                              "train.dropout=0.1"])
    with pytest.raises(TuneError, match="high end of the space is not a valid config"):
        resolve_space(cfg)
    r = CliRunner().invoke(app, ["tune", str(_config(tmp_path, tiny_splits, "bad")), "--set",
                                 "tune.space={train.lr: {choices: []}}"])
    assert r.exit_code == 2 and "choices must be a non-empty list" in r.output


def test_default_space_contains_the_config(tmp_path, tiny_splits):
    cfg = load_config(_config(tmp_path, tiny_splits, "dflt"), ["tune.space={}", "train.lr=0.5", "train.max_steps=null"])
    space = resolve_space(cfg)
    assert {"train.lr", "train.epochs", "train.batch_size", "train.dropout"} <= set(space)
    assert space["train.lr"]["high"] == 0.5 and None in space["train.dropout"]["choices"]


def test_resume_fingerprint_ignores_defaults_and_output_dir(tmp_path, tiny_splits):
    from domaintune.tune import _fingerprint

    path = _config(tmp_path, tiny_splits, "fp")
    base = load_config(path)
    fp = _fingerprint(base, resolve_space(base))
    # Spelling out a default (as a newer domaintune with more fields would), moving the output, more trials: same study.
    same = load_config(path, ["train.grad_accum=1", "output_dir=elsewhere", "tune.trials=50"])
    assert _fingerprint(same, resolve_space(same)) == fp
    other = load_config(path, ["train.max_length=32"])
    assert _fingerprint(other, resolve_space(other)) != fp
