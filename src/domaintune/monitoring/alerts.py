"""Rule evaluation and where alerts go: the log, a webhook, and the stored alert history.

Everything here runs on the monitor's background thread or on the webhook's own
thread, never on the request path. The webhook sink only appends to a bounded
queue (a full queue drops the alert from the webhook and counts it; the history
still has it); its thread POSTs with retries and exponential backoff, so a dead
or hanging receiver delays nothing but other webhook deliveries.
Alerts carry statistics, rule and model names only: no input text, so no PII
reaches a log line or a receiver.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import math
import queue
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table, Text, create_engine, select

from domaintune.monitoring.rules import Rule, WebhookSpec

log = logging.getLogger("domaintune.alerts")


@dataclasses.dataclass
class Alert:
    id: str
    rule: str
    severity: str
    model: str
    model_version: str | None
    expression: str
    stat: str
    value: float              # the statistic over the window
    threshold: float
    window: int
    fired_at: str             # ISO 8601, UTC
    zscore: float | None = None
    texts_seen: int = 0       # texts the monitor had processed for this model when it fired

    @property
    def message(self) -> str:
        z = f" (z = {self.zscore:.2f})" if self.zscore is not None else ""
        return (f"[{self.severity}] {self.model}: rule {self.rule!r} fired: {self.stat} = {self.value:.4g}{z}; "
                f"{self.expression}")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["message"] = self.message
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


class RuleState:
    """One rule on one model: cooldown clock and, for z-score rules, the trailing baseline values."""

    def __init__(self, rule: Rule):
        self.rule = rule
        self.last_fired: float | None = None
        self.history: collections.deque[float] = collections.deque(maxlen=rule.zscore_baseline or 1)
        self.since_block = 0

    def evaluate(self, window, now: float) -> tuple[float, float | None] | None:
        """(value, z) when the rule fires on this window's current state, else None. Call once per new text."""
        r = self.rule
        if not window.full:
            return None
        value = window.share(r.label) if r.stat == "share" else window.value(r.stat)
        if not math.isfinite(value):
            return None
        z = None
        if r.zscore_baseline:
            ready = len(self.history) >= r.zscore_baseline
            if ready:
                mean = sum(self.history) / len(self.history)
                var = sum((h - mean) ** 2 for h in self.history) / (len(self.history) - 1)
                z = (value - mean) / max(math.sqrt(var), r.min_std)
            self.since_block += 1
            if self.since_block >= r.window:  # the end of a non-overlapping window joins the baseline
                self.since_block = 0
                self.history.append(value)
            if not ready or not r.compare(z):
                return None
        elif not r.compare(value):
            return None
        if self.last_fired is not None and now - self.last_fired < r.cooldown:
            return None
        self.last_fired = now
        return value, z


def make_alert(rule: Rule, model: str, version: str | None, value: float, z: float | None, seen: int) -> Alert:
    return Alert(id=uuid.uuid4().hex, rule=rule.name, severity=rule.severity, model=model, model_version=version,
                 expression=rule.expression, stat=rule.stat_text, value=float(value), threshold=rule.threshold,
                 window=rule.window, fired_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
                 zscore=None if z is None else float(z), texts_seen=seen)


# --- sinks ------------------------------------------------------------------------------------------

class LogSink:
    def emit(self, alert: Alert) -> None:
        level = logging.ERROR if alert.severity == "critical" else logging.WARNING
        log.log(level, "ALERT %s", alert.message)

    def close(self, timeout: float = 0) -> None:
        pass


class WebhookSink:
    """JSON POST per alert from a background thread; bounded queue, retries with exponential backoff."""

    def __init__(self, spec: WebhookSpec):
        import httpx

        self.spec = spec
        self._queue: queue.Queue = queue.Queue(maxsize=spec.queue_size)
        self._stop = threading.Event()
        self.delivered = self.failed = self.dropped = self.attempts = 0
        self._outstanding = 0  # alerts queued or being delivered (with their retries)
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=spec.timeout_seconds, headers=spec.headers)
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
        self._thread.start()

    def emit(self, alert: Alert) -> None:
        try:
            with self._lock:
                self._queue.put_nowait(alert)
                self._outstanding += 1
        except queue.Full:
            self.dropped += 1
            log.warning("alert webhook queue full (%d): alert %s not sent (it is in the alert history)",
                        self.spec.queue_size, alert.id)

    def _send(self, alert: Alert) -> None:
        delay = self.spec.backoff_seconds
        for attempt in range(self.spec.max_retries + 1):
            if self._stop.is_set() and attempt:
                break
            self.attempts += 1
            try:
                r = self._client.post(self.spec.url, json=alert.to_json())
                if r.status_code < 300:
                    self.delivered += 1
                    return
                retry = r.status_code >= 500 or r.status_code in (408, 429)
                why = f"HTTP {r.status_code}"
            except Exception as e:  # noqa: BLE001 - connection refused, timeout, DNS...
                retry, why = True, type(e).__name__
            if not retry or attempt == self.spec.max_retries:
                break
            log.info("alert webhook %s (attempt %d/%d); retrying in %.2f s", why, attempt + 1,
                     self.spec.max_retries + 1, delay)
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self.spec.max_backoff_seconds)
        self.failed += 1
        log.warning("alert webhook: alert %s (%s) not delivered: %s", alert.id, alert.rule, why)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                alert = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._send(alert)
            finally:
                with self._lock:
                    self._outstanding -= 1

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 5.0) -> None:
        """Give queued and in-flight alerts up to `timeout` seconds, then stop (a hung receiver cannot hold
        shutdown longer)."""
        end = time.monotonic() + timeout
        while self._outstanding and time.monotonic() < end and self._thread.is_alive():
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(max(0.0, end - time.monotonic()) + 0.5)
        left = self._outstanding
        if left:
            log.warning("alert webhook closed with %d alert(s) undelivered (they are in the alert history)", left)
        if not self._thread.is_alive():
            self._client.close()


