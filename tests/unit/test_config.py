from pathlib import Path

import pytest

from domaintune.config import ConfigError, RunConfig, load_config, reference_markdown, template


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_and_contract_keys():
    cfg = load_config(None)
    assert cfg.task == "classification" and cfg.model == "minilm-l6"
    for key in ("train", "dev", "test", "text_column", "label_column"):
        assert key in cfg.data.model_fields_set or hasattr(cfg.data, key)
    for key in ("epochs", "batch_size", "lr", "max_length", "seed"):
        assert hasattr(cfg.train, key)


def test_unknown_key_suggests_closest(tmp_path):
    p = write(tmp_path, "train:\n  learnig_rate: 0.1\n  lr: 1e-4\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "train.learnig_rate" in str(e.value)
    p = write(tmp_path, "data:\n  text_colum: body\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "did you mean 'data.text_column'" in str(e.value)
    p = write(tmp_path, "ouput_dir: runs/x\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "output_dir" in str(e.value)


def test_set_overrides_types(tmp_path):
    p = write(tmp_path, "train:\n  lr: 1e-4\n")
    cfg = load_config(p, ["train.lr=3e-5", "output_dir=runs/x", "train.epochs=2", "data.has_header=false",
                          "data.text_column=0"])
    assert cfg.train.lr == pytest.approx(3e-5) and cfg.output_dir == "runs/x" and cfg.train.epochs == 2
    assert cfg.data.has_header is False and cfg.data.text_column == 0


def test_bad_values_name_the_field(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "train:\n  batch_size: zero\n"))
    assert "train.batch_size" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.lr"])
    assert "KEY=VALUE" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "task: sentiment\n"))
    assert "unknown task" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "missing.yaml")
    assert "domaintune init" in str(e.value)


def test_template_is_a_valid_config_with_every_key(tmp_path):
    text = template()
    cfg = load_config(write(tmp_path, text))
    assert cfg == RunConfig()
    for name, field in RunConfig.model_fields.items():
        assert f"{name}:" in text and field.description
    assert "# Peak learning rate of AdamW." in text


def test_readme_config_reference_in_sync():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert reference_markdown() in readme, "README config reference is stale: paste domaintune.config.reference_markdown()"
