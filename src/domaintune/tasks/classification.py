"""Single-label text classification: softmax head, cross-entropy, accuracy/F1."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import AutoModelForSequenceClassification

from domaintune.evaluation.metrics import classification_metrics
from domaintune.tasks.base import Task


def pad_batch(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence in this batch only (dynamic padding)."""
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


class ClassificationTask(Task):
    name = "classification"
    auto_class = AutoModelForSequenceClassification

    def build_model(self, model_dir, labels: Sequence[str], dropout: float | None = None) -> torch.nn.Module:
        kwargs: dict[str, Any] = {}
        if dropout is not None:
            kwargs.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, classifier_dropout=dropout)
        return AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={l: i for i, l in enumerate(labels)}, dtype=torch.float32,
            weights_only=True, **kwargs)  # a packaged .bin (m3e-small) must never run pickled code

    def encode(self, tokenizer, texts, targets, max_length):
        enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False,
                        return_attention_mask=False, return_token_type_ids=False)
        out = [{"input_ids": ids} for ids in enc["input_ids"]]
        if targets is not None:
            for o, t in zip(out, targets):
                o["labels"] = int(t)
        return out

    def collate(self, features, pad_id):
        batch = pad_batch(features, pad_id)
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch

    def metrics(self, y_true, y_pred, labels):
        return classification_metrics(y_true, y_pred, labels)

    def predictions(self, logits: torch.Tensor) -> list[int]:
        return logits.argmax(-1).tolist()

    def decode(self, logits, labels, top_k=1):
        probs = torch.softmax(logits.float(), dim=-1)
        k = max(1, min(top_k, probs.shape[-1]))
        scores, idx = probs.topk(k, dim=-1)
        out = []
        for s_row, i_row in zip(scores.tolist(), idx.tolist()):
            out.append({"label": labels[i_row[0]], "score": s_row[0],
                        "top_k": [{"label": labels[i], "score": s} for s, i in zip(s_row, i_row)]})
        return out
