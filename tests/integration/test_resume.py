"""kill -9 in the middle of training, --resume, and end where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time

from support import tiny_config_path


def run_cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "domaintune", "train", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def latest_step(run):
    p = run / "checkpoints" / "latest.json"
    try:
        return json.loads(p.read_text())["global_step"]
    except (OSError, ValueError, KeyError):
        return 0


def test_resume_after_kill_9_matches_uninterrupted(tmp_path, tiny_splits):
    settings = dict(epochs=4, batch_size=8, save_every_steps=3, baseline_off=True)
    full_cfg = tiny_config_path(tmp_path, tiny_splits, tmp_path / "full", **settings)
    killed_cfg = tiny_config_path(tmp_path, tiny_splits, tmp_path / "killed", **settings)

    proc = run_cli(killed_cfg)
    deadline = time.time() + 600
    while latest_step(tmp_path / "killed") < 6:
        assert proc.poll() is None, "training finished before it could be killed:\n" + proc.stdout.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = latest_step(tmp_path / "killed")
    assert not (tmp_path / "killed" / "metrics.json").exists(), "the run must really have been interrupted"

    # other training settings on resume are refused with every changed key named; nothing is touched
    changed = run_cli(killed_cfg, "--resume", "--set", "train.lr=0.001", "--set", "train.num_threads=1")
    out_changed = changed.communicate()[0]
    assert changed.returncode == 2, out_changed
    assert "train.lr: 0.0001 -> 0.001" in " ".join(out_changed.split()) and "num_threads" not in out_changed
    assert latest_step(tmp_path / "killed") == killed_at

    resumed = run_cli(killed_cfg, "--resume")
    out_resumed = resumed.communicate()[0]
    assert resumed.returncode == 0, out_resumed
    assert f"resumed from step-{killed_at:07d}" in out_resumed

    full = run_cli(full_cfg)
    out_full = full.communicate()[0]
    assert full.returncode == 0, out_full

    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert b["train"]["global_step"] == a["train"]["global_step"]
    assert abs(a["test"]["accuracy"] - b["test"]["accuracy"]) <= 0.002
    assert abs(a["dev"]["macro_f1"] - b["dev"]["macro_f1"]) <= 0.002
    # the data order, dropout and optimizer state were restored, so the training losses line up too
    loss = lambda run: [r["loss"] for r in map(json.loads, (run / "train_log.jsonl").read_text().splitlines()) if "loss" in r][-1]  # noqa: E731
    assert abs(loss(tmp_path / "full") - loss(tmp_path / "killed")) < 1e-2
