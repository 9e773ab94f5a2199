"""Sentence pairs as a cross-encoder: both texts in one input, `[CLS] a [SEP] b [SEP]`.

A cross-encoder lets every token of one text attend to every token of the
other, which is what matching and similarity need (a bi-encoder compares two
fixed vectors). Pair data comes in two kinds, and the labels say which:

* **classification** (AFQMC: same question or not, 0/1; NLI labels): a
  `ClassificationTask` over the pair (accuracy, macro F1);
* **scoring** (STS-B: similarity 0-5): a `RegressionTask` over the pair
  (MAE, RMSE, R², Pearson, Spearman).

The mode is decided from the training labels: when (nearly) all are numbers
and they have non-integer values or more than `MAX_CLASSES` distinct values,
it is scoring, else classification. The decision and its reason are written
to `task.json` and the report. The pair task delegates to the chosen task by
composition, so both keep one implementation.

Besides the inner task's baselines, the report shows `frozen_cosine`: the
pretrained encoder used as a bi-encoder with no training at all (cosine of
the two embeddings), which is what a sentence-embedding model gives as it is
and what the cross-encoder has to beat.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from domaintune.data.readers import Example, Problem
from domaintune.tasks.base import Task
from domaintune.tasks.classification import ClassificationTask
from domaintune.tasks.regression import RegressionTask, check_numeric_labels, parse_number

log = logging.getLogger("domaintune")

#: More distinct integer labels than this means a score, not a class (a 1-100 rating, say).
MAX_CLASSES = 20
#: Share of numeric labels above which a few non-numbers are typos to report, not class names.
NUMERIC_SHARE = 0.95
#: Training pairs the frozen-encoder baseline is fitted on (bounded: each pair costs a forward pass).
BASELINE_MAX_TRAIN = 5000


def detect_mode(labels: list[str | None]) -> tuple[str, str]:
    """("scoring" | "classification", human-readable reason) from the raw training labels."""
    values = [parse_number(l) for l in labels]
    numbers = [v for v in values if v is not None]
    if not labels:
        return "classification", "no training labels"
    share = len(numbers) / len(labels)
    distinct = len(set(numbers))
    if share >= NUMERIC_SHARE and numbers:
        if any(not float(v).is_integer() for v in numbers):
            return "scoring", f"labels are numbers with non-integer values ({distinct} distinct, {min(numbers):g} to {max(numbers):g})"
        if distinct > MAX_CLASSES:
            return "scoring", f"labels are {distinct} distinct numbers (more than {MAX_CLASSES})"
        return "classification", f"labels are {distinct} distinct integers (at most {MAX_CLASSES}): treated as classes"
    return "classification", f"labels are {len(set(labels))} distinct class names"


class PairTask(Task):
    name = "pair"
    pair_input = True

    def __init__(self) -> None:
        self.inner: Task | None = None
        self.mode: str | None = None
        self.mode_reason = ""
        self._loss_cfg = None
        self._pending_labels: list[str] = []
        self.symmetric = False  # data.symmetric_pairs: train on both orders of each pair
        self.encoder_kind = "cross"  # data.pair_encoder: cross-encoder, or bi-encoder for scoring

    # ---- mode and delegation
    def _choose(self, mode: str, reason: str) -> None:
        self.mode, self.mode_reason = mode, reason
        if mode == "scoring" and self.encoder_kind == "bi":
            from domaintune.tasks.pair_biencoder import BiScoringTask

            self.inner = BiScoringTask()
        else:
            self.inner = RegressionTask() if mode == "scoring" else ClassificationTask()
        if self._loss_cfg is not None and isinstance(self.inner, RegressionTask):
            self.inner.configure(self._loss_cfg)

    def _ensure_mode(self, train: list[Example]) -> Task:
        if self.inner is None:
            self._choose(*detect_mode([ex.label for ex in train]))
        return self.inner

    def _need(self) -> Task:
        if self.inner is None:
            raise RuntimeError("pair task: the mode is not known yet (fit on training data or load task.json first)")
        return self.inner

    @property
    def labels(self) -> list[str]:  # type: ignore[override]
        return self.inner.labels if self.inner is not None else self._pending_labels

    @labels.setter
    def labels(self, value: list[str]) -> None:
        if self.inner is not None:
            self.inner.labels = value
        else:
            self._pending_labels = list(value)

    @property
    def default_metric(self) -> str:  # type: ignore[override]
        return self.inner.default_metric if self.inner is not None else "macro_f1"

    @property
    def headline(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.inner.headline if self.inner is not None else ClassificationTask.headline

    @property
    def supports_probe_init(self) -> bool:  # type: ignore[override]
        return self.inner.supports_probe_init if self.inner is not None else False

    @property
    def auto_class(self):  # type: ignore[override]
        return self._need().auto_class

    # ---- capabilities (tasks/base.py): some follow the mode the training labels chose
    peft_task_type = "SEQ_CLS"  # either mode is a sequence classification head over the pair
    pooled_head_problem = None  # a pooled head sees one text; the pair needs both in one input
    augmentable = False
    not_augmentable_reason = "its label is the relation between two texts, which edits can change"
    prunable = True
    onnx_exportable = True
    labels_from_model_config = False
    supports_continual = False

    @property
    def output_kind(self) -> str:  # type: ignore[override]
        return "value" if self.mode == "scoring" else "label"

    @property
    def output_activation(self) -> str:  # type: ignore[override]
        return "identity" if self.mode == "scoring" else "softmax"

    @property
    def explain_refusal(self) -> str | None:  # type: ignore[override]
        if self.encoder_kind == "bi":
            return ("explanations need a cross-encoder pair run (both texts in one input); this run is a "
                    "bi-encoder, which compares two separately encoded texts")
        return None

    @property
    def k_shot_classes(self) -> str | None:  # type: ignore[override]
        return "label" if self.mode == "classification" else None

    @property
    def described_as(self) -> str:
        return "pair classification" if self.mode == "classification" else "pair scoring (numeric labels)"

    def value_from_output(self, output: float) -> float:
        return self.inner.value_from_output(output) if self.inner is not None else float(output)

    def configure(self, cfg) -> None:
        self._loss_cfg = cfg
        self.symmetric = bool(getattr(getattr(cfg, "data", None), "symmetric_pairs", False))
        self.encoder_kind = getattr(getattr(cfg, "data", None), "pair_encoder", "cross") or "cross"
        if isinstance(self.inner, RegressionTask):
            self.inner.configure(cfg)

    # ---- data
    def read(self, path, data_cfg, problems: list[Problem]) -> list[Example]:
        if getattr(data_cfg, "text_pair_column", None) is None:
            problems.append(Problem(str(path), None, "task: pair needs a second text column",
                                    "set data.text_pair_column (e.g. sentence2, or 1 for a headerless file)"))
            return []
        return super().read(path, data_cfg, problems)

    def split(self, examples, fraction, seed):
        return self._ensure_mode(examples).split(examples, fraction, seed)

    def check(self, train, others, problems: list[Problem]) -> None:
        inner = self._ensure_mode(train)
        if self.encoder_kind == "bi" and self.mode != "scoring":
            problems.append(Problem(str(train[0].source) if train else "", None,
                                    f"data.pair_encoder: bi scores pairs, but the labels mean classification ({self.mode_reason})",
                                    "remove data.pair_encoder (a pair classifier is a cross-encoder) or give numeric scores"))
            return
        if self.mode == "scoring":  # a few non-numbers among numeric scores are typos: report each one
            check_numeric_labels(train, problems, "score")
            for exs in others.values():
                check_numeric_labels(exs, problems, "score")
            if [p for p in problems if not p.warning]:
                return
        inner.check(train, others, problems)

    def training_examples(self, train: list[Example]) -> list[Example]:
        """With `data.symmetric_pairs`, each pair also in swapped order (b, a): a cross-encoder
        sees `[CLS] a [SEP] b` and `[CLS] b [SEP] a` as different inputs, and a symmetric
        relation (similarity, same question) should not depend on the order. This is the
        sentence-transformers cross-encoder recipe for STS-B; it doubles the training steps."""
        if not self.symmetric or self.encoder_kind == "bi":  # a bi-encoder is symmetric by construction
            return train
        from dataclasses import replace

        return train + [replace(ex, text=ex.text_pair, text_pair=ex.text) for ex in train]

    def fit(self, train: list[Example]) -> None:
        self._ensure_mode(train).fit(train)

    def state(self) -> dict:
        return {"mode": self.mode, "mode_reason": self.mode_reason, "symmetric": self.symmetric,
                "pair_encoder": self.encoder_kind, **self._need().state()}

    def load_state(self, state: dict) -> None:
        mode = state.get("mode") or ("scoring" if "target" in state else "classification")
        self.encoder_kind = state.get("pair_encoder", "cross")
        self._choose(mode, state.get("mode_reason", ""))
        self.symmetric = bool(state.get("symmetric", False))
        self.inner.load_state(state)

    def check_known(self, examples, problems):
        self._need().check_known(examples, problems)

    # ---- model
    def build_model(self, model_dir, dropout=None):
        return self._need().build_model(model_dir, dropout)

    def load_model(self, model_dir):
        return self._need().load_model(model_dir)

    def save_model(self, model, tokenizer, out_dir: Path) -> None:
        self._need().save_model(model, tokenizer, out_dir)

    def encode(self, tokenizer, examples, max_length, with_targets=True):
        return self._need().encode(tokenizer, examples, max_length, with_targets)

    def collate(self, features, pad_id):
        return self._need().collate(features, pad_id)

    # ---- scoring and prediction
    def _symmetric_scores(self, model, examples, features, ctx):
        """Scoring mode with `symmetric_pairs`: the mean of the predictions for (a, b) and (b, a),
        so the score does not depend on the order the user happens to give (None otherwise)."""
        inner = self._need()
        if not (self.symmetric and isinstance(inner, RegressionTask)) or self.encoder_kind == "bi" or not examples:
            return None
        from dataclasses import replace

        swapped = inner.encode(ctx.tokenizer, [replace(ex, text=ex.text_pair, text_pair=ex.text) for ex in examples],
                               ctx.max_length, with_targets=False)
        return (inner.raw_predictions(model, features, ctx) + inner.raw_predictions(model, swapped, ctx)) / 2

    def evaluate(self, model, examples, features, ctx):
        scores = self._symmetric_scores(model, examples, features, ctx)
        if scores is None:
            return self._need().evaluate(model, examples, features, ctx)
        from domaintune.tasks.regression import regression_metrics

        y_true = [parse_number(ex.label) for ex in examples]
        self.inner.last_eval = {"y_true": list(y_true), "y_pred": scores.tolist()}
        return regression_metrics(y_true, scores)

    def calibrate(self, model, examples, features, ctx):
        return self._need().calibrate(model, examples, features, ctx)

    def baselines(self, model_dir, splits, features, ctx, seed):
        """The inner task's baselines; for classification the frozen probe fits on at most
        `BASELINE_MAX_TRAIN` pairs (a cross-encoded pair costs a forward pass each, and pair
        sets are large: AFQMC has 34k)."""
        inner = self._need()
        if not isinstance(inner, ClassificationTask):
            out = inner.baselines(model_dir, splits, features, ctx, seed)
        else:
            from domaintune.evaluation.baseline import frozen_linear_baseline, majority_baseline

            train_ids, test_ids = inner.targets(splits.train), inner.targets(splits.test)
            out = {"majority": majority_baseline(train_ids, test_ids, inner.labels),
                   "frozen_linear": frozen_linear_baseline(model_dir, features["train"], train_ids, features["test"],
                                                           test_ids, inner.labels, ctx.pad_id,
                                                           max_train=BASELINE_MAX_TRAIN, seed=seed)}
        try:  # an extra baseline must not cost the others
            cosine = self.cosine_baseline(model_dir, splits, ctx, seed)
        except Exception as e:  # noqa: BLE001
            log.warning("cosine baseline failed: %s", e)
            cosine = {}
        if cosine:
            out["frozen_cosine"] = cosine
        return out

    def cosine_baseline(self, model_dir, splits, ctx, seed: int, max_train: int = 2000) -> dict:
        """The pretrained encoder as a bi-encoder, no training: cosine of the two mean-pooled texts.

        What a user gets from the sentence-embedding model as it is. Scoring maps
        the cosine linearly onto the score scale (fitted on up to `max_train`
        train pairs, so MAE/R² are comparable; correlations are unaffected);
        classification picks the cosine threshold that is best on those train pairs.
        """
        import numpy as np

        from domaintune.evaluation.baseline import embed
        from domaintune.tasks.classification import encode_texts

        rng = np.random.default_rng(seed)
        train = splits.train
        if len(train) > max_train:
            train = [train[i] for i in sorted(rng.choice(len(train), max_train, replace=False).tolist())]

        def cosines(examples) -> np.ndarray:
            a = embed(model_dir, encode_texts(ctx.tokenizer, [Example(e.text, None) for e in examples], ctx.max_length), ctx.pad_id)
            b = embed(model_dir, encode_texts(ctx.tokenizer, [Example(e.text_pair, None) for e in examples], ctx.max_length),
                      ctx.pad_id)
            return (a * b).sum(1) / np.clip(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12, None)

        c_train, c_test = cosines(train), cosines(splits.test)
        inner = self._need()
        if isinstance(inner, RegressionTask):
            from domaintune.tasks.regression import regression_metrics

            slope, intercept = np.polyfit(c_train, [parse_number(e.label) for e in train], 1)
            m = regression_metrics([parse_number(e.label) for e in splits.test], slope * c_test + intercept)
            m["train_examples"] = len(train)
            return m
        from domaintune.evaluation.metrics import classification_metrics

        y_train, y_test = np.asarray(inner.targets(train)), inner.targets(splits.test)
        if len(inner.labels) != 2:
            return {}
        # Which class means "similar" is unknown from the names alone: try both orientations.
        def decide(c: np.ndarray, t: float, hi: int) -> np.ndarray:
            return np.where(c >= t, hi, 1 - hi)

        _, threshold, hi = max((float((decide(c_train, t, hi) == y_train).mean()), float(t), hi)
                               for t in np.unique(c_train) for hi in (1, 0))
        m = classification_metrics(y_test, decide(c_test, threshold, hi).tolist(), inner.labels)
        m["threshold"], m["similar_label"], m["train_examples"] = threshold, inner.labels[hi], len(train)
        return m

    def as_example(self, item: Any) -> Example:
        """A (text, text_pair) tuple, a dict with `text` and `text_pair`, or an Example."""
        ex = self._need().as_example(item)
        if ex.text_pair is None:
            raise ValueError("task: pair predicts on two texts: give (text, text_pair) or "
                             "{'text': ..., 'text_pair': ...}")
        return ex

    def predict(self, model, examples, features, ctx, top_k=1):
        scores = self._symmetric_scores(model, examples, features, ctx)
        if scores is None:
            return self._need().predict(model, examples, features, ctx, top_k)
        return [{"prediction": float(v)} for v in scores]

    def output_fields(self, prediction: dict) -> dict:
        return self._need().output_fields(prediction)

    def format_prediction(self, prediction: dict) -> str:
        return self._need().format_prediction(prediction)

    # ---- report
    def plots(self, run_dir: Path, metrics: dict) -> dict[str, str]:
        return self._need().plots(run_dir, metrics)

    def report_lines(self, metrics: dict) -> list[str]:
        kind = ("scoring (regression on the pair's score)" if self.mode == "scoring"
                else "classification (one class per pair)")
        lines = ["## Pair mode", "", f"Cross-encoder over (text, text_pair); mode **{kind}**: {self.mode_reason}.", ""]
        return lines + self._need().report_lines(metrics)
