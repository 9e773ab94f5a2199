"""Robust training steps: adversarial perturbation of the word embeddings (FGM, PGD) and R-Drop.

The shared `Trainer` calls `RobustStep(batch, weight, bf16)` instead of its plain
`loss.backward()` when `robust:` enables one of these; the step leaves the
summed gradients in `.grad` exactly where the plain step would, so gradient
accumulation, clipping and the optimizer are untouched.

* FGM (Miyato et al., 2017; the "fast gradient method" of Goodfellow et al.):
  after the clean backward, move the word-embedding matrix by
  r = epsilon * g / ||g|| (g: this batch's gradient of that matrix), run a second
  forward/backward on the same batch (gradients add up), restore the matrix
  bit for bit from a copy.
* PGD (Madry et al., 2018): `pgd_steps` ascent steps of size `pgd_alpha`, each
  projected back onto the epsilon-ball around the original embeddings; only
  the last adversarial pass contributes parameter gradients (intermediate
  ones use `torch.autograd.grad` on the embeddings alone).
* R-Drop (Liang et al., 2021): the batch runs twice with independent dropout
  (one forward over the doubled batch, which is cheaper on CPU than two), loss =
  task loss averaged over both + alpha * symmetric KL between the two
  predictive distributions (per token for NER, Bernoulli per label for
  multi-label, squared difference for regression).

No maintained library offers these as a step that composes with our Trainer
(they are a dozen lines each in every competition notebook), hence our own.
"""

from __future__ import annotations

import torch
from torch import nn


def robust_active(section) -> bool:
    return section is not None and (section.adversarial != "none" or section.rdrop_alpha > 0)


def word_embedding(model: nn.Module) -> nn.Parameter:
    """The word-embedding matrix of an HF model, a PEFT wrapper or a domaintune head around an encoder."""
    for obj in (model, getattr(model, "encoder", None)):
        getter = getattr(obj, "get_input_embeddings", None)
        if getter is not None:
            try:
                emb = getter()
            except (NotImplementedError, AttributeError):
                emb = None
            if isinstance(emb, nn.Embedding):
                return emb.weight
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    for n, m in named:
        if n.endswith("word_embeddings") or n.endswith("embed_tokens"):
            return m.weight
    if named:
        return max(named, key=lambda nm: nm[1].num_embeddings)[1].weight
    raise ValueError("robust.adversarial needs a word-embedding layer (nn.Embedding), and this model has none; "
                     "set robust.adversarial: none")


def symmetric_divergence(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """R-Drop's consistency term between two dropout passes, chosen by the output's shape and label type."""
    a, b = a.float(), b.float()
    if a.dim() == 3:  # token classification: per token, padding and ignored positions masked out
        keep = labels != -100 if labels is not None and labels.shape == a.shape[:2] else torch.ones(a.shape[:2], dtype=torch.bool)
        a, b = a[keep], b[keep]
        if not a.numel():
            return a.sum() * 0.0
    if labels is not None and labels.is_floating_point():
        if a.shape[-1] == 1 or a.dim() == 1:  # regression: the two predictions should agree
            return nn.functional.mse_loss(a, b)
        pa, pb = torch.sigmoid(a), torch.sigmoid(b)  # multi-label: Bernoulli KL per label, both ways
        la, lb = nn.functional.logsigmoid(a), nn.functional.logsigmoid(b)
        na, nb = nn.functional.logsigmoid(-a), nn.functional.logsigmoid(-b)
        kl_ab = pa * (la - lb) + (1 - pa) * (na - nb)
        kl_ba = pb * (lb - la) + (1 - pb) * (nb - na)
        return 0.5 * (kl_ab + kl_ba).sum(-1).mean()
    la, lb = a.log_softmax(-1), b.log_softmax(-1)
    kl_ab = nn.functional.kl_div(lb, la, log_target=True, reduction="batchmean")  # KL(p_a || p_b)
    kl_ba = nn.functional.kl_div(la, lb, log_target=True, reduction="batchmean")
    return 0.5 * (kl_ab + kl_ba)


def _doubled(batch: dict) -> dict:
    return {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in batch.items()}


class RobustStep:
    """One micro-batch's forward/backward with FGM/PGD and/or R-Drop; returns the weighted loss for logging."""

    def __init__(self, model: nn.Module, section):
        self.model, self.cfg = model, section
        self.emb = word_embedding(model) if section.adversarial != "none" else None

    # ---- losses
    def task_loss(self, batch: dict, bf16: bool) -> torch.Tensor:
        """Task loss, with R-Drop's consistency term when rdrop_alpha > 0."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if self.cfg.rdrop_alpha <= 0:
                return self.model(**batch).loss
            out = self.model(**_doubled(batch))
        if out.logits is None:
            raise ValueError("robust.rdrop_alpha needs a model that returns logits; set robust.rdrop_alpha: 0")
        a, b = out.logits.float().chunk(2)
        self.last_kl = symmetric_divergence(a, b, batch.get("labels"))
        return out.loss + self.cfg.rdrop_alpha * self.last_kl  # out.loss averages both passes

    # ---- the step
    def __call__(self, batch: dict, weight: float, bf16: bool = False) -> float:
        emb = self.emb
        if emb is None:
            loss = self.task_loss(batch, bf16)
            (loss * weight).backward()
            return loss.item() * weight
        frozen = not emb.requires_grad
        if frozen:  # PEFT / freeze_embeddings: the direction is still needed, the matrix is not trained
            emb.requires_grad_(True)
        prev = None if emb.grad is None else emb.grad.detach().clone()  # gradient accumulation: keep earlier batches'
        try:
            loss = self.task_loss(batch, bf16)
            (loss * weight).backward()
            grad = emb.grad.detach() if prev is None else emb.grad.detach() - prev
            backup = emb.data.clone()
            try:
                if self.cfg.adversarial == "fgm":
                    self._move(grad, self.cfg.epsilon)
                else:
                    alpha = self.cfg.pgd_alpha
                    for _ in range(self.cfg.pgd_steps - 1):
                        self._move(grad, alpha)
                        self._project(backup)
                        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                            adv = self.model(**batch).loss
                        grad = torch.autograd.grad(adv, emb)[0].detach()
                    self._move(grad, alpha)
                    self._project(backup)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    adv = self.model(**batch).loss
                (adv * weight).backward()
            finally:
                emb.data.copy_(backup)  # exact restore: the optimizer must see the clean weights
        finally:
            if frozen:
                emb.grad = None
                emb.requires_grad_(False)
        return loss.item() * weight

    @torch.no_grad()
    def _move(self, grad: torch.Tensor, size: float) -> None:
        norm = torch.linalg.vector_norm(grad)
        if norm > 0 and torch.isfinite(norm):
            self.emb.data.add_(grad, alpha=size / float(norm))

    @torch.no_grad()
    def _project(self, origin: torch.Tensor) -> None:
        delta = self.emb.data - origin
        norm = torch.linalg.vector_norm(delta)
        if norm > self.cfg.epsilon:
            self.emb.data.copy_(origin + delta * (self.cfg.epsilon / norm))


def make_robust_step(model: nn.Module, section) -> RobustStep | None:
    """The Trainer's hook: a RobustStep when `robust:` enables something, else None (plain step)."""
    return RobustStep(model, section) if robust_active(section) else None
