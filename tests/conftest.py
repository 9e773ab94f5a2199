"""Shared fixtures: small data sets the tests write themselves (no ../shared on a user's clone)."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

from support import tiny_config_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def write_csv(path: Path, rows: list[tuple[str, str]], header=("text", "label")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def demo_rows() -> list[tuple[str, str]]:
    from domaintune.demo import DEMO_DATA

    with open(DEMO_DATA, encoding="utf-8", newline="") as f:
        return [(r["text"], r["label"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="session")
def tiny_splits(tmp_path_factory, demo_rows) -> dict[str, Path]:
    """A small, balanced train/dev/test drawn from the demo tickets (3 labels)."""
    keep = ("electrical_fault", "safety_incident", "spare_parts_request")
    rng = random.Random(0)
    rows = [r for r in demo_rows if r[1] in keep]
    rng.shuffle(rows)
    by = {k: [r for r in rows if r[1] == k] for k in keep}
    train = [r for k in keep for r in by[k][:24]]
    dev = [r for k in keep for r in by[k][24:30]]
    test = [r for k in keep for r in by[k][30:40]]
    root = tmp_path_factory.mktemp("tiny")
    return {"train": write_csv(root / "train.csv", train), "dev": write_csv(root / "dev.csv", dev),
            "test": write_csv(root / "test.csv", test)}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_splits) -> Path:
    """One real fine-tuning run shared by the integration tests that only read it."""
    from domaintune.config import load_config
    from domaintune.run import train_run

    root = tmp_path_factory.mktemp("runs")
    cfg = load_config(tiny_config_path(root, tiny_splits, root / "tiny", epochs=2))
    train_run(cfg)
    return root / "tiny"


@pytest.fixture(scope="session")
def exported_run(trained_run, tmp_path_factory):
    """A copy of the shared run (other tests keep reading its torch model), exported to ONNX fp32 + int8.

    The gate is wide open here: the tiny run's 30 test rows make one flipped
    prediction 3.3 points; the gate itself is tested on its own."""
    import shutil

    from domaintune.export import export_run

    run = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    rec = export_run(run, quantize="int8", gate=100.0)
    return run, rec
