"""The continual-learning strategy interface and what a strategy sees of a stage.

A strategy plugs into one stage of `continue_run` at three points, so several
combine (`replay+lwf`, `replay+ewc`): before training it may add training rows
(replay); during training it may add a loss term, which the shared Trainer adds
to the task loss through the method's `extra_loss` hook (EWC's penalty, LwF's
distillation); after training it writes what the next stage needs into the new
run directory (the replay buffer, the Fisher information). Strategies are
registered by name in `domaintune.continual.STRATEGIES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from domaintune.data.readers import Example


@dataclass
class ContinualOptions:
    """Settings of every strategy (CLI: --replay-size, --ewc-lambda, --lwf-alpha, --lwf-temperature)."""

    replay_size: int = 1000          # rows kept over all classes of all earlier stages
    ewc_lambda: float = 100.0        # weight of the EWC penalty (sum of Fisher * squared parameter change)
    ewc_samples: int = 512           # rows used to estimate the diagonal Fisher of one stage
    lwf_alpha: float = 1.0           # weight of the distillation term
    lwf_temperature: float = 2.0     # softmax temperature of the distillation


@dataclass
class StageContext:
    """One stage being trained: the previous run, its frozen model and the new data."""

    stage: int                       # index of the stage being trained (the first `train` run is 0)
    prev_run: Path
    out_dir: Path                    # the new run directory
    task: Any                        # ContinualClassification with the extended label space
    tokenizer: Any
    pad_id: int
    max_length: int
    prev_model: torch.nn.Module      # the previous run's model, frozen, eval mode
    n_old: int                       # classes the previous model knows (its logits are these ids)
    new_train: list[Example]
    prev_train: Callable[[], list[Example]]  # the previous stage's training rows (read on demand)
    options: ContinualOptions = field(default_factory=ContinualOptions)
    seed: int = 42

    @property
    def state_dir(self) -> Path:
        return self.out_dir / "continual"

    @property
    def prev_state_dir(self) -> Path:
        return self.prev_run / "continual"

    def encode(self, examples: list[Example]) -> list[dict]:
        return self.task.encode(self.tokenizer, examples, self.max_length)


class Strategy:
    name: str = ""
    #: Whether `loss` adds a term: robust (adversarial / R-Drop) steps bypass the Trainer's loss hook,
    #: so such a strategy refuses them (continue_run checks this, not the strategy's name).
    adds_loss: bool = False

    def __init__(self, options: ContinualOptions):
        self.options = options

    def setup(self, ctx: StageContext) -> None:
        """Before training: read what the previous stage left (buffer, Fisher)."""

    def extra_examples(self) -> list[Example]:
        """Rows trained on besides the new stage's training split."""
        return []

    def loss(self, model: torch.nn.Module, batch: dict, outputs) -> torch.Tensor | None:
        """A term added to the task loss of every training batch, or None."""
        return None

    def finish(self, model: torch.nn.Module, ctx: StageContext) -> dict:
        """After training: write what the next stage needs into ctx.state_dir; return a record for stages.json."""
        return {}

    def settings(self) -> dict:
        return {}
