"""The method interface: decide which parameters train and how they are grouped."""

from __future__ import annotations

import torch


class Method:
    name: str = ""

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
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

    def export(self, model: torch.nn.Module) -> torch.nn.Module:
        """The plain transformers model to save in run/model."""
        return model
