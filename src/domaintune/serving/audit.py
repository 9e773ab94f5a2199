"""The audit / prediction log: who asked which model what, and what it answered.

Every request is recorded (time, key name, model + version, a SHA-256 of the raw
input, the input with PII masked, the output, latency, status) through
SQLAlchemy: SQLite by default, PostgreSQL (or anything SQLAlchemy speaks) by URL.

Writes never block a response: `record()` only appends to an in-memory queue;
one writer thread masks, hashes and inserts in batches (one transaction per
batch, which is also what makes SQLite keep up with thousands of requests per
second). `close()` drains everything still queued before returning, so a clean
shutdown loses nothing. Raw text never reaches the database (or any log): the
writer masks it with `domaintune.data.pii.mask_pii` before the insert.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import queue
import threading
from pathlib import Path

from sqlalchemy import JSON, Column, DateTime, Float, Integer, MetaData, String, Table, Text, create_engine, func, select

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
    s = str(url_or_path)
    if "://" in s:
        return s
    Path(s).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(s).expanduser()}"


def input_hash(text: str) -> str:
    """Lets an auditor check 'was this exact text sent?' without the store holding the text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class AuditLog:
    """Non-blocking, batched writer of prediction records; `close()` flushes."""

    def __init__(self, url_or_path: str | Path, pii: PiiConfig | None = None, batch: int = 500,
                 flush_seconds: float = 0.2):
        url = to_url(url_or_path)
        kwargs = {"connect_args": {"check_same_thread": False}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        self.engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            with self.engine.begin() as conn:  # WAL: readers (monitor, auditors) never block the writer
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        metadata.create_all(self.engine)
        self.pii = pii or PiiConfig()
        self.batch, self.flush_seconds = batch, flush_seconds
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = threading.Event()
        self.written = 0
        self.failed_batches = 0
        self._writer = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._writer.start()

    def record(self, *, key_name: str | None, model: str, version: str | None, endpoint: str, inputs: list[str],
               output, latency_ms: float, status: int) -> None:
        """Queue one row for one request; O(1) on the request path (masking happens on the writer thread)."""
        self._queue.put({"created_at": dt.datetime.now(dt.timezone.utc), "key_name": key_name, "model": model,
                         "model_version": version, "endpoint": endpoint, "inputs": inputs, "output": output,
                         "latency_ms": latency_ms, "status": status})

    def _row(self, item: dict) -> dict:
        """The stored row: a single text as itself, a batch as a JSON list; hash of the raw text(s); PII masked."""
        inputs = item.pop("inputs")
        single = len(inputs) == 1
        raw = inputs[0] if single else json.dumps(inputs, ensure_ascii=False)
        masked = mask_pii(inputs[0], self.pii) if single else json.dumps([mask_pii(t, self.pii) for t in inputs],
                                                                          ensure_ascii=False)
        return {**item, "n_texts": len(inputs), "input_sha256": input_hash(raw), "input_masked": masked,
                "output": _masked(item["output"], self.pii)}

    def _drain(self, first=None) -> list[dict]:
        rows = [first] if first is not None else []
        while len(rows) < self.batch:
            try:
                rows.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return rows

    def _write(self, items: list[dict]) -> None:
        if not items:
            return
        rows = [self._row(item) for item in items]
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    conn.execute(predictions.insert(), rows)
                self.written += len(rows)
                return
            except Exception as e:  # a locked/unreachable store must not kill the writer
                log.warning("audit write of %d rows failed (attempt %d/3): %s", len(rows), attempt + 1,
                            type(e).__name__)
                self._closed.wait(0.2 * (attempt + 1))
        self.failed_batches += 1

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                first = self._queue.get(timeout=self.flush_seconds)
            except queue.Empty:
                continue
            self._write(self._drain(first))
        while True:  # closing: write everything still queued
            rows = self._drain()
            if not rows:
                break
            self._write(rows)

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting the writer loop, flush every queued row, dispose the engine."""
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
