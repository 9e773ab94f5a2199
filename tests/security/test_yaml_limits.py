"""YAML that a user or a run directory hands us is bounded in size and alias expansion (issue 13, item 6).

Before the fix a 1.4 KB "billion laughs" document in a config loaded without complaint (PyYAML shares the
aliased lists) and then exhausted memory in `train` as soon as the config was walked as a tree (pydantic's
dump into the run's config.yaml); an alert-rules file and a run directory's config.yaml had the same hole, and
a config of any size was read whole. The bomb here sits where a config accepts any value (`tune.space`), so the
old loader returned it; the tests never walk what they load.
"""

from __future__ import annotations

import pytest

from domaintune.config import ConfigError, load_config
from domaintune.monitoring.rules import RulesError, load_rules


def _bomb(levels: int = 9, indent: str = "      ") -> str:
    """Nine anchors, each a list of nine aliases to the previous one: 9**9 values from about 1.4 KB."""
    lines = [f'{indent}- &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"{indent}- &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines)


def test_alias_bomb_in_config_is_refused(tmp_path):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("model: minilm-l6\ntune:\n  space:\n    train.lr:\n      choices:\n" + _bomb() + "\n", encoding="utf-8")
    assert len(cfg.read_bytes()) < 1500
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    message = str(err.value)
    assert message.startswith(f"{cfg}:") and "expands through aliases to more than" in message
    line = int(message.split(":")[1])
    assert 6 <= line <= 14  # the anchored list that crosses the limit, inside the bomb


def test_alias_bomb_in_alert_rules_is_refused(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: r\n    when: share(label == x) > 0.5\nextra:\n" + _bomb(indent="  ") + "\n",
                     encoding="utf-8")
    with pytest.raises(RulesError) as err:
        load_rules(rules)
    assert f"{rules}:" in str(err.value) and "aliases" in str(err.value)


def test_oversized_config_is_refused_before_parsing(tmp_path):
    cfg = tmp_path / "huge.yaml"
    cfg.write_text("model: minilm-l6\n" + ("# padding padding padding padding padding padding\n" * 25_000), encoding="utf-8")
    assert cfg.stat().st_size > (1 << 20)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert str(err.value).startswith(f"{cfg}: larger than 1,048,576 bytes")


def test_self_referencing_anchor_is_refused(tmp_path):
    cfg = tmp_path / "loop.yaml"
    cfg.write_text("model: minilm-l6\ntune:\n  space:\n    train.lr: &me {choices: [1, *me]}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert f"{cfg}:4: an anchor refers to itself" in str(err.value)


def test_config_with_a_few_anchors_still_loads(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("model: minilm-l6\n"
                   "train: &train {epochs: 2, lr: 3.0e-5}\n"
                   "tune:\n  space:\n"
                   "    train.lr: &range {low: 1.0e-5, high: 1.0e-4, log: true}\n"
                   "    train.weight_decay: {<<: *range, low: 0.0, log: false}\n", encoding="utf-8")
    loaded = load_config(cfg, overrides=["train.batch_size=16"])
    assert loaded.train.epochs == 2 and loaded.train.lr == 3e-5 and loaded.train.batch_size == 16
    assert loaded.tune.space["train.weight_decay"] == {"low": 0.0, "high": 1e-4, "log": False}
