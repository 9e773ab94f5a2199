from collections import Counter

from domaintune.data import Example, LabelMap, stratified_split


def examples():
    out = []
    for label, n in (("common", 100), ("medium", 20), ("rare", 3), ("pair", 2)):
        out += [Example(f"{label} {i}", label, "f.csv", i) for i in range(n)]
    return out


def test_stratified_split_is_seeded_and_keeps_every_class():
    a_keep, a_out = stratified_split(examples(), 0.1, seed=7)
    b_keep, b_out = stratified_split(examples(), 0.1, seed=7)
    c_keep, _ = stratified_split(examples(), 0.1, seed=8)
    assert a_keep == b_keep and a_out == b_out and a_keep != c_keep
    held = Counter(e.label for e in a_out)
    assert held["common"] == 10 and held["medium"] == 2
    kept = Counter(e.label for e in a_keep)
    assert all(kept[l] >= 1 for l in ("common", "medium", "rare", "pair"))
    assert len(a_keep) + len(a_out) == len(examples()) and not set(a_keep) & set(a_out)


def test_zero_fraction_holds_nothing():
    keep, out = stratified_split(examples(), 0.0, seed=1)
    assert out == [] and len(keep) == len(examples())


def test_label_map_round_trip_with_chinese(tmp_path):
    lm = LabelMap(("正面", "负面", "neutral"))
    lm.save(tmp_path / "labels.json")
    assert LabelMap.load(tmp_path / "labels.json") == lm
    assert lm.id2label[1] == "负面" and lm.label2id["neutral"] == 2
    assert "负面" in (tmp_path / "labels.json").read_text(encoding="utf-8")
