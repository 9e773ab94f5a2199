"""The thin CLI shell: init writes a loadable template, models lists the catalog, errors exit 2."""

import json

from typer.testing import CliRunner

from domaintune.cli import app
from domaintune.config import load_config


def test_init_writes_loadable_template_and_refuses_to_clobber(tmp_path):
    runner = CliRunner()
    target = tmp_path / "my.yaml"
    r = runner.invoke(app, ["init", str(target)])
    assert r.exit_code == 0, r.output
    assert load_config(target).model == "minilm-l6"
    r = runner.invoke(app, ["init", str(target)])
    assert r.exit_code == 2 and "--force" in r.output


def test_models_json_lists_both_catalog_models():
    r = CliRunner().invoke(app, ["models", "--json"])
    assert r.exit_code == 0, r.output
    rows = {m["name"]: m for m in json.loads(r.output)}
    assert rows["minilm-l6"]["installed"] and rows["m3e-small"]["language"] == "zh"


def test_unknown_config_key_exits_2_with_suggestion(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epoch: 3\n", encoding="utf-8")
    r = CliRunner().invoke(app, ["train", str(cfg)])
    assert r.exit_code == 2 and "train.epochs" in r.output


def test_predict_needs_text_or_input(tmp_path):
    r = CliRunner().invoke(app, ["predict", str(tmp_path)])
    assert r.exit_code == 2 and "--text" in r.output
