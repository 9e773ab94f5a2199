"""API keys for the HTTP service: a small SQL-backed store plus a per-key rate limiter.

A key looks like `dt_<key_id>_<secret>`. `key_id` (8 hex chars) is public: it names the key in
logs, listings and the audit store, and lets `verify` find the row with one indexed lookup
instead of hashing against every stored key. Only a hash of the full key is stored, so a
copied database file does not hand out working keys, and the secret is shown exactly once.

The store is a SQLite file by default so a single-machine deployment needs no database
server; any SQLAlchemy URL works when several servers must share keys.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (Column, DateTime, Index, Integer, MetaData, String, Table, create_engine, insert, make_url,
                        or_, select, update)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from domaintune.security import sqlite_url_private

log = logging.getLogger(__name__)

SCOPES = ("predict", "admin")
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)
# The secret is token_urlsafe(32) (43 chars); accept a range so the format can grow without a migration.
_KEY_RE = re.compile(r"dt_([0-9a-f]{8})_([A-Za-z0-9_-]{16,128})", re.ASCII)
_MAX_KEY_LEN = 200  # refuse huge header values before hashing them
_TOUCH_EVERY_S = 60.0  # last_used_at is informational: one write a minute per key is plenty
_CACHE_MAX = 10_000  # bounds memory when clients probe with many random key ids

metadata = MetaData()
api_keys = Table(
    "api_keys", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, index=True),
    Column("key_id", String(16), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False),
    Column("scope", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("rate_limit_per_minute", Integer, nullable=True),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
)
# Names are unique among active keys only, so a revoked name can be reused. Partial indexes exist on
# SQLite and PostgreSQL; elsewhere `create` still checks, only the race between two writers is open.
Index("uq_api_keys_active_name", api_keys.c.name, unique=True, sqlite_where=api_keys.c.revoked_at.is_(None),
      postgresql_where=api_keys.c.revoked_at.is_(None)).ddl_if(dialect=("sqlite", "postgresql"))


class KeyStoreError(ValueError):
    """A user mistake (bad name, unknown key, ...); the message says how to fix it."""


def state_home() -> Path:
    """$DOMAINTUNE_HOME (default ~/.domaintune): where the key store and the model registry live."""
    return Path(os.environ.get("DOMAINTUNE_HOME", "~/.domaintune")).expanduser()


def default_keys_db() -> Path:
    return state_home() / "keys.db"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC, so say so."""
    return dt.replace(tzinfo=timezone.utc) if dt is not None and dt.tzinfo is None else dt


def _hash(key: str) -> str:
    # Plain SHA-256 is enough: the secret is 256 random bits, so there is nothing to brute-force
    # and a slow KDF (bcrypt, scrypt) would only add latency to every request.
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def parse_key_id(key: object) -> str | None:
    """The public key_id inside a well-formed key string, else None (never raises)."""
    if not isinstance(key, str) or len(key) > _MAX_KEY_LEN:
        return None
    m = _KEY_RE.fullmatch(key)
    return m.group(1) if m else None


@dataclass(frozen=True)
class KeyRecord:
    """What the service may know about a key: never the secret, never the hash."""

    name: str
    key_id: str
    scope: str
    created_at: datetime
    revoked_at: datetime | None
    rate_limit_per_minute: int | None
    last_used_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, scope: str) -> bool:
        """admin may do everything; predict may only predict."""
        return self.active and (self.scope == "admin" or self.scope == scope)


def _record(row) -> KeyRecord:
    return KeyRecord(name=row.name, key_id=row.key_id, scope=row.scope, created_at=_aware(row.created_at),
                     revoked_at=_aware(row.revoked_at), rate_limit_per_minute=row.rate_limit_per_minute,
                     last_used_at=_aware(row.last_used_at))


