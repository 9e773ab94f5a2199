"""Single-label text classification: softmax head, cross-entropy, accuracy/F1.

The model is a plain `AutoModelForSequenceClassification`, so a run reloads
with transformers alone. `encode`/`collate` here also serve the other
sequence-level tasks (multi-label, regression, pair), which subclass it.

Out-of-scope detection (`data.oos_label`, e.g. `oos` in CLINC150): rows with
that label are not an intent. OOS training rows, when there are any, become one
extra "none of these" class (last in the label list; never "unseen in train",
needs no minimum count), and the model abstains (`label: None`, with a
`reason`) when it predicts that class or when its top in-scope probability is
below a threshold tuned on dev, which must hold OOS rows. On CLINC150 this
beats dropping the OOS rows by 8 points of OOS recall at equal in-scope
accuracy (figures in `domaintune.evaluation.oos`, which also describes the
threshold objective and the metric keys); the threshold is saved in task.json.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import AutoModelForSequenceClassification

from domaintune.data.readers import Example, Problem
from domaintune.evaluation.markdown import md_code
from domaintune.evaluation.metrics import classification_metrics
from domaintune.tasks.base import EvalContext, Task
from domaintune.training.loop import predict_logits


def pad_batch(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence in this batch only (dynamic padding)."""
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    types = torch.zeros((len(features), width), dtype=torch.long) if "token_type_ids" in features[0] else None
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
        mask[i, :n] = 1
        if types is not None:
            types[i, :n] = torch.tensor(f["token_type_ids"], dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


def encode_texts(tokenizer, examples: Sequence[Example], max_length: int) -> list[dict]:
    """Token ids per example; a `text_pair` is encoded as a second segment (with token_type_ids)."""
    texts = [ex.text for ex in examples]
    pairs = [ex.text_pair for ex in examples] if examples and examples[0].text_pair is not None else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False,
                    return_attention_mask=False, return_token_type_ids=pairs is not None)
    out = [{"input_ids": ids} for ids in enc["input_ids"]]
    if pairs is not None and "token_type_ids" in enc:
        for o, t in zip(out, enc["token_type_ids"]):
            o["token_type_ids"] = t
    return out


def sequence_model_kwargs(dropout: float | None) -> dict[str, Any]:
    if dropout is None:
        return {}
    return {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout, "classifier_dropout": dropout}


OOS_HEADLINE = ("in_scope_accuracy", "oos_recall", "accuracy", "macro_f1")


