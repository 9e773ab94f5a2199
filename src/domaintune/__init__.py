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

from domaintune.config import ConfigError, RunConfig, load_config  # noqa: E402
from domaintune.data import DataError, prepare_data  # noqa: E402
from domaintune.models import ModelNotFoundError, list_models, resolve_model  # noqa: E402

__version__ = "0.1.0"


def __getattr__(name):
    # Heavy imports (torch, transformers) only when used: `domaintune models` stays instant.
    if name == "train_run":
        from domaintune.run import train_run

        return train_run
    if name == "Predictor":
        from domaintune.predictor import Predictor

        return Predictor
    if name == "evaluate_run":
        from domaintune.evaluate import evaluate_run

        return evaluate_run
    raise AttributeError(name)


__all__ = ["ConfigError", "DataError", "ModelNotFoundError", "Predictor", "RunConfig", "evaluate_run", "list_models",
           "load_config", "prepare_data", "resolve_model", "train_run"]
