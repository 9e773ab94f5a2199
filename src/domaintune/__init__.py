"""domaintune: adapt pretrained language models to your own labelled text, offline, on CPU.

    from domaintune import load_config, train_run, Predictor
    metrics = train_run(load_config("config.yaml"))
    Predictor("runs/default").predict("The conveyor belt is slipping on line 3")
"""

import os as _os

# Nothing in this package may contact a model hub; set before transformers is imported.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"

#: Public names -> the module defining them, imported on first use (PEP 562): `import domaintune.cli` for
#: `domaintune --help` must not build config.py's pydantic models, nor load torch or transformers
#: (run, predictor, evaluate), before it prints anything.
_LAZY = {"ConfigError": "domaintune.errors", "RunConfig": "domaintune.config", "load_config": "domaintune.config",
         "DataError": "domaintune.data", "prepare_data": "domaintune.data", "ModelNotFoundError": "domaintune.models",
         "list_models": "domaintune.models", "resolve_model": "domaintune.models", "train_run": "domaintune.run",
         "Predictor": "domaintune.predictor", "evaluate_run": "domaintune.evaluate"}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'domaintune' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


__all__ = ["ConfigError", "DataError", "ModelNotFoundError", "Predictor", "RunConfig", "evaluate_run", "list_models",
           "load_config", "prepare_data", "resolve_model", "train_run"]
