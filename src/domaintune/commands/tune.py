"""`domaintune tune CONFIG --trials N`: thin CLI over `domaintune.tune.tune`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app) -> None:
    @app.command("tune")
    def tune_cmd(config: Path = typer.Argument(..., help="YAML config file; its own values are trial 0."),
                 trials: Optional[int] = typer.Option(None, "--trials", "-n", min=1,
                                                      help="Finished trials wanted in total (default: tune.trials). "
                                                           "A rerun continues the study up to this count."),
                 timeout: Optional[float] = typer.Option(None, "--timeout", min=1,
                                                         help="Start no new trial after this many seconds."),
                 set_: list[str] = typer.Option([], "--set", help="Override a key, e.g. --set train.max_steps=200."),
                 verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
        """Search hyper-parameters with Optuna (pruning, resumable SQLite study); write the best config."""
        from domaintune import cli as base

        base._setup_logging(verbose)
        from domaintune.config import load_config
        from domaintune.tune import TuneError, tune

        try:
            cfg = load_config(config, set_)
            summary = tune(cfg, trials=trials, timeout=timeout)
        except (*base.USER_ERRORS, TuneError) as e:
            base._fail(e)
        except KeyboardInterrupt:
            base.console.print("interrupted: finished trials are saved in the study; run the same command again "
                               "to continue (the interrupted trial runs again)")
            raise typer.Exit(130)
        tune_dir = Path(cfg.output_dir) / "tune"
        best, states = summary["best"], summary["states"]
        base.out.print(f"{summary['n_trials']} trials ({states['complete']} complete, {states['pruned']} pruned, "
                       f"{states['fail']} failed) in {tune_dir}")
        if best:
            default = summary["default_dev"]
            base.out.print(f"best: trial {best['number']}, dev {summary['metric']} {best['dev']:.4f}"
                           + (f" (default config {default:.4f})" if default is not None else "")
                           + f"; params {best['params']}")
            base.out.print(f"train it: domaintune train {tune_dir / 'best_config.yaml'}  (table: {tune_dir / 'trials.md'})")
