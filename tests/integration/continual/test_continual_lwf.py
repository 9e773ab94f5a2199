"""lwf: on stage A's test set the new model's old-class distribution stays closer to the old model's than naive's."""

import json

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from domaintune.continual import ContinualOptions, continue_run


def old_class_kl(run, teacher_dir, texts) -> float:
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    batch = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    student = AutoModelForSequenceClassification.from_pretrained(run / "model").eval()
    with torch.no_grad():
        t = torch.log_softmax(teacher(**batch).logits, -1)
        s = torch.log_softmax(student(**batch).logits[:, : t.shape[-1]], -1)
    return float(torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean"))


def test_lwf_runs_and_keeps_the_old_model_s_answers_closer_than_naive(stage0, naive_cli):
    out = stage0["root"] / "runs" / "b-lwf"
    res = continue_run(stage0["run"], stage0["b"], out, strategy="lwf", options=ContinualOptions(lwf_alpha=1.0),
                       overrides=["train.epochs=2", "data.test_fraction=0.2"])
    assert res["record"]["strategy"] == "lwf" and res["record"]["settings"]["lwf_temperature"] == 2.0
    rows = [json.loads(l) for l in (out / "continual" / "tests" / "stage-0.jsonl").read_text().splitlines()]
    texts = [r["text"] for r in rows]
    kl_lwf = old_class_kl(out, stage0["run"] / "model", texts)
    kl_naive = old_class_kl(naive_cli["run"], stage0["run"] / "model", texts)
    assert kl_lwf < 0.5 * kl_naive, (kl_lwf, kl_naive)
    assert res["matrix"][1][1] > 0.5
