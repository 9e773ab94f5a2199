"""Issue 13 item 5: a registry version is bound to the bytes of its files.

Before the fix, weights edited after registration were promoted, rolled back to and served as the same
version with no warning. Each test registers copies of a real trained run (with the registry's load check),
then edits one file the way a careless user or an attacker would, and asserts that promote, rollback and the
server refuse the version, naming the file and saying to register the run again.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from domaintune.registry import Registry, RegistryError
from domaintune.serving.app import ServeSettings

WEIGHTS = "model/model.safetensors"


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory) -> Path:
    """MLflow builds its schema with ~50 migrations (seconds): once per module, then copied."""
    db = tmp_path_factory.mktemp("template") / "registry.db"
    Registry(db)
    return db


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DOMAINTUNE_HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.fixture
def reg(home, empty_db) -> Registry:
    (home / "home").mkdir()
    return Registry(shutil.copy(empty_db, home / "home" / "registry.db"))


def copy_run(trained_run: Path, where: Path) -> Path:
    """A private copy of the shared trained run: these tests edit its files."""
    return Path(shutil.copytree(trained_run, where, ignore=shutil.ignore_patterns("checkpoints", "tensorboard")))


def flip_byte(path: Path) -> None:
    """Change one byte in the middle (tensor data), keeping the size: only the hash can tell."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def registered_pair(reg: Registry, trained_run: Path, root: Path) -> tuple[Path, Path]:
    runs = copy_run(trained_run, root / "v1"), copy_run(trained_run, root / "v2")
    for run in runs:
        reg.register(run, "tickets")  # with the real load check
    return runs


def refusal(excinfo, run: Path, file: str) -> str:
    msg = str(excinfo.value)
    assert file in msg, msg
    assert str(run) in msg and "register the run again" in msg and "domaintune registry register" in msg, msg
    return msg


def test_promote_refuses_a_version_whose_weights_changed_naming_the_file(reg, trained_run, home):
    v1, v2 = registered_pair(reg, trained_run, home)
    reg.promote("tickets", 1)
    flip_byte(v2 / WEIGHTS)
    with pytest.raises(RegistryError) as e:
        reg.promote("tickets", 2)
    assert "changed (sha256" in refusal(e, v2, WEIGHTS)
    assert reg.alias_version("tickets") == 1
    # --force overrides the continual gate, never the binding; the CLI says the same and exits 2
    with pytest.raises(RegistryError, match="model/model.safetensors changed"):
        reg.promote("tickets", 2, force=True)
    from domaintune.commands.registry import register as register_commands

    app = typer.Typer()
    register_commands(app)
    r = CliRunner().invoke(app, ["registry", "promote", "tickets", "2", "--registry-db", reg.where])
    assert r.exit_code == 2 and WEIGHTS in r.output, r.output
    r = CliRunner().invoke(app, ["registry", "verify", "tickets", "--registry-db", reg.where])
    assert r.exit_code == 2 and "v1: files match" in r.output and "v2: REFUSED" in r.output, r.output
    # re-registering the edited run is the way to serve it: a new version bound to the new bytes
    v3 = reg.register(v2, "tickets")
    assert reg.promote("tickets", v3.version)["version"] == 3


def test_rollback_refuses_a_previous_version_whose_weights_changed(reg, trained_run, home):
    v1, _ = registered_pair(reg, trained_run, home)
    reg.promote("tickets", 1)
    reg.promote("tickets", 2)
    flip_byte(v1 / WEIGHTS)
    with pytest.raises(RegistryError) as e:
        reg.rollback("tickets")
    refusal(e, v1, WEIGHTS)
    assert reg.alias_version("tickets") == 2
    assert [h["action"] for h in reg.history("tickets")] == ["promote", "promote"]


