"""`domaintune serve RUN_DIR [RUN_DIR ...]`: build the service and run it under uvicorn.

Shutdown order on SIGTERM / Ctrl-C (uvicorn's graceful shutdown, then our
lifespan hook): stop accepting connections -> let in-flight requests finish ->
drain every micro-batcher -> flush the audit log -> exit. SIGHUP reloads every
served run directory from disk (a retrained run copied over the old one, or an
export added) and swaps it in between two batches.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import threading
from pathlib import Path

from domaintune.serving.app import ModelSlot, ServeSettings, create_app
from domaintune.serving.metrics import ServiceMetrics

log = logging.getLogger("domaintune.serving")


class ServeError(ValueError):
    """The service cannot start as asked (bad names, auth off on a public address...)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except OSError:
            return False


def model_names(run_dirs: list[Path], names: list[str] | None) -> list[str]:
    names = list(names or [])
    if names and len(names) != len(run_dirs):
        raise ServeError(f"--name given {len(names)} time(s) for {len(run_dirs)} run director(ies); give one per run "
                         f"or none (the run directory's name is used)")
    out = names or [Path(r).resolve().name for r in run_dirs]
    if len(set(out)) != len(out):
        raise ServeError(f"two served models would share a name ({out}); pass --name once per run directory")
    for n in out:
        if not n or "/" in n or n.startswith("."):
            raise ServeError(f"model name {n!r} cannot be used in a URL path; pass --name")
    return out


def build_service(run_dirs: list[str | Path], names: list[str] | None = None, settings: ServeSettings | None = None,
                  keys_db: str | Path | None = None, audit_db: str | Path | None = None, host: str = "127.0.0.1",
                  alerts: str | Path | None = None, alerts_db: str | Path | None = None,
                  registry: list[str] | None = None, registry_db: str | Path | None = None):
    """(FastAPI app, close function). Loads every model before returning, so /readyz is true from the start.

    `alerts`: rules YAML evaluated continuously (`domaintune.monitoring.rules`); alert history in `alerts_db`
    (default alerts.db beside the first run). Drift gauges are on whether or not rules are given.
    `registry`: NAME[@alias] specs served from the model registry and switched on promotion
    (see domaintune.serving.registry_watch)."""
    from domaintune.monitoring.online import build_monitor
    from domaintune.serving import registry_watch
    from domaintune.serving.audit import AuditLog
    from domaintune.serving.keys import KeyStore, default_keys_db

    settings = settings or ServeSettings()
    if not settings.auth:
        if not is_loopback(host):
            raise ServeError(f"--no-auth is allowed only on a loopback address, not {host!r}: anyone who can reach "
                             f"the port could call the model; create a key with `domaintune keys create`")
        log.warning("AUTHENTICATION IS DISABLED (--no-auth): every local process can call this service")
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs and not registry:
        raise ServeError("give at least one run directory (or --registry NAME[@alias]) to serve")
    names = model_names(run_dirs, names)
    if alerts is not None and not settings.monitor:
        raise ServeError("--alerts needs the monitor that --no-monitor turns off; drop one of the two")
    ruleset = None
    if alerts is not None:
        from domaintune.monitoring.rules import load_rules

        ruleset = load_rules(alerts)  # errors stop startup now, before model loading (labels checked later)
    if settings.runs_root is None and run_dirs:
        settings.runs_root = run_dirs[0].resolve().parent
    keystore = KeyStore(keys_db or default_keys_db()) if settings.auth else None
    if keystore is not None and not [k for k in keystore.list() if k.revoked_at is None]:
        log.warning("no active API keys in %s: every request will get 401; create one with "
                    "`domaintune keys create --name NAME --scope predict`", keys_db or default_keys_db())
    home = run_dirs[0].resolve().parent if run_dirs else registry_watch.home(registry_db)
    audit = AuditLog(audit_db or home / "audit.db", pii=settings.pii, deadline_s=settings.audit_timeout_s)
    metrics = ServiceMetrics()
    slots = {n: ModelSlot(n, r, settings, metrics) for n, r in zip(names, run_dirs)}
    watcher = None
    try:  # a bad rules file stops startup with every problem listed (RulesError)
        registry_slots, watcher = registry_watch.attach(registry or [], registry_db, settings, metrics, taken=slots)
        slots.update(registry_slots)
        monitor = None
        if settings.monitor:
            monitor = build_monitor([(s.name, s.version, s.run_dir) for s in slots.values()], metrics.registry,
                                    ruleset, alerts_db or home / "alerts.db")
    except BaseException:
        if watcher is not None:
            watcher.stop()
        for s in slots.values():
            s.batcher.close()
        audit.close()
        raise
    for s in slots.values():
        log.info("serving %s (%s, %s backend, version %s) from %s", s.name, s.predictor.task.name,
                 s.predictor.backend, s.version, s.run_dir)
    closed = threading.Event()

    def close() -> None:
        if closed.is_set():
            return
        closed.set()
        if watcher is not None:
            watcher.stop()
        for s in slots.values():
            s.batcher.close()
        if monitor is not None:
            monitor.close()
        audit.close()
        log.info("audit log flushed: %d rows written", audit.written)

    app = create_app(slots, settings, metrics, keystore=keystore, audit=audit, on_shutdown=close, monitor=monitor)
    app.state.audit, app.state.keystore, app.state.close, app.state.monitor = audit, keystore, close, monitor
    return app, close


def serve(run_dirs: list[str | Path], host: str = "127.0.0.1", port: int = 8000, names: list[str] | None = None,
          settings: ServeSettings | None = None, keys_db=None, audit_db=None, graceful_seconds: int = 30,
          log_level: str = "warning", alerts=None, alerts_db=None, registry: list[str] | None = None,
          registry_db=None) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads every model."""
    import uvicorn

    app, close = build_service(run_dirs, names, settings, keys_db, audit_db, host, alerts=alerts, alerts_db=alerts_db,
                               registry=registry, registry_db=registry_db)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=graceful_seconds,
                            access_log=False,  # the audit log is the access log, PII-masked; uvicorn's is not
                            limit_concurrency=None, backlog=2048)
    server = uvicorn.Server(config)

    def on_hup(*_):
        def work():
            for slot in app.state.slots.values():
                try:
                    rec = slot.reload()
                    log.warning("SIGHUP: %s now version %s", rec["model"], rec["version"])
                except Exception as e:  # keep serving the old version
                    log.error("SIGHUP reload of %s failed, still serving the previous version: %s", slot.name, e)
        threading.Thread(target=work, name="sighup-reload", daemon=True).start()

    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_hup)
    try:
        server.run()
    finally:
        close()
