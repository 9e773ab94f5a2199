"""`domaintune compare CONFIG --methods ... --k-shot ... --seeds N`: thin CLI over `domaintune.compare.compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app) -> None:
    @app.command("compare")
    def compare_cmd(config: Path = typer.Argument(..., help="YAML config file (data, model, train settings)."),
                    methods: str = typer.Option("full", "--methods", "-m",
                                                help="Comma-separated method names, e.g. full,lora,fewshot,zeroshot."),
                    k_shot: str = typer.Option("8,64,all", "--k-shot", "-k",
                                               help="Labels per class to train on, comma-separated; 'all' = every label."),
                    seeds: int = typer.Option(3, "--seeds", "-s", min=1, help="Seeds per cell (42, 43, ...)."),
                    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                                          help="Directory for the grid (default OUTPUT_DIR/compare)."),
                    keep_models: bool = typer.Option(False, "--keep-models", help="Keep each run's model/ (disk)."),
                    force: bool = typer.Option(False, "--force", help="Rerun cells that already finished."),
                    set_: list[str] = typer.Option([], "--set", help="Override a key in every run, e.g. --set train.epochs=2."),
                    verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
        """Run methods x labels-per-class x seeds; write compare.md, compare.json and compare.png."""
        from domaintune import cli as base

        base._setup_logging(verbose)
        from domaintune.compare import CompareError, compare, parse_k_shot, parse_methods, seed_list

        try:
            result = compare(config, parse_methods(methods), parse_k_shot(k_shot), seed_list(seeds), overrides=set_,
                             output=output, keep_models=keep_models, force=force)
        except (*base.USER_ERRORS, CompareError, ValueError) as e:
            base._fail(e)
        where = Path(result["dir"])
        base.out.print((where / "compare.md").read_text(encoding="utf-8"), markup=False, highlight=False)
        base.out.print(f"plot: {where / 'compare.png'}")
        if result["failed"]:
            base.out.print(f"{len(result['failed'])} run(s) failed; logs in {where / 'logs'}; rerun the same command "
                           "to retry them (finished runs are skipped)")
            raise typer.Exit(1)
