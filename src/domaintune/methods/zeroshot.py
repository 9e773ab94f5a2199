"""Zero-shot classification (`method: zeroshot`): no training, the labels' own text does the work.

Two variants (`zeroshot.variant`):

* `embedding` (default): each label's description (`labels.descriptions`, else
  the label name with `_`/`-` read as spaces) goes through
  `zeroshot.embedding_template` and the run's encoder (mean-pooled,
  L2-normalised, as sentence-embedding models are trained). The model is a
  `PooledClassifier` whose head rows are those label embeddings, so
  `logits = scale * cos(text, label)`; `scale` (default 20) is a softmax
  temperature that makes the probabilities usable (cosines live in [-1, 1]).
  It is saved as `kind: pooled_classifier`, like a few-shot run.
* `lm`: every label is scored as the continuation of `zeroshot.template` by
  the prepared causal LM `zeroshot.lm` (see `domaintune.methods.lm_scorer`),
  optionally after `k_examples` in-context examples drawn from train with the
  seed. The LM reads its own tokenizer's ids, so `fit` re-encodes dev/test
  with it, and run/model/ holds the LM, its tokenizer and the prompt.

The label set comes from `data.train`, as for every method (labels.json is
written from it before the model is built); train needs only one row per
label when you have no labelled data, and is where in-context examples come
from. `labels.descriptions` keys that are not train labels are an error (a
typo would silently fall back to the name otherwise). Dev/test, the report
(against the majority-class baseline), and the Predictor are unchanged.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import torch

from domaintune.methods.base import Method

log = logging.getLogger("domaintune")

#: Content-free input for contextual calibration of the LM variant (Zhao et al. 2021 use "N/A").
CONTENT_FREE = ("N/A",)


def label_texts(labels: list[str], descriptions: dict[str, str]) -> list[str]:
    """Description per label, or the label name made readable (`card_arrival` -> `card arrival`)."""
    unknown = sorted(set(descriptions) - set(labels))
    if unknown:
        raise ValueError(f"labels.descriptions names label(s) {unknown} that are not in the training data "
                         f"(labels: {labels[:10]}{' ...' if len(labels) > 10 else ''}); fix the keys or add rows "
                         f"with those labels to data.train")
    out = []
    for label in labels:
        text = descriptions.get(label) or label.replace("_", " ").replace("-", " ").strip()
        if not text:
            raise ValueError(f"label {label!r} has no readable name; give it a description in labels.descriptions")
        out.append(text)
    return out


class ZeroShot(Method):
    name = "zeroshot"
    uses_probe_init = False
    trains = False

    def configure(self, cfg) -> None:
        from domaintune.tasks import get_task, task_names_where

        self.cfg = cfg
        self.zs = cfg.zeroshot
        # One label per text, chosen among the labels' own texts: a single-label head over one text's
        # embedding (the embedding variant builds exactly that; the LM variant scores the same choice).
        if get_task(cfg.task).pooled_head_problem != "single_label":
            supported = tuple(task_names_where(lambda t: t.pooled_head_problem == "single_label"))
            raise ValueError(f"method zeroshot supports task {supported}, not {cfg.task!r}")
        from domaintune.training.robust import robust_active

        if robust_active(cfg.robust):
            log.warning("robust (adversarial / R-Drop) has no effect with method zeroshot, which trains nothing; "
                        "remove the robust section")
        if self.zs.variant == "lm":
            from domaintune.models import resolve_model

            # Fails here, before any run directory is touched, naming `domaintune models prepare`.
            self.lm_dir = resolve_model(self.zs.lm)
            if "{text}" not in self.zs.template:
                raise ValueError(f"zeroshot.template {self.zs.template!r} has no {{text}} placeholder")
        elif "{label}" not in self.zs.embedding_template:
            raise ValueError(f"zeroshot.embedding_template {self.zs.embedding_template!r} has no {{label}} placeholder")
        self.build_seconds = 0.0
        self._texts: list[str] = []
        self._examples: list[tuple[str, str]] = []
        self._bias: list[float] = []

    def default_search_space(self, cfg) -> dict[str, dict]:
        from domaintune.tune import TuneError

        raise TuneError("method zeroshot does not train, so it has no default search space; set tune.space in the "
                        "config (e.g. zeroshot.k_examples: {choices: [0, 2, 4]}) or tune another method")

    def settings(self) -> dict:
        common = {"variant": self.zs.variant, "label_texts": self._texts, "trains": False}
        if self.zs.variant == "embedding":
            return {**common, "embedding_template": self.zs.embedding_template, "scale": self.zs.scale}
        return {**common, "lm": self.zs.lm, "template": self.zs.template, "score": self.zs.score,
                "calibrate": self.zs.calibrate, "calibration_bias": [round(b, 4) for b in self._bias],
                "k_examples": self.zs.k_examples, "examples": [{"text": t, "label": l} for t, l in self._examples]}

    # ---- build: the whole "training" happens here
    def build(self, task, model_dir: Path, cfg):
        t0 = time.perf_counter()
        self._texts = label_texts(list(task.labels), dict(cfg.labels.descriptions))
        model = self._build_lm(task, cfg) if self.zs.variant == "lm" else self._build_embedding(model_dir, task, cfg)
        self.build_seconds = time.perf_counter() - t0
        return model

    @torch.inference_mode()
    def _build_embedding(self, model_dir, task, cfg):
        from transformers import AutoTokenizer

        from domaintune.methods.pooled_head import build_pooled_classifier
        from domaintune.tasks.classification import pad_batch

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model = build_pooled_classifier(model_dir, len(task.labels), normalize=True, scale=self.zs.scale).eval()
        texts = [self.zs.embedding_template.replace("{label}", t) for t in self._texts]
        enc = tokenizer(texts, truncation=True, max_length=cfg.train.max_length, padding=False,
                        return_attention_mask=False)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        rows = []
        for i in range(0, len(texts), 64):
            batch = pad_batch([{"input_ids": ids} for ids in enc["input_ids"][i:i + 64]], pad)
            rows.append(model.embed(batch["input_ids"], batch["attention_mask"]))
        model.classifier.weight.copy_(torch.cat(rows))  # head row l = normalised embedding of label l
        model.classifier.bias.zero_()
        return model

    def _build_lm(self, task, cfg):
        from domaintune.methods.lm_scorer import LMScorer, build_prompt_parts, load_causal_lm, lm_tokenizer

        self.lm_tokenizer = lm_tokenizer(self.lm_dir)
        parts = build_prompt_parts(self.lm_tokenizer, self.zs.template, self._texts)
        return LMScorer(load_causal_lm(self.lm_dir), score=self.zs.score,
                        special_ids=self.lm_tokenizer.all_special_ids, pad_id=self.lm_tokenizer.pad_token_id,
                        **parts).eval()

    def _add_examples(self, model, task, train, max_length: int) -> None:
        """k in-context examples from train (seeded), shown as `template` + label text before each prompt."""
        from domaintune.methods.lm_scorer import build_prompt_parts

        text_of = dict(zip(task.labels, self._texts))
        pool = [ex for ex in train if ex.label in text_of]
        picked = random.Random(self.cfg.train.seed).sample(pool, min(self.zs.k_examples, len(pool)))
        self._examples = [(ex.text, text_of[ex.label]) for ex in picked]
        parts = build_prompt_parts(self.lm_tokenizer, self.zs.template, self._texts, self._examples,
                                   max_example_tokens=max_length)
        model.prefix_ids = parts["prefix_ids"]

    def prepare(self, model, task=None):
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    # ---- fit: nothing to train
    def fit(self, model, run):
        from domaintune.training.loop import TrainResult

        t0 = time.perf_counter()
        if self.zs.variant == "lm":
            if self.zs.k_examples:
                self._add_examples(model, run.task, run.splits.train, run.cfg.train.max_length)
            if self.zs.calibrate:
                self._bias = model.calibrate([self.lm_tokenizer(t, add_special_tokens=False)["input_ids"]
                                              for t in CONTENT_FREE])
            # The scorer reads LM token ids: re-encode dev/test with the LM tokenizer for evaluation, and
            # keep the encoder's features to put back in `save` (the frozen-encoder baseline runs after it).
            self._encoder_features = {k: run.features[k] for k in ("dev", "test")}
            for part in ("dev", "test"):
                run.features[part] = run.task.encode(self.lm_tokenizer, getattr(run.splits, part),
                                                     run.cfg.train.max_length)
            self._features = run.features
        return TrainResult(seconds=self.build_seconds + time.perf_counter() - t0, samples_per_second=0.0,
                           global_step=0, epochs_completed=0.0, best_step=None, best_metric=None, stopped_early=False,
                           bf16=False,
                           threads=torch.get_num_threads(), history=[])

    def save(self, model, task, tokenizer, out_dir: Path) -> None:
        if self.zs.variant == "lm":
            model.save(self.lm_tokenizer, out_dir, variant="lm", lm=self.zs.lm, template=self.zs.template,
                       label_texts=self._texts, examples=[{"text": t, "label": l} for t, l in self._examples])
            if getattr(self, "_encoder_features", None):
                self._features.update(self._encoder_features)  # see fit
                self._encoder_features = None
            return
        model.save(tokenizer, out_dir, method="zeroshot", variant="embedding",
                   embedding_template=self.zs.embedding_template, label_texts=self._texts)
