"""Multi-label classification: every text may carry any number of labels (0, 1 or several).

Typical industrial case: a maintenance ticket that is both an equipment fault
and a safety hazard (`设备故障|安全隐患`). The model is a plain
`AutoModelForSequenceClassification` with `problem_type="multi_label_classification"`
(one sigmoid per label, binary cross-entropy on float multi-hot targets), so a
run reloads with transformers alone and `torch.sigmoid(logits)` gives the scores.

Labels in a file: a delimited string (`data.label_separator`, default `|`:
`设备故障|安全隐患`) or a JSON list (any cell starting with `[`:
`["设备故障", "安全隐患"]`). A text with no label is allowed and written as `[]`
(an empty cell is still an error, as for every task, because it is far more often
a forgotten label than a deliberate "none"); such rows teach the model to say
nothing, and a prediction may likewise be empty.

Decisions: each label has its own threshold, tuned on dev after training to
maximise that label's F1 (`calibrate`; 0.5 for labels without a positive dev
row, and 0.5 for all labels while training) and saved in task.json: rare labels
usually need thresholds well below 0.5. Metrics: `micro_f1` (the default metric),
`macro_f1`, `subset_accuracy` (the whole label set right) and a per-label report.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_recall_fscore_support
from transformers import AutoModelForSequenceClassification

from domaintune.data.readers import Example, Problem
from domaintune.evaluation.markdown import md_cell
from domaintune.tasks.base import EvalContext
from domaintune.tasks.classification import ClassificationTask, sequence_model_kwargs

DEFAULT_THRESHOLD = 0.5


def parse_labels(raw: str | None, separator: str = "|") -> tuple[str, ...]:
    """One cell as a label tuple (order kept, duplicates dropped); ValueError says what is wrong.

    `a|b` (with `separator`), `["a", "b"]` or `[]` for no label. Blank pieces of
    a delimited cell (`a||b`, a trailing `|`) are ignored.
    """
    if raw is None:
        raise ValueError("no label cell")
    text = raw.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"label cell starts with '[' but is not a JSON list: {e.msg}") from None
        if not isinstance(items, list) or not all(isinstance(x, str) and x.strip() for x in items):
            raise ValueError(f"JSON label list must hold non-empty strings, got {text[:60]!r}")
        labels = [x.strip() for x in items]
        bad = [x for x in labels if separator and separator in x]
        if bad:
            raise ValueError(f"label {bad[0]!r} contains the separator {separator!r}, so predictions could not be split")
    else:
        labels = [x.strip() for x in (text.split(separator) if separator else [text])]
        labels = [x for x in labels if x]
        if not labels:
            raise ValueError(f"label cell {text!r} holds no label")
    return tuple(dict.fromkeys(labels))


def tune_thresholds(probs: np.ndarray, y: np.ndarray, default: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-label threshold that maximises that label's F1 on (probs, y); `default` where y has no positive.

    A label's rows are ranked by score and every cut between two distinct
    scores is tried; the threshold is the midpoint of the cut, so it is not
    glued to one dev example's score. Ties in F1 keep the higher threshold.
    """
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y) > 0.5
    out = np.full(probs.shape[1], default, dtype=np.float64)
    for j in range(probs.shape[1]):
        positives = int(y[:, j].sum())
        if positives == 0:
            continue
        order = np.argsort(-probs[:, j], kind="stable")
        s, t = probs[order, j], y[order, j]
        f1 = 2 * np.cumsum(t) / (np.arange(1, len(s) + 1) + positives)
        cut_ok = np.r_[s[:-1] > s[1:], True]  # cannot cut between equal scores
        best = int(np.argmax(np.where(cut_ok, f1, -1.0)))
        out[j] = (s[best] + (s[best + 1] if best + 1 < len(s) else 0.0)) / 2
    return out


