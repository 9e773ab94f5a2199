"""data.k_shot sampling and the few-shot pair sampler (no model needed)."""

from collections import Counter

import pytest
import torch

from conftest import write_csv
from domaintune.config import load_config
from domaintune.data import DataError, Example, prepare_data
from domaintune.data.kshot import sample_k_shot, sample_k_shot_multilabel
from domaintune.methods.fewshot import PairBudgetSampler, cosine_pair_loss, pair_targets, supcon_loss


def examples():
    out = []
    for label, n in (("common", 50), ("medium", 12), ("rare", 3), ("正面", 9)):
        out += [Example(f"{label} {i}", label, "f.csv", i + 2) for i in range(n)]
    return out


def test_k_shot_counts_short_classes_and_order():
    s = sample_k_shot(examples(), 8, seed=3, label_of=lambda e: e.label)
    counts = Counter(e.label for e in s.examples)
    assert counts == {"common": 8, "medium": 8, "rare": 3, "正面": 8}
    assert s.short == {"rare": 3} and s.available == 74
    assert "fewer than 8" in s.summary() and "'rare' (3)" in s.summary()
    lines = [e.line for e in s.examples if e.label == "common"]
    assert lines == sorted(lines)  # input order kept


def test_k_shot_is_deterministic_per_seed():
    pick = lambda seed: [e.text for e in sample_k_shot(examples(), 4, seed, lambda e: e.label).examples]  # noqa: E731
    assert pick(1) == pick(1)
    assert pick(1) != pick(2)
    # the same seed picks the same examples whatever order the file lists them in, per class
    rev = sample_k_shot(list(reversed(examples())), 4, 1, lambda e: e.label).examples
    assert len(rev) == len(pick(1))
    with pytest.raises(ValueError, match="k_shot must be >= 1"):
        sample_k_shot(examples(), 0, 1, lambda e: e.label)


def test_k_shot_multilabel_by_label_presence():
    exs = []
    for i in range(40):
        labels = ("a",) if i % 2 else ("a", "b")
        if i % 10 == 0:
            labels = ("c",)
        exs.append(Example(f"t{i}", "|".join(labels), "f", i, extra=labels))
    exs += [Example(f"none{i}", "[]", "f", 100 + i, extra=()) for i in range(5)]
    s = sample_k_shot_multilabel(exs, 3, seed=0, labels_of=lambda e: e.extra)
    present = Counter(l for e in s.examples for l in (e.extra or ("[]",)))
    assert all(present[l] >= 3 for l in ("a", "b", "c", "[]"))
    assert len(s.examples) <= 4 * 3
    assert [e.text for e in sample_k_shot_multilabel(exs, 3, 0, lambda e: e.extra).examples] == [e.text for e in s.examples]


def _config(tmp_path, rows, task="classification", k=2, extra=()):
    train = write_csv(tmp_path / "train.csv", rows)
    p = tmp_path / "c.yaml"
    p.write_text("\n".join([f"task: {task}", "data:", f"  train: {train}", f"  k_shot: {k}", "  dev_fraction: 0.2",
                            "  test_fraction: 0.2", *extra, "train:", "  seed: 5"]) + "\n", encoding="utf-8")
    return load_config(p)


def test_prepare_data_samples_train_only_after_dev_and_test(tmp_path):
    rows = [(f"{lab} text number {i}", lab) for lab in ("退款", "物流", "other") for i in range(20)]
    cfg = _config(tmp_path, rows, k=3)
    s = prepare_data(cfg)
    assert Counter(e.label for e in s.train) == {"退款": 3, "物流": 3, "other": 3}
    assert len(s.dev) == 12 and len(s.test) == 12  # 20% of each class each, from the whole file
    assert any("k_shot=3" in str(w) and "dev/test were not sampled" in str(w) for w in s.warnings)
    again = prepare_data(cfg)
    assert [e.text for e in again.train] == [e.text for e in s.train]
    assert s.labels == sorted({"退款", "物流", "other"})


def test_k_shot_is_an_error_for_regression(tmp_path):
    rows = [(f"text {i}", str(i / 10)) for i in range(30)]
    with pytest.raises(DataError, match="k_shot=2 samples k examples per class"):
        prepare_data(_config(tmp_path, rows, task="regression"))


def test_pair_sampler_state_is_linear_and_yields_exactly_the_budget():
    """Memory flatness, structurally: the sampler holds n indices (no pair list) and the
    number of steps (and pairs) depends on the budget, not on n."""
    budget, b = 20000, 32
    small = [i % 77 for i in range(77 * 8)]
    large = [i % 77 for i in range(77 * 80)]
    steps = -(-budget // (b * (b - 1) // 2))
    for keys in (small, large):
        s = PairBudgetSampler(keys, b, 4, steps, seed=1)
        assert s.state_size() == len(keys)
        assert not any(isinstance(v, list) and len(v) > len(keys) for v in vars(s).values())
        batches = list(s)
        assert len(batches) == steps == len(s)
        assert sum(len(x) * (len(x) - 1) // 2 for x in batches) == steps * s.pairs_per_step >= budget
        for x in batches:
            assert len(x) == b and len(set(x)) == b
            per = Counter(keys[i] for i in x)
            assert all(c >= 2 for c in per.values())  # every text has a positive in its batch
    assert list(PairBudgetSampler(small, b, 4, 3, seed=1)) == list(PairBudgetSampler(small, b, 4, 3, seed=1))


def test_pair_sampler_uses_every_text_before_repeating():
    keys = [i % 5 for i in range(40)]  # 5 classes x 8
    batches = list(PairBudgetSampler(keys, 8, 4, 5, seed=0))  # 40 draws = one pass
    assert sorted(i for x in batches for i in x) == list(range(40))


def test_in_batch_losses():
    labels = torch.tensor([0, 0, 1, 1])
    same = pair_targets(labels)
    assert same.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    good = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    bad = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.01], [0.01, 1.0]])
    assert cosine_pair_loss(good, same) < 0.01 < cosine_pair_loss(bad, same)
    assert supcon_loss(good, same, 0.1) < supcon_loss(bad, same, 0.1)
    multi = pair_targets(torch.tensor([[1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 1, 0]]))
    assert multi[0].tolist() == [1, 1, 1, 0] and multi[2, 3] == 0
