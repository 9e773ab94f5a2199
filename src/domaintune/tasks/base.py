"""The task interface: everything that differs between classification, NER, regression, pairs...

A task owns its data (reading, splitting, label checks), its label space (learnt
from train, saved as `task.json` in the run directory), its model head,
encoding and padding, its metrics and its predictions. The trainer, run
directory, resume, reports, CLI and Predictor call only these methods, and what
other commands may do with a task (PEFT, few-shot, k-shot, augmentation,
ensembles, explanations, pruning, export, continual learning) they read from the
capabilities it declares below, never from its name; so a new task is one
module, its registry line and its test (see peft's `tuners/` for the same idea).

Lifecycle in `domaintune.run.train_run`:

    read -> split -> check -> fit -> encode -> build_model -> (Trainer: loss from
    model(**collate(batch)).loss; evaluate on dev) -> calibrate on dev ->
    evaluate dev/test -> save_model -> baselines -> report

and in `domaintune.predictor.Predictor`:

    load_state(task.json) -> load_model -> as_example -> encode -> predict
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from domaintune.data.readers import Example, Problem


@dataclass
class EvalContext:
    """What scoring and prediction need besides the model: how to batch and pad."""

    tokenizer: Any
    pad_id: int
    batch_size: int = 128
    max_length: int = 128
    bf16: bool = False


class Task(ABC):
    name: str = ""
    #: The transformers Auto class that reloads a saved run (users keep plain HF models).
    auto_class: Any = None
    #: Dev metric that selects the best checkpoint when train.metric_for_best is empty.
    default_metric: str = "macro_f1"
    #: Metric keys shown in the report's headline table and by `domaintune evaluate`.
    headline: tuple[str, ...] = ("accuracy", "macro_f1", "weighted_f1")
    #: Whether the LP-FT linear-probe head initialisation applies (a softmax head over the pooled output).
    supports_probe_init: bool = False
    #: Whether a prediction input is a (text, text_pair) pair. True: always (the pair task); False: never
    #: (retrieval: its pair column is the training positive, not an input); None: as the run was trained
    #: (a run trained with data.text_pair_column reads pairs). `Predictor.pair_input` resolves it per run, and
    #: the service refuses an input of the other kind instead of silently encoding a segment the model never saw.
    pair_input: bool | None = None

    # ---- capabilities -----------------------------------------------------------------------
    # What the rest of domaintune may do with a task is read from these members, never from the
    # task's name: a new task declares each of them in its own module (tests/unit/
    # test_plugin_declarations.py checks that every registered task does, and that no code outside
    # `tasks/` compares task names). The base values are the safe "cannot" answers.

    #: What one prediction is: "label" (one class), "labels" (a set of classes), "tags" (labelled
    #: spans of the text), "value" (a number), "ranking" (entries of an index, best first; what
    #: `domaintune index` needs), or a new kind for a new task. No default: every task says it.
    output_kind: str
    #: How the model's logits become the prediction's scores: "softmax" (over classes, per text or
    #: per token), "sigmoid" (one independent probability per class) or "identity" (the logit is the
    #: value). Ensembles average members with it and explanations attribute the score it gives;
    #: None: the output is not a score per input (retrieval's ranking), so neither applies.
    output_activation: str | None = None
    #: Why token attributions (`domaintune explain`) cannot explain this task's predictions even though
    #: it has an `output_activation` (NER: its predictions are already per token); None: they can.
    explain_refusal: str | None = None
    #: The peft `TaskType` name (e.g. "SEQ_CLS", "TOKEN_CLS") that makes a PeftModel forward this task's
    #: `labels` and train and save its head; None: the PEFT methods (lora, adalora, ia3, prefix, prompt)
    #: do not support the task.
    peft_task_type: str | None = None
    #: Problem type of a classifier head over one text's mean-pooled embedding ("single_label" or
    #: "multi_label"), the model few-shot and zero-shot build; None: such a head cannot do the task.
    pooled_head_problem: str | None = None
    #: How `data.k_shot` counts "k examples per class": "label" (each example's one label), "label_set"
    #: (multi-label: k examples per label present, via `label_set`), None: the task has no classes to
    #: sample by, and k_shot is refused.
    k_shot_classes: str | None = None
    #: Whether offline augmentation (`augment.enabled`: word/character edits of the text) keeps labels
    #: true; when not, `not_augmentable_reason` says why, in the refusal message.
    augmentable: bool = False
    not_augmentable_reason: str = "it is not supported"
    #: Whether `domaintune prune` (drop encoder layers, re-fine-tune) applies: a stack of encoder layers
    #: under a head that `train_run` can re-fine-tune from a saved model folder.
    prunable: bool = False
    #: Whether `domaintune export` can trace the model to ONNX: one forward pass from the collated
    #: batch to `logits`, which the ONNX session reproduces (a generator's decoding loop is not).
    onnx_exportable: bool = False
    #: Whether a run without labels in task.json (written before task.json existed) takes its label
    #: list from the model config's `id2label`: right only when the head's classes are the label list.
    labels_from_model_config: bool = False
    #: Whether `domaintune continue` can add a stage to a run of this task: it reloads the plain Hugging
    #: Face model and grows its single-label softmax head for new classes.
    supports_continual: bool = False

    def __init__(self) -> None:
        self.labels: list[str] = []

    @property
    def described_as(self) -> str:
        """How messages name this task (`task 'ner'`); a task whose abilities depend on its data
        names the variant it turned out to be (pair: `pair scoring (numeric labels)`)."""
        return f"task {self.name!r}"

    def value_from_output(self, output: float) -> float:
        """The predicted value for a raw model output of an "identity" task (regression un-standardises it)."""
        return float(output)

    def attach(self, run_dir: Path) -> None:
        """Called by the Predictor with the run directory, for tasks with side files there (the
        retrieval task's FAQ index). Default: nothing to attach."""

    # ---- data -------------------------------------------------------------------------
    def read(self, path: str | Path, data_cfg, problems: list[Problem]) -> list[Example]:
        """Read one file into Examples, appending every problem (file, line, fix) to `problems`."""
        from domaintune.data.splits import options_from
        from domaintune.data.readers import read_examples

        return read_examples(path, options_from(data_cfg), problems)

    def split(self, examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
        """Hold out about `fraction` of `examples` (seeded). Classification overrides this with a stratified split."""
        idx = list(range(len(examples)))
        random.Random(seed).shuffle(idx)
        k = round(len(idx) * fraction)
        held = set(idx[:k])
        return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]

    def check(self, train: list[Example], others: dict[str, list[Example]], problems: list[Problem]) -> None:
        """Label checks across splits (e.g. a test label never seen in train)."""

    def configure(self, cfg) -> None:
        """Take task options from the run config (called once, before reading data). Default: none."""

    def training_examples(self, train: list[Example]) -> list[Example]:
        """The examples the model trains on: `train` itself, or an expansion of it that only
        training sees (e.g. both orders of a symmetric pair). Dev/test are never expanded.
        Expansions must keep `train` first, in order, and append: baselines use that prefix."""
        return train

    def fit(self, train: list[Example]) -> None:
        """Learn the label space (or target scaling) from the training examples."""

    def state(self) -> dict:
        """What prediction needs besides the weights; saved as run/task.json."""
        return {"labels": list(self.labels)}

    def load_state(self, state: dict) -> None:
        self.labels = list(state.get("labels", []))

    def check_known(self, examples: list[Example], problems: list[Problem]) -> None:
        """For `domaintune evaluate`: flag gold labels the trained model cannot produce."""

    # ---- model ------------------------------------------------------------------------
    @abstractmethod
    def build_model(self, model_dir, dropout: float | None = None) -> torch.nn.Module:
        """Pretrained weights with a fresh head sized for the fitted label space."""

    def load_model(self, model_dir) -> torch.nn.Module:
        """Reload a saved run's model (run/model) for prediction."""
        return self.auto_class.from_pretrained(str(model_dir), dtype=torch.float32).eval()

    def save_model(self, model: torch.nn.Module, tokenizer, out_dir: Path) -> None:
        """Write the final model into `out_dir` (a temp dir renamed into place by the caller)."""
        model.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))

    @abstractmethod
    def encode(self, tokenizer, examples: Sequence[Example], max_length: int, with_targets: bool = True) -> list[dict]:
        """One dict per example: `input_ids` (list[int]) and, with targets, `labels`."""

    def encode_split(self, split: str, tokenizer, examples: Sequence[Example], max_length: int) -> list[dict]:
        """Encode one split of a training run ("train", "dev", "test"); a task that reports what encoding did
        to each split (generation: conversations shortened or left out) overrides it. Default: `encode`."""
        return self.encode(tokenizer, examples, max_length)

    def data_summary(self) -> dict:
        """Task-specific facts about the data for metrics.json's `data` (e.g. per-split encoding stats)."""
        return {}

    @abstractmethod
    def collate(self, features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        """Pad a batch to its longest member; include `labels` only when the features have them."""

    # ---- scoring and prediction -------------------------------------------------------
    @abstractmethod
    def evaluate(self, model, examples: Sequence[Example], features: list[dict], ctx: EvalContext) -> dict:
        """Scores for one split; must contain the metric named by metric_for_best (default `default_metric`)."""

    def evaluate_final(self, model, examples: Sequence[Example], features: list[dict], ctx: EvalContext,
                       split: str) -> dict:
        """The scores written to metrics.json after training (`split` "dev" or "test"); tasks whose full
        scoring is too slow for every dev evaluation during training (generation: decoding replies) add it
        here. Default: `evaluate`."""
        return self.evaluate(model, examples, features, ctx)

    def calibrate(self, model, examples: Sequence[Example], features: list[dict], ctx: EvalContext) -> dict:
        """After training, tune decision thresholds on dev (multi-label, out-of-scope); return what was tuned."""
        return {}

    def baselines(self, model_dir, splits, features: dict[str, list[dict]], ctx: EvalContext, seed: int) -> dict:
        """Test scores of the starting point, keyed by baseline name, with the same keys as `evaluate`."""
        return {}

    def as_example(self, item: Any) -> Example:
        """A prediction input (a string, a (text, text_pair) tuple or a dict) as an Example."""
        if isinstance(item, Example):
            return item
        if isinstance(item, str):
            return Example(item, None)
        if isinstance(item, (tuple, list)) and len(item) == 2:
            return Example(str(item[0]), None, text_pair=str(item[1]))
        if isinstance(item, dict) and "text" in item:
            return Example(str(item["text"]), None, text_pair=item.get("text_pair"))
        raise TypeError(f"cannot predict on {type(item).__name__}: give a string (or a (text, text_pair) pair)")

    @abstractmethod
    def predict(self, model, examples: Sequence[Example], features: list[dict], ctx: EvalContext, top_k: int = 1) -> list[dict]:
        """Human-facing predictions (JSON-serialisable dicts), one per example, in input order."""

    def output_fields(self, prediction: dict) -> dict:
        """Columns added to each row by `domaintune predict --input` (values JSON-encoded when not scalar)."""
        return {"label": prediction.get("label"), "score": prediction.get("score")}

    def format_prediction(self, prediction: dict) -> str:
        """One or two lines for `domaintune predict --text`."""
        top = prediction.get("top_k", [])
        alts = ", ".join(f"{a['label']} {a['score']:.3f}" for a in top)
        return f"{prediction.get('label')}\t{prediction.get('score', 0):.4f}" + (f"\n  top-{len(top)}: {alts}" if top else "")

    # ---- report -----------------------------------------------------------------------
    def plots(self, run_dir: Path, metrics: dict) -> dict[str, str]:
        """Extra task-specific plots: title -> path relative to run_dir."""
        return {}

    def report_lines(self, metrics: dict) -> list[str]:
        """Extra task-specific Markdown for report.md (thresholds, per-type tables...)."""
        return []