def _validate(name: str, scope: str, rate_limit_per_minute: int | None) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise KeyStoreError(f"invalid key name {name!r}: use 1-64 characters from letters, digits, '-', '_' "
                            f"and '.', e.g. 'ci-bot' or 'team.search'")
    if scope not in SCOPES:
        raise KeyStoreError(f"invalid scope {scope!r}: use 'predict' (may call the model) or 'admin' "
                            f"(may also manage the service)")
    limit = rate_limit_per_minute
    if limit is not None and (type(limit) is not int or limit < 1):  # type(): True is not a rate limit
        raise KeyStoreError(f"invalid rate limit {limit!r}: give a whole number of requests per minute >= 1, "
                            f"or no limit at all")


class KeyStore:
    """Create, list, revoke and verify API keys; safe to share between the server's threads.

    `verify` caches each key_id lookup for `cache_ttl` seconds (default 0.5) so a busy server does
    not hit the database on every request, while a key revoked by another process (e.g. the CLI)
    is still refused within one second.
    """

    def __init__(self, url_or_path: str | os.PathLike | None = None, *, cache_ttl: float = 0.5) -> None:
        if cache_ttl < 0:
            raise ValueError(f"cache_ttl must be >= 0 seconds, got {cache_ttl}")
        self.cache_ttl = float(cache_ttl)
        target = default_keys_db() if url_or_path is None else url_or_path
        # a SQLite file (path or sqlite:/// URL) is created owner-only (0600, folder 0700) before SQLite opens it,
        # since it holds key hashes; its -journal inherits the mode
        url = make_url(sqlite_url_private(target))
        kwargs: dict = {"pool_pre_ping": True}
        if url.get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"check_same_thread": False}
            if url.database in (None, "", ":memory:"):
                kwargs["poolclass"] = StaticPool  # one shared connection, or each thread sees its own empty DB
        self._engine = create_engine(url, **kwargs)
        metadata.create_all(self._engine)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, tuple[str, KeyRecord] | None]] = {}
        self._touched: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"KeyStore({self._engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc) -> None:  # `with KeyStore(...) as s:` releases the pool's connections/files
        self.close()

    def create(self, name: str, scope: str = "predict",
               rate_limit_per_minute: int | None = None) -> tuple[KeyRecord, str]:
        """Make a new key; returns its record and the full key string, which is never stored."""
        _validate(name, scope, rate_limit_per_minute)
        for _ in range(5):  # retry only the (1 in 4 billion) key_id collision
            key_id = secrets.token_hex(4)
            key = f"dt_{key_id}_{secrets.token_urlsafe(32)}"
            rec = KeyRecord(name=name, key_id=key_id, scope=scope, created_at=_utcnow(), revoked_at=None,
                            rate_limit_per_minute=rate_limit_per_minute)
            try:
                with self._engine.begin() as conn:
                    self._check_name_free(conn, name)
                    if conn.execute(select(api_keys.c.id).where(api_keys.c.key_id == key_id)).first():
                        continue
                    conn.execute(insert(api_keys).values(key_hash=_hash(key), **asdict(rec)))
            except IntegrityError as e:
                if "key_id" in str(e.orig):
                    continue
                with self._engine.connect() as conn:  # lost a race with another writer: explain it
                    self._check_name_free(conn, name)
                raise
            self._forget(key_id)
            return rec, key
        raise RuntimeError("could not find a free key id after 5 tries; try again")

    @staticmethod
    def _check_name_free(conn, name: str) -> None:
        other = conn.execute(select(api_keys.c.key_id).where(api_keys.c.name == name,
                                                             api_keys.c.revoked_at.is_(None))).first()
        if other:
            raise KeyStoreError(f"an active key named {name!r} already exists (id {other.key_id}); pick another "
                                f"name, or revoke it first: domaintune keys revoke {name}")

    def list(self) -> list[KeyRecord]:
        """Every key, revoked ones included (oldest first); records carry no secrets or hashes."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)).all()
        return [_record(r) for r in rows]

    def revoke(self, name_or_key_id: str) -> KeyRecord:
        """Revoke by active name, key_id or full key. Revoking a revoked key returns it unchanged."""
        ident = parse_key_id(name_or_key_id) or name_or_key_id
        c = api_keys.c
        with self._engine.begin() as conn:
            # An active name wins over a key_id that happens to look the same, then key ids, then old names.
            rows = conn.execute(select(api_keys).where(or_(c.name == ident, c.key_id == ident))
                                .order_by(c.revoked_at.is_(None).desc(), (c.key_id == ident).desc(),
                                          c.created_at.desc())).all()
            if not rows:
                raise KeyStoreError(f"no key named or with id {name_or_key_id!r}; see the names and ids with: "
                                    f"domaintune keys list")
            row = rows[0]
            if row.revoked_at is None:
                conn.execute(update(api_keys).where(c.id == row.id, c.revoked_at.is_(None))
                             .values(revoked_at=_utcnow()))
                row = conn.execute(select(api_keys).where(c.id == row.id)).one()
        self._forget(row.key_id)
        return _record(row)

    def verify(self, key: str | None) -> KeyRecord | None:
        """The active key's record, or None if the key is missing, malformed, unknown, wrong or revoked."""
        key_id = parse_key_id(key)
        if key_id is None:
            return None
        entry = self._lookup(key_id)
        if entry is None:
            return None
        stored_hash, rec = entry
        if not hmac.compare_digest(_hash(key), stored_hash) or rec.revoked_at is not None:
            return None
        self._touch(key_id)
        return rec

    def _lookup(self, key_id: str) -> tuple[str, KeyRecord] | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key_id)
            if hit is not None and hit[0] > now:
                return hit[1]
        with self._engine.connect() as conn:  # outside the lock: other keys keep flowing meanwhile
            row = conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
        entry = None if row is None else (row.key_hash, _record(row))
        if self.cache_ttl > 0:
            with self._lock:
                if len(self._cache) >= _CACHE_MAX:  # entries are short-lived: dropping all is cheap
                    self._cache.clear()
                self._cache[key_id] = (now + self.cache_ttl, entry)
        return entry

    def _forget(self, key_id: str) -> None:
        with self._lock:
            self._cache.pop(key_id, None)

    def _touch(self, key_id: str) -> None:
        """Best-effort last_used_at, at most once a minute per key; never fails a request."""
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(key_id, -_TOUCH_EVERY_S) < _TOUCH_EVERY_S:
                return
            self._touched[key_id] = now
        try:
            with self._engine.begin() as conn:
                conn.execute(update(api_keys).where(api_keys.c.key_id == key_id).values(last_used_at=_utcnow()))
        except SQLAlchemyError as e:  # e.g. a read-only DB file: authentication must still work
            log.debug("could not record last use of key %s: %s", key_id, e)


