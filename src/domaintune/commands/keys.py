"""`domaintune keys create|list|revoke`: manage the HTTP service's API keys (see domaintune.serving.keys).

The new key goes alone on the last line of stdout and everything else to stderr, so
`KEY=$(domaintune keys create --name ci | tail -1)` captures exactly the key. These commands
never import torch or transformers: they must stay instant on a serving box.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Optional

import typer

KEYS_DB_HELP = "Key database: a file path or an SQLAlchemy URL [default: $DOMAINTUNE_HOME/keys.db]."


def _fail(e: Exception) -> None:
    """One clear line on stderr and exit code 2, the CLI's convention for user errors."""
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@contextmanager
def _store(keys_db: Optional[str]):
    """The opened KeyStore; store and database errors become one message and exit 2, never a traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    from domaintune.serving.keys import KeyStore, KeyStoreError, default_keys_db

    target = keys_db if keys_db is not None else default_keys_db()
    try:
        store = KeyStore(target)
    except Exception as e:  # noqa: BLE001 - unwritable path, bad URL, missing driver: all one message
        _fail(RuntimeError(f"cannot open the key database {target}: {e}"))
    try:
        yield store
    except KeyStoreError as e:
        _fail(e)
    except SQLAlchemyError as e:
        _fail(RuntimeError(f"key database {target}: {e}"))
    finally:
        store.close()


def _when(dt) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC") if dt is not None else "-"


def register(app) -> None:
    keys_app = typer.Typer(no_args_is_help=True, add_completion=False,
                           help="Create, list and revoke API keys for the HTTP service.")

    @keys_app.command("create")
    def create(name: str = typer.Option(..., "--name", help="Unique name among active keys, e.g. ci-bot."),
               scope: str = typer.Option("predict", "--scope", help="predict (call the model) or admin (also manage)."),
               rate_limit: Optional[int] = typer.Option(None, "--rate-limit", help="Max requests per minute [default: no limit]."),
               keys_db: Optional[str] = typer.Option(None, "--keys-db", help=KEYS_DB_HELP)) -> None:
        """Create a key and print it once, alone on the last line of stdout."""
        with _store(keys_db) as store:
            rec, key = store.create(name, scope=scope, rate_limit_per_minute=rate_limit)
        limit = f"{rec.rate_limit_per_minute}/min" if rec.rate_limit_per_minute else "no rate limit"
        print(f"created key {rec.name!r} (id {rec.key_id}, scope {rec.scope}, {limit}). "
              "Copy it now: it is shown only this once and cannot be recovered.", file=sys.stderr)
        print(key, flush=True)

    @keys_app.command("list")
    def list_(keys_db: Optional[str] = typer.Option(None, "--keys-db", help=KEYS_DB_HELP),
              as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
        """List keys (revoked ones too) without secrets."""
        import json

        from rich.console import Console
        from rich.table import Table

        with _store(keys_db) as store:
            records = store.list()
        # Wide when piped, so each key stays on one row in logs (as in `domaintune models`).
        out = Console(width=None if sys.stdout.isatty() else 200)
        if as_json:
            rows = [dict(name=r.name, key_id=r.key_id, scope=r.scope, active=r.active,
                         rate_limit_per_minute=r.rate_limit_per_minute,
                         created_at=r.created_at.isoformat(),
                         revoked_at=r.revoked_at.isoformat() if r.revoked_at else None,
                         last_used_at=r.last_used_at.isoformat() if r.last_used_at else None) for r in records]
            out.print_json(json.dumps(rows))
            return
        if not records:
            print("no keys yet; create one with: domaintune keys create --name NAME", file=sys.stderr)
            return
        table = Table(title="API keys")
        for col in ("name", "key id", "scope", "rate limit", "created", "last used", "status"):
            table.add_column(col, no_wrap=True)
        for r in records:
            table.add_row(r.name, r.key_id, r.scope,
                          f"{r.rate_limit_per_minute}/min" if r.rate_limit_per_minute else "-",
                          _when(r.created_at), _when(r.last_used_at),
                          "active" if r.active else f"revoked {_when(r.revoked_at)}")
        out.print(table)

    @keys_app.command("revoke")
    def revoke(name_or_id: str = typer.Argument(..., metavar="NAME_OR_ID", help="Active key name, or key id."),
               keys_db: Optional[str] = typer.Option(None, "--keys-db", help=KEYS_DB_HELP)) -> None:
        """Revoke a key; running servers refuse it within a second."""
        with _store(keys_db) as store:
            rec = store.revoke(name_or_id)
        print(f"revoked key {rec.name!r} (id {rec.key_id}) at {_when(rec.revoked_at)}")

    app.add_typer(keys_app, name="keys", help="Create, list and revoke API keys for the HTTP service.")
