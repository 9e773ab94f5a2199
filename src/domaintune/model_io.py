"""Load the model of a run directory, whatever method wrote it.

`run/model/` holds one of:

* a plain Hugging Face model (full fine-tuning, freezing): `task.load_model`;
* a PEFT adapter (`adapter_config.json`, method lora/adalora/ia3/prefix/prompt):
  the base model named in `domaintune_adapter.json` plus the adapter;
* a domaintune custom head (`domaintune_head.json` with a `kind`): a pooled
  sentence-embedding classifier (few-shot, zero-shot embedding) or a causal-LM
  label scorer (zero-shot lm), loaded by the module that `HEAD_KINDS` names.

The Predictor, `evaluate`, `merge` and the server all call `load_run_model`, so a
new method that saves a new format adds one entry here and nothing else changes.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

#: `domaintune_head.json` "kind" -> "module:function(task, model_dir) -> nn.Module".
HEAD_KINDS: dict[str, str] = {
    "pooled_classifier": "domaintune.methods.pooled_head:load_pooled_classifier",
    "lm_scorer": "domaintune.methods.lm_scorer:load_lm_scorer",
    "pair_biencoder": "domaintune.tasks.pair_biencoder:load_pair_biencoder",
    "ensemble": "domaintune.ensemble:load_ensemble",
}
ADAPTER_LOADER = "domaintune.methods.peft_methods:load_adapter_model"
HEAD_FILE = "domaintune_head.json"


def _call(target: str, *args):
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)(*args)


def load_run_model(task, model_dir: str | Path) -> torch.nn.Module:
    """The run's model in eval mode, ready for `task.predict` / `task.evaluate`."""
    model_dir = Path(model_dir)
    if (model_dir / "adapter_config.json").is_file():
        return _call(ADAPTER_LOADER, task, model_dir)
    head = model_dir / HEAD_FILE
    if head.is_file():
        kind = json.loads(head.read_text(encoding="utf-8")).get("kind")
        if kind not in HEAD_KINDS:
            raise ValueError(f"{head}: unknown head kind {kind!r} (known: {sorted(HEAD_KINDS)}); "
                             f"was this run written by a newer domaintune?")
        return _call(HEAD_KINDS[kind], task, model_dir)
    return task.load_model(model_dir)
