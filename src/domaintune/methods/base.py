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
    """A way of adapting the weights. Which tasks a method supports is decided from the task's declared
    capabilities (`Task.peft_task_type`, `Task.pooled_head_problem`...) in the method's own module, and
    what callers need to know about a method is declared here, never read from its name: a new method
    is its module, its registry line and its test (tests/unit/test_plugin_declarations.py checks)."""

    name: str = ""
    #: Whether the LP-FT linear-probe head initialisation runs before `prepare` (gradient methods).
    uses_probe_init: bool = True
    #: Whether the method trains at all (zero-shot does not: no dev early stopping, no checkpoints,
    #: nothing for `tune` to prune; `compare` runs it once instead of once per k).
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

    # ---- hooks the gradient Trainer (training/loop.py) calls; the defaults do nothing -------------
    def extra_loss(self, model: torch.nn.Module, batch: dict, outputs) -> torch.Tensor | None:
        """A term added to the task loss of each micro-batch (continual learning's EWC penalty and LwF
        distillation); None: nothing added. Not applied inside robust (adversarial / R-Drop) steps."""
        return None

    def on_step(self, model: torch.nn.Module, global_step: int) -> None:
        """After each optimizer step, before the scheduler step and with the gradients still in place
        (AdaLoRA's rank re-allocation needs them). Default: nothing."""

    def training_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Tensors the method needs to resume exactly that live outside the weights and the optimizer
        (AdaLoRA's importance scores and rank masks), saved with each checkpoint; {}: none, no file."""
        return {}

    def load_training_state(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        """On `--resume`: restore what `training_state` saved. Default: nothing to restore."""

    # ---- what other commands need to know ------------------------------------------------------
    def default_search_space(self, cfg) -> dict[str, dict]:
        """`domaintune tune`'s search space when `tune.space` is empty: the ranges users of the method
        usually search (HF/PEFT/SetFit recipes); tune later widens them to hold the config's own value.
        Default: full fine-tuning's (learning rate, batch size, warm-up, weight decay, dropout, epochs)."""
        t = cfg.train
        space: dict[str, dict] = {"train.lr": {"low": 1e-5, "high": 3e-4, "log": True},
                                  "train.batch_size": {"choices": [8, 16, 32]},
                                  "train.warmup_ratio": {"low": 0.0, "high": 0.2},
                                  "train.weight_decay": {"low": 0.0, "high": 0.1},
                                  "train.dropout": {"choices": [None, 0.0, 0.2, 0.3]}}  # None: the pretrained value
        if t.max_steps is None:  # with max_steps, epochs do not change anything
            e = t.epochs
            space["train.epochs"] = ({"low": max(1, round(e / 2)), "high": max(2, round(e * 1.5))}
                                     if float(e).is_integer() else {"low": max(0.5, e / 2), "high": e * 1.5})
        return space

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
