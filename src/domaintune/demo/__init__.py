"""The built-in demo: maintenance-desk tickets from a manufacturing plant (see README.md here)."""

from __future__ import annotations

from pathlib import Path

DEMO_DATA = Path(__file__).with_name("maintenance_tickets.csv")

EXAMPLES = [
    "Spindle on CNC-04 is making a grinding noise at high rpm, getting worse since Monday",
    "Main breaker for the paint booth keeps tripping when the exhaust fan starts",
    "Forklift driver nearly hit a pedestrian at the dock door, no one hurt but mirror is broken",
    "Last 200 housings from press P12 have burrs on the flange, customer flagged the batch",
    "Need 4 spare proximity sensors for line 2, stock shows zero",
    "Please schedule the quarterly lubrication round for the packaging line conveyors",
]


def run_demo(output_dir: Path, epochs: float, console) -> dict:
    from domaintune.config import RunConfig
    from domaintune.predictor import Predictor
    from domaintune.run import train_run

    cfg = RunConfig.model_validate({
        "model": "minilm-l6", "output_dir": str(output_dir),
        "data": {"train": str(DEMO_DATA), "dev_fraction": 0.15, "test_fraction": 0.15},
        "train": {"epochs": epochs, "batch_size": 16, "lr": 1e-4, "max_length": 64, "log_every": 10},
    })
    metrics = train_run(cfg, overwrite=True)
    test, base = metrics["test"], metrics["baseline"]
    console.print(f"\n[bold]Demo run written to {output_dir}[/] (report: {output_dir / 'report.md'})")
    console.print(f"test accuracy {100 * test['accuracy']:.1f} %, macro-F1 {100 * test['macro_f1']:.1f} %"
                  f"  |  majority class {100 * base['majority']['accuracy']:.1f} %"
                  + (f", frozen encoder + linear head {100 * base['frozen_linear']['accuracy']:.1f} %" if "frozen_linear" in base else ""))
    console.print(f"trained {metrics['train']['seconds']:.0f} s at {metrics['train']['samples_per_second']:.0f} samples/s\n")
    predictor = Predictor(output_dir)
    for text, p in zip(EXAMPLES, predictor.predict(EXAMPLES)):
        console.print(f"  {p['label']:<24} {p['score']:.2f}  {text}", highlight=False)
    return metrics
