"""One training run from config to run directory: the spine of domaintune.

data -> task -> method -> trainer -> evaluation -> run directory. Every step is
a plain function call; nothing is written into the run directory until the data
has been validated and the model located, so a bad file never damages an
existing run.
"""

from __future__ import annotations

import logging
import random
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from domaintune.config import RunConfig, config_differences, dump_config
from domaintune.data import LabelMap, Splits, prepare_data
from domaintune.data.augment import augment_training
from domaintune.evaluation.metrics import summary
from domaintune.evaluation.report import write_report
from domaintune.methods import FitContext, get_method, trainable_summary
from domaintune.models import licence_of, resolve_model
from domaintune.monitoring.profile import write_run_profile
from domaintune.tasks import EvalContext, get_task
from domaintune.training.checkpoint import atomic_dir, atomic_write_json, atomic_write_text
from domaintune.methods.head_init import probe_init_head
from domaintune.training.loop import set_threads, use_bf16

log = logging.getLogger("domaintune")


class RunDirectoryError(RuntimeError):
    """The output directory holds a finished run and neither --overwrite nor --resume was given."""


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _check_run_dir(run_dir: Path, overwrite: bool, resume: bool) -> None:
    if not run_dir.exists() or resume:
        return
    if any(run_dir.iterdir()) and not overwrite:
        raise RunDirectoryError(
            f"{run_dir} already holds a run; pass --overwrite to replace it, --resume to continue it, "
            f"or choose another directory with --set output_dir=runs/NAME")


#: Keys that may change between an interrupted run and its --resume: they do not change what is trained.
RESUME_MAY_CHANGE = {"train.num_threads", "train.log_every", "train.eval_batch_size", "train.save_every_steps"}


def _check_resume_config(run_dir: Path, cfg: RunConfig) -> None:
    """--resume with other settings would silently mix two trainings (the optimizer, schedule and data order
    of one, the config of another): refuse, naming every key that differs."""
    import yaml

    from domaintune.security.safe_yaml import load_yaml_file

    saved = run_dir / "config.yaml"
    if not (run_dir / "checkpoints" / "latest.json").is_file() or not saved.is_file():
        return
    changed = [d for d in config_differences(load_yaml_file(saved) or {},
                                             yaml.safe_load(dump_config(cfg)) or {})
               if d.split(":", 1)[0] not in RESUME_MAY_CHANGE]
    if changed:
        diff = "; ".join(changed[:8])
        raise RunDirectoryError(f"{run_dir}: --resume with settings other than the interrupted run's ({diff}"
                                f"{' ...' if len(changed) > 8 else ''}); resume with the same config, or start "
                                f"again with --overwrite")


