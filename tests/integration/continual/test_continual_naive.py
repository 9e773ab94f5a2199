"""naive: class-incremental stage B with only new classes forgets stage A; the gate blocks it (exit 3)."""

import json


def test_gate_blocks_a_naive_run_that_forgets(naive_cli):
    res, run = naive_cli["result"], naive_cli["run"]
    assert res.exit_code == 3, res.output
    assert "stage 0 (stage_a)" in res.output and "BLOCKED" in res.output and "not promotable" in res.output
    gate = json.loads((run / "continual" / "gate.json").read_text())
    assert gate["promotable"] is False and gate["max_forgetting_points"] == 10
    drop = gate["drops"][0]
    assert drop["stage"] == 0 and drop["blocked"] and drop["drop_points"] > 50   # naive really forgets
    # the run itself is complete: the gate only decides promotion
    for name in ("model/model.safetensors", "labels.json", "report.md", "plots/continual_accuracy.png",
                 "continual/stages.json", "continual/tests/stage-0.jsonl", "continual/tests/stage-1.jsonl"):
        assert (run / name).exists(), name


def test_naive_learns_the_new_stage_and_reports_the_matrix(naive_cli):
    run = naive_cli["run"]
    state = json.loads((run / "continual" / "stages.json").read_text())
    m = state["matrix"]
    assert len(m) == 2 and len(m[0]) == 1 and len(m[1]) == 2
    assert m[0][0] > 0.8 and m[1][1] > 0.8          # each stage learnt when trained
    assert state["summary"]["average_forgetting"] == state["summary"]["forgetting_per_stage"][0] > 50
    assert state["stages"][1]["kind"] == "class-incremental" and state["stages"][1]["strategy"] == "naive"
    report = (run / "report.md").read_text()
    assert "## Continual learning" in report and "NOT promotable" in report and "continual_accuracy.png" in report


def test_old_label_ids_are_kept_and_new_ones_appended(stage0, naive_cli):
    old = json.loads((stage0["run"] / "labels.json").read_text())["labels"]
    new = json.loads((naive_cli["run"] / "labels.json").read_text())["labels"]
    assert new[:3] == old and sorted(new[3:]) == new[3:] and len(new) == 6
    cfg = json.loads((naive_cli["run"] / "model" / "config.json").read_text())
    assert [cfg["id2label"][str(i)] for i in range(6)] == new
