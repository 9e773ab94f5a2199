"""Pair scoring with a bi-encoder: score = w · cos(embed(a), embed(b)) + c (`data.pair_encoder: bi`).

A cross-encoder reads both texts at once; a bi-encoder embeds each text alone
and compares the vectors. For a sentence-embedding model (all-MiniLM-L6-v2,
m3e-small) the bi-encoder starts where the model was trained — mean-pooled,
cosine-compared embeddings — while a cross-encoder must learn a new [CLS]
head from scratch. On STS-B with MiniLM-L6 the frozen bi-encoder already scores
Spearman 0.82, and fine-tuning it with the sentence-transformers STS recipe
(CosineSimilarityLoss: regress the cosine onto the score) keeps that start.
Embeddings can also be cached and searched, which a cross-encoder cannot.

The score is a *fixed* affine map of the cosine onto the target's training
range: cos 0 -> the lowest training score, cos 1 -> the highest (STS-B: score/5,
exactly sentence-transformers' CosineSimilarityLoss). Learnt scalars would not
do: at encoder learning rates they barely move, so the encoder would distort the
embedding space to fit a wrong offset instead (measured on STS-B: dev Spearman
fell from 0.83 to 0.72). The map is expressed on the standardised target, so
`RegressionTask`'s scaling, metrics, plots and predictions apply unchanged.
Saved as the encoder in plain HF format with sentence-transformers module files
(`SentenceTransformer(run/model)` gives the tuned embeddings) plus
`pair_head.safetensors` and `domaintune_head.json` (`kind: pair_biencoder`).
Only scoring mode: a pair *classifier* stays a cross-encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel
from transformers.modeling_outputs import SequenceClassifierOutput

from domaintune.tasks.classification import pad_batch, sequence_model_kwargs
from domaintune.tasks.regression import RegressionTask, regression_loss
from domaintune.tasks.retrieval import mean_pool

HEAD_WEIGHTS = "pair_head.safetensors"
HEAD_FILE = "domaintune_head.json"


class BiEncoderScorer(nn.Module):
    """Shared encoder over text a and text b; logits (batch, 1) = weight * cosine + bias."""

    def __init__(self, encoder: nn.Module, loss: str = "mse", weight: float = 1.0, bias: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.loss_name = loss
        # Buffers, not parameters: the map is fixed (see the module docstring) and saved with the model.
        self.register_buffer("weight", torch.tensor(float(weight)))
        self.register_buffer("bias", torch.tensor(float(bias)))

    @property
    def config(self):
        return self.encoder.config

    def embed(self, input_ids, attention_mask) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(mean_pool(hidden, attention_mask).float(), dim=-1)

    def forward(self, input_ids, attention_mask, b_input_ids, b_attention_mask, labels=None, **_):
        cos = (self.embed(input_ids, attention_mask) * self.embed(b_input_ids, b_attention_mask)).sum(-1)
        pred = self.weight * cos + self.bias
        loss = regression_loss(pred, labels, self.loss_name) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=pred.unsqueeze(-1))


class BiScoringTask(RegressionTask):
    """`RegressionTask` over (text, text_pair) with a bi-encoder model instead of a cross-encoder.

    Never registered on its own: `PairTask` wraps it and declares the capabilities (tasks/base.py),
    including the bi-encoder's refusal of token explanations (`PairTask.explain_refusal`)."""

    supports_probe_init = False

    def __init__(self) -> None:
        super().__init__()
        self.target_min, self.target_max = 0.0, 1.0

    def fit(self, train) -> None:
        from domaintune.tasks.regression import parse_number

        super().fit(train)
        values = [parse_number(ex.label) for ex in train]
        self.target_min, self.target_max = float(min(values)), float(max(values))
        if self.target_max <= self.target_min:
            self.target_max = self.target_min + 1.0

    def state(self) -> dict:
        return {**super().state(), "target_range": [self.target_min, self.target_max]}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.target_min, self.target_max = map(float, state.get("target_range", [0.0, 1.0]))

    def cosine_map(self) -> tuple[float, float]:
        """(weight, bias) with weight * cos + bias = standardised(min + cos * (max - min))."""
        span = self.target_max - self.target_min
        return span / self.target_std, (self.target_min - self.target_mean) / self.target_std

    def build_model(self, model_dir, dropout=None):
        kwargs = {k: v for k, v in sequence_model_kwargs(dropout).items() if k != "classifier_dropout"}
        encoder = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32, weights_only=True, **kwargs)
        return BiEncoderScorer(encoder, self.loss, *self.cosine_map())

    def load_model(self, model_dir):
        return load_pair_biencoder(self, model_dir)

    def save_model(self, model, tokenizer, out_dir: Path) -> None:
        from safetensors.torch import save_file

        from domaintune.tasks.retrieval import write_sentence_transformers_files

        out_dir = Path(out_dir)
        model.encoder.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
        write_sentence_transformers_files(out_dir, model.encoder.config.hidden_size)
        save_file({"weight": model.weight.detach().reshape(1).contiguous(), "bias": model.bias.detach().reshape(1).contiguous()},
                  str(out_dir / HEAD_WEIGHTS))
        (out_dir / HEAD_FILE).write_text(json.dumps({
            "kind": "pair_biencoder", "pooling": "mean", "normalize": True,
            "note": "standardised score = weight * cos(embed(a), embed(b)) + bias (fixed: cos 0..1 spans the "
                    "training score range); score = that * target_std + target_mean (task.json)"}, indent=2), encoding="utf-8")

    def baselines(self, model_dir, splits, features, ctx, seed):
        """`mean` only: the pair task adds `frozen_cosine` — exactly this model before training
        (up to the affine map) — which is the starting point that matters here."""
        import numpy as np

        from domaintune.tasks.regression import parse_number, regression_metrics

        y_train = np.asarray([parse_number(ex.label) for ex in splits.train])
        y_test = np.asarray([parse_number(ex.label) for ex in splits.test])
        return {"mean": regression_metrics(y_test, np.full(len(y_test), y_train.mean()))}

    def encode(self, tokenizer, examples, max_length, with_targets=True):
        def ids(texts):
            return tokenizer(texts, truncation=True, max_length=max_length, padding=False,
                             return_attention_mask=False, return_token_type_ids=False)["input_ids"]

        out = [{"input_ids": a, "b_input_ids": b}
               for a, b in zip(ids([ex.text for ex in examples]), ids([ex.text_pair or "" for ex in examples]))]
        if with_targets:
            for o, t in zip(out, self.targets(examples)):
                o["labels"] = t
        return out

    def collate(self, features, pad_id):
        batch = pad_batch([{"input_ids": f["input_ids"]} for f in features], pad_id)
        b = pad_batch([{"input_ids": f["b_input_ids"]} for f in features], pad_id)
        batch["b_input_ids"], batch["b_attention_mask"] = b["input_ids"], b["attention_mask"]
        batch.pop("token_type_ids", None)
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.float32)
        return batch


def load_pair_biencoder(task, model_dir) -> BiEncoderScorer:
    """`model_io` loader for `kind: pair_biencoder`."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    head = load_file(str(model_dir / HEAD_WEIGHTS))
    encoder = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32, weights_only=True)
    return BiEncoderScorer(encoder, weight=float(head["weight"][0]), bias=float(head["bias"][0])).eval()
