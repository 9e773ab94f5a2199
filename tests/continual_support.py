"""Two-stage data for the continual-learning tests, written from the built-in demo tickets.

Stage A holds three of the six demo labels and stage B the other three, so a
class-incremental stage B has only new classes: naive fine-tuning really
forgets A (its model stops predicting A's classes), which the gate tests rely on.
"""

from __future__ import annotations

import csv
from importlib.resources import files
from pathlib import Path

STAGE_A = ("electrical_fault", "mechanical_failure", "safety_incident")


def demo_rows() -> list[dict]:
    with (files("domaintune.demo") / "maintenance_tickets.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows({"text": r["text"], "label": r["label"]} for r in rows)
    return path


def write_stages(folder: Path) -> tuple[Path, Path]:
    """stage_a.csv (three labels) and stage_b.csv (the other three)."""
    rows = demo_rows()
    a = write_rows(folder / "stage_a.csv", [r for r in rows if r["label"] in STAGE_A])
    b = write_rows(folder / "stage_b.csv", [r for r in rows if r["label"] not in STAGE_A])
    return a, b


def stage_config(folder: Path, train: Path, out: Path, test_fraction: float = 0.2, **train_settings) -> Path:
    settings = {"batch_size": 16, "lr": 1e-4, "max_length": 32, "epochs": 2, "log_every": 5, "num_threads": 1,
                **train_settings}
    lines = ["model: minilm-l6", f"output_dir: {out}", "baseline: false", "data:", f"  train: {train}",
             f"  test_fraction: {test_fraction}", "train:"]
    lines += [f"  {k}: {v}" for k, v in settings.items()]
    p = folder / f"{out.name}.yaml"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p
