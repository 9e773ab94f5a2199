"""Few-shot classification, SetFit-style: contrastive tuning of the sentence-embedding body, then a linear head.

SetFit (Tunstall et al. 2022) tunes a sentence-transformer so texts of one class
embed close together, then fits logistic regression on the embeddings. This
module keeps that idea and changes how pairs are made, for speed and memory:

* **In-batch pairs, not pair lists.** SetFit materialises a list of (text_a,
  text_b) pairs — O(n^2) pairs for the "unique" strategy, which runs out of
  memory as data grows (setfit #472, #628) — and encodes *both* texts of every
  pair, so B pairs cost 2B forward passes. Here a step draws B *distinct*
  texts, stratified by `PairBudgetSampler` (P classes x M texts each, so every
  text has positives in its batch), and the loss uses all B(B-1)/2 pairs among
  them: B forward passes give ~B^2/2 pairs. The sampler keeps only per-class
  index lists (O(n) state) and draws batches lazily, so memory does not depend
  on the pair budget or grow with the number of pairs.
* **Pair budget.** `fewshot.pair_budget` pairs per contrastive epoch, whatever
  the data size: steps = ceil(budget x epochs / (B(B-1)/2)); time and memory
  stay bounded when the training set grows 10x.
* **Loss.** `cosine` (default) is SetFit's CosineSimilarityLoss — regress
  cos(a, b) to 1 for same-class pairs and 0 otherwise — over all in-batch pairs,
  with positives and negatives weighted equally (a batch of many classes is
  mostly negatives; SetFit's oversampling balances the two the same way). It
  keeps SetFit's geometry, which is what the logistic-regression head expects.
  `supcon` is supervised contrastive loss (Khosla et al. 2020), the other
  natural in-batch objective. Both are a few lines on the similarity matrix;
  sentence-transformers' losses take texts or pairs through its own model
  class, not an embedding matrix of our PooledClassifier, hence our own code.
* **Head.** scikit-learn LogisticRegression on the tuned (L2-normalised, as
  all-MiniLM-L6-v2 and SetFit normalise) embeddings, copied exactly into the
  PooledClassifier's linear layer: softmax(W e + b) *is* the fitted model's
  predict_proba, so predictions and probabilities come from the same logits and
  the saved label map (the setfit #462 predict/predict_proba disagreement cannot
  happen). Optional `head_epochs` of end-to-end cross-entropy afterwards.
  C defaults to 100, not sklearn's 1: on unit-length embeddings C=1 underfits
  many classes (banking77, 8 per class, seed 42: 78.1 % at C=1, 83.3 % at C=100
  on the same tuned body; 79.7 % vs 84.4 % on the frozen body).
* **Budget default.** all-MiniLM-L6-v2 is already a contrastively trained
  sentence encoder, so a few dozen steps suffice: on banking77 8-shot (C=1)
  11 steps scored 79.1 %, 202 steps 78.1 %; the default budget (20,000 pairs,
  41 steps of 32 texts) keeps the body close to its pretrained geometry.
* **Early stopping** on dev (`fewshot.early_stopping_patience`): every
  `eval_steps` the head is refitted and dev scored; the best body is kept.

Dynamic padding (each batch padded to its longest text) and the run's
`train.max_length` keep each forward pass short. Saved with
`PooledClassifier.save` (`kind: pooled_classifier`), which `model_io` reloads.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from domaintune.methods.base import FitContext, Method
from domaintune.methods.pooled_head import PooledClassifier, build_pooled_classifier
from domaintune.training.loop import TrainResult, set_threads

log = logging.getLogger("domaintune")


class PairBudgetSampler:
    """Batches of distinct training indices, `steps` of them, stratified by class; O(n) state.

    Each batch takes `per_class` texts from each of `batch_size // per_class`
    classes (classes visited in a reshuffled cycle, texts of a class in a
    reshuffled cycle too, so every text is used before any repeats). A class
    with fewer texts than `per_class` gives all it has; remaining slots are
    filled from further classes. Nothing but the per-class index lists and two
    cursors per class is stored: no pair is ever materialised.
    """

    def __init__(self, keys: Sequence, batch_size: int, per_class: int, steps: int, seed: int):
        if batch_size < 2:
            raise ValueError("fewshot.batch_size must be >= 2 (pairs are formed inside a batch)")
        by_key: dict = defaultdict(list)
        for i, k in enumerate(keys):
            by_key[k].append(i)
        self.groups = [by_key[k] for k in sorted(by_key, key=str)]   # O(n) ints in total
        self.batch_size = min(batch_size, len(keys))
        self.per_class = max(1, per_class)
        self.steps = steps
        self.seed = seed

    @property
    def pairs_per_step(self) -> int:
        return self.batch_size * (self.batch_size - 1) // 2

    def state_size(self) -> int:
        """Integers held by the sampler (for the memory-flatness test): n, whatever the budget."""
        return sum(len(g) for g in self.groups)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed)
        groups = [list(g) for g in self.groups]
        cursor = [len(g) for g in groups]                 # exhausted: reshuffle before the first draw
        class_order: list[int] = []

        def draw(c: int, n: int) -> list[int]:
            out = []
            while len(out) < n:
                if cursor[c] >= len(groups[c]):
                    rng.shuffle(groups[c])
                    cursor[c] = 0
                take = groups[c][cursor[c]:cursor[c] + n - len(out)]
                cursor[c] += len(take)
                out.extend(i for i in take if i not in out)
                if len(set(groups[c])) <= len(out):    # the class has no more distinct texts
                    break
            return out

        for _ in range(self.steps):
            batch: list[int] = []
            seen: set[int] = set()
            used_classes = 0
            while len(batch) < self.batch_size and used_classes < len(groups) * 2:
                if not class_order:
                    class_order = list(range(len(groups)))
                    rng.shuffle(class_order)
                c = class_order.pop()
                used_classes += 1
                want = min(self.per_class, self.batch_size - len(batch))
                for i in draw(c, want):
                    if i not in seen:
                        seen.add(i)
                        batch.append(i)
            yield batch


def pair_targets(labels: torch.Tensor) -> torch.Tensor:
    """1 where two texts share a class (multi-label: share any label), else 0; [B, B] float."""
    if labels.dim() == 1:
        return (labels[:, None] == labels[None, :]).float()
    y = labels.float()
    return ((y @ y.T) > 0).float()


def cosine_pair_loss(emb: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """SetFit's CosineSimilarityLoss over all in-batch pairs i<j, positives and negatives weighted equally."""
    e = nn.functional.normalize(emb, dim=-1)
    sim = e @ e.T
    upper = torch.triu(torch.ones_like(sim, dtype=torch.bool), diagonal=1)
    err = (sim - same) ** 2
    pos, neg = upper & (same > 0.5), upper & (same <= 0.5)
    parts = [err[m].mean() for m in (pos, neg) if m.any()]
    return sum(parts) / len(parts)


