"""`domaintune models` as a command group: the catalog listing plus `models prepare NAME`.

The core CLI defines `models` as a single command; GGUF language models need a
one-time conversion step under the same noun (`domaintune models prepare
smollm2-135m`), so `register` replaces that command with a Typer group whose
callback still lists the catalog when no sub-command is given (`domaintune
models`, `domaintune models --json` behave as before, with `prepared` and the
licence shown for the LMs).
"""

from __future__ import annotations

import json

import typer


def _list(as_json: bool) -> None:
    from rich.table import Table

    from domaintune import cli as base
    from domaintune.models import list_models

    rows = list_models()
    if as_json:
        base.out.print_json(json.dumps(rows))
        return
    table = Table(title="Offline model catalog")
    for col in ("name", "language", "architecture", "parameters", "licence", "package", "installed"):
        table.add_column(col, no_wrap=col != "licence")
    for r in rows:
        state = "yes" if r["installed"] else "no"
        if r.get("kind") == "causal_lm" and r["installed"]:
            state = "prepared" if r["prepared"] else "yes (run: domaintune models prepare " + r["name"] + ")"
        table.add_row(r["name"], r["language"], r["architecture"], r["parameters"], r["licence"], r["package"], state)
    base.out.print(table)
    base.out.print("Any local Hugging Face folder also works as `model:`. Causal LMs (zeroshot.variant: lm) are "
                   "converted once from GGUF with `domaintune models prepare NAME`; their licences apply to "
                   "every output you produce with them.")


def register(app) -> None:
    group = typer.Typer(help="List the pretrained models available offline; `prepare` converts a GGUF LM once.",
                        invoke_without_command=True, no_args_is_help=False)

    @group.callback()
    def models(ctx: typer.Context,
               as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
        """List the pretrained models available offline."""
        if ctx.invoked_subcommand is None:
            _list(as_json)

    @group.command()
    def prepare(name: str = typer.Argument(..., help="Catalog LM: smollm2-135m or gemma3-270m."),
                force: bool = typer.Option(False, "--force", help="Convert again even if already prepared."),
                verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
        """Convert a catalog LM's GGUF once into a cached plain checkpoint ($DOMAINTUNE_HOME/models/NAME)."""
        from domaintune import cli as base

        base._setup_logging(verbose)
        try:
            from domaintune.llm_convert import prepare_lm
            from domaintune.models import CATALOG

            path = prepare_lm(name, force=force)
        except Exception as e:  # noqa: BLE001 - every failure becomes one clear message
            base._fail(e)
        base.out.print(f"{name} prepared in {path}\nlicence: {CATALOG[name].licence}\n"
                       f"use it with: --set method=zeroshot --set zeroshot.variant=lm --set zeroshot.lm={name}")

    # Replace the core single `models` command by the group (same name, same listing).
    app.registered_commands[:] = [c for c in app.registered_commands
                                  if (c.name or getattr(c.callback, "__name__", "")) != "models"]
    app.add_typer(group, name="models")
