"""Full fine-tuning: every pretrained weight and the new head train (minus what `freeze:` keeps fixed)."""

from __future__ import annotations

from domaintune.methods.base import Method


class FullFineTuning(Method):
    name = "full"

    def prepare(self, model, task=None):
        for p in model.parameters():
            p.requires_grad_(True)
        return model
