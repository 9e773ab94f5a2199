"""Offline augmentation (domaintune.data.augment): EDA edits, lexicon synonyms, English and Chinese typo noise."""

from __future__ import annotations

import random

import pytest

from domaintune.config import ConfigError, load_config
from domaintune.config_methods import AugmentSection
from domaintune.data.augment import Augmenter, augment_examples, augment_training, join, load_lexicon, units
from domaintune.data.readers import Example
from domaintune.tasks import get_task

OFF = dict(swap=0.0, delete=0.0, insert=0.0, replace=0.0, char_noise=0.0)


def section(**kw) -> AugmentSection:
    return AugmentSection(enabled=True, **{**OFF, **kw})


def test_units_split_words_and_chinese_characters():
    assert units("the pump leaks") == ["the", "pump", "leaks"]
    assert units("水泵漏油了") == ["水", "泵", "漏", "油", "了"]
    assert units("更换 CPU 风扇，快") == ["更", "换", "CPU", "风", "扇", "，", "快"]
    assert join(units("更换CPU风扇，快")) == "更换CPU风扇，快"
    assert join(units("replace the fan now")) == "replace the fan now"


def test_swap_delete_insert_keep_the_units():
    rng = random.Random(0)
    text = "replace the broken cooling fan today"
    swapped = Augmenter(section(swap=0.2))._swap(text, 0.2, rng)
    assert swapped != text and sorted(swapped.split()) == sorted(text.split())
    deleted = Augmenter(section(delete=0.3))._delete(text, 0.3, rng)
    assert 1 <= len(deleted.split()) < len(text.split()) and set(deleted.split()) <= set(text.split())
    inserted = Augmenter(section(insert=0.2))._insert(text, 0.2, rng)
    assert len(inserted.split()) > len(text.split()) and set(inserted.split()) == set(text.split())
    zh = "空调制冷效果很差"
    zh_swapped = Augmenter(section(swap=0.2))._swap(zh, 0.2, rng)
    assert zh_swapped != zh and sorted(zh_swapped) == sorted(zh) and " " not in zh_swapped
    zh_deleted = Augmenter(section(delete=0.2))._delete(zh, 0.2, rng)
    assert len(zh_deleted) < len(zh) and set(zh_deleted) <= set(zh)


def test_character_noise_english_and_chinese():
    aug = Augmenter(section(char_noise=0.15))
    rng = random.Random(3)
    en = "the compressor makes a loud noise"
    outs = {aug.augment(en, rng) for _ in range(20)}
    assert en not in outs and len(outs) > 10
    assert all(abs(len(o) - len(en)) <= 8 and set(o) <= set(en) for o in outs)  # letters moved/dropped/doubled only
    zh = "压缩机发出很大的噪音"
    zouts = {aug.augment(zh, rng) for _ in range(20)}
    assert zh not in zouts and len(zouts) > 10
    assert all(set(o) <= set(zh) and " " not in o for o in zouts)  # character-level edits, no segmentation


def test_lexicon_synonyms_english_and_chinese(tmp_path):
    lex = tmp_path / "syn.txt"
    lex.write_text("# groups\nrefund, reimbursement, money back\n高兴 开心 快乐\n退款、退钱\n", encoding="utf-8")
    groups = load_lexicon(lex)
    assert groups == [["refund", "reimbursement", "money back"], ["高兴", "开心", "快乐"], ["退款", "退钱"]]
    aug = Augmenter(section(replace=1.0, synonyms=str(lex)))
    rng = random.Random(0)
    out = aug.augment("Refund my order please", rng)
    assert out.split()[0] in ("Reimbursement", "Money") and out.endswith("my order please")
    assert aug.augment("refunded items", rng) == "refunded items"  # whole words only in English
    zh = aug.augment("我很高兴能拿到退款", rng)
    assert zh != "我很高兴能拿到退款" and ("开心" in zh or "快乐" in zh) and ("退钱" in zh)
    ins = Augmenter(section(insert=0.1, synonyms=str(lex)))._insert("我很高兴", 0.1, rng)
    assert ("开心" in ins or "快乐" in ins) and len(ins) == 6
    with pytest.raises(ConfigError, match="not found"):
        load_lexicon(tmp_path / "missing.txt")
    (tmp_path / "bad.txt").write_text("single\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no synonym group"):
        load_lexicon(tmp_path / "bad.txt")


def test_copies_seeded_appended_and_labels_kept():
    exs = [Example("the pump is leaking oil again", "leak", "t.csv", 2), Example("工人在湿滑地面摔倒", "safety", "t.csv", 3)]
    sec = section(swap=0.2, delete=0.2, char_noise=0.1, copies=2)
    a = augment_examples(exs, sec, seed=7)
    assert a == augment_examples(exs, sec, seed=7)  # seeded
    assert a != augment_examples(exs, sec, seed=8)
    assert a[:2] == exs and len(a) == 6
    for ex in a[2:]:
        assert ex.label == ("leak" if ex.line == 2 else "safety") and ex.text not in (exs[0].text, exs[1].text)
    with pytest.raises(ConfigError, match="every operation rate is 0"):
        Augmenter(section())


def test_augment_training_only_for_sequence_labels(tmp_path):
    cfg = load_config(None, ["augment.enabled=true", "augment.char_noise=0.1"])
    exs = [Example("电机过热，需要检修", "fault"), Example("motor overheating, needs repair", "fault")]
    task = get_task("classification")
    out = augment_training(task, exs, cfg)
    assert len(out) == 4 and out[:2] == exs
    assert augment_training(task, exs, load_config(None)) is exs  # disabled: untouched
    with pytest.raises(ConfigError, match="task 'ner' cannot be augmented"):
        augment_training(get_task("ner"), exs, cfg)


def test_train_run_with_augmentation(tmp_path, tiny_splits):
    from support import tiny_config_path

    from domaintune.run import train_run

    out = tmp_path / "aug"
    cfg = load_config(tiny_config_path(tmp_path, tiny_splits, out, baseline_off=True, max_steps=2, batch_size=16),
                      ["augment.enabled=true", "augment.copies=2", "augment.char_noise=0.05"])
    metrics = train_run(cfg)
    # 72 originals + 2 x 72 copies at batch 16: two steps see 32 of them; dev/test are the untouched files
    assert metrics["train"]["global_step"] == 2
    assert metrics["data"]["train_examples"] == 72 and metrics["data"]["test_examples"] == 30
    assert metrics["train"]["epochs_completed"] == pytest.approx(32 / 216, abs=1e-3)