metadata = MetaData()
alerts_table = Table(
    "alerts", metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("id", String(32), nullable=False, unique=True),
    Column("fired_at", DateTime(timezone=True), nullable=False, index=True),
    Column("model", String(128), nullable=False, index=True),
    Column("model_version", String(32), nullable=True),
    Column("rule", String(100), nullable=False, index=True),
    Column("severity", String(16), nullable=False),
    Column("expression", Text, nullable=False),
    Column("stat", String(200), nullable=False),
    Column("value", Float, nullable=True),
    Column("zscore", Float, nullable=True),
    Column("threshold", Float, nullable=False),
    Column("window", Integer, nullable=False),
    Column("texts_seen", Integer, nullable=False),
)


class AlertStore:
    """The alert history (SQLAlchemy: SQLite file by default, any database URL).

    A SQLite file is created owner-only (0600, its folder 0700 if created here), and so are its -wal/-shm:
    alerts carry statistics and rule names only, but the history sits beside the audit log and reveals
    what the service saw and when, so it gets the same protection."""

    def __init__(self, url_or_path: str | Path):
        from domaintune.security import sqlite_url_private

        url = sqlite_url_private(url_or_path)
        kwargs = {"connect_args": {"check_same_thread": False}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        self.engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            with self.engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        metadata.create_all(self.engine)
        if url.startswith("sqlite"):
            sqlite_url_private(url)  # -wal/-shm exist now: make sure they are 0600 too

    def emit(self, alert: Alert) -> None:
        row = alert.to_json()
        row.pop("message")
        row["fired_at"] = dt.datetime.fromisoformat(alert.fired_at)
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    conn.execute(alerts_table.insert(), row)
                return
            except Exception as e:  # noqa: BLE001 - a locked store must not stop monitoring
                log.warning("alert history write failed (attempt %d/3): %s", attempt + 1, type(e).__name__)
                time.sleep(0.2 * (attempt + 1))

    def list(self, since: dt.datetime | None = None, model: str | None = None, limit: int = 1000) -> list[dict]:
        q = select(alerts_table).order_by(alerts_table.c.fired_at.desc(), alerts_table.c.pk.desc()).limit(limit)
        if model:
            q = q.where(alerts_table.c.model == model)
        if since is not None:
            q = q.where(alerts_table.c.fired_at >= _db_time(since, self.engine))
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
        for r in rows:
            r.pop("pk", None)
        return rows

    def close(self, timeout: float = 0) -> None:
        self.engine.dispose()


def _db_time(t: dt.datetime, engine) -> dt.datetime:
    """SQLite keeps naive UTC text: compare with naive UTC there, with aware times elsewhere."""
    t = t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(dt.timezone.utc).replace(tzinfo=None) if engine.dialect.name == "sqlite" else t


class Dispatcher:
    """Sends each alert to every sink; a failing sink is logged and never stops the others."""

    def __init__(self, sinks: list):
        self.sinks = sinks
        self.fired: list[Alert] = []          # recent alerts, for tests and the benchmark
        self.counts: collections.Counter = collections.Counter()

    def __call__(self, alert: Alert) -> None:
        self.fired.append(alert)
        if len(self.fired) > 10_000:
            del self.fired[:5_000]
        self.counts[(alert.model, alert.rule, alert.severity)] += 1
        for sink in self.sinks:
            try:
                sink.emit(alert)
            except Exception:  # noqa: BLE001
                log.exception("alert sink %s failed", type(sink).__name__)

    def close(self, timeout: float = 5.0) -> None:
        for sink in self.sinks:
            sink.close(timeout)
