"""`domaintune compare`: a real 2-cell grid (full fine-tuning at k=4 and all labels), re-run skips finished cells."""

import json

from typer.testing import CliRunner

from domaintune.cli import app
from domaintune.compare import aggregate, compare, markdown, parse_k_shot
from support import tiny_config_path


def test_compare_grid_table_plot_and_resume(tmp_path, tiny_splits):
    cfg = tiny_config_path(tmp_path, tiny_splits, tmp_path / "cmp", baseline_off=True, max_steps=4)
    result = compare(cfg, ["full"], parse_k_shot("4,all"), [42])
    out = tmp_path / "cmp" / "compare"
    assert result["dir"] == str(out) and not result["failed"], result["failed"]
    cells = {c["cell"]: c for c in result["cells"]}
    assert set(cells) == {"full_k4_s42", "full_kall_s42"}
    assert cells["full_k4_s42"]["train_examples"] == 4 * 3      # k per class, 3 classes
    assert cells["full_kall_s42"]["train_examples"] == 72
    for c in cells.values():
        m = json.loads((out / c["cell"] / "metrics.json").read_text())
        assert c["value"] == m["test"]["accuracy"] and c["metric"] == "accuracy"
        assert c["peak_rss_mb"] == m["train"]["peak_rss_mb"] > 0 and c["wall_seconds"] > c["train_seconds"] > 0
        assert m["method"] == "full" and m["train"]["global_step"] == 4
        assert not (out / c["cell"] / "checkpoints").exists() and not (out / c["cell"] / "model").exists()
    table = (out / "compare.md").read_text(encoding="utf-8")
    assert "| full | 4 | 1 |" in table and "| full | all | 1 |" in table and "test accuracy" in table
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "compare.json").read_text())
    assert [r["k"] for r in saved["rows"]] == [4, None]

    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "logs").iterdir()}
    r = CliRunner().invoke(app, ["compare", str(cfg), "--methods", "full", "--k-shot", "4,all", "--seeds", "1"])
    assert r.exit_code == 0, r.output
    assert "| full | 4 | 1 |" in r.output
    assert {p.name: p.stat().st_mtime_ns for p in (out / "logs").iterdir()} == stamps  # nothing re-ran
    again = json.loads((out / "compare.json").read_text())
    assert all(c.get("skipped") for c in again["cells"]) and again["rows"][0]["mean"] == saved["rows"][0]["mean"]


def test_unknown_method_and_bad_k_are_clear_errors(tmp_path, tiny_splits):
    cfg = tiny_config_path(tmp_path, tiny_splits, tmp_path / "bad", baseline_off=True)
    r = CliRunner().invoke(app, ["compare", str(cfg), "--methods", "full,setfitt"])
    assert r.exit_code == 2 and "setfitt" in r.output and "registered methods are" in r.output and "full" in r.output
    r = CliRunner().invoke(app, ["compare", str(cfg), "--k-shot", "8,lots"])
    assert r.exit_code == 2 and "'lots'" in r.output and "all" in r.output
    assert not (tmp_path / "bad").exists()


def test_aggregate_mean_std_over_seeds():
    recs = [{"method": "lora", "k": 8, "seed": s, "trains": True, "metric": "accuracy", "value": v, "train_examples": 16,
             "n_labels": 2, "wall_seconds": 10.0, "train_seconds": 5.0, "peak_rss_mb": mb}
            for s, v, mb in ((42, 0.8, 500.0), (43, 0.9, 700.0), (44, 1.0, 600.0))]
    recs.append({"method": "lora", "k": 8, "seed": 45, "trains": True, "error": "exit 1"})
    (row,) = aggregate(recs)
    assert row["n"] == 3 and row["failed"] == 1 and row["peak_rss_mb"] == 700.0
    assert abs(row["mean"] - 0.9) < 1e-12 and abs(row["std"] - 0.1) < 1e-12  # sample std (ddof=1)
    assert "| lora | 8 | 3 (1 failed) | 90.00 ± 10.00 |" in markdown([row], "t")
