"""Continual learning: continue a finished run on new data without forgetting the old.

`continue_run(RUN_DIR, NEW_DATA, strategy="replay", output=NEW_RUN)` trains one
more *stage*: the new run starts from RUN_DIR's model, keeps every label id it
had (new labels get the next ids: class-incremental; same labels: domain-
incremental), trains through the ordinary `train_run` with a strategy against
forgetting (naive, replay, ewc, lwf, or a `+` combination), then scores the new
model on the test set of every stage so far. `NEW_RUN/continual/` holds the
stage records, the accuracy matrix, the strategies' state for the next stage
and the regression gate (`gate.json`, field `promotable`).
"""

from __future__ import annotations

import importlib

from domaintune.continual.base import ContinualOptions, StageContext, Strategy

#: strategy name -> "module:Class"; `replay+lwf` combines registered strategies.
STRATEGIES: dict[str, str] = {
    "naive": "domaintune.continual.naive:Naive",
    "replay": "domaintune.continual.replay:Replay",
    "ewc": "domaintune.continual.ewc:EWC",
    "lwf": "domaintune.continual.lwf:LwF",
}


def parse_strategy(spec: str) -> list[str]:
    """`replay+lwf` -> ["replay", "lwf"]; unknown names, repeats and naive-with-others are errors."""
    names = [s.strip().lower() for s in str(spec).split("+") if s.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if not names or unknown:
        raise ValueError(f"unknown continual strategy {', '.join(map(repr, unknown)) or repr(spec)}; choose from "
                         f"{', '.join(STRATEGIES)} or a combination such as replay+lwf")
    if len(set(names)) != len(names):
        raise ValueError(f"strategy {spec!r} names a strategy twice")
    if "naive" in names and len(names) > 1:
        raise ValueError(f"strategy {spec!r}: naive means no protection and cannot be combined; drop naive")
    return names


def make_strategies(spec: str, options: ContinualOptions) -> list[Strategy]:
    out = []
    for name in parse_strategy(spec):
        module, cls = STRATEGIES[name].split(":")
        out.append(getattr(importlib.import_module(module), cls)(options))
    return out


def continue_run(*args, **kwargs):
    from domaintune.continual.stage import continue_run as _run

    return _run(*args, **kwargs)


__all__ = ["STRATEGIES", "ContinualOptions", "StageContext", "Strategy", "continue_run", "make_strategies",
           "parse_strategy"]