def supcon_loss(emb: torch.Tensor, same: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out) over the batch; anchors without a positive skip."""
    e = nn.functional.normalize(emb, dim=-1)
    logits = e @ e.T / temperature
    eye = torch.eye(len(e), dtype=torch.bool)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = same.bool() & ~eye
    has = pos.any(1)
    if not has.any():
        return emb.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(1) / pos.sum(1).clamp(min=1))
    return per_anchor[has].mean()


@torch.inference_mode()
def embed_features(model: PooledClassifier, features: list[dict], collate, pad_id: int, batch_size: int) -> np.ndarray:
    """Embeddings as the classifier sees them (mean-pooled, normalised if the model normalises), input order."""
    from domaintune.training.batching import inference_batches

    model.eval()
    out = np.zeros((len(features), model.encoder.config.hidden_size), dtype=np.float32)
    lengths = [len(f["input_ids"]) for f in features]
    for idx in inference_batches(lengths, batch_size):
        batch = collate([{k: v for k, v in features[i].items() if k != "labels"} for i in idx], pad_id)
        batch.pop("labels", None)
        out[idx] = model.embed(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")).numpy()
    return out


def fit_linear_head(model: PooledClassifier, x: np.ndarray, y: np.ndarray, c: float, seed: int) -> None:
    """Fit scikit-learn logistic regression on (x, y) and copy it into `model.classifier` exactly.

    Single-label: multinomial LR, so softmax(W x + b) equals its predict_proba
    (binary: row 0 is zero, row 1 the LR weights, so softmax = sigmoid). A class
    absent from `y` gets a bias of -30 (never predicted). Multi-label: one binary
    LR per label (sigmoid per label), a constant logit for a label that is always
    or never present.
    """
    from sklearn.linear_model import LogisticRegression

    n_out, dim = model.classifier.out_features, x.shape[1]
    w = np.zeros((n_out, dim), dtype=np.float64)
    b = np.full(n_out, -30.0)
    if model.problem == "multi_label":
        for j in range(n_out):
            col = y[:, j] > 0.5
            if col.all() or not col.any():
                b[j] = 30.0 if col.all() else -30.0
                continue
            lr = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x, col.astype(int))
            w[j], b[j] = lr.coef_[0], lr.intercept_[0]
    else:
        classes = np.unique(y)
        if len(classes) == 1:
            b[classes[0]] = 0.0
        else:
            lr = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x, y)
            if len(lr.classes_) == 2:
                w[lr.classes_[1]], b[lr.classes_[1]] = lr.coef_[0], lr.intercept_[0]
                w[lr.classes_[0]], b[lr.classes_[0]] = 0.0, 0.0
            else:
                w[lr.classes_], b[lr.classes_] = lr.coef_, lr.intercept_
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(w / model.scale).float())
        model.classifier.bias.copy_(torch.from_numpy(b / model.scale).float())


class FewShot(Method):
    name = "fewshot"
    uses_probe_init = False  # the head is fitted after the contrastive body training, not before

    def configure(self, cfg) -> None:
        from domaintune.tasks import get_task, task_names_where

        self.cfg = cfg
        self.fs = cfg.fewshot
        # The model is a classifier head over one text's pooled embedding: the task must declare one.
        if get_task(cfg.task).pooled_head_problem is None:
            supported = task_names_where(lambda t: t.pooled_head_problem is not None)
            raise ValueError(f"method fewshot supports task {' or '.join(supported)}, not {cfg.task!r}; "
                             f"use method: full (or lora) for {cfg.task}")
        from domaintune.training.robust import robust_active

        if robust_active(cfg.robust) and self.fs.head_epochs == 0:
            # the contrastive body phase and the closed-form head have no cross-entropy step to perturb
            log.warning("robust (adversarial / R-Drop) acts only in few-shot's end-to-end phase, which is off "
                        "(fewshot.head_epochs = 0): it has no effect on this run; set fewshot.head_epochs >= 1 or "
                        "remove the robust section")

    def settings(self) -> dict:
        return {"fewshot": self.fs.model_dump(), **getattr(self, "_fit_info", {})}

    def default_search_space(self, cfg) -> dict[str, dict]:
        """SetFit's knobs: how many pairs, the contrastive learning rate and epochs, the batch size."""
        return {"fewshot.pair_budget": {"choices": [2000, 5000, 10000, 20000]},
                "fewshot.contrastive_lr": {"low": 5e-6, "high": 1e-4, "log": True},
                "fewshot.contrastive_epochs": {"low": 0.5, "high": 2.0},
                "fewshot.batch_size": {"choices": [8, 16, 32]}}

    def build(self, task, model_dir, cfg):
        return build_pooled_classifier(model_dir, len(task.labels), normalize=self.fs.normalize,
                                       problem=task.pooled_head_problem)

    def prepare(self, model, task=None):
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    # ---- contrastive body training + head
    def _steps(self, sampler: PairBudgetSampler, max_steps: int | None) -> int:
        steps = max(1, math.ceil(self.fs.pair_budget * self.fs.contrastive_epochs / max(sampler.pairs_per_step, 1)))
        return min(steps, max_steps) if max_steps else steps

    def _fit_head(self, model: PooledClassifier, run: FitContext, feats: list[dict], y: np.ndarray) -> float:
        t0 = time.perf_counter()
        x = embed_features(model, feats, run.task.collate, run.pad_id, run.cfg.train.eval_batch_size)
        fit_linear_head(model, x, y, self.fs.head_c, run.cfg.train.seed)
        return time.perf_counter() - t0

    def fit(self, model: PooledClassifier, run: FitContext) -> TrainResult:
        from transformers import get_linear_schedule_with_warmup

        from domaintune.training.progress import TrainingLogger

        fs, tcfg = self.fs, run.train_cfg
        threads = set_threads(tcfg.num_threads)
        feats = run.features["train"]
        if not feats:
            raise ValueError("method fewshot: the training split is empty")
        labels = [f["labels"] for f in feats]
        multi = isinstance(labels[0], (list, tuple))
        y = np.asarray(labels, dtype=np.float32 if multi else np.int64)
        # Stratify by class; multi-label: by the rarest label of each text ("[]" for none).
        if multi:
            freq = y.sum(0)
            keys = [int(min(np.flatnonzero(r), key=lambda j: (freq[j], j))) if r.any() else -1 for r in y]
        else:
            keys = labels
        probe = PairBudgetSampler(keys, fs.batch_size, fs.samples_per_class, 1, tcfg.seed)
        steps = self._steps(probe, tcfg.max_steps)
        sampler = PairBudgetSampler(keys, fs.batch_size, fs.samples_per_class, steps, tcfg.seed)
        label_t = torch.tensor(y)

        params = [p for p in model.encoder.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=fs.contrastive_lr, weight_decay=tcfg.weight_decay)
        scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(fs.warmup_ratio * steps), steps)
        has_dev = bool(run.splits.dev) and fs.early_stopping_patience is not None
        eval_steps = fs.eval_steps or max(1, steps // 10)
        metric = tcfg.metric_for_best
        on_evaluate = run.extra.get("on_evaluate")
        if run.resume:
            log.info("method fewshot trains in minutes and keeps no resumable checkpoint: starting from the beginning")

        torch.manual_seed(tcfg.seed)
        logger = TrainingLogger(run.run_dir, steps)
        history, best, best_state, best_step, bad, stopped = [], None, None, None, 0, False
        t_start, c_start = time.perf_counter(), time.process_time()
        seen, window_loss, window_n, window_steps, window_t = 0, 0.0, 0, 0, time.perf_counter()
        step = 0
        model.train()
        try:
            for step, idx in enumerate(sampler, start=1):
                batch = run.task.collate([{k: v for k, v in feats[i].items() if k != "labels"} for i in idx], run.pad_id)
                emb = model.embed(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
                same = pair_targets(label_t[idx])
                loss = (cosine_pair_loss(emb, same) if fs.loss == "cosine"
                        else supcon_loss(emb, same, fs.temperature))
                loss.backward()
                if tcfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, tcfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                seen += len(idx)
                window_loss += loss.item()
                window_n += len(idx)
                window_steps += 1
                if step % tcfg.log_every == 0 or step == steps:
                    now = time.perf_counter()
                    logger.step(step, step / steps, window_loss / window_steps, scheduler.get_last_lr()[0],
                                window_n / max(now - window_t, 1e-9))
                    window_loss, window_n, window_steps, window_t = 0.0, 0, 0, now
                if has_dev and (step % eval_steps == 0 or step == steps):
                    self._fit_head(model, run, feats, y)
                    metrics = run.evaluate_dev(model)
                    model.train()
                    logger.evaluation(step, step / steps, metrics)
                    if on_evaluate is not None:
                        on_evaluate(step, metrics)
                    history.append({"step": step, "epoch": round(step / steps, 4),
                                    "elapsed_seconds": round(time.perf_counter() - t_start, 2),
                                    "dev": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
                    if best is None or metrics[metric] > best:
                        best, best_step, bad = metrics[metric], step, 0
                        best_state = copy.deepcopy(model.encoder.state_dict())
                    else:
                        bad += 1
                        if bad >= fs.early_stopping_patience:
                            log.info("few-shot early stopping: dev %s did not improve for %d evaluations", metric, bad)
                            stopped = True
                            break
        finally:
            logger.close()
        if best_state is not None and best_step != step:
            model.encoder.load_state_dict(best_state)
        head_seconds = self._fit_head(model, run, feats, y)
        if fs.head_epochs > 0:  # optional end-to-end cross-entropy from the fitted head (train.lr)
            e2e_cfg = tcfg.model_copy(update={"epochs": float(fs.head_epochs), "max_steps": None,
                                              "early_stopping_patience": None})
            model.train()
            run.trainer(model, self, train_cfg=e2e_cfg).train()
        seconds = time.perf_counter() - t_start
        self._fit_info = {"contrastive_steps": step, "texts_per_step": sampler.batch_size,
                          "pairs_per_step": sampler.pairs_per_step, "pairs_seen": step * sampler.pairs_per_step,
                          "head_fit_seconds": round(head_seconds, 2),
                          # process CPU time of fit (all threads): comparable across runs on a shared machine
                          "fit_cpu_seconds": round(time.process_time() - c_start, 2)}
        model.eval()
        return TrainResult(seconds=seconds, samples_per_second=seen / max(seconds, 1e-9), global_step=step,
                           epochs_completed=seen / len(feats), best_step=best_step if has_dev else step,
                           best_metric=best, stopped_early=stopped, bf16=False, threads=threads, history=history)

    def save(self, model: PooledClassifier, task, tokenizer, out_dir) -> None:
        model.save(tokenizer, out_dir, method="fewshot")
