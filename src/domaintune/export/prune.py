"""`domaintune prune RUN_DIR --keep-layers N`: fewer encoder layers, briefly re-fine-tuned.

On a CPU, time per text is almost linear in the number of transformer layers,
so dropping layers is the pruning that actually buys speed (magnitude sparsity
does not: dense CPU GEMMs do the same work on zeros - we do not offer it).
The default `strategy="spread"` keeps evenly spaced layers including the first
and the last (DistilBERT-style), so the head still reads the representation it
was trained on. `"bottom"` keeps the lowest N (Sajjad et al. 2021 found
top-layer dropping strong *before* fine-tuning); after fine-tuning it needs a
long re-fine-tune: on the test suite's 72-example run, bottom-3 of 6 stayed at
chance after 2 epochs while spread-3 reached 0.80 accuracy (2026-11-26). The pruned model then re-fine-tunes for a short while on
the run's own data (its config, a few epochs; the head restarts from a linear
probe on the pruned model's features, since the old head read the top layer's), optionally distilling from the
original run as teacher: loss = alpha * task loss + (1 - alpha) * T^2 *
KL(softmax(teacher / T) || softmax(student / T)) (Hinton et al. 2015).

The result is a new, ordinary run directory (export it, serve it) plus
`pruning.json` / `pruning.md` with the accuracy / speed / size trade-off
measured on the same test split for the original and the pruned model.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from pathlib import Path

import torch
from torch import nn

from domaintune.methods.full import FullFineTuning

log = logging.getLogger("domaintune")


class PruneError(ValueError):
    """The run cannot be pruned as asked."""


def layer_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(parent, attribute, ModuleList) of the transformer blocks (BERT `encoder.layer`, others `layers`)."""
    for module in model.modules():
        for attr in ("layer", "layers"):
            blocks = getattr(module, attr, None)
            if isinstance(blocks, nn.ModuleList) and len(blocks) > 1:
                return module, attr, blocks
    raise PruneError("no stack of transformer layers found in this model (expected encoder.layer or layers)")


def kept_indices(n_layers: int, keep: int, strategy: str) -> list[int]:
    if not 1 <= keep < n_layers:
        raise PruneError(f"--keep-layers {keep}: the model has {n_layers} layers; keep between 1 and {n_layers - 1}")
    if strategy == "bottom":
        return list(range(keep))
    if strategy == "spread":
        return sorted({round(i * (n_layers - 1) / max(keep - 1, 1)) for i in range(keep)}) if keep > 1 else [0]
    raise PruneError(f"strategy {strategy!r}: use bottom or spread")


def drop_layers(model: nn.Module, keep: list[int]) -> nn.Module:
    """A copy of `model` with only the layers in `keep` (config updated so it saves and reloads)."""
    model = copy.deepcopy(model)
    parent, attr, blocks = layer_list(model)
    setattr(parent, attr, nn.ModuleList([blocks[i] for i in keep]))
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "num_hidden_layers"):
            cfg.num_hidden_layers = len(keep)
            if getattr(cfg, "layer_types", None):  # per-layer attention types (newer configs)
                cfg.layer_types = [cfg.layer_types[i] for i in keep]
    for i, block in enumerate(getattr(parent, attr)):  # attention modules that index the cache by layer
        for sub in block.modules():
            if hasattr(sub, "layer_idx"):
                sub.layer_idx = i
    return model


class Distilled(nn.Module):
    """Student + frozen teacher; in training the loss mixes the task loss with the teacher's soft labels."""

    def __init__(self, student: nn.Module, teacher: nn.Module, alpha: float, temperature: float):
        super().__init__()
        self.student, self.alpha, self.t = student, alpha, temperature
        self.teacher = [teacher.eval()]  # a list: not a submodule, so never trained, saved or checkpointed
        for p in teacher.parameters():
            p.requires_grad_(False)

    def forward(self, **batch):
        out = self.student(**batch)
        if out.loss is None or not self.training:
            return out
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            teacher_logits = self.teacher[0](**inputs).logits.float()
        t = self.t
        kd = nn.functional.kl_div(nn.functional.log_softmax(out.logits.float() / t, -1),
                                  nn.functional.softmax(teacher_logits / t, -1), reduction="batchmean") * t * t
        out.loss = self.alpha * out.loss + (1 - self.alpha) * kd
        return out


class DistillFromTeacher(FullFineTuning):
    """Full fine-tuning of the pruned student with the original run as teacher."""

    name = "full"

    def __init__(self, teacher: nn.Module, alpha: float, temperature: float):
        self.teacher, self.alpha, self.temperature = teacher, alpha, temperature

    def prepare(self, model, task=None):
        return Distilled(super().prepare(model, task), self.teacher, self.alpha, self.temperature)

    def export(self, model):
        return model.student if isinstance(model, Distilled) else model

    def settings(self) -> dict:
        return {**super().settings(), "distillation": {"alpha": self.alpha, "temperature": self.temperature}}


