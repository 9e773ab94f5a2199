"""`domaintune continue --resume`: kill -9 in the middle of a stage, resume it, end where an uninterrupted stage ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from domaintune.continual import ContinualOptions, continue_run

SETS = ["train.epochs=4", "data.test_fraction=0.2", "train.save_every_steps=2"]


def _continue(stage0, out, *extra):
    args = [sys.executable, "-m", "domaintune", "continue", str(stage0["run"]), "--data", str(stage0["b"]), "-o", str(out),
            "--strategy", "replay", "--replay-size", "300", *[x for s in SETS for x in ("--set", s)], *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def _latest_step(run) -> int:
    try:
        return json.loads((run / "checkpoints" / "latest.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError):
        return 0


def test_a_killed_stage_resumes_and_matches_an_uninterrupted_one(stage0, tmp_path):
    killed = tmp_path / "killed"
    proc = _continue(stage0, killed)
    deadline = time.time() + 600
    while _latest_step(killed) < 2:
        assert proc.poll() is None, "the stage finished before it could be killed:\n" + proc.stdout.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _latest_step(killed)
    assert not (killed / "continual" / "stages.json").exists(), "the stage must really have been interrupted"

    again = _continue(stage0, killed)   # no --resume: refused, with the flag named, nothing touched
    out = again.communicate()[0]
    assert again.returncode == 2 and "--resume" in out, out
    assert _latest_step(killed) == killed_at

    resumed = _continue(stage0, killed, "--resume")
    out = resumed.communicate()[0]
    assert resumed.returncode == 0, out
    assert f"resumed from step-{killed_at:07d}" in out

    full = tmp_path / "full"
    ref = continue_run(stage0["run"], stage0["b"], full, strategy="replay", options=ContinualOptions(replay_size=300),
                       overrides=SETS)
    got = json.loads((killed / "continual" / "stages.json").read_text(encoding="utf-8"))
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert b["train"]["global_step"] == a["train"]["global_step"]
    # same replay sample (seeded by seed and stage), same data order and dropout after the restore
    assert got["stages"][-1]["replayed_rows"] == ref["record"]["replayed_rows"]
    for x, y in zip(got["matrix"][-1], ref["matrix"][-1]):
        assert abs(x - y) <= 0.002, (got["matrix"], ref["matrix"])
    assert (killed / "continual" / "gate.json").is_file() and (killed / "continual" / "replay" / "meta.json").is_file()
