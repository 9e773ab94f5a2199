"""`ewc`: Elastic Weight Consolidation (Kirkpatrick et al. 2017), online form (Schwarz et al. 2018).

Weights that mattered for earlier stages are held near their old values:
loss = task loss + lambda/2 * sum_i F_i (theta_i - theta*_i)², where theta* is
the previous run's model and F the diagonal (empirical) Fisher information,
estimated as the mean squared gradient of the cross-entropy over mini-batches
of up to `ewc_samples` training rows of each earlier stage (mini-batches of 8:
per-example gradients would cost 8x the passes for little change in ranking).
Each stage's Fisher is divided by its mean over all weights before use: a model
that fits its training data well has tiny gradients there (on the demo tickets
the raw values sum to ~6 over 22M weights, so the raw penalty was ~1e-7 and any
usable lambda depended on how well the last stage fit). Normalised, lambda
means the same on every data set: the penalty is lambda/2 times the
Fisher-weighted squared drift, where an average weight has Fisher 1.
Stages add up: after stage k the run stores F_0 + ... + F_k, so the next stage
protects all of them with one tensor per weight.

A grown classification head is handled by slicing: only the rows of the old
classes are anchored; new classes' rows are free.

Stored as `continual/ewc/fisher.safetensors` (+ `meta.json`), float32.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from domaintune.continual.base import StageContext, Strategy
from domaintune.training.batching import inference_batches
from domaintune.training.checkpoint import atomic_write_bytes, atomic_write_json

log = logging.getLogger("domaintune")
FISHER_FILE = "fisher.safetensors"


def fisher_diagonal(model: torch.nn.Module, features: list[dict], collate, pad_id: int, max_examples: int = 512,
                    batch_size: int = 8, seed: int = 42, normalize: bool = True) -> dict[str, torch.Tensor]:
    """Mean squared mini-batch gradient of the loss per parameter (dropout off), over a seeded sample of rows;
    with `normalize`, divided by its mean over all weights (see the module docstring)."""
    if not features:
        raise ValueError("cannot estimate the Fisher information from an empty training set")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(features), generator=g)[:max_examples].tolist()
    feats = [features[i] for i in pick]
    was_training = model.training
    model.eval()
    params = {n: p for n, p in model.named_parameters()}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    flags = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    batches = 0
    with torch.enable_grad():
        for idx in inference_batches([len(f["input_ids"]) for f in feats], batch_size):
            model.zero_grad(set_to_none=True)
            loss = model(**collate([feats[i] for i in idx], pad_id)).loss
            loss.backward()
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n] += p.grad.detach().float() ** 2
            batches += 1
    model.zero_grad(set_to_none=True)
    for n, p in params.items():
        p.requires_grad_(flags[n])
    model.train(was_training)
    mean = sum(float(f.sum()) for f in fisher.values()) / max(sum(f.numel() for f in fisher.values()), 1)
    scale = 1.0 / mean if normalize and mean > 0 else 1.0 / batches
    return {n: (f * scale).contiguous() for n, f in fisher.items()}


def add_fisher(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """old + new, where a grown head (more rows in `new`) keeps zeros for the new rows of `old`."""
    out = dict(new)
    for n, f in old.items():
        if n not in new:
            continue
        target = new[n].clone()
        sl = tuple(slice(0, s) for s in f.shape)
        target[sl] += f
        out[n] = target
    return out


def save_fisher(folder: Path, fisher: dict[str, torch.Tensor], meta: dict) -> None:
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:   # safetensors writes a path: render, then publish atomically
        save_file(fisher, str(Path(tmp) / FISHER_FILE))
        atomic_write_bytes(folder / FISHER_FILE, (Path(tmp) / FISHER_FILE).read_bytes())
    atomic_write_json(folder / "meta.json", meta)


class EWC(Strategy):
    name = "ewc"
    adds_loss = True  # the Fisher-weighted penalty

    def setup(self, ctx: StageContext) -> None:
        self.lam = self.options.ewc_lambda
        if self.lam < 0:
            raise ValueError(f"--ewc-lambda must be >= 0, got {self.lam}")
        stored = ctx.prev_state_dir / "ewc" / FISHER_FILE
        if stored.is_file():
            self.fisher = load_file(str(stored))
            meta = json.loads((stored.parent / "meta.json").read_text(encoding="utf-8"))
            self.covers = list(meta.get("stages", []))
            log.info("ewc: Fisher of stages %s read from %s", self.covers, stored)
        else:  # the previous stage ran without ewc (or was a plain `train` run): estimate it now
            log.info("ewc: estimating the Fisher information of stage %d from its training data", ctx.stage - 1)
            self.fisher = fisher_diagonal(ctx.prev_model, ctx.encode(ctx.prev_train()), ctx.task.collate, ctx.pad_id,
                                          self.options.ewc_samples, seed=ctx.seed)
            self.covers = [ctx.stage - 1]
        self.anchor = {n: p.detach().clone() for n, p in ctx.prev_model.named_parameters()}
        self._terms = None

    def _bind(self, model):
        terms = []
        for n, p in model.named_parameters():
            if n in self.fisher and n in self.anchor and p.requires_grad:
                f, a = self.fisher[n], self.anchor[n]
                sl = tuple(slice(0, s) for s in a.shape)   # grown head: the old classes' rows only
                terms.append((p, sl, f[sl] if f.shape != a.shape else f, a))
        if not terms:
            raise ValueError("ewc: no parameter of the model matches the previous run's; was the architecture changed?")
        self._terms = (id(model), terms)

    def loss(self, model, batch, outputs):
        if self._terms is None or self._terms[0] != id(model):
            self._bind(model)
        penalty = sum((f * (p[sl].float() - a) ** 2).sum() for p, sl, f, a in self._terms[1])
        return 0.5 * self.lam * penalty

    def finish(self, model, ctx: StageContext) -> dict:
        new = fisher_diagonal(model, ctx.encode(ctx.new_train), ctx.task.collate, ctx.pad_id, self.options.ewc_samples,
                              seed=ctx.seed)
        total = add_fisher(self.fisher, new)
        covers = [*self.covers, ctx.stage]
        save_fisher(ctx.state_dir / "ewc", total, {"stages": covers, "samples_per_stage": self.options.ewc_samples,
                                                    "estimator": "empirical Fisher, mean squared mini-batch gradient, each stage normalised to mean 1"})
        return {"fisher_stages": covers}

    def settings(self) -> dict:
        return {"ewc_lambda": self.options.ewc_lambda, "ewc_samples": self.options.ewc_samples}