def _speed(predictor_like, examples) -> dict:
    from domaintune.export.check import score_backend
    from domaintune.tasks import EvalContext

    p = predictor_like
    ctx = EvalContext(p.tokenizer, p.pad_id, 32, p.max_length, False)
    feats = p.features(examples, with_targets=True)
    res = score_backend(p, p.model, examples, feats, ctx, p.task.headline[0])
    res.pop("_logits")
    return res


def prune_run(run_dir: str | Path, keep_layers: int, output: str | Path | None = None, strategy: str = "spread",
              epochs: float = 2.0, lr: float | None = None, distill: bool = False, alpha: float = 0.5,
              temperature: float = 2.0, overwrite: bool = False, extra_sets: list[str] | None = None) -> dict:
    """Write the pruned, re-fine-tuned run to `output` (default RUN_DIR-Nlayers); return pruning.json."""
    from domaintune.config import load_config
    from domaintune.export.check import eval_examples
    from domaintune.export.onnx_export import exportable_model
    from domaintune.predictor import Predictor
    from domaintune.run import train_run
    from domaintune.training.checkpoint import atomic_write_json, atomic_write_text

    run_dir = Path(run_dir)
    out = Path(output) if output else run_dir.with_name(f"{run_dir.name}-{keep_layers}layers")
    teacher_pred = Predictor(run_dir, backend="torch")
    if not teacher_pred.task.prunable:  # declared by the task (tasks/base.py)
        from domaintune.tasks import task_names_where

        supported = ", ".join(task_names_where(lambda t: t.prunable))
        raise PruneError(f"{run_dir}: pruning supports encoder runs ({supported}), not {teacher_pred.task.name}")
    if (run_dir / "model" / "domaintune_head.json").is_file():
        raise PruneError(f"{run_dir}: a custom-head run (few-shot, zero-shot, ensemble, bi-encoder) cannot be pruned; "
                         f"prune a full or LoRA fine-tuning run")
    teacher = exportable_model(teacher_pred.model, run_dir)
    n_layers = len(layer_list(teacher)[2])
    keep = kept_indices(n_layers, keep_layers, strategy)
    student = drop_layers(teacher, keep)
    base_lr = float((teacher_pred.config.get("train") or {}).get("lr", 5e-5))
    with tempfile.TemporaryDirectory(prefix="domaintune-prune-") as tmp:
        init_dir = Path(tmp) / "model"
        teacher_pred.task.save_model(student, teacher_pred.tokenizer, init_dir)
        sets = [f"model={init_dir}", f"output_dir={out}", "method=full", "baseline=false", f"train.epochs={epochs}",
                f"train.lr={lr or base_lr}", *(extra_sets or [])]
        cfg = load_config(run_dir / "config.yaml", sets)
        method = DistillFromTeacher(teacher, alpha, temperature) if distill else None
        metrics = train_run(cfg, overwrite=overwrite, method=method)
    pruned_pred = Predictor(out, backend="torch")
    split, examples = eval_examples(pruned_pred)
    before, after = _speed(teacher_pred, examples), _speed(pruned_pred, examples)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    record = {"source_run": str(run_dir), "output_run": str(out), "strategy": strategy, "layers_before": n_layers,
              "layers_kept": keep, "epochs": epochs, "lr": lr or base_lr, "distill": distill,
              "distillation": {"alpha": alpha, "temperature": temperature} if distill else None,
              "eval_split": split, "eval_examples": len(examples), "metric": before["metric"],
              "original": {**before, "parameters": params(teacher)},
              "pruned": {**after, "parameters": params(pruned_pred.model)},
              "metric_delta_points": round(100 * (after["value"] - before["value"]), 3),
              "speedup": round(after["texts_per_second"] / before["texts_per_second"], 2),
              "train_seconds": metrics["train"]["seconds"]}
    atomic_write_json(out / "pruning.json", record)
    atomic_write_text(out / "pruning.md", pruning_table(record))
    return record


def pruning_table(r: dict) -> str:
    m = r["metric"]
    rows = [("original", r["layers_before"], r["original"]), ("pruned", len(r["layers_kept"]), r["pruned"])]
    lines = [f"# Pruning: {Path(r['source_run']).name} -> {Path(r['output_run']).name}", "",
             f"Kept layers {r['layers_kept']} of {r['layers_before']} ({r['strategy']}), re-fine-tuned {r['epochs']} "
             f"epoch(s) at lr {r['lr']}" + (f", distilled from the original (alpha {r['distillation']['alpha']}, "
                                          f"T {r['distillation']['temperature']})" if r["distill"] else "") +
             f". Scored on {r['eval_examples']} {r['eval_split']} examples, torch fp32.", "",
             f"| model | layers | parameters | {m} | texts/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, n, s in rows:
        lines.append(f"| {name} | {n} | {s['parameters'] / 1e6:.1f} M | {s['value']:.4f} | {s['texts_per_second']:.0f} "
                     f"| {s['p50_ms']:.1f} | {s['p99_ms']:.1f} |")
    lines += ["", f"{m}: {r['metric_delta_points']:+.2f} points; speed: {r['speedup']:.2f}x the original's texts/s.", ""]
    return "\n".join(lines)
