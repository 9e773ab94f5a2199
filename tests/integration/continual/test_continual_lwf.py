"""lwf: on the new stage's texts, the new model's old-class distribution stays closer to the old model's than naive's.

That is what LwF optimises (distillation on the new data); in this class-incremental setting naive keeps the
*relative* old-class scores on old texts almost intact anyway, and forgets because new classes outscore them."""

import csv

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from domaintune.continual import ContinualOptions, continue_run


def old_class_kl(run, teacher_dir, texts, temperature: float = 2.0) -> float:
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    batch = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    student = AutoModelForSequenceClassification.from_pretrained(run / "model").eval()
    with torch.no_grad():
        t = torch.log_softmax(teacher(**batch).logits / temperature, -1)
        s = torch.log_softmax(student(**batch).logits[:, : t.shape[-1]] / temperature, -1)
    return float(torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean"))


def test_lwf_runs_and_keeps_the_old_model_s_old_class_scores_closer_than_naive(stage0, naive_cli):
    out = stage0["root"] / "runs" / "b-lwf"
    res = continue_run(stage0["run"], stage0["b"], out, strategy="lwf", options=ContinualOptions(lwf_alpha=1.0),
                       overrides=["train.epochs=2", "data.test_fraction=0.2"])
    assert res["record"]["strategy"] == "lwf" and res["record"]["settings"]["lwf_temperature"] == 2.0
    with open(stage0["b"], encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)][:120]
    kl_lwf = old_class_kl(out, stage0["run"] / "model", texts)
    kl_naive = old_class_kl(naive_cli["run"], stage0["run"] / "model", texts)
    # Same seed and data: with the hook disconnected the two runs would be identical and the KLs equal.
    # (banking77 stage 1 in bench/continual.py: 0.038 vs 0.112 at T=2; these small demo runs differ less.)
    assert kl_lwf < kl_naive, (kl_lwf, kl_naive)
    assert res["matrix"][1][1] > 0.5
