"""PEFT methods end to end on real MiniLM weights: train a few steps, reload, merge.

The reload check is the peft #310/#577/#1070 "lost head" bug: an adapter run reloaded
through the Predictor must give *identical* probabilities to the model as it was in
process at the end of training (rebuilt here from the run's best checkpoint, which
the Trainer loads back before the final evaluation and the save).
"""

from __future__ import annotations

import csv
import json
import random

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from domaintune.commands.merge import MergeError, merge_run
from domaintune.config import load_config
from domaintune.data import Example
from domaintune.methods import get_method
from domaintune.predictor import Predictor
from domaintune.training.checkpoint import CheckpointManager
from domaintune.run import train_run

ROWS = {
    "card": ["my card has not arrived yet", "where is my new debit card", "the card was never delivered",
             "我的银行卡还没有寄到", "新卡什么时候能收到", "card delivery is taking too long", "卡片邮寄进度怎么查",
             "I am still waiting for my card", "请问我的信用卡寄出了吗", "has my replacement card been sent"],
    "transfer": ["my transfer failed", "the money transfer did not go through", "转账失败了怎么办",
                 "why was my bank transfer declined", "汇款一直没有到账", "transfer to my friend is pending",
                 "转账显示处理中", "I sent money but it bounced back", "跨行转账被退回", "the wire transfer is stuck"],
    "pin": ["how do I change my pin", "I forgot my pin code", "怎么修改密码", "reset the pin of my card",
            "密码输错被锁了", "my pin is blocked", "忘记取款密码", "can I choose a new pin", "如何重置银行卡密码",
            "pin locked after three tries"],
}
PROBE = ["where is my card", "我的转账失败了", "忘记密码了", "transfer pending for two days", "卡丢了"]
EPS_IDENTICAL = 0.0  # identical means identical: same modules, same weights, same batches


def _write(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft_data")
    train = [(t, l) for l, ts in ROWS.items() for t in ts[:6]]
    dev = [(t, l) for l, ts in ROWS.items() for t in ts[6:8]]
    test = [(t, l) for l, ts in ROWS.items() for t in ts[8:]]
    random.Random(0).shuffle(train)
    return {"train": _write(root / "train.csv", train), "dev": _write(root / "dev.csv", dev),
            "test": _write(root / "test.csv", test)}


def _config(root, splits, method, task="classification", max_steps=3, extra=()):
    out = root / f"run_{method}_{task}"
    lines = [f"task: {task}", f"method: {method}", "model: minilm-l6", f"output_dir: {out}", "baseline: false",
             "data:", *(f"  {k}: {v}" for k, v in splits.items()),
             "train:", "  batch_size: 8", "  lr: 5.0e-3", "  max_length: 32", f"  max_steps: {max_steps}",
             "  log_every: 1", "  seed: 7", "peft:", "  r: 4", "  alpha: 8", "  num_virtual_tokens: 4", *extra]
    p = root / f"{out.name}.yaml"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_config(p), out


def _in_process_model(run_dir, cfg):
    """The trained model as train_run held it: the method's own build + prepare, best-checkpoint weights."""
    pred = Predictor(run_dir)  # only for the task state (labels) and the tokenizer
    method = get_method(cfg.method)
    method.configure(cfg)
    from domaintune.models import resolve_model

    model = method.prepare(method.build(pred.task, resolve_model(cfg.model), cfg), pred.task)
    # checkpoints hold the trainable tensors only; load_weights checks every other one is a frozen parameter
    CheckpointManager.load_weights(model, run_dir / "checkpoints" / "best")
    return model.eval(), pred


def _probs(pred, model, inputs):
    examples = pred.examples(inputs)
    return torch.tensor([[a["score"] for a in sorted(p["top_k"], key=lambda a: a["label"])]
                         for p in pred.task.predict(model, examples, pred.features(examples), pred.context(), top_k=3)])


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, splits):
    root = tmp_path_factory.mktemp("lora")
    cfg, out = _config(root, splits, "lora")
    metrics = train_run(cfg)
    return cfg, out, metrics


