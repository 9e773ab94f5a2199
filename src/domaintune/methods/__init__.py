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
    "zeroshot": "domaintune.methods.zeroshot:ZeroShot",
    "fewshot": "domaintune.methods.fewshot:FewShot",
    "lora": "domaintune.methods.peft_methods:LoRA",
    "adalora": "domaintune.methods.peft_methods:AdaLoRA",
    "ia3": "domaintune.methods.peft_methods:IA3",
    "prefix": "domaintune.methods.peft_methods:PrefixTuning",
    "prompt": "domaintune.methods.peft_methods:PromptTuning",
}


def get_method(name: str) -> Method:
    try:
        module, cls = METHODS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}") from None
    return getattr(importlib.import_module(module), cls)()


__all__ = ["METHODS", "FitContext", "Method", "get_method", "trainable_summary"]
