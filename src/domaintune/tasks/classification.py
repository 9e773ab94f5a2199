"""Single-label text classification: softmax head, cross-entropy, accuracy/F1.

The model is a plain `AutoModelForSequenceClassification`, so a run reloads
with transformers alone. `encode`/`collate` here also serve the other
sequence-level tasks (multi-label, regression, pair), which subclass it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import AutoModelForSequenceClassification

from domaintune.data.readers import Example, Problem
from domaintune.evaluation.metrics import classification_metrics
from domaintune.tasks.base import EvalContext, Task
from domaintune.training.loop import predict_logits


def pad_batch(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence in this batch only (dynamic padding)."""
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    types = torch.zeros((len(features), width), dtype=torch.long) if "token_type_ids" in features[0] else None
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
        mask[i, :n] = 1
        if types is not None:
            types[i, :n] = torch.tensor(f["token_type_ids"], dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


def encode_texts(tokenizer, examples: Sequence[Example], max_length: int) -> list[dict]:
    """Token ids per example; a `text_pair` is encoded as a second segment (with token_type_ids)."""
    texts = [ex.text for ex in examples]
    pairs = [ex.text_pair for ex in examples] if examples and examples[0].text_pair is not None else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False,
                    return_attention_mask=False, return_token_type_ids=pairs is not None)
    out = [{"input_ids": ids} for ids in enc["input_ids"]]
    if pairs is not None and "token_type_ids" in enc:
        for o, t in zip(out, enc["token_type_ids"]):
            o["token_type_ids"] = t
    return out


def sequence_model_kwargs(dropout: float | None) -> dict[str, Any]:
    if dropout is None:
        return {}
    return {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout, "classifier_dropout": dropout}


class ClassificationTask(Task):
    name = "classification"
    auto_class = AutoModelForSequenceClassification
    default_metric = "macro_f1"
    headline = ("accuracy", "macro_f1", "weighted_f1")
    supports_probe_init = True

    # ---- data
    def split(self, examples, fraction, seed):
        from domaintune.data.splits import stratified_split

        return stratified_split(examples, fraction, seed)

    def check(self, train, others, problems: list[Problem]) -> None:
        from domaintune.data.splits import check_labels

        check_labels(train, others, problems)

    def fit(self, train: list[Example]) -> None:
        self.labels = sorted({ex.label for ex in train})

    def check_known(self, examples, problems):
        known = set(self.labels)
        for ex in examples:
            if ex.label not in known:
                problems.append(Problem(ex.source, ex.line, f"label {ex.label!r} is not one the model was trained on",
                                        f"use one of {self.labels[:10]}{' ...' if len(self.labels) > 10 else ''}"))

    def targets(self, examples: Sequence[Example]) -> list[int]:
        l2i = {l: i for i, l in enumerate(self.labels)}
        return [l2i[ex.label] for ex in examples]

    # ---- model
    def build_model(self, model_dir, dropout=None):
        return AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), num_labels=len(self.labels), id2label=dict(enumerate(self.labels)),
            label2id={l: i for i, l in enumerate(self.labels)}, dtype=torch.float32,
            weights_only=True, **sequence_model_kwargs(dropout))  # a packaged .bin (m3e-small) must never run pickled code

    def encode(self, tokenizer, examples, max_length, with_targets=True):
        out = encode_texts(tokenizer, examples, max_length)
        if with_targets:
            for o, t in zip(out, self.targets(examples)):
                o["labels"] = t
        return out

    def collate(self, features, pad_id):
        batch = pad_batch(features, pad_id)
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch

    # ---- scoring
    def logits(self, model, features, ctx: EvalContext) -> torch.Tensor:
        return predict_logits(model, features, self.collate, ctx.pad_id, ctx.batch_size, ctx.bf16)

    def evaluate(self, model, examples, features, ctx):
        y_true = [f["labels"] for f in features]
        return classification_metrics(y_true, self.logits(model, features, ctx).argmax(-1).tolist(), self.labels)

    def baselines(self, model_dir, splits, features, ctx, seed):
        from domaintune.evaluation.baseline import frozen_linear_baseline, majority_baseline

        train_ids, test_ids = self.targets(splits.train), self.targets(splits.test)
        out = {"majority": majority_baseline(train_ids, test_ids, self.labels)}
        out["frozen_linear"] = frozen_linear_baseline(model_dir, features["train"], train_ids, features["test"], test_ids,
                                                      self.labels, ctx.pad_id, seed=seed)
        return out

    def predict(self, model, examples, features, ctx, top_k=1):
        return self.decode(self.logits(model, features, ctx), top_k)

    def decode(self, logits: torch.Tensor, top_k: int = 1) -> list[dict]:
        probs = torch.softmax(logits.float(), dim=-1)
        k = max(1, min(top_k, probs.shape[-1]))
        scores, idx = probs.topk(k, dim=-1)
        out = []
        for s_row, i_row in zip(scores.tolist(), idx.tolist()):
            out.append({"label": self.labels[i_row[0]], "score": s_row[0],
                        "top_k": [{"label": self.labels[i], "score": s} for s, i in zip(s_row, i_row)]})
        return out
