"""Bad input to `domaintune continue`: clear errors with file/line/field, nothing written, exit 2."""

import csv
import json

from typer.testing import CliRunner

from domaintune.cli import app


def invoke(*args):
    return CliRunner().invoke(app, ["continue", *map(str, args)])


def write(path, rows, header=("text", "label")):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_bad_inputs_fail_before_training(stage0, tmp_path):
    run = stage0["run"]
    out = tmp_path / "never"
    res = invoke(run, "--data", tmp_path / "missing.csv", "-o", out)
    assert res.exit_code == 2 and "missing.csv" in res.output
    res = invoke(run, "--data", stage0["b"], "-o", out, "--strategy", "replya")
    assert res.exit_code == 2 and "unknown continual strategy 'replya'" in res.output
    res = invoke(tmp_path, "--data", stage0["b"], "-o", out)
    assert res.exit_code == 2 and "not a finished run directory" in res.output
    res = invoke(run, "--data", stage0["b"], "-o", run)
    assert res.exit_code == 2 and "new run directory" in res.output
    res = invoke(run, "--data", stage0["b"], "-o", out, "--set", "model=m3e-small")
    assert res.exit_code == 2 and "--set model" in res.output
    no_label = write(tmp_path / "nolabel.csv", [("a ticket", "x")], header=("text", "category"))
    res = invoke(run, "--data", no_label, "-o", out)
    assert res.exit_code == 2 and "nolabel.csv" in res.output and "label" in res.output
    empty = write(tmp_path / "empty_cell.csv", [("Breaker tripped on line 3", "electrical_fault"), ("", "electrical_fault"),
                                                ("Fuse blown in panel 7", "electrical_fault")])
    res = invoke(run, "--data", empty, "-o", out)
    assert res.exit_code == 2 and "empty_cell.csv:3" in res.output
    assert not out.exists()


def test_domain_mode_rejects_unknown_labels_with_file_and_line(stage0, tmp_path):
    rows = [("Breaker tripped on line 3", "electrical_fault"), ("Fuse blown in panel 7", "electrical_fault"),
            ("Gearbox noise on conveyor 2", "mechanical_failure"), ("Bearing seized on pump 4", "mechanical_failure"),
            ("Invoice for the new drill", "billing"), ("Second invoice question", "billing")] * 3
    data = write(tmp_path / "new.csv", rows)
    res = invoke(stage0["run"], "--data", data, "-o", tmp_path / "d", "--mode", "domain")
    assert res.exit_code == 2, res.output
    assert "new.csv:6" in res.output and "'billing'" in res.output and "--mode class" in res.output
    res = invoke(stage0["run"], "--data", write(tmp_path / "same.csv", rows[:4] * 3), "-o", tmp_path / "c", "--mode", "class")
    assert res.exit_code == 2 and "already known" in res.output
    assert not (tmp_path / "d").exists() and not (tmp_path / "c").exists()


def test_tampered_stored_test_set_is_refused(naive_cli, tmp_path):
    import shutil

    copy = tmp_path / "b-copy"
    shutil.copytree(naive_cli["run"], copy)
    path = copy / "continual" / "tests" / "stage-0.jsonl"
    rows = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(rows[1:]) + "\n", encoding="utf-8")
    # the new data is checked first, so give a valid file: the stored test set is what must be refused
    data = write(tmp_path / "x.csv", [("Breaker tripped", "electrical_fault"), ("Fuse blown", "electrical_fault")] * 3)
    res = invoke(copy, "--data", data, "-o", tmp_path / "next")
    assert res.exit_code == 2 and "stage-0.jsonl" in res.output and "sha256" in res.output
    assert json.loads((copy / "continual" / "gate.json").read_text())["promotable"] is False
