"""`domaintune serve [RUN_DIR ...] [--registry NAME[@alias] ...]` (see domaintune.serving)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app) -> None:
    @app.command()
    def serve(run_dirs: Optional[list[Path]] = typer.Argument(None, help="Run directories to serve."),
              host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
              port: int = typer.Option(8000, "--port"),
              name: list[str] = typer.Option([], "--name", help="URL name per run directory (default: its folder name)."),
              keys_db: Optional[str] = typer.Option(None, "--keys-db", help="API key store (path or SQLAlchemy URL; "
                                                    "default $DOMAINTUNE_HOME/keys.db)."),
              audit_db: Optional[str] = typer.Option(None, "--audit-db", help="Audit log (path or SQLAlchemy URL, e.g. "
                                                     "postgresql://...; default audit.db beside the first run)."),
              backend: str = typer.Option("auto", "--backend", help="auto, torch, onnx or onnx-int8."),
              max_batch: int = typer.Option(32, "--max-batch", help="Texts per model call."),
              max_wait_ms: float = typer.Option(0.0, "--max-wait-ms", help="Extra wait for a batch to fill (0: batches form while the model is busy)."),
              max_queue: int = typer.Option(1024, "--max-queue", help="Texts waiting per model before 503."),
              max_body_bytes: int = typer.Option(1_000_000, "--max-body-bytes"),
              body_timeout: float = typer.Option(10.0, "--body-timeout", min=0.001, help="Seconds a request may take "
                                                 "to send its whole body; past it 408 and the connection is closed "
                                                 "(slow-body clients cannot hold connections)."),
              max_texts: int = typer.Option(256, "--max-texts", help="Texts per request."),
              max_text_chars: int = typer.Option(20_000, "--max-text-chars", help="Characters per text."),
              threads: Optional[int] = typer.Option(None, "--threads", help="Model threads (default: physical cores)."),
              runs_root: Optional[Path] = typer.Option(None, "--runs-root", help="Admin reload may load run "
                                                       "directories only under this folder (default: the first "
                                                       "run's parent)."),
              no_auth: bool = typer.Option(False, "--no-auth", help="Disable API keys (loopback only; logs a warning)."),
              graceful_seconds: int = typer.Option(30, "--graceful-seconds", help="How long shutdown waits for "
                                                   "in-flight requests."),
              alerts: Optional[Path] = typer.Option(None, "--alerts", help="Alert rules YAML, evaluated "
                                                    "continuously (README: Monitoring and alerts)."),
              alerts_db: Optional[str] = typer.Option(None, "--alerts-db", help="Alert history (path or SQLAlchemy "
                                                      "URL; default alerts.db beside the first run)."),
              no_monitor: bool = typer.Option(False, "--no-monitor", help="No drift statistics or alert rules "
                                              "(saves the monitor thread's tokenizing; /metrics keeps the request "
                                              "metrics)."),
              registry: list[str] = typer.Option([], "--registry", help="Serve a registry alias, NAME or "
                                                 "NAME@ALIAS (default alias production; repeatable); a promote or "
                                                 "rollback is picked up within a second, without a restart."),
              registry_db: Optional[str] = typer.Option(None, "--registry-db", help="Registry database "
                                                        "[default: $DOMAINTUNE_HOME/registry.db]."),
              audit_timeout: float = typer.Option(5.0, "--audit-timeout", help="Seconds a reply waits for its "
                                                  "audit row to be on disk; past it the client gets 503 with "
                                                  "Retry-After (an answered request is never missing from the "
                                                  "audit)."),
              metrics_auth: bool = typer.Option(False, "--metrics-auth", help="/metrics needs an API key (any "
                                                "scope)."),
              docs: bool = typer.Option(False, "--docs", help="Serve Swagger UI at /docs from the packaged "
                                        "swagger-ui-bundle (off by default; /openapi.json is always served)."),
              max_new_tokens: int = typer.Option(512, "--max-new-tokens", min=1, help="Most tokens one "
                                                 "generation request may ask for (max_tokens over it: 422)."),
              max_concurrent_generations: int = typer.Option(2, "--max-concurrent-generations", min=1,
                                                             help="Generations running at once per model; "
                                                             "one more gets 429 with Retry-After."),
              faq_index: Optional[Path] = typer.Option(None, "--faq-index", help="A `task: retrieval` run: generation "
                                                       "models put its top FAQ entries into every prompt."),
              faq_top_k: int = typer.Option(3, "--faq-top-k", min=1, help="With --faq-index: how many entries."),
              verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
        """Serve runs over HTTP: predict, explain, generate (OpenAI-compatible chat completions), health,
        Prometheus metrics; API keys, batching, audit log."""
        from domaintune import cli as base

        base._setup_logging(verbose)
        from domaintune.serving.app import ServeSettings
        from domaintune.serving.server import ServeError, serve as run_server

        settings = ServeSettings(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                                 max_body_bytes=max_body_bytes, body_timeout_s=body_timeout, max_texts=max_texts,
                                 max_text_chars=max_text_chars,
                                 auth=not no_auth, backend=backend, num_threads=threads, runs_root=runs_root,
                                 monitor=not no_monitor, audit_timeout_s=audit_timeout, metrics_auth=metrics_auth,
                                 docs=docs, max_new_tokens=max_new_tokens,
                                 max_concurrent_generations=max_concurrent_generations, faq_index=faq_index,
                                 faq_top_k=faq_top_k)
        try:
            base.console.print(f"serving {', '.join([str(r) for r in run_dirs or []] + list(registry))} on "
                               f"http://{host}:{port} ({'docs: /docs, ' if docs else ''}OpenAPI: /openapi.json, "
                               f"metrics: /metrics)")
            run_server(run_dirs or [], host=host, port=port, names=name or None, settings=settings, keys_db=keys_db,
                       audit_db=audit_db, graceful_seconds=graceful_seconds,
                       log_level="info" if verbose else "warning", alerts=alerts, alerts_db=alerts_db,
                       registry=registry, registry_db=registry_db)
        except (*base.USER_ERRORS, ServeError, ValueError) as e:
            base._fail(e)