def test_lora_writes_only_the_adapter_and_reports_sizes(lora_run):
    _cfg, out, metrics = lora_run
    files = {p.name for p in (out / "model").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "domaintune_adapter.json", "tokenizer.json"} <= files
    assert "model.safetensors" not in files and "config.json" not in files
    info = json.loads((out / "model" / "domaintune_adapter.json").read_text(encoding="utf-8"))
    assert info["base_model"] == "minilm-l6" and info["task_state"]["labels"] == ["card", "pin", "transfer"]
    assert info["modules_to_save"] == ["classifier", "pooler"]
    s = metrics["method_settings"]
    assert s["adapter_bytes"] == sum((out / "model" / f).stat().st_size for f in s["adapter_files"])
    assert s["adapter_bytes"] <= 0.05 * s["full_model_bytes"]
    assert s["full_model_bytes"] > 80_000_000  # MiniLM-L6 in fp32 is ~91 MB
    assert 0 < s["trainable_share"] < 0.05
    assert metrics["train"]["head_init"] == "probe"  # the LP-FT head fit ran on the unwrapped model, before LoRA
    saved = load_file(str(out / "model" / "adapter_model.safetensors"))
    assert any("classifier" in k for k in saved) and any("pooler" in k for k in saved)


def test_lora_reload_is_identical_to_the_trained_model(lora_run):
    cfg, out, metrics = lora_run
    model, pred = _in_process_model(out, cfg)
    inputs = PROBE + [t for ts in ROWS.values() for t in ts[8:]]
    expected = _probs(pred, model, inputs)
    got = _probs(pred, pred.model, inputs)
    assert (expected - got).abs().max().item() <= EPS_IDENTICAL
    # and the reloaded run scores test exactly as train_run reported
    test = [Example(t, l) for l, ts in ROWS.items() for t in ts[8:]]
    assert pred.evaluate(test)["accuracy"] == metrics["test"]["accuracy"]


def test_merge_matches_the_adapter(lora_run, tmp_path):
    _cfg, out, _m = lora_run
    rec = merge_run(out, tmp_path / "merged")
    assert rec["max_logit_difference"] < 1e-4
    merged_dir = tmp_path / "merged"
    assert (merged_dir / "model" / "model.safetensors").is_file()
    assert not (merged_dir / "model" / "adapter_config.json").exists()
    assert json.loads((merged_dir / "metrics.json").read_text(encoding="utf-8"))["merged"]["method"] == "lora"
    adapter, merged = Predictor(out), Predictor(merged_dir)
    feats = adapter.features(adapter.examples(PROBE))
    from domaintune.training.loop import predict_logits

    a = predict_logits(adapter.model, feats, adapter.task.collate, adapter.pad_id, 8)
    b = predict_logits(merged.model, feats, merged.task.collate, merged.pad_id, 8)
    assert (a - b).abs().max().item() < 1e-4
    # plain transformers loads the merged model with the label names
    plain = AutoModelForSequenceClassification.from_pretrained(str(merged_dir / "model"))
    assert plain.config.id2label == {0: "card", 1: "pin", 2: "transfer"}
    with pytest.raises(MergeError, match="already exists"):
        merge_run(out, merged_dir)
    with pytest.raises(MergeError, match="not an adapter run"):
        merge_run(merged_dir, tmp_path / "again")


@pytest.mark.parametrize("method,steps", [("adalora", 6), ("ia3", 3), ("prefix", 3), ("prompt", 3)])
def test_other_peft_methods_train_and_reload_identically(tmp_path, splits, method, steps):
    cfg, out = _config(tmp_path, splits, method, max_steps=steps, extra=["  target_r: 2"])
    metrics = train_run(cfg)
    s = metrics["method_settings"]
    assert s["peft_method"] == method
    assert s["adapter_bytes"] <= 0.05 * s["full_model_bytes"]
    model, pred = _in_process_model(out, cfg)
    if method == "adalora":  # the final rank pattern is applied in process too
        pm = model
        conf = pm.peft_config["default"]
        conf.rank_pattern = json.loads((out / "model" / "adapter_config.json").read_text())["rank_pattern"]
        assert conf.rank_pattern, "AdaLoRA never allocated ranks: update_and_allocate was not called"
        pm.base_model.rankallocator.mask_using_rank_pattern(pm.base_model.model, conf.rank_pattern)
    expected, got = _probs(pred, model, PROBE), _probs(pred, pred.model, PROBE)
    assert (expected - got).abs().max().item() <= (1e-6 if method == "adalora" else EPS_IDENTICAL)
    if method in ("prefix", "prompt"):
        with pytest.raises(MergeError, match="virtual tokens"):
            merge_run(out, tmp_path / "merged")