class ClassificationTask(Task):
    name = "classification"
    auto_class = AutoModelForSequenceClassification
    default_metric = "macro_f1"
    headline = ("accuracy", "macro_f1", "weighted_f1")
    supports_probe_init = True
    pair_input = None  # a run trained with data.text_pair_column classifies (text, text_pair) pairs
    output_kind = "label"
    output_activation = "softmax"
    explain_refusal = None
    peft_task_type = "SEQ_CLS"
    pooled_head_problem = "single_label"
    k_shot_classes = "label"
    augmentable = True  # word/character edits rarely change what a text is about
    prunable = True
    onnx_exportable = True
    labels_from_model_config = True  # the head's classes are the label list (config.id2label)
    supports_continual = True
    #: dtype of the `labels` tensor: class ids for cross-entropy (multi-label overrides with floats for BCE).
    label_dtype = torch.long
    #: Out-of-scope label (data.oos_label) and the tuned abstain threshold; class-level
    #: defaults so subclasses that never use them need not call __init__.
    oos_label: str | None = None
    oos_threshold: float | None = None

    # ---- data
    def read(self, path, data_cfg, problems):
        if self.name == "classification":  # subclasses (pair, multilabel...) have their own label semantics
            self._set_oos(getattr(data_cfg, "oos_label", None))
        return super().read(path, data_cfg, problems)

    def _set_oos(self, label: str | None) -> None:
        self.oos_label = label or None
        if self.oos_label:
            self.headline = OOS_HEADLINE  # an instance attribute: report.md and `evaluate` show the OOS scores

    def split(self, examples, fraction, seed):
        from domaintune.data.splits import stratified_split

        return stratified_split(examples, fraction, seed)

    def check(self, train, others, problems: list[Problem]) -> None:
        from domaintune.data.splits import check_labels

        oos = self.oos_label
        if not oos:
            check_labels(train, others, problems)
            return
        # The OOS label is not a class: it needs no training rows and is never "unseen in train".
        check_labels([e for e in train if e.label != oos], {r: [e for e in exs if e.label != oos] for r, exs in others.items()},
                     problems)
        dev = others.get("dev") or []
        if dev and not any(e.label == oos for e in dev):
            problems.append(Problem(dev[0].source, None, f"dev has no {oos!r} (data.oos_label) rows, so the abstain threshold "
                                    "cannot be tuned: the model will never abstain",
                                    f"add out-of-scope examples labelled {oos!r} to dev (or to train, when dev is split "
                                    "from it)", warning=True))

    def fit(self, train: list[Example]) -> None:
        """The label space: sorted classes, and with data.oos_label the OOS class last (if train has OOS rows)."""
        oos = self.oos_label
        self.labels = sorted({ex.label for ex in train if ex.label != oos})
        if oos and any(ex.label == oos for ex in train):
            self.labels.append(oos)

    def state(self) -> dict:
        out = super().state()
        if self.oos_label:
            out.update(oos_label=self.oos_label, oos_threshold=self.oos_threshold)
        return out

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self._set_oos(state.get("oos_label"))
        self.oos_threshold = state.get("oos_threshold")

    def check_known(self, examples, problems):
        known = set(self.labels) | ({self.oos_label} if self.oos_label else set())
        for ex in examples:
            if ex.label not in known:
                problems.append(Problem(ex.source, ex.line, f"label {ex.label!r} is not one the model was trained on",
                                        f"use one of {self.labels[:10]}{' ...' if len(self.labels) > 10 else ''}"))

    def targets(self, examples: Sequence[Example]) -> list[int]:
        """Class ids; OOS rows get the OOS class id (one past the last class when train had none)."""
        l2i = {l: i for i, l in enumerate(self.labels)}
        if self.oos_label:
            l2i.setdefault(self.oos_label, len(self.labels))
        return [l2i[ex.label] for ex in examples]

    # ---- out-of-scope helpers: the OOS label is either the model's last class or a slot past it
    def _oos_class(self) -> int | None:
        """Index of the model's own OOS class, None when it was trained without OOS rows."""
        return len(self.labels) - 1 if self.oos_label and self.labels and self.labels[-1] == self.oos_label else None

    def _oos_names(self) -> list[str]:
        return list(self.labels) if self._oos_class() is not None else [*self.labels, self.oos_label]

    def _oos_id(self) -> int:
        return len(self._oos_names()) - 1

    # ---- model
    def build_model(self, model_dir, dropout=None):
        return AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), num_labels=len(self.labels), id2label=dict(enumerate(self.labels)),
            label2id={l: i for i, l in enumerate(self.labels)}, dtype=torch.float32,
            weights_only=True, **sequence_model_kwargs(dropout))  # a packaged .bin (m3e-small) must never run pickled code

    def encode(self, tokenizer, examples, max_length, with_targets=True):
        out = encode_texts(tokenizer, examples, max_length)
        if with_targets:
            for o, t in zip(out, self.targets(examples)):
                o["labels"] = t
        return out

    def collate(self, features, pad_id):
        batch = pad_batch(features, pad_id)
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=self.label_dtype)
        return batch

    # ---- scoring
    def logits(self, model, features, ctx: EvalContext) -> torch.Tensor:
        return predict_logits(model, features, self.collate, ctx.pad_id, ctx.batch_size, ctx.bf16)

    def evaluate(self, model, examples, features, ctx):
        y_true = [f["labels"] for f in features]
        logits = self.logits(model, features, ctx)
        if self.oos_label:  # before calibration the threshold is None: never abstain
            from domaintune.evaluation.oos import oos_metrics

            return oos_metrics(y_true, torch.softmax(logits, -1).numpy(), self.oos_threshold, self._oos_names(),
                               self._oos_id(), model_has_oos_class=self._oos_class() is not None)
        return classification_metrics(y_true, logits.argmax(-1).tolist(), self.labels)

    def calibrate(self, model, examples, features, ctx):
        """With data.oos_label: tune the abstain threshold on dev (see domaintune.evaluation.oos)."""
        if not self.oos_label:
            return {}
        from domaintune.evaluation.oos import decide, select_threshold

        y = torch.tensor([f["labels"] for f in features]).numpy()
        pred, conf, forced = decide(torch.softmax(self.logits(model, features, ctx), -1).numpy(), None, self._oos_class())
        chosen = select_threshold(conf, pred == y, y == self._oos_id(), always_abstain=forced)
        self.oos_threshold = chosen["threshold"]
        return {"oos_threshold": chosen}

    def baselines(self, model_dir, splits, features, ctx, seed):
        from domaintune.evaluation.baseline import frozen_linear_baseline, majority_baseline

        train_ids, test_ids = self.targets(splits.train), self.targets(splits.test)
        if self.oos_label:
            from domaintune.evaluation.oos import frozen_linear_oos_baseline, majority_oos_baseline

            names, oos_id = self._oos_names(), self._oos_id()
            ids = {"train": train_ids, "dev": self.targets(splits.dev), "test": test_ids}
            return {"majority": majority_oos_baseline(train_ids, test_ids, names, oos_id),
                    "frozen_linear": frozen_linear_oos_baseline(model_dir, features, ids, names, oos_id, ctx.pad_id, seed)}
        out = {"majority": majority_baseline(train_ids, test_ids, self.labels)}
        out["frozen_linear"] = frozen_linear_baseline(model_dir, features["train"], train_ids, features["test"], test_ids,
                                                      self.labels, ctx.pad_id, seed=seed)
        return out

    def predict(self, model, examples, features, ctx, top_k=1):
        return self.decode(self.logits(model, features, ctx), top_k)

    def decode(self, logits: torch.Tensor, top_k: int = 1) -> list[dict]:
        """Top-k labels; with a tuned OOS threshold, a top score below it gives `label: None` and a `reason`."""
        probs = torch.softmax(logits.float(), dim=-1)
        k = max(1, min(top_k, probs.shape[-1]))
        scores, idx = probs.topk(k, dim=-1)
        out = []
        thr = self.oos_threshold if self.oos_label else None
        oos_class = self._oos_class()
        for s_row, i_row in zip(scores.tolist(), idx.tolist()):
            pred = {"label": self.labels[i_row[0]], "score": s_row[0],
                    "top_k": [{"label": self.labels[i], "score": s} for s, i in zip(s_row, i_row)]}
            if oos_class is not None and i_row[0] == oos_class:
                pred["label"] = None
                pred["reason"] = f"out of scope: the top class is {self.oos_label!r} ({s_row[0]:.2f})"
            elif thr is not None and s_row[0] < thr:
                pred["label"] = None
                pred["reason"] = f"out of scope: confidence {s_row[0]:.2f} < threshold {thr:.2f}"
            out.append(pred)
        return out

    def output_fields(self, prediction: dict) -> dict:
        fields = super().output_fields(prediction)
        if self.oos_label:
            fields["reason"] = prediction.get("reason")
        return fields

    def format_prediction(self, prediction: dict) -> str:
        text = super().format_prediction(prediction)
        if prediction.get("label") is None and prediction.get("reason"):
            text = text.replace("None", "(abstain)", 1) + f"\n  {prediction['reason']}"
        return text

    def report_lines(self, metrics: dict) -> list[str]:
        chosen = (metrics.get("calibration") or {}).get("oos_threshold")
        if not self.oos_label or not chosen:
            return []
        test = metrics.get("test") or {}
        pct = lambda v: f"{100 * v:.2f} %" if isinstance(v, (int, float)) else "–"  # noqa: E731
        how = (f"were trained as one extra class, and the model abstains when it predicts {md_code(self.oos_label, table=False)} or"
               if self._oos_class() is not None else "were absent from train; the model abstains")
        return ["## Out-of-scope detection", "",
                f"Rows labelled {md_code(self.oos_label, table=False)} are not an intent: they {how} "
                f"when its top in-scope probability is below **{chosen['threshold']:.4f}**, tuned on dev "
                f"({chosen.get('dev_in_scope', '?')} in-scope, {chosen.get('dev_oos', '?')} out-of-scope rows) to maximise "
                f"the mean of in-scope accuracy and OOS recall while losing at most "
                f"{100 * chosen.get('max_in_scope_drop', 0):.0f} points of dev in-scope accuracy.", "",
                f"- dev: in-scope accuracy {pct(chosen.get('in_scope_accuracy'))} (without threshold: "
                f"{pct(chosen.get('in_scope_accuracy_never_abstain'))}), OOS recall {pct(chosen.get('oos_recall'))}",
                f"- test: in-scope accuracy {pct(test.get('in_scope_accuracy'))}, OOS recall {pct(test.get('oos_recall'))}, "
                f"OOS precision {pct(test.get('oos_precision'))}, OOS AUROC {pct(test.get('oos_auroc'))}", ""]
