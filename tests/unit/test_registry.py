"""The model registry on a real SQLite file: versions, lineage, aliases with history, the continual gate, errors.

Run directories here are minimal folders (config.yaml + model/) registered without the load check, so these
tests stay fast; the integration test registers and serves real trained runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from domaintune.registry import Registry, RegistryError, default_registry_db, registry_uri
from domaintune.serving.registry_watch import parse_spec


def fake_run(root: Path, name: str, train: Path, model: str = "minilm-l6", gate: dict | None = None) -> Path:
    run = root / name
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text(f"model: {model}\ntask: classification\ndata:\n  train: {train}\n"
                                     f"  dev: {train.parent / 'missing.csv'}\ntrain:\n  lr: 0.0001\n",
                                     encoding="utf-8")
    (run / "metrics.json").write_text(json.dumps({"task": "classification", "method": "full", "model": model,
                                                  "headline": ["accuracy"], "test": {"accuracy": 0.9, "n": 30},
                                                  "dev": {"accuracy": 0.8}, "train": {"seconds": 1.5}}))
    if gate is not None:
        (run / "continual").mkdir()
        (run / "continual" / "gate.json").write_text(json.dumps(gate))
    return run


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory) -> Path:
    """MLflow builds its schema with ~50 alembic migrations (seconds on a busy 2-core box): once, then copy."""
    db = tmp_path_factory.mktemp("template") / "registry.db"
    Registry(db)
    return db


def fresh_db(empty_db: Path, where: Path) -> Path:
    import shutil

    where.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(empty_db, where))


@pytest.fixture
def reg(tmp_path, empty_db):
    return Registry(fresh_db(empty_db, tmp_path / "reg" / "registry.db"))


@pytest.fixture
def train_csv(tmp_path):
    p = tmp_path / "data" / "train.csv"
    p.parent.mkdir()
    p.write_text("text,label\nbreaker tripped,electrical\n", encoding="utf-8")
    return p


def test_versions_increment_and_lineage_is_recorded(reg, tmp_path, train_csv):
    runs = [fake_run(tmp_path, f"r{i}", train_csv) for i in range(3)]
    v1 = reg.register(runs[0], "tickets", check_load=False, description="first")
    v2 = reg.register(runs[1], "tickets", parent="1", check_load=False)
    v3 = reg.register(runs[2], "tickets", parent=f"tickets:{v2.version}", check_load=False)
    assert [v1.version, v2.version, v3.version] == [1, 2, 3]
    assert v1.run_dir == str(runs[0].resolve()) and v1.description == "first" and v1.parent is None
    assert v2.parent == {"model": "tickets", "version": 1, "run_dir": str(runs[0].resolve())}
    assert v3.parent["version"] == 2
    train = v1.data["train"]
    assert train["sha256"] == hashlib.sha256(train_csv.read_bytes()).hexdigest() and train["bytes"] > 0
    assert v1.data["dev"]["sha256"] is None and "not found" in v1.data["dev"]["error"]
    assert v1.config["train"]["lr"] == 0.0001 and v1.config["model"] == "minilm-l6"
    assert v1.metrics["test"] == {"accuracy": 0.9, "n": 30} and v1.metrics["headline"] == ["accuracy"]
    assert [r["versions"] for r in reg.list()] == [3]
    # a second model numbers its own versions from 1
    assert reg.register(runs[0], "other", check_load=False).version == 1
    assert [(r["name"], r["latest"]) for r in reg.list()] == [("other", 1), ("tickets", 3)]


def test_parent_is_inferred_from_a_run_fine_tuned_from_another_runs_model(reg, tmp_path, train_csv):
    base = fake_run(tmp_path, "base", train_csv)
    reg.register(base, "tickets", check_load=False)
    child = fake_run(tmp_path, "child", train_csv, model=str(base / "model"))
    v = reg.register(child, "tickets", check_load=False)
    assert v.parent["model"] == "tickets" and v.parent["version"] == 1 and v.parent["run_dir"] == str(base.resolve())
    assert "inferred" in v.parent


def test_promote_and_rollback_keep_alias_history(reg, tmp_path, train_csv):
    for i in range(3):
        reg.register(fake_run(tmp_path, f"r{i}", train_csv), "tickets", check_load=False)
    assert reg.alias_version("tickets") is None
    assert reg.promote("tickets", 1)["previous"] is None
    assert reg.promote("tickets", 2) == {"model": "tickets", "alias": "production", "version": 2, "previous": 1,
                                         "run_dir": str((tmp_path / "r1").resolve())}
    reg.promote("tickets", 3)
    reg.promote("tickets", 1, alias="staging")
    assert reg.resolve("tickets").version == 3 and reg.resolve("tickets", "staging").version == 1
    assert reg.rollback("tickets")["version"] == 2
    assert reg.rollback("tickets")["version"] == 1
    with pytest.raises(RegistryError, match="no earlier promoted version"):
        reg.rollback("tickets")
    assert reg.alias_version("tickets") == 1
    assert [(e["action"], e["version"], e["from"]) for e in reg.history("tickets")] == [
        ("promote", 1, None), ("promote", 2, 1), ("promote", 3, 2), ("rollback", 2, 3), ("rollback", 1, 2)]
    # promote after a rollback starts a new branch: rollback returns to the version serving before it
    reg.promote("tickets", 3)
    assert reg.rollback("tickets")["version"] == 1
    shown = reg.show("tickets")
    assert shown["aliases"] == {"production": 1, "staging": 1}
    assert set(shown["history"]) == {"production", "staging"}
    assert [v["aliases"] for v in shown["versions"]] == [["production", "staging"], [], []]
    assert reg.show("tickets", 1)["aliases"] == ["production", "staging"]


PROMOTER = """
import sys
from domaintune.registry import Registry
reg = Registry(sys.argv[1])
for _ in range(int(sys.argv[3])):
    reg.promote("tickets", int(sys.argv[2]))
