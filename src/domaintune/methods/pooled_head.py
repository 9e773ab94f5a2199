"""A sentence-embedding classifier: mean-pooled encoder -> (optional L2 norm) -> linear head.

Sentence-embedding models (all-MiniLM-L6-v2, m3e-small) were trained with mean
pooling, so their useful signal is the mean of the token states, not the
[CLS]/pooler output that `AutoModelForSequenceClassification` reads. Methods
that work in that embedding space — few-shot (SetFit-style contrastive body +
linear head) and zero-shot by label-description similarity (head rows = label
embeddings) — save this module. transformers has no such model class, hence
this small one.

Saved in `run/model/` as the encoder in plain HF format (loads with
`AutoModel`) plus `pooled_head.safetensors` and `domaintune_head.json`
(`kind: pooled_classifier`), which `domaintune.model_io.load_run_model` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel
from transformers.modeling_outputs import SequenceClassifierOutput

from domaintune.tasks.retrieval import mean_pool  # the one mean pooling (sentence-transformers' Pooling)

HEAD_WEIGHTS = "pooled_head.safetensors"
HEAD_FILE = "domaintune_head.json"


class PooledClassifier(nn.Module):
    """logits = scale * W · pool(encoder(x)) + b, pool = mean (L2-normalised when `normalize`).

    `problem` picks the training loss: `single_label` (cross-entropy) or
    `multi_label` (BCE with logits), matching the task's label format.
    """

    def __init__(self, encoder: nn.Module, num_labels: int, normalize: bool = False, scale: float = 1.0,
                 problem: str = "single_label"):
        super().__init__()
        self.encoder = encoder
        self.normalize, self.scale, self.problem = normalize, float(scale), problem
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    @property
    def config(self):  # the encoder's config, for code that inspects model.config (hidden size, ...)
        return self.encoder.config

    def embed(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        pooled = mean_pool(self.encoder(**kwargs).last_hidden_state, attention_mask)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None, **_):
        logits = self.scale * self.classifier(self.embed(input_ids, attention_mask, token_type_ids))
        loss = None
        if labels is not None:
            if self.problem == "multi_label":
                loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            else:
                loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def head_config(self, **extra) -> dict:
        return {"kind": "pooled_classifier", "num_labels": self.classifier.out_features, "normalize": self.normalize,
                "scale": self.scale, "problem": self.problem, "pooling": "mean",
                "note": "logits = scale * classifier(mean-pooled encoder output, L2-normalised if normalize); "
                        "encoder loads with transformers.AutoModel", **extra}

    def save(self, tokenizer, out_dir: Path, **extra) -> None:
        """Encoder (HF format) + head weights (safetensors) + head config; call inside `atomic_dir`."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        self.encoder.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
        save_file({k: v.detach().contiguous() for k, v in self.classifier.state_dict().items()},
                  str(out_dir / HEAD_WEIGHTS))
        (out_dir / HEAD_FILE).write_text(json.dumps(self.head_config(**extra), ensure_ascii=False, indent=2),
                                         encoding="utf-8")


def build_pooled_classifier(model_dir, num_labels: int, normalize: bool = False, scale: float = 1.0,
                            problem: str = "single_label") -> PooledClassifier:
    encoder = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32, weights_only=True)
    return PooledClassifier(encoder, num_labels, normalize, scale, problem)


def load_pooled_classifier(task, model_dir) -> PooledClassifier:
    """`model_io` loader for `kind: pooled_classifier`."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / HEAD_FILE).read_text(encoding="utf-8"))
    model = build_pooled_classifier(model_dir, int(cfg["num_labels"]), bool(cfg.get("normalize", False)),
                                    float(cfg.get("scale", 1.0)), cfg.get("problem", "single_label"))
    model.classifier.load_state_dict(load_file(str(model_dir / HEAD_WEIGHTS)))
    if task is not None and getattr(task, "labels", None) and len(task.labels) != model.classifier.out_features:
        raise ValueError(f"{model_dir}: head has {model.classifier.out_features} outputs but the run has "
                         f"{len(task.labels)} labels (labels.json / task.json do not match the model)")
    return model.eval()
