"""The method interface: how the pretrained weights adapt to the task.

A method sees the task's model (from `Task.build_model`) and decides what
trains and how. Most methods only change *which* parameters train (full,
freezing, PEFT adapters) and reuse the gradient `Trainer`; others replace the
training itself (few-shot contrastive + head fit, zero-shot with no training)
by overriding `build` and `fit`. Lifecycle in `domaintune.run.train_run`:

    configure(cfg) -> build(task, model_dir) -> [LP-FT probe if uses_probe_init]
    -> prepare(model, task) -> fit(model, FitContext) -> save(model, task, tokenizer, run/model)

Loading a run back goes through `domaintune.model_io.load_run_model`, which
recognises what `save` wrote (a plain HF model, a PEFT adapter, a custom head),
so the Predictor, the CLI and the server never need to know the method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch


@dataclass
class FitContext:
    """Everything a method's `fit` may need; built once by `train_run`."""

    task: Any                      # the Task (label space fitted on train)
    cfg: Any                       # the RunConfig
    train_cfg: Any                 # cfg.train with metric_for_best resolved
    model_dir: Path                # the pretrained model's directory
    run_dir: Path
    tokenizer: Any
    pad_id: int
    splits: Any                    # domaintune.data.Splits (train/dev/test Examples)
    features: dict[str, list[dict]]  # encoded train (as trained on) / dev / test
    make_eval_context: Callable[[bool], Any]  # bf16 -> EvalContext
    resume: bool = False
    extra: dict = field(default_factory=dict)

    def evaluate_dev(self, model, bf16: bool = False) -> dict:
        return self.task.evaluate(model, self.splits.dev, self.features["dev"], self.make_eval_context(bf16))

    def trainer(self, model, method, train_features: list[dict] | None = None, train_cfg=None):
        """The standard gradient Trainer over `train_features` (default: the encoded train split)."""
        from domaintune.training.loop import Trainer

        return Trainer(model, method, self.task.collate, self.pad_id,
                       self.features["train"] if train_features is None else train_features,
                       evaluate=self.evaluate_dev, cfg=train_cfg or self.train_cfg, run_dir=self.run_dir,
                       has_dev=bool(self.splits.dev), robust=getattr(self.cfg, "robust", None),
                       on_evaluate=self.extra.get("on_evaluate"))


class Method:
    name: str = ""
    #: Tasks this method supports (None: all).
    tasks: tuple[str, ...] | None = None
    #: Whether the LP-FT linear-probe head initialisation runs before `prepare` (gradient methods).
    uses_probe_init: bool = True
    #: Whether the method trains at all (zero-shot does not: no dev early stopping, no checkpoints).
    trains: bool = True

    def configure(self, cfg) -> None:
        """Read the method's own config section (`cfg.peft`, `cfg.fewshot`, ...)."""
        self.cfg = cfg

    def settings(self) -> dict:
        """The method's settings as recorded in metrics.json and the report."""
        return {}

    def build(self, task, model_dir: Path, cfg) -> torch.nn.Module:
        """The model to adapt; default: the task's model (pretrained body + new head)."""
        return task.build_model(model_dir, cfg.train.dropout)

    def prepare(self, model: torch.nn.Module, task=None) -> torch.nn.Module:
        """Return the model to train (possibly wrapped); set requires_grad as the method needs."""
        return model

    def parameter_groups(self, model: torch.nn.Module, weight_decay: float) -> list[dict]:
        """AdamW groups: no weight decay on biases and LayerNorm weights (as in BERT's recipe)."""
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name or name.endswith(".bias"):
                no_decay.append(p)
            else:
                decay.append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def fit(self, model: torch.nn.Module, run: FitContext):
        """Train `model` in place and return a `TrainResult`; default: the gradient Trainer."""
        return run.trainer(model, self).train(resume=run.resume)

    def export(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model as it is saved (e.g. unwrapped)."""
        return model

    def save(self, model: torch.nn.Module, task, tokenizer, out_dir: Path) -> None:
        """Write run/model; default: the task saves the exported model in plain HF format."""
        task.save_model(self.export(model), tokenizer, out_dir)


def trainable_summary(model: torch.nn.Module) -> dict:
    """Trainable vs total parameters (for the report: what the method actually trains)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_parameters": trainable, "total_parameters": total,
            "trainable_share": round(trainable / max(total, 1), 6)}