def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict:
    """micro/macro/weighted F1, subset accuracy, Hamming loss and a per-label report (scikit-learn)."""
    y_true, y_pred = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    if len(y_true) == 0:
        return {"micro_f1": 0.0, "macro_f1": 0.0, "subset_accuracy": 0.0, "n": 0, "per_class": {}}
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, average="micro", zero_division=0)
    return {
        "micro_f1": float(mf), "micro_precision": float(mp), "micro_recall": float(mr),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        "hamming_loss": float(hamming_loss(y_true, y_pred)),
        "n": int(len(y_true)),
        "per_class": {labels[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i in range(len(labels))},
    }


class MultiLabelTask(ClassificationTask):
    name = "multilabel"
    default_metric = "micro_f1"
    headline = ("micro_f1", "macro_f1", "subset_accuracy")
    supports_probe_init = False  # the LP-FT probe fits a softmax head; a sigmoid head starts at random
    label_dtype = torch.float32  # BCE wants multi-hot floats
    output_kind = "labels"
    output_activation = "sigmoid"
    explain_refusal = None
    peft_task_type = "SEQ_CLS"
    pooled_head_problem = "multi_label"
    k_shot_classes = "label_set"
    augmentable = True
    prunable = True
    onnx_exportable = True
    labels_from_model_config = False  # task.json has always held a multi-label run's labels and thresholds
    supports_continual = False  # continual learning grows a softmax head

    def __init__(self) -> None:
        super().__init__()
        self.separator = "|"
        self.thresholds: dict[str, float] = {}

    # ---- data
    def read(self, path, data_cfg, problems):
        self.separator = getattr(data_cfg, "label_separator", None) or "|"
        out = []
        for ex in super().read(path, data_cfg, problems):
            if ex.label is None:  # prediction inputs have no label
                out.append(ex)
                continue
            try:
                out.append(replace(ex, extra=parse_labels(ex.label, self.separator)))
            except ValueError as e:
                problems.append(Problem(ex.source, ex.line, str(e),
                                        f'write labels as a{self.separator}b, or as a JSON list ["a", "b"] ([] for none)'))
        return out

    def label_set(self, ex: Example) -> tuple[str, ...]:
        return ex.extra if isinstance(ex.extra, tuple) else parse_labels(ex.label, self.separator)

    def split(self, examples, fraction, seed):
        """Seeded random hold-out that never leaves a label with fewer than 2 training rows.

        Not iterative stratification (Sechidis et al. 2011): rows are taken in a
        shuffled order and skipped when holding them out would starve a label,
        which is enough to keep every held-out label trainable.
        """
        if fraction <= 0:
            return list(examples), []
        idx = list(range(len(examples)))
        random.Random(seed).shuffle(idx)
        left = Counter(l for ex in examples for l in self.label_set(ex))
        want, held = round(len(examples) * fraction), set()
        for i in idx:
            if len(held) >= want:
                break
            labels = self.label_set(examples[i])
            if all(left[l] > 2 for l in labels):
                held.add(i)
                left.subtract(labels)
        return ([ex for i, ex in enumerate(examples) if i not in held],
                [ex for i, ex in enumerate(examples) if i in held])

    def check(self, train, others, problems: list[Problem]) -> None:
        first: dict[str, Example] = {}
        counts: Counter = Counter()
        for ex in train:
            for l in self.label_set(ex):
                counts[l] += 1
                first.setdefault(l, ex)
        if train and not counts:
            problems.append(Problem(train[0].source, None, "no training row has a label",
                                    "give each row its labels, e.g. 设备故障|安全隐患"))
        for label, n in sorted(counts.items()):
            if n < 2:
                problems.append(Problem(first[label].source, first[label].line, f"label {label!r} has only {n} training example",
                                        "add at least one more example with this label, or merge/remove it"))
        for role, exs in others.items():
            unseen: dict[str, list[Example]] = defaultdict(list)
            for ex in exs:
                for l in self.label_set(ex):
                    if l not in counts:
                        unseen[l].append(ex)
            for label, rows in sorted(unseen.items()):
                shown = ", ".join(str(r.line) for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
                problems.append(Problem(rows[0].source, rows[0].line,
                                        f"{role} label {label!r} never appears in train ({len(rows)} row(s), lines {shown})",
                                        "add training examples with this label, fix its spelling, or drop it from these rows"))

    def fit(self, train: list[Example]) -> None:
        self.labels = sorted({l for ex in train for l in self.label_set(ex)})
        self.thresholds = {l: DEFAULT_THRESHOLD for l in self.labels}

    def state(self) -> dict:
        return {"labels": list(self.labels), "separator": self.separator,
                "thresholds": {l: float(self.thresholds.get(l, DEFAULT_THRESHOLD)) for l in self.labels}}

    def load_state(self, state: dict) -> None:
        self.labels = list(state.get("labels", []))
        self.separator = state.get("separator") or "|"
        saved = state.get("thresholds") or {}
        self.thresholds = {l: float(saved.get(l, DEFAULT_THRESHOLD)) for l in self.labels}

    def check_known(self, examples, problems):
        known = set(self.labels)
        for ex in examples:
            unknown = [l for l in self.label_set(ex) if l not in known]
            if unknown:
                problems.append(Problem(ex.source, ex.line, f"label {unknown[0]!r} is not one the model was trained on",
                                        f"use labels from {self.labels[:10]}{' ...' if len(self.labels) > 10 else ''}"))

    def targets(self, examples: Sequence[Example]) -> list[list[float]]:
        l2i = {l: i for i, l in enumerate(self.labels)}
        out = []
        for ex in examples:
            row = [0.0] * len(self.labels)
            for l in self.label_set(ex):
                row[l2i[l]] = 1.0
            out.append(row)
        return out

    # ---- model
    def build_model(self, model_dir, dropout=None):
        return AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), num_labels=len(self.labels), problem_type="multi_label_classification",
            id2label=dict(enumerate(self.labels)), label2id={l: i for i, l in enumerate(self.labels)},
            dtype=torch.float32, weights_only=True, **sequence_model_kwargs(dropout))


    # ---- scoring
    def probs(self, model, features, ctx: EvalContext) -> np.ndarray:
        if not features:
            return np.zeros((0, len(self.labels)))
        return torch.sigmoid(self.logits(model, features, ctx)).numpy()

    def threshold_vector(self) -> np.ndarray:
        return np.array([self.thresholds.get(l, DEFAULT_THRESHOLD) for l in self.labels], dtype=np.float64)

    def evaluate(self, model, examples, features, ctx):
        y = np.array([f["labels"] for f in features]).reshape(len(features), len(self.labels))
        return multilabel_metrics(y, self.probs(model, features, ctx) >= self.threshold_vector(), self.labels)

    def calibrate(self, model, examples, features, ctx):
        """Per-label thresholds that maximise each label's F1 on dev; 0.5 for labels absent from dev."""
        if not features:
            return {}
        y = np.array([f["labels"] for f in features]).reshape(len(features), len(self.labels))
        probs = self.probs(model, features, ctx)
        before = multilabel_metrics(y, probs >= DEFAULT_THRESHOLD, self.labels)["micro_f1"]
        tuned = tune_thresholds(probs, y)
        self.thresholds = {l: float(t) for l, t in zip(self.labels, tuned)}
        after = multilabel_metrics(y, probs >= tuned, self.labels)["micro_f1"]
        return {"thresholds": dict(self.thresholds), "dev_micro_f1_at_0.5": before, "dev_micro_f1_tuned": after,
                "untuned_labels": [l for l, n in zip(self.labels, y.sum(0)) if n == 0]}

    def baselines(self, model_dir, splits, features, ctx, seed):
        """`majority`: the most frequent label set of train (possibly none) for every row;
        `frozen_linear`: one-vs-rest logistic regression on frozen mean-pooled embeddings,
        thresholds tuned on dev like the fine-tuned model."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier

        from domaintune.evaluation.baseline import embed

        y = {k: np.array(self.targets(getattr(splits, k))).reshape(-1, len(self.labels)) for k in ("train", "dev", "test")}
        common = Counter(tuple(sorted(set(self.label_set(ex)))) for ex in splits.train).most_common(1)[0][0]
        majority = multilabel_metrics(y["test"], np.tile([l in common for l in self.labels], (len(y["test"]), 1)), self.labels)
        majority["predicted_label"] = self.separator.join(common) or "(no label)"
        train_f, train_y = features["train"], y["train"]
        if len(train_f) > 20000:  # bound the cost on very large sets, as the classification baseline does
            keep = sorted(np.random.default_rng(seed).choice(len(train_f), 20000, replace=False).tolist())
            train_f, train_y = [train_f[i] for i in keep], train_y[keep]
        clf = OneVsRestClassifier(LogisticRegression(max_iter=2000, C=10.0))
        clf.fit(embed(model_dir, train_f, ctx.pad_id), train_y)
        thresholds = np.full(len(self.labels), DEFAULT_THRESHOLD)
        if features["dev"]:
            thresholds = tune_thresholds(clf.predict_proba(embed(model_dir, features["dev"], ctx.pad_id)), y["dev"])
        test_probs = clf.predict_proba(embed(model_dir, features["test"], ctx.pad_id))
        frozen = multilabel_metrics(y["test"], test_probs >= thresholds, self.labels)
        frozen["train_examples"] = len(train_f)
        return {"majority": majority, "frozen_linear": frozen}

    # ---- prediction
    def predict(self, model, examples, features, ctx, top_k=1):
        return self.decode_probs(self.probs(model, features, ctx))

    def decode_probs(self, probs: np.ndarray) -> list[dict]:
        """Every label at or above its threshold, best first; `label` joins them for one CSV cell ("" for none)."""
        thr = self.threshold_vector()
        out = []
        for row in np.asarray(probs, dtype=np.float64):
            chosen = sorted((i for i in range(len(self.labels)) if row[i] >= thr[i]), key=lambda i: -row[i])
            out.append({"labels": [{"label": self.labels[i], "score": float(row[i])} for i in chosen],
                        "label": self.separator.join(self.labels[i] for i in chosen),
                        "scores": {l: float(p) for l, p in zip(self.labels, row)}})
        return out

    def output_fields(self, prediction: dict) -> dict:
        return {"labels": prediction.get("label"), "scores": prediction.get("scores")}

    def format_prediction(self, prediction: dict) -> str:
        chosen = prediction.get("labels") or []
        head = prediction.get("label") or "(no label above its threshold)"
        best = sorted((prediction.get("scores") or {}).items(), key=lambda kv: -kv[1])[:5]
        return head + "\n  " + ", ".join(f"{l} {s:.3f}" + (" *" if l in {c['label'] for c in chosen} else "") for l, s in best)

    # ---- report
    def report_lines(self, metrics: dict) -> list[str]:
        cal = metrics.get("calibration") or {}
        if not cal.get("thresholds"):
            return []
        lines = ["## Decision thresholds (tuned on dev)", "",
                 f"Each label is predicted when its sigmoid score reaches its own threshold, chosen to maximise that "
                 f"label's F1 on dev (0.5 where dev has no example of the label). Dev micro-F1: "
                 f"{100 * cal.get('dev_micro_f1_at_0.5', 0):.2f} at 0.5, {100 * cal.get('dev_micro_f1_tuned', 0):.2f} tuned.",
                 "", "| label | threshold |", "|---|---|"]
        lines += [f"| {md_cell(l)} | {t:.3f}{' (default)' if l in cal.get('untuned_labels', []) else ''} |"
                  for l, t in cal["thresholds"].items()]
        return lines + [""]
