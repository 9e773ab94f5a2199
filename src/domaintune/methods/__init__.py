"""Method registry: how the pretrained weights adapt (name -> "module:Class", imported lazily).

Adding a method is one module under `methods/` plus its test, and one line here
(peft's `tuners/` registry has the same shape). Lazy imports keep `domaintune
--help` fast: peft, optuna and the LM code load only when their method runs.
"""

from __future__ import annotations

import importlib

from domaintune.methods.base import FitContext, Method, trainable_summary

METHODS: dict[str, str] = {
    "full": "domaintune.methods.full:FullFineTuning",
}


def get_method(name: str) -> Method:
    try:
        module, cls = METHODS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}") from None
    return getattr(importlib.import_module(module), cls)()


__all__ = ["METHODS", "FitContext", "Method", "get_method", "trainable_summary"]
