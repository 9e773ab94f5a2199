"""`domaintune ensemble RUN_A RUN_B ... -o RUN_E`: average member probabilities (see domaintune.ensemble)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app) -> None:
    @app.command()
    def ensemble(runs: list[Path] = typer.Argument(..., help="Two or more finished run directories (same task and labels)."),
                 output: Path = typer.Option(..., "--output", "-o", help="Ensemble run directory to write."),
                 overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
                 no_eval: bool = typer.Option(False, "--no-eval", help="Do not score members and ensemble on the test split."),
                 verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
        """Combine runs into one ensemble run (mean of member probabilities) that `predict` serves like any run."""
        from domaintune import cli as base

        base._setup_logging(verbose)
        from domaintune.ensemble import EnsembleError, build_ensemble
        from domaintune.evaluation.report import _fmt

        try:
            m = build_ensemble(runs, output, overwrite=overwrite, evaluate=not no_eval)
        except (*base.USER_ERRORS, EnsembleError) as e:
            base._fail(e)
        keys = list(m.get("headline") or [])[:3]
        for i, (info, s) in enumerate(zip(m["members"], m.get("member_test", []))):
            base.out.print(f"member {i} {info['run']}: " + "  ".join(f"{k} {_fmt(k, s.get(k))}" for k in keys), highlight=False)
        if m.get("test"):
            base.out.print("ensemble: " + "  ".join(f"{k} {_fmt(k, m['test'].get(k))}" for k in keys), highlight=False)
        base.out.print(f"ensemble run written to {output}; predict with: domaintune predict {output} --text \"...\"",
                       highlight=False)