def test_lora_ner(tmp_path):
    people, places = ["Alice Smith", "Bob Jones", "Carol White", "张伟"], ["Paris", "Berlin", "Oslo", "北京"]
    rng = random.Random(1)

    def conll(n):
        lines = []
        for _ in range(n):
            per, loc = rng.choice(people).split(), rng.choice(places)
            words = per + ["flew", "to", loc, "today"]
            tags = ["B-PER"] + ["I-PER"] * (len(per) - 1) + ["O", "O", "B-LOC", "O"]
            lines += [f"{w}\t{t}" for w, t in zip(words, tags)] + [""]
        return "\n".join(lines)

    files = {}
    for name, n in (("train", 16), ("dev", 4), ("test", 4)):
        (tmp_path / f"{name}.conll").write_text(conll(n), encoding="utf-8")
        files[name] = tmp_path / f"{name}.conll"
    cfg, out = _config(tmp_path, files, "lora", task="ner", max_steps=4)
    metrics = train_run(cfg)
    assert metrics["method_settings"]["modules_to_save"] == ["classifier"]  # token classifiers have no pooler
    model, pred = _in_process_model(out, cfg)
    texts = ["Alice Smith flew to Berlin today", "张伟 flew to 北京 today"]
    ex = pred.examples(texts)
    feats = pred.features(ex)
    assert pred.task.predict(model, ex, feats, pred.context()) == pred.predict(texts)
    rec = merge_run(out, tmp_path / "merged")
    assert rec["max_logit_difference"] < 1e-4


def test_custom_heads_are_refused_with_the_fix():
    from transformers import AutoModel

    from domaintune.methods.peft_methods import _check_wrappable
    from domaintune.models import resolve_model
    from domaintune.tasks.regression import FeatureRegressor

    model = FeatureRegressor(AutoModel.from_pretrained(str(resolve_model("minilm-l6"))), n_features=2)
    with pytest.raises(ValueError, match="feature_columns"):
        _check_wrappable(model, "lora")


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("stop_at,latest", [(13, 12), (19, 18)])   # during allocation / after the final one
def test_adalora_resumes_with_its_rank_allocator_state(tmp_path, splits, stop_at, latest):
    """Interrupted at a dev evaluation, resumed from the checkpoint before it, AdaLoRA must end exactly where an
    uninterrupted run ends: same rank pattern and adapter. 20 steps: allocation from step 2, final at 16."""
    def config(name):
        cfg, _ = _config(tmp_path, splits, "adalora", max_steps=20, extra=["  target_r: 2"])
        return cfg.model_copy(update={"output_dir": str(tmp_path / name), "train": cfg.train.model_copy(
            update={"eval_every": stop_at, "save_every_steps": 6 if latest == 18 else 4})})

    ref = tmp_path / "ref"
    train_run(config("ref"))

    def stop(step, metrics):
        if step == stop_at:
            raise _Interrupt

    cut = tmp_path / "cut"
    with pytest.raises(_Interrupt):
        train_run(config("cut"), on_evaluate=stop)
    assert json.loads((cut / "checkpoints" / "latest.json").read_text())["global_step"] == latest
    saved = load_file(str(cut / "checkpoints" / f"step-{latest:07d}" / "method_state.safetensors"))
    assert any(k.startswith("exp_avg_ipt/") for k in saved) or any(k.startswith("rank_pattern/") for k in saved)
    train_run(config("cut"), resume=True)

    pattern = lambda run: json.loads((run / "model" / "adapter_config.json").read_text())["rank_pattern"]  # noqa: E731
    assert pattern(cut) == pattern(ref) and pattern(ref)
    a, b = load_file(str(ref / "model" / "adapter_model.safetensors")), load_file(str(cut / "model" / "adapter_model.safetensors"))
    assert set(a) == set(b)
    assert max((a[k] - b[k]).abs().max().item() for k in a if a[k].numel()) <= 1e-5