def train_run(cfg: RunConfig, overwrite: bool = False, resume: bool = False, splits: Splits | None = None,
              on_evaluate=None, method=None, task=None) -> dict:
    """Train, evaluate and write a complete run directory; return metrics.json's content.

    `on_evaluate(step, dev_metrics)` is called after each dev evaluation during training
    (hyper-parameter search reports intermediate scores and prunes through it). `method`: a Method
    instance to use instead of the registry's `cfg.method` (pruning's distillation passes its own);
    `task`: likewise a Task instance (continual learning passes one whose label space extends the
    previous run's without renumbering it)."""
    t_total = time.perf_counter()
    task, method = (task or get_task(cfg.task)), (method or get_method(cfg.method))
    task.configure(cfg)
    method.configure(cfg)
    if splits is None:
        splits = prepare_data(cfg, task)          # raises DataError listing every problem; fits the label space
    else:
        task.fit(splits.train)
    model_dir = resolve_model(cfg.model)          # raises ModelNotFoundError with the pip command
    metric_for_best = cfg.train.metric_for_best or task.default_metric
    train_cfg = cfg.train.model_copy(update={"metric_for_best": metric_for_best})
    run_dir = Path(cfg.output_dir)
    _check_run_dir(run_dir, overwrite, resume)
    if resume:
        _check_resume_config(run_dir, cfg)
    if overwrite and not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        for stale in ("train_log.jsonl",):
            (run_dir / stale).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)

    config_text = dump_config(cfg)
    atomic_write_text(run_dir / "config.yaml", config_text)
    if task.labels:
        LabelMap(tuple(task.labels)).save(run_dir / "labels.json")
    atomic_write_json(run_dir / "task.json", task.state())

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    parts = {"train": augment_training(task, task.training_examples(splits.train), cfg), "dev": splits.dev, "test": splits.test}
    feats = {name: task.encode_split(name, tokenizer, part, cfg.train.max_length) if part else []
             for name, part in parts.items()}

    seed_everything(cfg.train.seed)
    model = method.build(task, model_dir, cfg)

    def ctx(bf16: bool) -> EvalContext:
        return EvalContext(tokenizer, pad_id, cfg.train.eval_batch_size, cfg.train.max_length, bf16)

    probe, probe_seconds = None, 0.0
    if (cfg.train.head_init == "probe" and task.supports_probe_init and method.uses_probe_init
            and not (resume and (run_dir / "checkpoints" / "latest.json").exists())):
        t0 = time.perf_counter()
        set_threads(cfg.train.num_threads)
        probe = probe_init_head(model, feats["train"], [f["labels"] for f in feats["train"]], task.collate, pad_id,
                                use_bf16(cfg.train.precision))
        probe_seconds = time.perf_counter() - t0

    model = method.prepare(model, task)
    trainable = trainable_summary(model)
    fit_ctx = FitContext(task=task, cfg=cfg, train_cfg=train_cfg, model_dir=model_dir, run_dir=run_dir, tokenizer=tokenizer,
                         pad_id=pad_id, splits=splits, features=feats, make_eval_context=ctx, resume=resume,
                         extra={"on_evaluate": on_evaluate} if on_evaluate else {})
    result = method.fit(model, fit_ctx)

    # Thresholds (multi-label, out-of-scope) are tuned on dev, then saved beside the weights.
    calibration = task.calibrate(model, splits.dev, feats["dev"], ctx(False)) if splits.dev else {}
    atomic_write_json(run_dir / "task.json", task.state())
    # Final scores in fp32, exactly as the saved model predicts with plain transformers.
    dev_metrics = task.evaluate_final(model, splits.dev, feats["dev"], ctx(False), "dev") if splits.dev else {}
    test_metrics = task.evaluate_final(model, splits.test, feats["test"], ctx(False), "test") if splits.test else {}

    atomic_dir(run_dir / "model", lambda tmp: method.save(model, task, tokenizer, tmp))

    baseline: dict = {}
    if cfg.baseline and splits.test:
        try:
            # Expansions (swapped pairs, augmented copies) are appended after the originals: the
            # starting point is scored on the user's own training rows only, aligned with splits.train.
            base_feats = {**feats, "train": feats["train"][:len(splits.train)]}
            baseline = task.baselines(model_dir, splits, base_feats, ctx(False), cfg.train.seed)
        except Exception as e:  # noqa: BLE001 - a baseline failure must not lose a trained model
            log.warning("starting-point baseline failed: %s", e)
        for m in baseline.values():
            m.pop("confusion_matrix", None)

    metrics = {
        "name": run_dir.name, "run_dir": str(run_dir), "task": cfg.task, "method": cfg.method, "model": cfg.model, "model_path": str(model_dir),
        "labels": list(task.labels), "metric_for_best": metric_for_best, "headline": list(task.headline),
        "data": {"train_examples": len(splits.train), "trained_on_examples": len(parts["train"]), "dev_examples": len(splits.dev), "test_examples": len(splits.test),
                 "dev_from_train": splits.dev_from_train, "test_from_train": splits.test_from_train,
                 "warnings": [str(w) for w in splits.warnings], **task.data_summary()},
        "train": {"seconds": round(result.seconds + probe_seconds, 3), "samples_per_second": round(result.samples_per_second, 2),
                  "head_init": cfg.train.head_init if probe is not None else "random",
                  "head_init_seconds": round(probe_seconds, 2), "probe": probe,
                  "peak_rss_mb": round(peak_rss_mb(), 1), "global_step": result.global_step,
                  "epochs_completed": round(result.epochs_completed, 3), "best_step": result.best_step,
                  "best_dev_metric": result.best_metric, "stopped_early": result.stopped_early, "bf16": result.bf16,
                  "threads": result.threads, "total_seconds": round(time.perf_counter() - t_total, 2)},
        "method_settings": {**method.settings(), **trainable},
        "calibration": calibration,
        "dev": dev_metrics, "test": test_metrics, "baseline": baseline, "history": result.history,
    }
    write_report(run_dir, metrics, config_text, list(task.labels), licence_of(cfg.model), task)
    # Reference for drift monitoring (profile.json); logs and carries on if it cannot be built.
    write_run_profile(run_dir, task, model, tokenizer, splits, ctx(False), cfg.train.max_length)
    atomic_write_json(run_dir / "metrics.json", metrics)
    log.info("run written to %s: test %s", run_dir, {k: round(v, 4) for k, v in summary(test_metrics).items()})
    return metrics
