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
#: Pickle weight files Hugging Face / PEFT would load, each with the safetensors file preferred over it.
PICKLED_WEIGHTS = {"pytorch_model.bin": "model.safetensors",
                   "pytorch_model.bin.index.json": "model.safetensors.index.json",
                   "adapter_model.bin": "adapter_model.safetensors"}


class PickleCheckpointError(ValueError):
    """A run's weights are a pickle. domaintune writes safetensors only, so a pickle in `run/model` was put there
    by hand or by another tool; unpickling can run code, and torch's `weights_only` guard has had bypasses, so
    such a run is refused before torch opens the file (a ValueError: callers report it as bad input, the
    service's reload as a 422 that keeps the previous version)."""


def refuse_pickled_weights(model_dir: Path) -> None:
    """Raise PickleCheckpointError when the weights that would be loaded from `model_dir` are a pickle."""
    for pickled, safe in PICKLED_WEIGHTS.items():
        if (model_dir / pickled).is_file() and not (model_dir / safe).is_file():
            raise PickleCheckpointError(
                f"{model_dir / pickled}: the model weights are a pickle file, which domaintune does not load "
                f"(unpickling can run code); convert it to safetensors - load it once where you trust the file and "
                f"call save_pretrained(folder, safe_serialization=True), which writes {safe} - then delete {pickled}")


def _call(target: str, *args):
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)(*args)


def load_run_model(task, model_dir: str | Path) -> torch.nn.Module:
    """The run's model in eval mode, ready for `task.predict` / `task.evaluate`."""
    model_dir = Path(model_dir)
    refuse_pickled_weights(model_dir)
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
