"""replay: same data as the naive test, the gate passes; the buffer is stored, carried and label ids stay put."""

import csv
import json

import torch
from transformers import AutoModelForSequenceClassification

from domaintune.continual import ContinualOptions, continue_run


def test_replay_passes_the_gate_that_blocks_naive(stage0, naive_cli):
    out = stage0["root"] / "runs" / "b-replay"
    res = continue_run(stage0["run"], stage0["b"], out, strategy="replay", options=ContinualOptions(replay_size=600),
                       overrides=["train.epochs=2", "data.test_fraction=0.2"], max_forgetting=10.0)
    gate = json.loads((out / "continual" / "gate.json").read_text())
    assert gate["promotable"] is True and res["gate"] == gate
    naive_gate = json.loads((naive_cli["run"] / "continual" / "gate.json").read_text())
    assert gate["drops"][0]["drop_points"] <= 10 < naive_gate["drops"][0]["drop_points"]
    assert res["matrix"][1][1] > 0.8                    # stage B still learnt
    meta = json.loads((out / "continual" / "replay" / "meta.json").read_text())
    assert meta["rows"] <= 600 and set(meta["per_class"]) == set(json.loads((out / "labels.json").read_text())["labels"])
    assert res["record"]["replayed_rows"] > 0


def test_third_stage_carries_the_buffer_and_never_renumbers(stage0, tmp_path):
    """Stage C from the replay run: an old label plus a new one that sorts first; ids of A and B never move."""
    b_run = stage0["root"] / "runs" / "b-replay"
    before = json.loads((b_run / "labels.json").read_text())["labels"]
    with open(stage0["a"], encoding="utf-8") as f:
        a_rows = list(csv.DictReader(f))
    c = tmp_path / "stage_c.csv"
    with open(c, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for r in a_rows[:60]:
            w.writerow([r["text"], r["label"]])
        for i in range(30):
            w.writerow([f"Forklift battery {i} needs charging before the night shift at dock {i % 4}", "aaa_battery_charge"])
    prev_model = AutoModelForSequenceClassification.from_pretrained(b_run / "model").eval()
    res = continue_run(b_run, c, tmp_path / "c", strategy="replay", overrides=["train.max_steps=3"])
    labels = json.loads((tmp_path / "c" / "labels.json").read_text())["labels"]
    assert labels == [*before, "aaa_battery_charge"]
    assert res["record"]["replayed_rows"] > 0 and len(res["matrix"]) == 3 and len(res["matrix"][2]) == 3
    buffer = [json.loads(l) for l in (tmp_path / "c" / "continual" / "replay" / "buffer.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in buffer} == {0, 1, 2}
    # every earlier stage's test set is still scored from the copies in the new run
    for k in range(3):
        assert (tmp_path / "c" / "continual" / "tests" / f"stage-{k}.jsonl").is_file()
    # the grown head starts from the old rows: the old classes' weights moved only by 3 training steps
    new_model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "c" / "model")
    assert new_model.classifier.weight.shape[0] == 7
    drift = (new_model.classifier.weight[:6] - prev_model.classifier.weight).abs().max()
    assert float(drift) < 0.05 * float(prev_model.classifier.weight.abs().max())
    assert torch.equal(torch.tensor(new_model.classifier.weight.shape), torch.tensor([7, 384]))
