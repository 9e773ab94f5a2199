"""`naive`: fine-tune on the new stage's data only (the lower bound every other strategy must beat)."""

from __future__ import annotations

from domaintune.continual.base import Strategy


class Naive(Strategy):
    name = "naive"
