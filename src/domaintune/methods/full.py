"""Full fine-tuning: every pretrained weight and the new head train (minus what `freeze:` keeps fixed)."""

from __future__ import annotations

from domaintune.methods.base import Method
from domaintune.methods.freeze import apply_freezing


class FullFineTuning(Method):
    name = "full"

    def prepare(self, model, task=None):
        for p in model.parameters():
            p.requires_grad_(True)
        section = getattr(getattr(self, "cfg", None), "freeze", None)
        self.freeze_summary = apply_freezing(model, section) if section is not None else {}
        return model

    def settings(self) -> dict:
        summary = getattr(self, "freeze_summary", None)
        return {"freeze": summary} if summary else {}
