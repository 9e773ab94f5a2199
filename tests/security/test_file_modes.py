"""Stores that may hold user text or key material are owner-only (issue 13, item 3).

On main, `alerts.db`, `registry.db` and the audit database (with its `-wal`/`-shm`) were created with the
umask's default, 0644: readable by every user of the machine. Each store is now created in a fresh folder
under a permissive umask (022, the common default), a row is written, and while the store is still open
(so SQLite's side files exist) the database file and every side file must be 0600 and the folder the
store created 0700. An existing store written 0644 by an older version is tightened when it is opened.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import uuid
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def permissive_umask():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def side_files(db: Path) -> list[Path]:
    return [p for p in (db.with_name(db.name + s) for s in ("-wal", "-shm", "-journal")) if p.exists()]


def open_alerts(db: Path):
    from domaintune.monitoring.alerts import Alert, AlertStore

    store = AlertStore(db)
    store.emit(Alert(id=uuid.uuid4().hex, rule="r", severity="warning", model="m", model_version="v1", expression="e",
                     stat="s", value=0.5, threshold=0.4, window=10,
                     fired_at=dt.datetime.now(dt.timezone.utc).isoformat(), texts_seen=10))
    return store, store.close, True


def open_keys(db: Path):
    from domaintune.serving.keys import KeyStore

    store = KeyStore(db)
    store.create(f"ops-{uuid.uuid4().hex[:8]}", "admin")
    return store, store.close, False


def open_registry(db: Path):
    from domaintune.registry import Registry

    reg = Registry(db)
    reg.client.create_registered_model("tickets")
    return reg, lambda: None, False


def open_audit(db: Path):
    from domaintune.serving.audit import AuditLog

    log = AuditLog(db)
    future = log.record(key_name="k", model="m", version="v", endpoint="predict", inputs=["call 13812345678"],
                        output={"label": "x"}, latency_ms=1.0, status=200, durable=True)
    future.result(timeout=30)
    return log, log.close, True


STORES = {"alerts": open_alerts, "keys": open_keys, "registry": open_registry, "audit": open_audit}


@pytest.mark.parametrize("name", list(STORES))
def test_new_store_is_owner_only(name, tmp_path):
    folder = tmp_path / "fresh" / "state"
    db = folder / f"{name}.db"
    store, close, wal = STORES[name](db)
    try:
        assert db.is_file()
        found = side_files(db)
        if wal:  # a WAL-mode store has its side files while open: they must exist here, or nothing was checked
            assert {p.name for p in found} >= {f"{name}.db-wal", f"{name}.db-shm"}, found
        for p in [db, *found]:
            assert mode(p) == 0o600, f"{p.name} is {oct(mode(p))}"
        assert mode(folder) == 0o700, oct(mode(folder))
    finally:
        close()
    for p in [db, *side_files(db)]:
        assert mode(p) == 0o600, f"{p.name} is {oct(mode(p))} after close"


@pytest.mark.parametrize("name", ["alerts", "keys", "audit"])
def test_store_written_0644_by_an_older_version_is_tightened(name, tmp_path):
    db = tmp_path / f"{name}.db"
    _, close, _ = STORES[name](db)
    close()
    for p in [db, *side_files(db)]:
        os.chmod(p, 0o644)
    _, close, _ = STORES[name](db)
    try:
        for p in [db, *side_files(db)]:
            assert mode(p) == 0o600, f"{p.name} is {oct(mode(p))}"
    finally:
        close()


def test_default_state_home_is_created_owner_only(tmp_path, monkeypatch):
    """`keys create` and `registry register` without a path use $DOMAINTUNE_HOME: created 0700 when missing."""
    from domaintune.registry import Registry
    from domaintune.serving.keys import KeyStore

    home = tmp_path / "home" / ".domaintune"
    monkeypatch.setenv("DOMAINTUNE_HOME", str(home))
    with KeyStore() as keys:
        keys.create("ops", "admin")
    Registry()
    assert mode(home) == 0o700
    assert mode(home / "keys.db") == 0o600 and mode(home / "registry.db") == 0o600
