"""`domaintune monitor` (drift from the audit log), `domaintune monitor profile RUN`, `domaintune alerts list`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app) -> None:
    monitor_app = typer.Typer(no_args_is_help=False, help="Drift statistics of a served model (see README: "
                              "Monitoring and alerts).")
    alerts_app = typer.Typer(no_args_is_help=True, help="Alert history written by `domaintune serve --alerts`.")
    app.add_typer(monitor_app, name="monitor")
    app.add_typer(alerts_app, name="alerts")

    @monitor_app.callback(invoke_without_command=True)
    def monitor(ctx: typer.Context,
                model: Optional[str] = typer.Option(None, "--model", help="Served model name (as in the URL)."),
                since: str = typer.Option("24h", "--since", help="How far back: 24h, 30m, 7d or an ISO time."),
                audit_db: str = typer.Option("runs/audit.db", "--audit-db", help="The service's audit log "
                                             "(path or SQLAlchemy URL)."),
                run: Optional[Path] = typer.Option(None, "--run", help="The served run directory: its profile.json "
                                                   "is the reference (without it: label and score statistics only)."),
                window: int = typer.Option(200, "--window", min=1, help="Texts per window."),
                plots: Optional[Path] = typer.Option(None, "--plots", help="Write PNG plots into this folder."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
        """Drift statistics over windows of the audit log: label shares, PSI/JS, confidence, length, vocabulary,
        embedding; `monitor profile RUN` builds the reference profile of an older run."""
        if ctx.invoked_subcommand is not None:
            return
        from domaintune import cli as base

        if not model:
            base._fail(ValueError("give --model NAME (the served model's name), or use `domaintune monitor profile RUN`"))
        base._setup_logging(False)
        from domaintune.monitoring.offline import monitor_report, plot_windows, stats_table

        try:
            rows, profile, n = monitor_report(model, since, audit_db, run, window)
        except (*base.USER_ERRORS, ValueError) as e:
            base._fail(e)
        if not rows:
            base.out.print(f"no successful predictions of model {model!r} since {since} in {audit_db}")
            raise typer.Exit(1)
        if as_json:
            base.out.print_json(json.dumps(rows, default=str))
        else:
            base.out.print(stats_table(rows, profile, f"{model}: {n} texts since {since}, windows of {window}"))
        if plots:
            for p in plot_windows(rows, profile, plots, model):
                base.out.print(f"wrote {p}")

    @monitor_app.command("profile")
    def profile(run_dir: Path = typer.Argument(..., help="A finished run directory."),
                data: Optional[Path] = typer.Option(None, "--data", help="Labelled reference file (default: the "
                                                    "run's own dev + test, rebuilt from config.yaml)."),
                output: Optional[Path] = typer.Option(None, "--output", help="Default RUN_DIR/profile.json.")) -> None:
        """Build RUN_DIR/profile.json (the monitoring reference) for a run trained before it existed."""
        from domaintune import cli as base

        base._setup_logging(False)
        from domaintune.monitoring.profile import profile_run

        try:
            path = profile_run(run_dir, data, output)
        except (*base.USER_ERRORS, ValueError) as e:
            base._fail(e)
        base.out.print(f"wrote {path}")

    @alerts_app.command("list")
    def list_alerts(since: Optional[str] = typer.Option(None, "--since", help="24h, 30m, 7d or an ISO time."),
                    alerts_db: str = typer.Option("runs/alerts.db", "--alerts-db", help="Alert history (path or "
                                                  "SQLAlchemy URL; serve's default is alerts.db beside the first run)."),
                    model: Optional[str] = typer.Option(None, "--model"),
                    limit: int = typer.Option(100, "--limit", min=1),
                    as_json: bool = typer.Option(False, "--json")) -> None:
        """Alerts fired, newest first."""
        from rich.table import Table

        from domaintune import cli as base
        from domaintune.monitoring.alerts import AlertStore
        from domaintune.monitoring.offline import parse_since

        try:
            if "://" not in alerts_db and not Path(alerts_db).is_file():
                raise FileNotFoundError(f"{alerts_db}: no alert history there; pass --alerts-db (serve --alerts writes "
                                        f"alerts.db beside the first run directory by default)")
            store = AlertStore(alerts_db)
            rows = store.list(parse_since(since) if since else None, model, limit)
            store.close()
        except (*base.USER_ERRORS, ValueError) as e:
            base._fail(e)
        if as_json:
            base.out.print_json(json.dumps(rows, default=str))
            return
        table = Table(title=f"{len(rows)} alert(s)" + (f" since {since}" if since else ""))
        for col in ("fired at (UTC)", "model", "rule", "severity", "value", "z", "expression", "id"):
            table.add_column(col)
        for r in rows:
            z = f"{r['zscore']:.2f}" if r["zscore"] is not None else "–"
            table.add_row(r["fired_at"].strftime("%Y-%m-%d %H:%M:%S"), r["model"], r["rule"], r["severity"],
                          f"{r['value']:.4g}" if r["value"] is not None else "–", z, r["expression"], r["id"])
        base.out.print(table)
