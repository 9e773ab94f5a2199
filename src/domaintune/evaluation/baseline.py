"""The starting point a fine-tuned model must beat.

Two baselines, scored on the same test split: the majority class (what a
model that learnt nothing gets) and the un-fine-tuned encoder with a freshly
fitted linear head (mean-pooled frozen embeddings + logistic regression), which
is what a user gets from the pretrained model without training it. The report
shows both next to the fine-tuned scores so the gain is explicit.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import torch
from transformers import AutoModel

from domaintune.evaluation.metrics import classification_metrics
from domaintune.tasks.classification import pad_batch
from domaintune.training.batching import inference_batches

log = logging.getLogger("domaintune")


def majority_baseline(train_ids: list[int], test_ids: list[int], labels: list[str]) -> dict:
    majority = Counter(train_ids).most_common(1)[0][0]
    m = classification_metrics(test_ids, [majority] * len(test_ids), labels)
    m["predicted_label"] = labels[majority]
    return m


@torch.inference_mode()
def embed(model_dir, features: list[dict], pad_id: int, batch_size: int = 128) -> np.ndarray:
    """Mean-pooled last hidden states of the pretrained encoder, in input order."""
    encoder = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32, weights_only=True).eval()
    lengths = [len(f["input_ids"]) for f in features]
    out = np.zeros((len(features), encoder.config.hidden_size), dtype=np.float32)
    for idx in inference_batches(lengths, batch_size):
        batch = pad_batch([features[i] for i in idx], pad_id)
        hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        out[idx] = pooled.numpy()
    return out


def frozen_linear_baseline(model_dir, train_features, train_ids, test_features, test_ids, labels, pad_id: int,
                           max_train: int = 20000, seed: int = 0) -> dict:
    from sklearn.linear_model import LogisticRegression

    if len(train_features) > max_train:  # bound the cost on very large sets; stated in the result
        rng = np.random.default_rng(seed)
        keep = sorted(rng.choice(len(train_features), max_train, replace=False).tolist())
        train_features = [train_features[i] for i in keep]
        train_ids = [train_ids[i] for i in keep]
    x_train = embed(model_dir, train_features, pad_id)
    x_test = embed(model_dir, test_features, pad_id)
    clf = LogisticRegression(max_iter=2000, C=10.0)
    clf.fit(x_train, train_ids)
    m = classification_metrics(test_ids, clf.predict(x_test).tolist(), labels)
    m["train_examples"] = len(train_ids)
    return m
