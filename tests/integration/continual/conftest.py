"""Shared runs of the continual tests: stage A trained once, stage B continued naively once (through the CLI)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from continual_support import stage_config, write_stages


@pytest.fixture(scope="session")
def stage0(tmp_path_factory) -> dict:
    """Stage A (3 demo labels) trained with `train_run`; stage B's file (the other 3 labels) beside it."""
    from domaintune.config import load_config
    from domaintune.run import train_run

    root = tmp_path_factory.mktemp("continual")
    a, b = write_stages(root)
    cfg = load_config(stage_config(root, a, root / "runs" / "a", test_fraction=0.2))
    train_run(cfg)
    return {"root": root, "a": a, "b": b, "run": root / "runs" / "a"}


FAST = ["--set", "train.epochs=2", "--set", "data.test_fraction=0.2"]


@pytest.fixture(scope="session")
def naive_cli(stage0) -> dict:
    """`domaintune continue ... --strategy naive --max-forgetting 10`: forgets stage A, so the gate blocks it."""
    from domaintune.cli import app

    out = stage0["root"] / "runs" / "b-naive"
    res = CliRunner().invoke(app, ["continue", str(stage0["run"]), "--data", str(stage0["b"]), "-o", str(out),
                                   "--strategy", "naive", "--max-forgetting", "10", *FAST])
    return {"result": res, "run": out}
