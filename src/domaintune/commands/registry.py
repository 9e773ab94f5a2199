"""`domaintune registry register|promote|rollback|list|show` (see domaintune.registry).

Thin: each command opens the registry, calls one method, prints a rich table
or `--json`. Registry errors exit 2 with one line, like every user error.
`register` loads the run once to prove it works (torch import); the other
commands never import torch, so they stay quick on a serving box (`promote`,
`rollback` and `verify` hash the run's files - see domaintune.registry_files).
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

DB_HELP = "Registry database: a file path or an SQLAlchemy URL [default: $DOMAINTUNE_HOME/registry.db]."


def _fail(e: Exception) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _out():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200)


@contextmanager
def _registry(db: Optional[str]):
    from domaintune.registry import Registry, RegistryError

    try:
        yield Registry(db)
    except RegistryError as e:
        _fail(e)


def _print_json(obj) -> None:
    _out().print_json(json.dumps(obj, ensure_ascii=False, default=str))


def register(app) -> None:
    reg = typer.Typer(no_args_is_help=True, add_completion=False,
                      help="Model registry: versions with lineage, aliases (production, staging), promote, rollback.")

    @reg.command("register")
    def register_cmd(run_dir: Path = typer.Argument(..., help="A finished run directory."),
                     name: str = typer.Option(..., "--name", help="Registered model name, e.g. tickets."),
                     parent: Optional[str] = typer.Option(None, "--parent", help="Lineage parent: NAME:VERSION, a "
                                                          "version number of NAME, or a run directory [default: "
                                                          "inferred from config model: when it is another run]."),
                     alias: Optional[str] = typer.Option(None, "--alias", help="Also promote the new version to "
                                                         "this alias."),
                     description: str = typer.Option("", "--description"),
                     force: bool = typer.Option(False, "--force", help="With --alias: promote even when "
                                                "continual/gate.json says promotable: false."),
                     db: Optional[str] = typer.Option(None, "--registry-db", help=DB_HELP),
                     as_json: bool = typer.Option(False, "--json")) -> None:
        """Register RUN_DIR as the next version of NAME (data hashes, config, metrics, parent recorded), bound to
        the SHA-256 of the files it serves: promote, rollback and serve refuse it if they change."""
        import logging

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
        with _registry(db) as r:
            v = r.register(run_dir, name, parent=parent, alias=alias, description=description, force=force)
        if as_json:
            _print_json(v.to_dict())
            return
        _out().print(f"registered {v.run_dir} as {v.name} version {v.version}"
                     + (f" ({alias} -> v{v.version})" if alias else ""), highlight=False)

    @reg.command("promote")
    def promote_cmd(name: str = typer.Argument(...), version: int = typer.Argument(...),
                    alias: str = typer.Option("production", "--alias"),
                    force: bool = typer.Option(False, "--force", help="Promote even when the run's "
                                               "continual/gate.json says promotable: false."),
                    db: Optional[str] = typer.Option(None, "--registry-db", help=DB_HELP),
                    as_json: bool = typer.Option(False, "--json")) -> None:
        """Point ALIAS (default production) at VERSION; `domaintune serve --registry` switches within a second."""
        with _registry(db) as r:
            rec = r.promote(name, version, alias, force=force)
        _print_json(rec) if as_json else _out().print(
            f"{name}@{alias}: v{rec['previous']} -> v{rec['version']}" if rec["previous"] else
            f"{name}@{alias}: v{rec['version']}", highlight=False)

    @reg.command("rollback")
    def rollback_cmd(name: str = typer.Argument(...), alias: str = typer.Option("production", "--alias"),
                     db: Optional[str] = typer.Option(None, "--registry-db", help=DB_HELP),
                     as_json: bool = typer.Option(False, "--json")) -> None:
        """Point ALIAS back at the version promoted before the current one."""
        with _registry(db) as r:
            rec = r.rollback(name, alias)
        _print_json(rec) if as_json else _out().print(
            f"{name}@{alias}: rolled back v{rec['previous']} -> v{rec['version']}", highlight=False)

    @reg.command("verify")
    def verify_cmd(name: str = typer.Argument(...), version: Optional[int] = typer.Argument(None),
                   db: Optional[str] = typer.Option(None, "--registry-db", help=DB_HELP),
                   as_json: bool = typer.Option(False, "--json")) -> None:
        """Check that VERSION's run directory (every version without VERSION) still holds the files it was
        registered with - what promote, rollback and serve check before using it. Exit 2 when one does not."""
        from domaintune.registry import RegistryError

        with _registry(db) as r:
            versions = [r.get(name, version)] if version is not None else r.versions(name)
            results = []
            for v in versions:
                try:
                    r.verify(name, v.version)
                    results.append({"version": v.version, "ok": True, "problem": None})
                except RegistryError as e:
                    results.append({"version": v.version, "ok": False, "problem": str(e)})
        if as_json:
            _print_json(results)
        else:
            for res in results:
                _out().print(f"{name} v{res['version']}: " + ("files match the registration" if res["ok"]
                                                               else f"REFUSED - {res['problem']}"),
                             highlight=False, markup=False)
        if not all(res["ok"] for res in results):
            raise typer.Exit(2)

    @reg.command("list")
    def list_cmd(db: Optional[str] = typer.Option(None, "--registry-db", help=DB_HELP),
                 as_json: bool = typer.Option(False, "--json")) -> None:
        """Registered models: number of versions, latest, aliases."""
        from rich.table import Table

        with _registry(db) as r:
            rows = r.list()
        if as_json:
            _print_json(rows)
            return
        t = Table(title="Registered models")
        for c in ("name", "versions", "latest", "aliases"):
            t.add_column(c)
        for row in rows:
            t.add_row(row["name"], str(row["versions"]), str(row["latest"]),
                      ", ".join(f"{a} -> v{v}" for a, v in row["aliases"].items()) or "-")
        _out().print(t)

    @reg.command("show")
    def show_cmd(name: str = typer.Argument(...), version: Optional[int] = typer.Argument(None),
                 db: Optional[str] = typer.Option(None, "--registry-db", help=DB_HELP),
                 as_json: bool = typer.Option(False, "--json")) -> None:
        """NAME: its versions and alias history; NAME VERSION: that version's lineage, data hashes, metrics."""
        with _registry(db) as r:
            info = r.show(name, version)
        if as_json:
            _print_json(info)
        elif version is None:
            _show_model(info)
        else:
            _show_version(info)

    app.add_typer(reg, name="registry")


