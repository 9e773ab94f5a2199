"""The task and method a continual stage trains with: a fixed, growing label space and a growing head.

`ContinualClassification` is classification whose label space is the previous
run's labels *in their order* followed by the new stage's unseen labels
(sorted), so an old label's id never changes and downstream systems that store
ids stay valid. `ContinualMethod` is full fine-tuning that starts from the
previous run's model, grows its classification head by the new labels' rows
(old rows copied bit for bit) and adds the strategies' loss terms through the
Trainer's `extra_loss` hook.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict

import torch
from transformers import AutoModelForSequenceClassification

from domaintune.data.readers import Problem
from domaintune.methods.full import FullFineTuning
from domaintune.tasks.classification import ClassificationTask, sequence_model_kwargs

log = logging.getLogger("domaintune")


class ContinualClassification(ClassificationTask):
    name = "classification"

    def __init__(self, old_labels: list[str] | tuple[str, ...] = ()):
        super().__init__()
        self.old_labels = list(old_labels)
        self.extra_rows: list = []

    def new_labels(self, train) -> list[str]:
        old = set(self.old_labels)
        return sorted({ex.label for ex in train if ex.label not in old})

    def fit(self, train) -> None:
        self.labels = [*self.old_labels, *self.new_labels(train)]

    # `extra_rows` (set per stage): rows trained on after the stage's own (the replay buffer), never split or scored.

    def training_examples(self, train):
        return [*train, *self.extra_rows]

    def check(self, train, others, problems: list[Problem]) -> None:
        """Like classification's check, except that a dev/test label known from an earlier stage is fine."""
        counts = Counter(ex.label for ex in train)
        for label, n in sorted(counts.items()):
            if n < 2 and label not in self.old_labels:
                first = next(ex for ex in train if ex.label == label)
                problems.append(Problem(first.source, first.line, f"new class {label!r} has only {n} training example",
                                        "add at least one more example of this class, or merge/remove it"))
        known = set(counts) | set(self.old_labels)
        for role, exs in others.items():
            unseen = defaultdict(list)
            for ex in exs:
                if ex.label not in known:
                    unseen[ex.label].append(ex)
            for label, rows in sorted(unseen.items()):
                problems.append(Problem(rows[0].source, rows[0].line,
                                        f"{role} label {label!r} is neither in this stage's train nor an earlier stage's "
                                        f"({len(rows)} row(s))", "add training rows of it, fix its spelling, or drop the rows"))
        folded = {l.strip().casefold(): l for l in self.old_labels}
        for label in self.new_labels(train):
            twin = folded.get(label.strip().casefold())
            if twin is not None:
                first = next(ex for ex in train if ex.label == label)
                problems.append(Problem(first.source, first.line, f"new label {label!r} differs from the earlier label "
                                        f"{twin!r} only in case or spaces, so it becomes a separate class",
                                        f"write it exactly as {twin!r} if it is the same class", warning=True))


def classifier_layer(model) -> tuple[torch.nn.Module, str]:
    """The final nn.Linear of a sequence classifier and its attribute path (BERT: classifier; RoBERTa: classifier.out_proj)."""
    head = getattr(model, "classifier", None)
    if isinstance(head, torch.nn.Linear):
        return model, "classifier"
    if head is not None and isinstance(getattr(head, "out_proj", None), torch.nn.Linear):
        return head, "out_proj"
    raise ValueError(f"continual learning needs a sequence classifier with a linear head; {type(model).__name__} has none")


def grow_head(model, labels: list[str], seed: int = 42) -> int:
    """Give the model one output per label; old rows kept exactly, new rows initialised like HF does. Returns #added."""
    owner, attr = classifier_layer(model)
    old: torch.nn.Linear = getattr(owner, attr)
    n_old, n = old.out_features, len(labels)
    if n < n_old:
        raise ValueError(f"the label space shrank from {n_old} to {n}; continual stages only add labels")
    if n > n_old:
        new = torch.nn.Linear(old.in_features, n, bias=old.bias is not None)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            std = getattr(model.config, "initializer_range", 0.02)
            new.weight.copy_(torch.randn(new.weight.shape, generator=g) * std)
            new.weight[:n_old] = old.weight
            if old.bias is not None:
                new.bias.zero_()
                new.bias[:n_old] = old.bias
        setattr(owner, attr, new)
    model.config.num_labels = n
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {l: i for i, l in enumerate(labels)}
    model.num_labels = n
    return n - n_old


def load_previous(model_dir, labels: list[str], dropout=None) -> torch.nn.Module:
    """The previous run's model (plain HF classifier) with its head grown to `labels`."""
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32, weights_only=True,
                                                               **sequence_model_kwargs(dropout))
    old = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if list(labels[: len(old)]) != old:
        raise ValueError(f"{model_dir}: the model's labels {old[:5]}... are not the first labels of the new label space "
                         f"{labels[:5]}...; labels.json and model/config.json disagree")
    grow_head(model, labels)
    return model


def probe_new_rows(model, features: list[dict], collate, pad_id: int, n_old: int, l2: float = 1e-3,
                   max_iter: int = 100) -> dict | None:
    """LP-FT for a grown head: fit only the new classes' rows on frozen pooled features, old rows fixed.

    Randomly initialised rows next to the previous stage's trained rows lose every
    comparison, and a few epochs of fine-tuning barely move them (on the demo
    tickets: loss stuck near ln(6)); fitting them first (softmax regression with
    L-BFGS over all training rows, replayed ones included) starts training where
    new classes already score, as `train` does with its probe head.
    """
    from domaintune.methods.head_init import _features, _head_and_features

    pooled, head = _head_and_features(model)
    if head is None or head.out_features <= n_old or not features:
        return None
    was_training = model.training
    model.eval()
    x = _features(pooled, features, collate, pad_id, 128, False)
    y = torch.tensor([f["labels"] for f in features], dtype=torch.long)
    w_old, b_old = head.weight[:n_old].detach(), head.bias[:n_old].detach()
    w = torch.zeros_like(head.weight[n_old:]).requires_grad_(True)
    b = torch.zeros_like(head.bias[n_old:]).requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def logits():
        return x @ torch.cat([w_old, w]).T + torch.cat([b_old, b])

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits(), y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        head.weight[n_old:] = w
        head.bias[n_old:] = b
        acc = float((logits().argmax(-1) == y).float().mean())
    model.train(was_training)
    return {"train_accuracy": acc, "examples": len(features), "rows_fitted": head.out_features - n_old}


class ContinualMethod(FullFineTuning):
    """Full fine-tuning from the previous run's weights, with the strategies' loss terms added."""

    name = "full"
    uses_probe_init = False   # a probe would refit the old classes' rows: the head must start where the last stage ended

    def __init__(self, strategies, record: dict):
        self.strategies, self.record = strategies, record

    def build(self, task, model_dir, cfg):
        self.n_old = len(task.old_labels)
        return load_previous(model_dir, list(task.labels), cfg.train.dropout)

    def fit(self, model, run):
        if not run.resume:  # a resumed stage reloads its checkpoint, head included
            self.record["new_rows_probe"] = probe_new_rows(model, run.features["train"], run.task.collate, run.pad_id,
                                                           self.n_old)
        return super().fit(model, run)

    def extra_loss(self, model, batch, outputs):
        terms = [t for t in (s.loss(model, batch, outputs) for s in self.strategies) if t is not None]
        return sum(terms) if terms else outputs.loss.new_zeros(())

    def settings(self) -> dict:
        return {**super().settings(), "continual": self.record}
