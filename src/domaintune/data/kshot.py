"""`data.k_shot`: a seeded sample of k training examples per class (few-shot experiments).

Used by `prepare_data` on the training split only, after dev and test have been
split off, so dev/test stay whole and scores at k=8 and k=all are measured on
the same examples. The sample is deterministic for a given (data, k, seed): the
same seed gives the same examples to every method in a comparison (and to the
`setfit` peer in the benchmark), which is what makes "same examples" true.

Single-label classification (and pair classification): k per class, all of a
class when it has fewer (reported). Multi-label: by label presence — labels are
visited from the rarest up and examples carrying a label are added until that
label appears in k chosen examples (a chosen example counts for every label it
carries), so every label gets at least k positives where the data has them and
the sample stays about k x labels in size. Regression, NER and retrieval have
no classes to sample by: `k_shot` is an error there.

Written here rather than with scikit-learn/datasets because neither samples a
fixed count per class (train_test_split draws a fraction; SetFit's
`sample_dataset` needs a `datasets.Dataset` and has no multi-label mode).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


@dataclass
class KShotSample:
    """The sampled examples (in input order) and what the sampling did, for the run's warnings."""

    examples: list
    k: int
    seed: int
    available: int                          # training examples before sampling
    short: dict[str, int] = field(default_factory=dict)  # label -> count, for labels with fewer than k

    def summary(self) -> str:
        text = (f"data.k_shot={self.k}: train was sampled to {len(self.examples)} of {self.available} examples "
                f"(k per class, seed {self.seed}); dev/test were not sampled")
        if self.short:
            shown = ", ".join(f"{l!r} ({n})" for l, n in sorted(self.short.items())[:10])
            more = f" and {len(self.short) - 10} more" if len(self.short) > 10 else ""
            text += f"; {len(self.short)} class(es) have fewer than {self.k} examples and were kept whole: {shown}{more}"
        return text


def sample_k_shot(examples: Sequence[T], k: int, seed: int, label_of: Callable[[T], str]) -> KShotSample:
    """k examples of each class (all of a class with fewer), chosen with `random.Random(seed)`.

    Classes are visited in sorted order and each class's indices shuffled by one
    seeded generator, so the result depends only on (examples, k, seed), not on
    hash seeds or dict order. The output keeps the input order.
    """
    if k < 1:
        raise ValueError(f"k_shot must be >= 1, got {k}")
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_label[label_of(ex)].append(i)
    rng = random.Random(seed)
    chosen: set[int] = set()
    short: dict[str, int] = {}
    for label in sorted(by_label):
        idx = list(by_label[label])
        if len(idx) < k:
            short[label] = len(idx)
        rng.shuffle(idx)
        chosen.update(idx[:k])
    return KShotSample([ex for i, ex in enumerate(examples) if i in chosen], k, seed, len(examples), short)


def sample_k_shot_multilabel(examples: Sequence[T], k: int, seed: int,
                             labels_of: Callable[[T], Sequence[str]]) -> KShotSample:
    """Multi-label: each label present in at least k chosen examples (all of them when fewer carry it).

    Rarest labels first, so the examples drawn for a rare label (which often
    carry common labels too) are counted before common labels are topped up;
    this keeps the sample close to the minimum. Examples without any label
    (a "none" row) are treated as one more class, `[]`, so the model still
    sees k texts that should get no label.
    """
    if k < 1:
        raise ValueError(f"k_shot must be >= 1, got {k}")
    by_label: dict[str, list[int]] = defaultdict(list)
    sets: list[tuple[str, ...]] = []
    for i, ex in enumerate(examples):
        labels = tuple(labels_of(ex)) or ("[]",)
        sets.append(labels)
        for l in labels:
            by_label[l].append(i)
    rng = random.Random(seed)
    chosen: set[int] = set()
    count: dict[str, int] = defaultdict(int)
    short: dict[str, int] = {}
    for label in sorted(by_label, key=lambda l: (len(by_label[l]), l)):
        idx = list(by_label[label])
        if len(idx) < k:
            short[label] = len(idx)
        rng.shuffle(idx)
        for i in idx:
            if count[label] >= k:
                break
            if i in chosen:
                continue
            chosen.add(i)
            for l in sets[i]:
                count[l] += 1
    return KShotSample([ex for i, ex in enumerate(examples) if i in chosen], k, seed, len(examples), short)
