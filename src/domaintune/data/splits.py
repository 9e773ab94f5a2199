"""Validation of a whole data set, seeded stratified splitting and the label map.

Everything here runs before any model is loaded: a user must learn about a bad
row in seconds, not after an hour of training.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from domaintune.data.readers import Example, Problem, ReadOptions, read_examples

log = logging.getLogger("domaintune")

MAX_LISTED = 30


class DataError(ValueError):
    """One or more data problems, all listed in the message with file:line and a fix."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        errors = [p for p in problems if not p.warning]
        lines = [f"{len(errors)} data problem{'s' if len(errors) != 1 else ''} found before training; nothing was trained:"]
        for p in errors[:MAX_LISTED]:
            lines.append(f"  - {p}")
        if len(errors) > MAX_LISTED:
            lines.append(f"  ... and {len(errors) - MAX_LISTED} more of the same kinds")
        super().__init__("\n".join(lines))


@dataclass
class Splits:
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    labels: list[str]
    warnings: list[Problem] = field(default_factory=list)
    dev_from_train: bool = False
    test_from_train: bool = False


def options_from(data_cfg) -> ReadOptions:
    return ReadOptions(format=data_cfg.format, text_column=data_cfg.text_column, label_column=data_cfg.label_column,
                       delimiter=data_cfg.delimiter, encoding=data_cfg.encoding, has_header=data_cfg.has_header,
                       text_pair_column=data_cfg.text_pair_column, feature_columns=tuple(data_cfg.feature_columns))


def stratified_split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out about `fraction` of every class, keeping at least one of each class in the rest.

    Written by hand because scikit-learn's stratified split refuses classes
    with fewer members than the number of splits; rare classes are normal in
    industry data and must stay trainable.
    """
    if fraction <= 0:
        return list(examples), []
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_label[ex.label].append(i)
    rng = random.Random(seed)
    held: set[int] = set()
    for label in sorted(by_label):
        idx = by_label[label]
        rng.shuffle(idx)
        k = round(len(idx) * fraction)
        k = min(k, len(idx) - 1)  # never empty a class in train
        if k == 0 and len(idx) >= 3 and fraction * len(idx) >= 0.5:
            k = 1
        held.update(idx[:k])
    keep = [ex for i, ex in enumerate(examples) if i not in held]
    out = [ex for i, ex in enumerate(examples) if i in held]
    return keep, out


def check_labels(train: list[Example], others: dict[str, list[Example]], problems: list[Problem]) -> None:
    counts = Counter(ex.label for ex in train)
    for label, n in sorted(counts.items()):
        if n < 2:
            first = next(ex for ex in train if ex.label == label)
            problems.append(Problem(first.source, first.line, f"class {label!r} has only {n} training example",
                                    "add at least one more example of this class, or merge/remove it"))
    known = set(counts)
    for role, exs in others.items():
        unseen: dict[str, list[Example]] = defaultdict(list)
        for ex in exs:
            if ex.label not in known:
                unseen[ex.label].append(ex)
        for label, rows in sorted(unseen.items()):
            shown = ", ".join(str(r.line) for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
            problems.append(Problem(rows[0].source, rows[0].line,
                                    f"{role} label {label!r} never appears in train ({len(rows)} row(s), lines {shown})",
                                    "add training examples of this class, fix the label's spelling, or drop these rows"))


def overlap_warning(train: list[Example], test: list[Example], role: str = "test") -> Problem | None:
    seen = {ex.text.strip() for ex in train}
    dup = [ex for ex in test if ex.text.strip() in seen]
    if not dup:
        return None
    return Problem(dup[0].source, dup[0].line, f"{len(dup)} {role} text(s) also appear in train; {role} scores will be optimistic",
                   f"remove duplicates from {role} (first at this line)", warning=True)


def prepare_data(cfg, task=None) -> Splits:
    """Read, validate and split the data of a RunConfig through its task; raise DataError listing every problem."""
    if task is None:
        from domaintune.tasks import get_task

        task = get_task(cfg.task)
    d = cfg.data
    problems: list[Problem] = []
    if not d.train:
        raise DataError([Problem("<config>", None, "data.train is empty", "set data.train to your labelled file")])
    train = task.read(d.train, d, problems)
    dev = task.read(d.dev, d, problems) if d.dev else []
    test = task.read(d.test, d, problems) if d.test else []
    if [p for p in problems if not p.warning]:
        raise DataError(problems)
    seed = cfg.train.seed
    dev_from_train = test_from_train = False
    if not d.test:
        train, test = task.split(train, d.test_fraction, seed)
        test_from_train = True
    if not d.dev:
        frac = d.dev_fraction / max(1e-9, 1 - (d.test_fraction if test_from_train else 0))
        train, dev = task.split(train, min(frac, 0.5), seed + 1)
        dev_from_train = True
    task.check(train, {"dev": dev, "test": test}, problems)
    if [p for p in problems if not p.warning]:
        raise DataError(problems)
    sampled = None
    if d.k_shot:  # after dev/test are split off and checked on the whole train: they stay whole
        train, sampled = apply_k_shot(train, d.k_shot, seed, task)
    warnings = [w for w in (overlap_warning(train, test, "test"), overlap_warning(train, dev, "dev"), sampled) if w]
    warnings += [p for p in problems if p.warning]
    for w in warnings:
        log.warning("%s", w)
    task.fit(train)
    return Splits(train, dev, test, list(task.labels), warnings, dev_from_train, test_from_train)


def apply_k_shot(train: list[Example], k: int, seed: int, task) -> tuple[list[Example], Problem]:
    """`data.k_shot`: k training examples per class (domaintune.data.kshot); the warning says what was kept."""
    from domaintune.data.kshot import sample_k_shot, sample_k_shot_multilabel

    classes = task.k_shot_classes  # declared by the task (tasks/base.py); pair: decided by its labels
    if classes == "label_set":
        sample = sample_k_shot_multilabel(train, k, seed, task.label_set)
    elif classes == "label":
        sample = sample_k_shot(train, k, seed, lambda ex: ex.label)
    else:
        raise DataError([Problem("<config>", None, f"data.k_shot={k} samples k examples per class, but "
                                 f"{task.described_as} has no classes to sample by",
                                 "remove data.k_shot (it applies to classification, multilabel and pair "
                                 "classification), or subsample the training file yourself")])
    return sample.examples, Problem(train[0].source if train else "<config>", None, sample.summary(), warning=True)


@dataclass(frozen=True)
class LabelMap:
    """label <-> id, saved as labels.json and as the model's config.id2label."""

    labels: tuple[str, ...]

    @property
    def label2id(self) -> dict[str, int]:
        return {l: i for i, l in enumerate(self.labels)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    def save(self, path: Path) -> None:
        from domaintune.training.checkpoint import atomic_write_text

        atomic_write_text(path, json.dumps({"labels": list(self.labels), "label2id": self.label2id}, ensure_ascii=False, indent=2))

    @classmethod
    def load(cls, path: Path) -> "LabelMap":
        return cls(tuple(json.loads(Path(path).read_text(encoding="utf-8"))["labels"]))