"""


def test_promotes_from_two_processes_lose_no_history_entry(reg, tmp_path, train_csv):
    """Without the file lock both processes read the same history and each write drops the other's entries."""
    import subprocess
    import sys

    for i in range(2):
        reg.register(fake_run(tmp_path, f"r{i}", train_csv), "tickets", check_load=False)
    n = 15
    procs = [subprocess.Popen([sys.executable, "-c", PROMOTER, reg.where, str(v), str(n)]) for v in (1, 2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    events = reg.history("tickets")
    assert len(events) == 2 * n
    assert sorted(e["version"] for e in events) == [1] * n + [2] * n
    # every event's "from" is the version the event before it left serving
    assert [e["from"] for e in events[1:]] == [e["version"] for e in events[:-1]]


def test_gate_refuses_promotion_unless_forced(reg, tmp_path, train_csv):
    ok = fake_run(tmp_path, "ok", train_csv, gate={"promotable": True})
    bad = fake_run(tmp_path, "bad", train_csv, gate={"promotable": False, "reason": "forgot 6 points of old tasks"})
    reg.register(ok, "tickets", alias="production", check_load=False)
    with pytest.raises(RegistryError, match=r"gate\.json says this run is not promotable \(forgot 6 points"):
        reg.register(bad, "tickets", alias="production", check_load=False)
    v = reg.register(bad, "tickets", check_load=False)  # registering without an alias is allowed
    assert v.gate == {"promotable": False, "reason": "forgot 6 points of old tasks"}
    with pytest.raises(RegistryError, match="--force"):
        reg.promote("tickets", v.version)
    assert reg.alias_version("tickets") == 1
    reg.promote("tickets", v.version, force=True)
    assert reg.alias_version("tickets") == v.version
    assert "forced" in reg.history("tickets")[-1]["action"]
    assert reg.show("tickets")["versions"][-1]["promotable"] is False
    (bad / "continual" / "gate.json").write_text("{not json")
    with pytest.raises(RegistryError, match="unreadable gate file"):
        reg.promote("tickets", v.version)


def test_clear_errors_for_bad_names_paths_versions_and_aliases(reg, tmp_path, train_csv):
    run = fake_run(tmp_path, "r", train_csv)
    cases = [
        (lambda: reg.register(tmp_path / "nope", "tickets", check_load=False), "does not exist"),
        (lambda: reg.register(train_csv.parent, "tickets", check_load=False), "not a finished run directory"),
        (lambda: reg.register(run, "bad/name", check_load=False), "model name 'bad/name'"),
        (lambda: reg.register(run, "", check_load=False), "model name ''"),
        (lambda: reg.register(run, "tickets"), "does not load"),  # a config.yaml and an empty model/ do not load
        (lambda: reg.register(run, "tickets", parent="not-a-run", check_load=False), "--parent 'not-a-run'"),
        (lambda: reg.get("tickets", 1), "no registered model 'tickets'"),
    ]
    for call, message in cases:
        with pytest.raises(RegistryError, match=message):
            call()
    reg.register(run, "tickets", check_load=False)
    for call, message in [(lambda: reg.get("tickets", 7), r"no version 7 \(versions: \[1\]\)"),
                          (lambda: reg.promote("tickets", "x"), "must be a number"),
                          (lambda: reg.promote("tickets", 1, alias="latest"), "alias 'latest'"),
                          (lambda: reg.promote("tickets", 1, alias="v2"), "alias 'v2'"),
                          (lambda: reg.resolve("tickets", "staging"), "no alias 'staging'"),
                          (lambda: reg.rollback("tickets"), "no earlier promoted version")]:
        with pytest.raises(RegistryError, match=message):
            call()
    import shutil

    shutil.rmtree(run / "model")
    with pytest.raises(RegistryError, match="gone or has no model/"):
        reg.promote("tickets", 1)


def test_an_unopenable_registry_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RegistryError, match="cannot open the registry"):
        Registry(tmp_path / "file" / "registry.db")  # parent is a file


def test_default_location_follows_domaintune_home(monkeypatch, tmp_path):
    monkeypatch.setenv("DOMAINTUNE_HOME", str(tmp_path / "home"))
    assert default_registry_db() == tmp_path / "home" / "registry.db"
    assert registry_uri() == f"sqlite:///{tmp_path / 'home' / 'registry.db'}"
    assert registry_uri("postgresql://db/registry") == "postgresql://db/registry"


def test_serve_spec_parsing():
    assert parse_spec("tickets") == ("tickets", "production")
    assert parse_spec("tickets@staging") == ("tickets", "staging")
    for bad in ("@staging", "tickets@", "a@b@c"):
        with pytest.raises(RegistryError):
            parse_spec(bad)


def test_cli_commands_print_tables_json_and_exit_2_on_errors(tmp_path, train_csv, empty_db):
    from domaintune.commands.registry import register as register_commands

    app = typer.Typer()
    register_commands(app)
    db = str(fresh_db(empty_db, tmp_path / "cli.db"))
    r1, r2 = fake_run(tmp_path, "r1", train_csv), fake_run(tmp_path, "r2", train_csv)
    reg = Registry(db)
    reg.register(r1, "tickets", check_load=False)
    reg.register(r2, "tickets", check_load=False)
    run = lambda *a: CliRunner().invoke(app, ["registry", *a, "--registry-db", db])  # noqa: E731
    assert run("promote", "tickets", "1").exit_code == 0
    r = run("promote", "tickets", "2")
    assert r.exit_code == 0 and "v1 -> v2" in r.stdout
    r = run("list", "--json")
    assert json.loads(r.stdout) == [{"name": "tickets", "versions": 2, "latest": 2, "aliases": {"production": 2},
                                     "description": ""}]
    r = run("show", "tickets")
    assert r.exit_code == 0 and "production" in r.stdout and "history" in r.stdout
    r = run("show", "tickets", "2", "--json")
    assert json.loads(r.stdout)["data"]["train"]["sha256"] == hashlib.sha256(train_csv.read_bytes()).hexdigest()
    r = run("rollback", "tickets", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["version"] == 1
    r = run("promote", "tickets", "9")
    assert r.exit_code == 2 and "no version 9" in r.output
    r = run("register", str(tmp_path / "missing"), "--name", "tickets")
    assert r.exit_code == 2 and "does not exist" in r.output
