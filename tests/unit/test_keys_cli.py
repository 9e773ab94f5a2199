"""`domaintune keys`: the new key is alone on stdout's last line, list hides secrets, errors exit 2."""

import json

import pytest
import typer
from typer.testing import CliRunner

from domaintune.commands.keys import register
from domaintune.serving.keys import KeyStore


@pytest.fixture
def app():
    app = typer.Typer()
    register(app)

    @app.command()
    def noop() -> None:  # a second command keeps `keys` a sub-command, as in the real CLI
        """Placeholder."""

    return app


def run(app, *args):
    return CliRunner().invoke(app, list(args))


def create(app, db, name="ci-bot", *extra):
    r = run(app, "keys", "create", "--name", name, "--keys-db", str(db), *extra)
    assert r.exit_code == 0, r.output
    return r, r.stdout.rstrip("\n").splitlines()[-1]


def test_create_prints_the_key_alone_on_the_last_stdout_line_and_it_verifies(app, tmp_path):
    db = tmp_path / "keys.db"
    r, key = create(app, db, "ci-bot", "--scope", "admin", "--rate-limit", "60")
    assert key.startswith("dt_") and " " not in key
    assert "shown only" in r.stderr and key not in r.stderr
    with KeyStore(db) as store:
        rec = store.verify(key)
    assert rec is not None and (rec.name, rec.scope, rec.rate_limit_per_minute) == ("ci-bot", "admin", 60)


def test_list_shows_names_but_never_keys(app, tmp_path):
    db = tmp_path / "keys.db"
    _, key = create(app, db, "reader")
    secret = key.split("_", 2)[2]
    r = run(app, "keys", "list", "--keys-db", str(db))
    assert r.exit_code == 0, r.output
    assert "reader" in r.output and key.split("_")[1] in r.output and secret not in r.output
    r = run(app, "keys", "list", "--keys-db", str(db), "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [(x["name"], x["scope"], x["active"]) for x in rows] == [("reader", "predict", True)]
    assert secret not in r.output


def test_revoke_then_the_key_no_longer_verifies(app, tmp_path):
    db = tmp_path / "keys.db"
    _, key = create(app, db, "temp")
    r = run(app, "keys", "revoke", "temp", "--keys-db", str(db))
    assert r.exit_code == 0, r.output
    assert "revoked" in r.output
    with KeyStore(db) as store:
        assert store.verify(key) is None
    r = run(app, "keys", "list", "--keys-db", str(db), "--json")
    assert [x["active"] for x in json.loads(r.stdout)] == [False]


def test_bad_scope_exits_2_with_a_message_and_no_traceback(app, tmp_path):
    db = tmp_path / "keys.db"
    r = run(app, "keys", "create", "--name", "x", "--scope", "root", "--keys-db", str(db))
    assert r.exit_code == 2
    assert "invalid scope 'root'" in r.stderr and "predict" in r.stderr and "Traceback" not in r.output
    assert r.stdout.strip() == ""  # nothing a `| tail -1` could mistake for a key


def test_duplicate_name_and_unknown_revoke_exit_2(app, tmp_path):
    db = tmp_path / "keys.db"
    create(app, db, "dup")
    r = run(app, "keys", "create", "--name", "dup", "--keys-db", str(db))
    assert r.exit_code == 2 and "already exists" in r.stderr
    r = run(app, "keys", "revoke", "ghost", "--keys-db", str(db))
    assert r.exit_code == 2 and "no key named" in r.stderr


def test_keys_db_defaults_to_domaintune_home(app, tmp_path, monkeypatch):
    monkeypatch.setenv("DOMAINTUNE_HOME", str(tmp_path / "home"))
    r = run(app, "keys", "create", "--name", "default-db")
    assert r.exit_code == 0, r.output
    with KeyStore(tmp_path / "home" / "keys.db") as store:
        assert store.verify(r.stdout.splitlines()[-1]).name == "default-db"
