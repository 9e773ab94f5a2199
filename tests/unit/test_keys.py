"""API key store: keys verify, wrong/malformed/revoked ones do not, only hashes hit the disk, threads are safe."""

import hashlib
import os
import stat
import threading
import time

import pytest

from domaintune.serving.keys import KeyRecord, KeyStore, RateLimiter, default_keys_db, parse_key_id


@pytest.fixture
def store(tmp_path):
    with KeyStore(tmp_path / "keys.db") as s:
        yield s


def test_create_then_verify_returns_the_record(store):
    rec, key = store.create("ci-bot", scope="predict", rate_limit_per_minute=30)
    assert key.startswith(f"dt_{rec.key_id}_") and len(rec.key_id) == 8 and parse_key_id(key) == rec.key_id
    got = store.verify(key)
    assert got is not None
    assert (got.name, got.key_id, got.scope, got.rate_limit_per_minute) == ("ci-bot", rec.key_id, "predict", 30)
    assert got.revoked_at is None and got.created_at.tzinfo is not None


def test_wrong_malformed_and_unknown_keys_are_refused(store, tmp_path):
    _, key = store.create("a")
    with KeyStore(tmp_path / "elsewhere.db") as other:
        _, foreign = other.create("b")  # well-formed, but its key_id is unknown to `store`
    key_id = parse_key_id(key)
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")
    swapped = f"dt_{key_id}_{foreign.split('_', 2)[2]}"  # real key_id, another key's secret
    for bad in (None, "", "dt_", "Bearer " + key, key + " ", key.upper(), flipped, swapped, foreign,
                "dt_zzzzzzzz_" + "a" * 43, key + "x" * 300, 12345, b"bytes"):
        assert store.verify(bad) is None, bad
    assert store.verify(key) is not None


def test_revoked_key_is_refused_at_once_and_name_can_be_reused(store):
    rec, key = store.create("ci-bot")
    assert store.verify(key) is not None  # now cached
    revoked = store.revoke("ci-bot")
    assert revoked.key_id == rec.key_id and revoked.revoked_at is not None
    assert store.verify(key) is None
    assert store.revoke(rec.key_id).revoked_at == revoked.revoked_at  # revoking again changes nothing
    rec2, key2 = store.create("ci-bot")
    assert rec2.key_id != rec.key_id and store.verify(key2) is not None and store.verify(key) is None
    store.revoke(key2)  # the full key string also names it
    assert store.verify(key2) is None


def test_revocation_reaches_a_second_store_on_the_same_file_within_a_second(tmp_path):
    path = tmp_path / "shared.db"
    with KeyStore(path) as cli, KeyStore(path) as server:
        _, key = cli.create("shared")
        assert server.verify(key) is not None  # the server caches the good lookup
        cli.revoke("shared")
        time.sleep(0.6)  # just past the default 0.5 s cache: the contract is "refused within one second"
        assert server.verify(key) is None


def test_duplicate_active_name_is_refused(store):
    store.create("dup")
    with pytest.raises(ValueError, match="already exists.*revoke"):
        store.create("dup", scope="admin")
    assert [r.name for r in store.list()] == ["dup"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="ok", scope="root"), "invalid scope 'root'.*'predict'.*'admin'"),
    (dict(name=""), "invalid key name.*1-64"),
    (dict(name="a" * 65), "invalid key name.*1-64"),
    (dict(name="has space"), "invalid key name.*letters, digits"),
    (dict(name="semi;colon"), "invalid key name"),
    (dict(name="ok", rate_limit_per_minute=0), "invalid rate limit.*>= 1"),
])
def test_bad_arguments_say_what_to_fix(store, kwargs, message):
    with pytest.raises(ValueError, match=message):
        store.create(**kwargs)
    assert store.list() == []


def test_unknown_key_cannot_be_revoked(store):
    with pytest.raises(ValueError, match="no key named.*keys list"):
        store.revoke("ghost")


def test_the_db_file_holds_hashes_not_secrets_and_is_owner_only(tmp_path):
    path = tmp_path / "nested" / "dir" / "keys.db"
    with KeyStore(path) as s:
        rec, key = s.create("secretive")
    raw = path.read_bytes()
    secret = key.split("_", 2)[2]
    assert hashlib.sha256(key.encode()).hexdigest().encode() in raw  # we are reading the right bytes
    assert rec.key_id.encode() in raw
    assert secret.encode() not in raw and secret[:20].encode() not in raw and key.encode() not in raw
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_list_has_no_secrets_and_includes_revoked_keys(store):
    _, k1 = store.create("one")
    _, k2 = store.create("two", scope="admin")
    store.revoke("one")
    records = store.list()
    assert [(r.name, r.active) for r in records] == [("one", False), ("two", True)]
    text = repr(records) + repr(store)
    for key in (k1, k2):
        assert key.split("_", 2)[2] not in text
        assert hashlib.sha256(key.encode()).hexdigest() not in text
    assert not {"secret", "key_hash", "key"} & set(KeyRecord.__dataclass_fields__)


def test_scopes_admin_allows_everything_predict_only_predict(store):
    admin, _ = store.create("adm", scope="admin")
    pred, _ = store.create("pred")
    assert admin.allows("admin") and admin.allows("predict")
    assert pred.allows("predict") and not pred.allows("admin")
    assert not store.revoke("pred").allows("predict")


def test_default_db_follows_domaintune_home(monkeypatch, tmp_path):
    monkeypatch.setenv("DOMAINTUNE_HOME", str(tmp_path / "home"))
    assert default_keys_db() == tmp_path / "home" / "keys.db"


def test_many_threads_verify_and_create_concurrently(tmp_path):
    # cache_ttl=0 sends every verify to the database, so the threads really share the engine.
    with KeyStore(tmp_path / "keys.db", cache_ttl=0) as s:
        keys = [s.create(f"k{i}")[1] for i in range(3)]
        errors, results = [], []

        def hammer(n):
            try:
                for j in range(30):
                    key = keys[(n + j) % 3]
                    results.append((s.verify(key) is not None, s.verify(key[:-2] + "__") is None))
                s.create(f"thread-{n}")
            except Exception as e:  # noqa: BLE001 - collected, then asserted empty
                errors.append(e)

        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(results) == 180 and all(ok and refused for ok, refused in results)
        assert sorted(r.name for r in s.list()) == sorted([f"k{i}" for i in range(3)] + [f"thread-{n}" for n in range(6)])


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_rate_limiter_allows_the_limit_then_refuses_with_retry_after():
    clock = FakeClock()
    rl = RateLimiter(clock=clock)
    assert all(rl.allow("a", 6)[0] for _ in range(6))
    ok, retry = rl.allow("a", 6)
    assert not ok and 0 < retry <= 10.0  # 6/min refills one token every 10 s
    assert rl.allow("b", 6) == (True, 0.0)  # buckets are per key
    clock.now += retry
    assert rl.allow("a", 6)[0] and not rl.allow("a", 6)[0]
    assert all(rl.allow("free", None) == (True, 0.0) for _ in range(1000))


def test_rate_limiter_is_exact_under_threads():
    rl = RateLimiter(clock=FakeClock())  # frozen clock: nothing refills, so exactly `limit` calls pass
    allowed = []

    def spam():
        allowed.extend(ok for ok, _ in (rl.allow("k", 100) for _ in range(50)))

    threads = [threading.Thread(target=spam) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 100 and len(allowed) == 200
