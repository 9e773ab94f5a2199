"""`lwf`: Learning without Forgetting (Li & Hoiem 2016).

The previous run's model is the teacher: on every new training batch the new
model's logits for the *old* classes are pulled towards the teacher's, with a
temperature-softened KL divergence (Hinton et al.'s distillation, scaled by T²
so its gradient size does not depend on T): loss = task loss + alpha * T² *
KL(teacher || student[:, :n_old]). No old data is kept, so this suits data that
may not be stored; in class-incremental learning it protects how old classes
relate to each other but not against new classes outscoring them (that needs
replay), which the benchmark shows.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from domaintune.continual.base import StageContext, Strategy


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch; student cut to the teacher's classes."""
    t = temperature
    s = student_logits[:, : teacher_logits.shape[-1]].float()
    return F.kl_div(F.log_softmax(s / t, -1), F.softmax(teacher_logits.float() / t, -1), reduction="batchmean") * t * t


class LwF(Strategy):
    name = "lwf"
    adds_loss = True  # distillation from the previous model

    def setup(self, ctx: StageContext) -> None:
        self.teacher = ctx.prev_model
        self.alpha, self.t = self.options.lwf_alpha, self.options.lwf_temperature
        if self.alpha < 0 or self.t <= 0:
            raise ValueError(f"lwf needs alpha >= 0 and temperature > 0, got alpha={self.alpha}, temperature={self.t}")

    def loss(self, model, batch, outputs):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            teacher_logits = self.teacher(**inputs).logits
        return self.alpha * distillation_loss(outputs.logits, teacher_logits, self.t)

    def settings(self) -> dict:
        return {"lwf_alpha": self.options.lwf_alpha, "lwf_temperature": self.options.lwf_temperature}