def _show_model(info: dict) -> None:
    from rich.table import Table

    out = _out()
    t = Table(title=f"{info['name']}: versions")
    for c in ("version", "aliases", "created", "headline (test)", "parent", "gate", "run_dir"):
        t.add_column(c, overflow="fold")
    for v in info["versions"]:
        head = "  ".join(f"{k} {_num(x)}" for k, x in v["headline"].items()) or "-"
        gate = {None: "-", True: "promotable", False: "NOT promotable"}[v["promotable"]]
        t.add_row(str(v["version"]), ", ".join(v["aliases"]) or "-", v["created"], head, _parent(v["parent"]), gate,
                  v["run_dir"])
    out.print(t)
    for alias, events in info["history"].items():
        h = Table(title=f"{info['name']}@{alias}: history")
        for c in ("at", "action", "version", "from"):
            h.add_column(c)
        for e in events:
            h.add_row(e["at"], e["action"], f"v{e['version']}", f"v{e['from']}" if e["from"] else "-")
        out.print(h)


def _show_version(v: dict) -> None:
    from rich.table import Table

    t = Table(title=f"{v['name']} v{v['version']}", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    m = v["metrics"]
    rows = [("run_dir", v["run_dir"]), ("aliases", ", ".join(v["aliases"]) or "-"), ("created", v["created"]),
            ("description", v["description"] or "-"), ("parent", _parent(v["parent"])),
            ("task / method / model", f"{m.get('task')} / {m.get('method')} / {m.get('model')}"),
            ("test", "  ".join(f"{k} {_num(x)}" for k, x in (m.get("test") or {}).items()) or "-"),
            ("gate", json.dumps(v["gate"]) if v["gate"] is not None else "-"),
            ("files", f"{len(v['files'].get('files', {}))} bound by SHA-256 (`domaintune registry verify "
                      f"{v['name']} {v['version']}` checks them)" if v.get("files") else
                      "not recorded (registered before file binding: refused by promote, rollback and serve; "
                      "register the run again)")]
    rows += [(f"data {split}", f"{d['path']}  sha256 {d['sha256'] or '(' + d.get('error', 'missing') + ')'}")
             for split, d in v["data"].items()]
    for k, x in rows:
        t.add_row(k, str(x))
    _out().print(t)


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) >= 1 else f"{x:.4f}"


def _parent(p: dict | None) -> str:
    if not p:
        return "-"
    if "version" in p:
        return f"{p['model']} v{p['version']}"
    return p.get("run_dir", "-")