def test_missing_and_unexpected_weight_files_are_refused(reg, trained_run, home):
    v1, v2 = registered_pair(reg, trained_run, home)
    (v1 / "model" / "tokenizer.json").unlink()
    with pytest.raises(RegistryError) as e:
        reg.promote("tickets", 1)
    assert "model/tokenizer.json is missing" in refusal(e, v1, "model/tokenizer.json")
    # an extra weight file (transformers or peft might load it instead) is as bad as an edited one
    shutil.copy(v2 / WEIGHTS, v2 / "model" / "pytorch_model.bin")
    with pytest.raises(RegistryError) as e:
        reg.promote("tickets", 2)
    assert "model/pytorch_model.bin is new" in refusal(e, v2, "model/pytorch_model.bin")
    assert reg.alias_version("tickets") is None


def test_a_version_registered_before_file_hashes_is_refused_not_trusted(reg, trained_run, home):
    run = copy_run(trained_run, home / "old")
    reg.register(run, "tickets")
    reg.client.delete_model_version_tag("tickets", "1", "domaintune.files")  # what an older domaintune wrote
    with pytest.raises(RegistryError, match=r"registered before domaintune recorded the SHA-256 .* register the run"):
        reg.promote("tickets", 1)


def test_serve_refuses_to_start_on_a_version_whose_weights_changed(reg, trained_run, home):
    from domaintune.serving.server import build_service

    v1, _ = registered_pair(reg, trained_run, home)
    reg.promote("tickets", 1)
    flip_byte(v1 / WEIGHTS)
    with pytest.raises(RegistryError) as e:
        build_service([], settings=ServeSettings(auth=False, backend="torch"), registry=["tickets"],
                      audit_db=home / "audit.db")  # registry_db: the default, under DOMAINTUNE_HOME
    assert "cannot serve tickets@production" in refusal(e, v1, WEIGHTS)


def test_served_version_refuses_a_switch_or_reload_to_changed_files(reg, trained_run, home, caplog):
    """The alias moved by a client that does not check (the MLflow UI, an older domaintune): the server checks."""
    from domaintune.serving.metrics import ServiceMetrics
    from domaintune.serving.registry_watch import attach

    v1, v2 = registered_pair(reg, trained_run, home)
    reg.promote("tickets", 1)
    slots, watcher = attach(["tickets"], None, ServeSettings(auth=False, backend="torch"), ServiceMetrics(), taken={})
    watcher.stop()  # polled by hand below, so the test decides when the watcher looks
    slot = slots["tickets"]
    try:
        flip_byte(v2 / WEIGHTS)
        reg.client.set_registered_model_alias("tickets", "production", "2")
        with caplog.at_level(logging.ERROR, logger="domaintune.serving"):
            assert watcher.poll_once() == []
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("moved to v2, which is refused" in m and WEIGHTS in m and "still serving v1" in m
                   for m in errors), errors
        assert slot.version == "1" and slot.binding.version == 1 and slot.run_dir == v1.resolve()
        # a SIGHUP/admin reload re-checks the served version's files too, and keeps the old model on refusal
        flip_byte(v1 / WEIGHTS)
        with pytest.raises(RegistryError, match="model/model.safetensors changed"):
            slot.reload()
        assert slot.version == "1" and slot.predictor is not None
    finally:
        slot.batcher.close()


def test_an_adapters_base_model_is_bound_too(reg, home):
    """A LoRA run's model/ holds only the adapter: the base weights it is applied to are checked as well."""
    import json

    from domaintune.models import resolve_model

    base = Path(shutil.copytree(resolve_model("minilm-l6"), home / "base"))
    run = home / "lora"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text("model: minilm-l6\ntask: classification\n", encoding="utf-8")
    (run / "model" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    v = reg.register(run, "lora", check_load=False)  # a stand-in adapter: only its files matter here
    assert v.files["bases"]["model"]["path"] == str(base.resolve())
    reg.promote("lora", 1)
    flip_byte(base / "model.safetensors")
    with pytest.raises(RegistryError, match=r"base model of model \(.*\): model\.safetensors changed"):
        reg.promote("lora", 1, alias="staging")
