"""CLI commands beyond the core ones in `domaintune.cli`, one module per feature.

Each module listed in `COMMAND_MODULES` defines `register(app)`, which adds its
Typer command(s) to the app; `domaintune.cli` calls `register_all` once. Keep
heavy imports (peft, optuna, the LM code) inside the command functions so
`domaintune --help` stays fast.
"""

from __future__ import annotations

import importlib

COMMAND_MODULES: list[str] = ["domaintune.commands.tune", "domaintune.commands.compare", "domaintune.commands.models_prepare", "domaintune.commands.pretrain", "domaintune.commands.ensemble", "domaintune.commands.merge", "domaintune.commands.export", "domaintune.commands.keys", "domaintune.commands.serve", "domaintune.commands.explain", "domaintune.commands.monitor", "domaintune.commands.registry", "domaintune.commands.continual"]


def register_all(app) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)
