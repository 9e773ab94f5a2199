"""The task interface: what differs between classification, NER, regression...

A task knows how to build its model head, turn examples into token ids and
targets, pad a batch, score predictions and decode logits. The trainer,
run directory and Predictor know nothing else about the task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import torch


class Task(ABC):
    name: str = ""
    #: The transformers Auto class that reloads a saved run (users keep plain HF models).
    auto_class: Any = None

    @abstractmethod
    def build_model(self, model_dir, labels: Sequence[str], dropout: float | None = None) -> torch.nn.Module:
        """Load pretrained weights with a fresh head sized for `labels`."""

    @abstractmethod
    def encode(self, tokenizer, texts: Sequence[str], targets: Sequence[Any] | None, max_length: int) -> list[dict]:
        """One dict per example: `input_ids` (list[int]) and, with targets, `labels`."""

    @abstractmethod
    def collate(self, features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        """Pad a list of encoded examples to the longest one in the batch."""

    @abstractmethod
    def metrics(self, y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[str]) -> dict:
        """Scores for a split; must contain the key named by train.metric_for_best."""

    @abstractmethod
    def decode(self, logits: torch.Tensor, labels: Sequence[str], top_k: int = 1) -> list[dict]:
        """Human-facing predictions from raw model outputs."""
