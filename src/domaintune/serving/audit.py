"""The audit / prediction log: who asked which model what, and what it answered.

Every request is recorded (time, key name, model + version, a keyed hash of the raw input,
the input with PII masked, the output, latency, status) through SQLAlchemy: SQLite by
default, PostgreSQL (or anything SQLAlchemy speaks) by URL.

Durability is the contract: `record(..., durable=True)` returns a future that resolves only
once the row is committed (SQLite in WAL mode with `synchronous=FULL`: the commit has reached
the disk), and the service (`domaintune.serving.middleware`) sends a 2xx only after that.
If the store cannot take the row within `deadline_s` (locked by another process, database
down), the future fails, the client gets 503 and the row is kept - its status rewritten to
503, which is what the client saw - in a bounded backlog that is written once the store
recovers. So an acknowledged request is never missing, even after kill -9 of the server.

Throughput comes from group commit: one writer thread takes everything queued since its last
commit and inserts it in one transaction, so concurrent requests share one fsync.

Raw text never reaches the database (or any log): the writer masks it with
`domaintune.data.pii.mask_pii`. `input_sha256` holds an HMAC-SHA-256 under the installation
secret (`domaintune.security.keyed_hash`), not a plain SHA-256: inputs are short and
structured, and an unkeyed hash of a masked phone number is reversed by brute force in
under a second. The database file is created owner-only (0600), and so are its -wal/-shm.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import logging
import queue
import threading
import time
from collections import deque
from pathlib import Path

from sqlalchemy import (JSON, Column, DateTime, Float, Integer, MetaData, String, Table, Text, create_engine, event,
                        func, select)

from domaintune.data.pii import PiiConfig, mask_pii

log = logging.getLogger("domaintune.audit")

metadata = MetaData()
predictions = Table(
    "predictions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("key_name", String(64), nullable=True, index=True),
    Column("model", String(128), nullable=False, index=True),
    Column("model_version", String(32), nullable=True),
    Column("endpoint", String(16), nullable=False),
    Column("n_texts", Integer, nullable=False),
    Column("input_sha256", String(64), nullable=False),
    Column("input_masked", Text, nullable=False),
    Column("output", JSON, nullable=True),
    Column("latency_ms", Float, nullable=True),
    Column("status", Integer, nullable=False),
)


def to_url(url_or_path: str | Path) -> str:
    """An SQLAlchemy URL; a plain path becomes an SQLite file created owner-only (0600, folder 0700)."""
    from domaintune.security import sqlite_url_private

    return sqlite_url_private(url_or_path)


def input_hash(text: str) -> str:
    """Lets an auditor holding the installation secret check 'was this exact text sent?' (HMAC-SHA-256)."""
    from domaintune.security import keyed_hash

    return keyed_hash(text)


class AuditUnavailable(RuntimeError):
    """The audit store did not take a row before its deadline; the request must not be acknowledged."""


class AuditLog:
    """Batched writer of request records; `record(..., durable=True)` returns a future resolved on commit."""

    def __init__(self, url_or_path: str | Path, pii: PiiConfig | None = None, batch: int = 500,
                 flush_seconds: float = 0.2, deadline_s: float = 5.0, backlog_limit: int = 100_000,
                 on_failure=None):
        url = to_url(url_or_path)
        self.is_sqlite = url.startswith("sqlite")
        kwargs = {"connect_args": {"check_same_thread": False, "timeout": 1.0}} if self.is_sqlite \
            else {"pool_pre_ping": True}
        self.engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            @event.listens_for(self.engine, "connect")
            def _durable_sqlite(dbapi_conn, _record):  # per connection: FULL = a commit is on disk when it returns
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA synchronous=FULL")
                cur.close()

            with self.engine.begin() as conn:  # WAL: readers (monitor, auditors) never block the writer
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        metadata.create_all(self.engine)
        if self.is_sqlite:
            to_url(url_or_path)  # -wal/-shm now exist: make sure they are 0600 too
        self.pii = pii or PiiConfig()
        self.batch, self.flush_seconds = batch, flush_seconds
        self.deadline_s, self.backlog_limit = deadline_s, backlog_limit
        self.on_failure = on_failure  # callback(reason) for the Prometheus counter of audit failures
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._backlog: deque[dict] = deque()  # rows whose client got 503; written when the store recovers
        self._closed = threading.Event()
        self.written = 0
        self.failed_batches = 0
        self.dropped = 0
        self._writer = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._writer.start()

    def record(self, *, key_name: str | None, model: str, version: str | None, endpoint: str, inputs: list[str],
               output, latency_ms: float, status: int, durable: bool = False):
        """Queue one row for one request; O(1) on the request path (masking happens on the writer thread).

        With `durable`, a `concurrent.futures.Future` that resolves when the row is committed, or fails with
        `AuditUnavailable` once `deadline_s` has passed without a commit."""
        if self._closed.is_set():
            raise AuditUnavailable("the audit log is closed")
        future = concurrent.futures.Future() if durable else None
        self._queue.put({"created_at": dt.datetime.now(dt.timezone.utc), "key_name": key_name, "model": model,
                         "model_version": version, "endpoint": endpoint, "inputs": inputs, "output": output,
                         "latency_ms": latency_ms, "status": status, "_future": future,
                         "_deadline": time.monotonic() + self.deadline_s})
        return future

    def _row(self, item: dict) -> dict:
        """The stored row: a single text as itself, a batch as a JSON list; keyed hash of the raw text(s); PII masked."""
        inputs = item.pop("inputs")
        single = len(inputs) == 1
        raw = inputs[0] if single else json.dumps(inputs, ensure_ascii=False)
        masked = mask_pii(inputs[0], self.pii) if single else json.dumps([mask_pii(t, self.pii) for t in inputs],
                                                                          ensure_ascii=False)
        return {**item, "n_texts": len(inputs), "input_sha256": input_hash(raw) if inputs else "",
                "input_masked": masked if inputs else "", "output": _masked(item["output"], self.pii)}

    def _drain(self, first=None) -> list[dict]:
        items = [first] if first is not None else []
        while len(items) < self.batch:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _insert(self, rows: list[dict]) -> bool:
        try:
            with self.engine.begin() as conn:
                conn.execute(predictions.insert(), rows)
            self.written += len(rows)
            return True
        except Exception as e:  # a locked/unreachable store must not kill the writer
            log.debug("audit write of %d rows failed: %s", len(rows), type(e).__name__)
            return False

    def _write(self, items: list[dict], final: bool = False) -> None:
        """Commit `items` (and any backlog); resolve their futures; past the deadline fail them and keep the rows."""
        if not items:  # only the backlog: one quiet try per flush interval while the store is down
            if self._backlog and self._insert(list(self._backlog)):
                self._backlog.clear()
            return
        futures = [it.pop("_future") for it in items]
        deadline = min((it.pop("_deadline") for it in items), default=time.monotonic())
        rows = [self._row(it) for it in items]
        backlog = list(self._backlog)
        attempt = 0
        while True:
            if self._insert(backlog + rows):
                self._backlog.clear()
                for f in futures:
                    if f is not None and not f.done():
                        f.set_result(True)
                return
            if backlog and self._insert(rows):  # the backlog itself may be the problem: never hold new rows back
                for f in futures:
                    if f is not None and not f.done():
                        f.set_result(True)
                return
            attempt += 1
            if time.monotonic() >= deadline or (final and attempt >= 3):
                break
            time.sleep(min(0.1 * attempt, 0.5))
        self.failed_batches += 1
        log.warning("audit store unavailable for %.1f s: %d request(s) answered 503, rows kept for a later write",
                    self.deadline_s, sum(f is not None for f in futures))
        for f in futures:
            if f is not None and not f.done():
                f.set_exception(AuditUnavailable(f"the audit store did not accept the row within {self.deadline_s} s"))
        for row, f in zip(rows, futures):
            if f is not None:
                row["status"] = 503  # what the client was told
        self._backlog.extend(rows)
        while len(self._backlog) > self.backlog_limit:
            self._backlog.popleft()
            self.dropped += 1
            if self.on_failure is not None:
                self.on_failure("dropped")

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                first = self._queue.get(timeout=self.flush_seconds)
            except queue.Empty:
                if self._backlog:
                    self._write([])
                continue
            self._write(self._drain(first))
        while True:  # closing: write everything still queued
            items = self._drain()
            if not items:
                break
            self._write(items, final=True)
        if self._backlog:
            self._write([])
            if self._backlog:
                log.error("audit log closed with %d unwritten rows of requests answered 503 (store unavailable)",
                          len(self._backlog))

    def pending(self) -> int:
        return self._queue.qsize() + len(self._backlog)

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting rows, flush every queued row, dispose the engine."""
        self._closed.set()
        self._writer.join(timeout)
        self.engine.dispose()

    # read side (tests, `domaintune monitor` later)
    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(predictions)).scalar_one())

    def rows(self, limit: int = 100) -> list[dict]:
        with self.engine.connect() as conn:
            res = conn.execute(select(predictions).order_by(predictions.c.id.desc()).limit(limit))
            return [dict(r._mapping) for r in res]


def _masked(obj, pii: PiiConfig):
    """The output as plain JSON with every string PII-masked (NER spans and retrieval answers quote the input)."""
    if obj is None:
        return None
    if isinstance(obj, str):
        return mask_pii(obj, pii)
    if isinstance(obj, dict):
        return {k: _masked(v, pii) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_masked(v, pii) for v in obj]
    if isinstance(obj, (int, float, bool)):
        return obj
    return json.loads(json.dumps(obj, default=float))
