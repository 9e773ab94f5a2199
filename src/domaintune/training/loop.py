"""The training loop: readable in one sitting, resumable after kill -9.

AdamW (no decay on bias/LayerNorm), linear warm-up then linear decay,
gradient accumulation and clipping, bf16 autocast on CPUs that have native
bf16 (fp32 master weights), length-grouped dynamic batches, evaluation on dev
with early stopping and best-checkpoint selection, and an atomic checkpoint at
every evaluation (and every `save_every_steps`) holding model, optimizer,
scheduler, RNG state and the position in the epoch's batch order.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import get_linear_schedule_with_warmup

from domaintune.training.batching import epoch_batches, inference_batches
from domaintune.training.checkpoint import CheckpointManager, set_rng_state
from domaintune.training.progress import TrainingLogger

log = logging.getLogger("domaintune")


def cpu_has_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX-512 BF16 or AMX); else bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def cpu_flags() -> list[str]:
    """The CPU features that decide our speed paths, as /proc/cpuinfo names them (benchmarks record them)."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return [f for f in wanted if f in flags]


def use_bf16(precision: str) -> bool:
    if precision == "bf16":
        return True
    if precision == "fp32":
        return False
    return cpu_has_bf16()


def physical_cores() -> int:
    """Physical cores (hyper-threads only add contention in GEMMs); torch's thread count without psutil."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or torch.get_num_threads()
    except ImportError:
        return torch.get_num_threads()


def set_threads(num_threads: int | None) -> int:
    """One intra-op thread per physical core."""
    num_threads = num_threads or physical_cores()
    torch.set_num_threads(num_threads)
    return num_threads


@torch.inference_mode()
def predict_logits(model, features: list[dict], collate, pad_id: int, batch_size: int, bf16: bool = False,
                   stack: bool = True) -> torch.Tensor | list[torch.Tensor]:
    """Logits in input order, computed over longest-first sorted batches (little padding).

    With `stack=False` a list of per-example tensors is returned, each cut to
    the example's own length when the logits are per token (NER).
    """
    model.eval()
    if not features:
        return torch.empty(0) if stack else []
    lengths = [len(f["input_ids"]) for f in features]
    out: list[torch.Tensor | None] = [None] * len(features)

    def make_batch(idx):
        return collate([{k: v for k, v in features[i].items() if k != "labels"} for i in idx], pad_id)

    def torch_logits(idx):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return idx, model(**make_batch(idx)).logits.float()

    batches = inference_batches(lengths, batch_size)
    # a model that runs several batches at once (the ONNX backend's lanes) gets them all
    runner = getattr(model, "map_logits", None)
    for idx, logits in (runner(batches, make_batch) if runner else map(torch_logits, batches)):
        logits = logits.float()
        for j, i in enumerate(idx):
            out[i] = logits[j] if logits.dim() == 2 else logits[j, : lengths[i]]
    return torch.stack(out) if stack else out  # type: ignore[arg-type]


@dataclass
class TrainResult:
    seconds: float
    samples_per_second: float
    global_step: int
    epochs_completed: float
    best_step: int | None
    best_metric: float | None
    stopped_early: bool
    bf16: bool
    threads: int
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Trains `model` on encoded features; `evaluate(model) -> metrics dict` scores dev."""

    def __init__(self, model, method, collate, pad_id: int, train_features: list[dict], evaluate, cfg, run_dir: Path,
                 has_dev: bool = True, robust=None, on_evaluate=None):
        self.model = model
        self.method = method
        self.collate = collate
        self.pad_id = pad_id
        self.features = train_features
        self.evaluate = evaluate
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.has_dev = has_dev
        self.robust = robust  # RobustSection (adversarial training, R-Drop) or None
        # The method's hooks (declared on domaintune.methods.base.Method, no-ops there): extra_loss after
        # each forward pass (not inside robust steps), on_step after each optimizer step, training_state
        # with each checkpoint and load_training_state on resume.
        self.on_evaluate = on_evaluate  # callback(step, metrics) after each dev evaluation (tune: pruning)
        self.ckpt = CheckpointManager(self.run_dir)

    def _optimizer(self):
        groups = self.method.parameter_groups(self.model, self.cfg.weight_decay)
        try:  # the fused CPU kernel updates all parameters in one pass: fewer memory sweeps per step
            return torch.optim.AdamW(groups, lr=self.cfg.lr, fused=True)
        except (RuntimeError, TypeError):
            return torch.optim.AdamW(groups, lr=self.cfg.lr)

    def train(self, resume: bool = False) -> TrainResult:
        cfg = self.cfg
        threads = set_threads(cfg.num_threads)
        bf16 = use_bf16(cfg.precision)
        lengths = [len(f["input_ids"]) for f in self.features]
        micro_per_epoch = math.ceil(len(self.features) / cfg.batch_size)
        steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
        total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        eval_every = steps_per_epoch if cfg.eval_every == "epoch" else int(cfg.eval_every)

        optimizer = self._optimizer()
        scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total_steps), total_steps)
        state = {"global_step": 0, "epoch": 0, "micro_in_epoch": 0, "best_metric": None, "best_step": None,
                 "bad_evals": 0, "history": [], "train_seconds": 0.0, "samples_seen": 0, "stopped_early": False}
        torch.manual_seed(cfg.seed)
        if resume:
            latest = self.ckpt.latest()
            if latest is None:
                log.warning("--resume: no checkpoint in %s; starting from the beginning", self.ckpt.dir)
            else:
                extra, state = CheckpointManager.load_training_state(latest)
                CheckpointManager.load_weights(self.model, latest)
                optimizer.load_state_dict(extra["optimizer"])
                scheduler.load_state_dict(extra["scheduler"])
                set_rng_state(extra["rng"])
                saved = CheckpointManager.load_method_state(latest)
                if saved is not None:
                    self.method.load_training_state(self.model, saved)
                log.info("resumed from %s (step %d, epoch %d)", latest.name, state["global_step"], state["epoch"])

        from domaintune.training.robust import make_robust_step

        robust_step = make_robust_step(self.model, self.robust)
        logger = TrainingLogger(self.run_dir, total_steps, start_step=state["global_step"])
        self.model.train()
        t_start = time.perf_counter() - state["train_seconds"]
        window_t, window_n, window_loss, window_steps = time.perf_counter(), 0, 0.0, 0
        done = state["global_step"] >= total_steps or state["stopped_early"]
        try:
            while not done:
                epoch = state["epoch"]
                batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length)
                micro = state["micro_in_epoch"]
                while micro < len(batches) and not done:
                    group = batches[micro:micro + cfg.grad_accum]
                    n_group = sum(len(b) for b in group)
                    for b in group:
                        batch = self.collate([self.features[i] for i in b], self.pad_id)
                        if robust_step is not None:  # FGM / PGD / R-Drop: domaintune.training.robust
                            window_loss += robust_step(batch, len(b) / n_group, bf16)
                            continue
                        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                            outputs = self.model(**batch)
                            loss = outputs.loss
                            extra = self.method.extra_loss(self.model, batch, outputs)
                            if extra is not None:  # continual learning's EWC penalty, LwF distillation
                                loss = loss + extra
                        # Weight by batch size so a short last batch counts as much as its examples.
                        (loss * (len(b) / n_group)).backward()
                        window_loss += loss.item() * len(b) / n_group
                    if cfg.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    self.method.on_step(self.model, state["global_step"] + 1)  # e.g. AdaLoRA's rank re-allocation
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    micro += len(group)
                    state["micro_in_epoch"] = micro
                    state["global_step"] += 1
                    state["samples_seen"] += n_group
                    window_n += n_group
                    window_steps += 1
                    step = state["global_step"]
                    epoch_pos = epoch + micro / len(batches)
                    if step % cfg.log_every == 0 or step == total_steps:
                        now = time.perf_counter()
                        logger.step(step, epoch_pos, window_loss / window_steps, scheduler.get_last_lr()[0],
                                    window_n / max(now - window_t, 1e-9))
                        window_t, window_n, window_loss, window_steps = now, 0, 0.0, 0
                    end_of_epoch = micro >= len(batches)
                    if end_of_epoch:
                        state["epoch"] = epoch + 1
                        state["micro_in_epoch"] = 0
                    if step >= total_steps:
                        done = True
                    should_eval = step % eval_every == 0 or done or (cfg.eval_every == "epoch" and end_of_epoch)
                    if should_eval and self.has_dev:
                        metrics = self.evaluate(self.model, bf16)
                        self.model.train()
                        state["train_seconds"] = time.perf_counter() - t_start
                        logger.evaluation(step, epoch_pos, metrics)
                        if self.on_evaluate is not None:  # may raise (optuna.TrialPruned) to stop this run
                            self.on_evaluate(step, metrics)
                        value = metrics[cfg.metric_for_best]
                        state["history"].append({"step": step, "epoch": round(epoch_pos, 4),
                                                 "elapsed_seconds": round(state["train_seconds"], 2),
                                                 "dev": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
                        if state["best_metric"] is None or value > state["best_metric"]:
                            state["best_metric"], state["best_step"], state["bad_evals"] = value, step, 0
                            self.ckpt.save_best(self.model, {"step": step, cfg.metric_for_best: value})
                        else:
                            state["bad_evals"] += 1
                            if cfg.early_stopping_patience and state["bad_evals"] >= cfg.early_stopping_patience:
                                log.info("early stopping: %s did not improve for %d evaluations",
                                         cfg.metric_for_best, state["bad_evals"])
                                state["stopped_early"] = done = True
                    if should_eval or (cfg.save_every_steps and step % cfg.save_every_steps == 0) or done:
                        state["train_seconds"] = time.perf_counter() - t_start
                        self.ckpt.save_latest(self.model, optimizer, scheduler, state,
                                              self.method.training_state(self.model) or None)
                        if not self.has_dev:
                            self.ckpt.save_best(self.model, {"step": step})
                            state["best_step"] = step
        finally:
            logger.close()
        seconds = time.perf_counter() - t_start
        best = self.ckpt.best()
        if best is not None:
            CheckpointManager.load_weights(self.model, best)
        return TrainResult(seconds=seconds, samples_per_second=state["samples_seen"] / max(seconds, 1e-9),
                           global_step=state["global_step"], epochs_completed=state["samples_seen"] / max(len(self.features), 1),
                           best_step=state["best_step"], best_metric=state["best_metric"],
                           stopped_early=state["stopped_early"], bf16=bf16, threads=threads, history=state["history"])