class RateLimiter:
    """Per-key token bucket: up to `limit` requests at once, refilled at `limit` per minute.

    Bursts up to a minute's allowance are fine (clients batch), but the long-run rate is capped.
    State is per process and in memory; with several server processes each enforces its own bucket.
    """

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock  # monotonic, so wall-clock jumps neither refill nor drain buckets
        self._lock = threading.Lock()
        self._buckets: dict[str, list[float]] = {}  # key_id -> [tokens, last refill time]

    def allow(self, key_id: str, limit_per_minute: int | None) -> tuple[bool, float]:
        """(allowed, seconds until the next request would be allowed; 0.0 when allowed)."""
        if limit_per_minute is None:
            return True, 0.0
        if limit_per_minute <= 0:
            return False, 60.0
        capacity, rate = float(limit_per_minute), limit_per_minute / 60.0
        with self._lock:
            now = self._clock()
            bucket = self._buckets.setdefault(key_id, [capacity, now])
            bucket[0] = min(capacity, bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
            if bucket[0] >= 1.0:
                bucket[0] -= 1.0
                return True, 0.0
            return False, (1.0 - bucket[0]) / rate

    def reset(self, key_id: str | None = None) -> None:
        """Forget one key's bucket (e.g. after revocation) or all of them."""
        with self._lock:
            if key_id is None:
                self._buckets.clear()
            else:
                self._buckets.pop(key_id, None)
