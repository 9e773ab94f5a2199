"""task: generation end to end on real packaged weights (SmolLM2-135M-Instruct): bad input refused before
training, LoRA training through the same trainer, test scoring against the starting points, prediction, and
kill -9 + --resume ending with the same adapter as an uninterrupted run."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from domaintune.cli import app
from lm_support import smollm2_dir  # noqa: F401

PAIRS = [("How do I reset my password?", "Open Settings, choose Security and press Reset password."),
         ("Where is my order 1234?", "Your order is on its way; track it under My orders."),
         ("Can I get a refund?", "Yes, refunds are possible within 30 days of purchase."),
         ("How do I cancel my subscription?", "Go to Account, then Subscription, and press Cancel."),
         ("What are your opening hours?", "We are open from 9 am to 5 pm, Monday to Friday."),
         ("How can I change my address?", "Open your profile and edit the delivery address."),
         ("Do you ship abroad?", "Yes, we ship to most countries in Europe."),
         ("How do I contact support?", "Write to our support team or call us.")]


def write_csv(path, rows, header=("prompt", "response")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def config(tmp_path, model, out, **extra):
    train = write_csv(tmp_path / "train.csv", PAIRS * 2)
    test = write_csv(tmp_path / "test.csv", PAIRS[:3])
    lines = ["task: generation", "method: lora", f"model: {model}", f"output_dir: {out}",
             "data:", f"  train: {train}", f"  dev: {test}", f"  test: {test}",
             "train:", "  batch_size: 4", "  lr: 1.0e-3", "  max_length: 96", "  log_every: 1",
             f"  max_steps: {extra.pop('max_steps', 4)}", f"  eval_every: {extra.pop('eval_every', 2)}",
             *(f"  {k}: {v}" for k, v in extra.pop("train", {}).items()),
             "generation:", "  max_new_tokens: 6", "  eval_examples: 2", "  report_samples: 2",
             f"baseline: {extra.pop('baseline', 'true')}"]
    p = tmp_path / f"{out.name}.yaml"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


@pytest.mark.parametrize("name,content,expected", [
    ("missing_column.csv", "question,response\nhi,hello\n", "prompt"),
    ("empty_response.csv", "prompt,response\nhi,hello\nhow are you,\n", ":3"),
    ("last_turn_user.jsonl", '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
                             '{"messages": [{"role": "user", "content": "hi"}]}\n', ":2"),
    ("bad_role.jsonl", '{"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n', ":1"),
])
def test_bad_input_is_refused_with_file_and_line_before_anything_is_written(tmp_path, name, content, expected):
    data = tmp_path / name
    data.write_text(content, encoding="utf-8")
    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"task: generation\nmethod: lora\nmodel: smollm2-135m\noutput_dir: {out}\ndata:\n  train: {data}\n",
                   encoding="utf-8")
    r = CliRunner().invoke(app, ["train", str(cfg)])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert name in text and expected in text, text
    assert not out.exists()


def test_reply_only_logits_give_the_same_loss(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from domaintune.data.chat import Conversation
    from domaintune.tasks.generation_encoding import collate, encode_conversations, reply_logits_only

    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32).eval()
    convs = [Conversation([{"role": "user", "content": q}, {"role": "assistant", "content": a},
                           {"role": "user", "content": "thanks"}, {"role": "assistant", "content": "You are welcome."}])
             for q, a in PAIRS[:4]]
    batch = collate(encode_conversations(tok, convs, 128)[0], 0)
    sliced = reply_logits_only(batch)
    assert int(sliced["logits_to_keep"].sum()) < batch["input_ids"].numel() / 2  # most positions skip the head
    with torch.no_grad():
        full = model(**batch).loss
        part = model(**sliced).loss
    assert abs(float(full) - float(part)) < 1e-5


def test_lora_run_scores_against_the_starting_points_and_predicts(tmp_path, smollm2_dir):
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", str(config(tmp_path, smollm2_dir, out))])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    for key in ("rougeL", "chrf", "bleu", "perplexity", "loss", "tokenization", "samples"):
        assert key in m["test"], key
    assert m["test"]["language"] == "en" and m["test"]["generated_rows"] == 2
    assert set(m["baseline"]) == {"zero_shot", "nearest_neighbour"}
    assert m["baseline"]["nearest_neighbour"]["embedding_model"] == "minilm-l6"
    assert m["data"]["encoding"]["train"]["encoded"] == 16
    assert (out / "model" / "adapter_model.safetensors").is_file()
    report = (out / "report.md").read_text()
    assert "Sample outputs (test)" in report and "How the replies were scored" in report

    from domaintune.predictor import Predictor

    p = Predictor(out)
    assert p.is_generator
    pieces = list(p.chat_stream("Can I get a refund?", p.sampling(max_new_tokens=5)))
    final = pieces[-1]
    assert final.completion_tokens <= 5 and "".join(pieces[:-1]).strip() == final.text
    r = CliRunner().invoke(app, ["predict", str(out), "--text", "Do you ship abroad?", "--max-new-tokens", "4"])
    assert r.exit_code == 0 and "Do you ship abroad?" in r.output, r.output

    # the fast path's gate: int8 replies scored against fp32's on the same test rows, recorded; auto follows it
    r = CliRunner().invoke(app, ["export", str(out), "--format", "int8"])
    assert r.exit_code == 0, r.output
    gate = json.loads((out / "export" / "generation_fast.json").read_text())
    assert gate["rows"] == 2 and set(gate["systems"]) == {"fp32", "int8"} and "cpu_flags" in gate
    assert gate["gate_passed"] == (gate["rougeL_drop"] <= 1.0)
    assert gate["smoothing"]["calibration_rows"] == 16  # training conversations, not the scored test rows
    from domaintune.generation.fast_path import saved_maxima

    assert saved_maxima(out) and all(v.ndim == 1 and float(v.min()) >= 0 for v in saved_maxima(out).values())
    assert Predictor(out).backend == ("int8" if gate["gate_passed"] else "torch")
    assert Predictor(out, backend="int8").chat("Hi", p.sampling(max_new_tokens=3)).completion_tokens <= 3

    # merge: a plain AutoModelForCausalLM folder that generates what the adapter run generates
    from transformers import AutoModelForCausalLM

    from domaintune.commands.merge import merge_run

    rec = merge_run(out, tmp_path / "merged")
    folder = tmp_path / "merged" / "model"
    assert not (folder / "adapter_config.json").exists() and (folder / "model.safetensors").is_file()
    assert type(AutoModelForCausalLM.from_pretrained(str(folder))).__name__ == "LlamaForCausalLM"
    merged = Predictor(tmp_path / "merged")
    assert merged.chat("Can I get a refund?", merged.sampling(max_new_tokens=5)).text == \
        p.chat("Can I get a refund?", p.sampling(max_new_tokens=5)).text
    assert rec["max_logit_difference"] <= rec["tolerance"]


def _latest_step(run):
    try:
        return json.loads((run / "checkpoints" / "latest.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError):
        return 0


def _train(cfg, *args):
    return subprocess.Popen([sys.executable, "-m", "domaintune", "train", str(cfg), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_kill_9_then_resume_ends_with_the_same_adapter(tmp_path, smollm2_dir):
    common = dict(max_steps=10, eval_every=5, baseline="false", train={"save_every_steps": 2})
    killed_cfg = config(tmp_path, smollm2_dir, tmp_path / "killed", **dict(common, train=dict(common["train"])))
    full_cfg = config(tmp_path, smollm2_dir, tmp_path / "full", **dict(common, train=dict(common["train"])))
    proc = _train(killed_cfg)
    deadline = time.time() + 900
    while _latest_step(tmp_path / "killed") < 4:
        assert proc.poll() is None, "training ended before it could be killed:\n" + proc.stdout.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _latest_step(tmp_path / "killed")
    assert killed_at < 10 and not (tmp_path / "killed" / "metrics.json").exists()
    resumed = _train(killed_cfg, "--resume")
    out = resumed.communicate()[0]
    assert resumed.returncode == 0, out
    assert f"resumed from step-{killed_at:07d}" in out
    full = _train(full_cfg)
    out = full.communicate()[0]
    assert full.returncode == 0, out
    a = load_file(str(tmp_path / "full" / "model" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    # checkpoints hold the trainable tensors only, not the frozen 135M-parameter base
    ckpt = next((tmp_path / "killed" / "checkpoints").glob("step-*")) / "model.safetensors"
    assert ckpt.stat().st_size < 20_000_000
