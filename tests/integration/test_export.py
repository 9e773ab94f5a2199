"""ONNX export of a real fine-tuned run: fp32 + int8 files, the accuracy gate, and the Predictor backends."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from domaintune.export import ExportError, choose_backend, export_run
from domaintune.predictor import Predictor

TEXTS = ["The main breaker tripped and line 2 lost power", "Please order two replacement bearings for the pump",
         "A worker slipped on oil near the press", "配电柜跳闸，三号线停机", "x"]


@pytest.fixture(scope="module")
def exported(exported_run):
    return exported_run


def test_files_inputs_and_dynamic_axes(exported):
    run, rec = exported
    for name in ("model.onnx", "model.int8.onnx", "benchmark.json"):
        assert (run / "export" / name).is_file()
    graph = onnx.load(str(run / "export" / "model.onnx")).graph
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert set(inputs) >= {"input_ids", "attention_mask"} and set(inputs) <= {"input_ids", "attention_mask", "token_type_ids"}
    assert all(isinstance(d, str) for d in inputs["input_ids"]), inputs  # batch and sequence are symbolic
    assert [o.name for o in graph.output] == ["logits"]
    assert rec["files_mb"]["model.int8.onnx"] < rec["files_mb"]["model.onnx"] / 2.5  # int8 weights: ~4x smaller


def test_benchmark_record_scores_every_backend(exported):
    run, rec = exported
    saved = json.loads((run / "export" / "benchmark.json").read_text())
    assert saved["eval"]["split"] == "test" and saved["eval"]["examples"] == 30
    assert saved["torch"]["metric"] == "accuracy"
    fp32, int8 = saved["backends"]["onnx"], saved["backends"]["onnx-int8"]
    assert fp32["argmax_agreement"] == 1.0 and fp32["max_abs_logit_difference"] < 1e-3
    assert fp32["value"] == pytest.approx(saved["torch"]["value"])
    assert int8["argmax_agreement"] >= 0.9
    for b in (fp32, int8, saved["torch"]):
        assert b["texts_per_second"] > 0 and 0 < b["p50_ms"] <= b["p99_ms"]
    assert fp32["gate_passed"] and int8["gate_passed"]


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_predictor_backends_give_the_same_output_format(exported, backend):
    run, _ = exported
    ref = Predictor(run, backend="torch").predict(TEXTS, top_k=2)
    got = Predictor(run, backend=backend).predict(TEXTS, top_k=2)
    assert [set(p) for p in got] == [set(p) for p in ref]
    assert [len(p["top_k"]) for p in got] == [2] * len(TEXTS)
    if backend == "onnx":
        assert [p["label"] for p in got] == [p["label"] for p in ref]
        assert np.allclose([p["score"] for p in got], [p["score"] for p in ref], atol=1e-4)


def test_auto_backend_picks_a_gated_export_and_skips_a_failed_one(exported):
    run, _ = exported
    assert choose_backend(run) in ("onnx", "onnx-int8")
    rec = json.loads((run / "export" / "benchmark.json").read_text())
    for b in rec["backends"].values():
        b["gate_passed"] = False
    (run / "export" / "benchmark.json").write_text(json.dumps(rec))
    try:
        assert choose_backend(run) == "torch"
        assert Predictor(run).backend == "torch"
    finally:
        for b in rec["backends"].values():
            b["gate_passed"] = True
        (run / "export" / "benchmark.json").write_text(json.dumps(rec))


def test_gate_fails_loudly_and_keeps_nothing(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    # a negative gate cannot be met by any model: the export must refuse and say why, with numbers
    with pytest.raises(ExportError, match=r"accuracy gate.*drop .* pt > gate -5.00"):
        export_run(run, quantize="int8", gate=-5.0)
    assert not (run / "export" / "model.int8.onnx").exists()
    rec = json.loads((run / "export" / "benchmark.json").read_text())
    assert rec["backends"]["onnx-int8"]["gate_passed"] is False
    with pytest.raises(FileNotFoundError, match="domaintune export"):
        Predictor(run, backend="onnx-int8")
    # --force keeps it, but auto never picks a model that failed its gate
    export_run(run, quantize="int8", gate=-5.0, force=True)
    assert (run / "export" / "model.int8.onnx").is_file()
    assert choose_backend(run) == "torch"


def test_unknown_backend_is_a_clear_error(trained_run):
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        Predictor(trained_run, backend="tensorrt")
