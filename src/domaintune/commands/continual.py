"""`domaintune continue RUN_DIR --data NEW -o NEW_RUN`: one continual-learning stage (domaintune.continual).

Exit codes: 0 trained and promotable; 2 bad input (nothing trained); 3 trained, but the regression
gate (--max-forgetting) blocked promotion: NEW_RUN is complete and `continual/gate.json` says
`"promotable": false` with the stages that dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

GATE_BLOCKED_EXIT = 3


def register(app) -> None:
    import typer

    @app.command("continue")
    def continue_(run_dir: Path = typer.Argument(..., help="Finished run to continue (from `train` or `continue`)."),
                  data: Path = typer.Option(..., "--data", help="The new stage's labelled file (read like RUN_DIR's data)."),
                  output: Path = typer.Option(..., "-o", "--output", help="New run directory for this stage."),
                  strategy: str = typer.Option("replay", "--strategy", help="naive, replay, ewc, lwf, or a combination "
                                               "such as replay+lwf."),
                  mode: str = typer.Option("auto", "--mode", help="auto: new labels add classes; domain: new labels are "
                                           "an error; class: the data must bring new labels."),
                  replay_size: int = typer.Option(1000, "--replay-size", help="Replay buffer rows over all classes."),
                  ewc_lambda: float = typer.Option(100.0, "--ewc-lambda", help="Weight of the EWC penalty."),
                  ewc_samples: int = typer.Option(512, "--ewc-samples", help="Rows per stage for the Fisher estimate."),
                  lwf_alpha: float = typer.Option(1.0, "--lwf-alpha", help="Weight of the LwF distillation term."),
                  lwf_temperature: float = typer.Option(2.0, "--lwf-temperature", help="LwF softmax temperature."),
                  max_forgetting: Optional[float] = typer.Option(None, "--max-forgetting", help="Gate: block promotion "
                                                                 "(exit 3) if an earlier stage drops by more points."),
                  name: Optional[str] = typer.Option(None, "--name", help="Stage name in reports (default: file name)."),
                  set_: list[str] = typer.Option([], "--set", help="Override a key, e.g. --set train.epochs=2 "
                                                 "(repeatable; data.test=FILE gives the stage a test file)."),
                  overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
                  resume: bool = typer.Option(False, "--resume", help="Finish an interrupted stage in -o from its latest "
                                              "checkpoint (give the same arguments)."),
                  verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
        """Continue a run on new data (domain- or class-incremental) and score every earlier stage's test set."""
        from domaintune import cli as base
        from domaintune.continual import ContinualOptions
        from domaintune.continual.replay import ReplayBufferError
        from domaintune.continual.stage import ContinualError, continue_run
        from domaintune.run import RunDirectoryError

        base._setup_logging(verbose)
        opts = ContinualOptions(replay_size=replay_size, ewc_lambda=ewc_lambda, ewc_samples=ewc_samples,
                                lwf_alpha=lwf_alpha, lwf_temperature=lwf_temperature)
        try:
            res = continue_run(run_dir, data, output, strategy=strategy, options=opts, overrides=set_, mode=mode,
                               max_forgetting=max_forgetting, name=name, overwrite=overwrite, resume=resume)
        except (*base.USER_ERRORS, RunDirectoryError, ContinualError, ReplayBufferError, ValueError) as e:
            base._fail(e)
            return
        s, g = res["summary"], res["gate"]
        fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        base.out.print(f"stage {res['stage']} ({res['record']['kind']}, {res['record']['strategy']}) written to "
                       f"{res['run_dir']}: average accuracy {fmt(s['average_accuracy'])} %, average forgetting "
                       f"{fmt(s['average_forgetting'])} points, backward transfer {fmt(s['backward_transfer'])} points",
                       highlight=False)
        for d in g["drops"]:
            base.out.print(f"  stage {d['stage']} ({d['name']}): {d['accuracy_before']:.2f} -> {d['accuracy_after']:.2f} % "
                           f"(drop {d['drop_points']:.2f} points){'  BLOCKED' if d['blocked'] else ''}", highlight=False)
        if not g["promotable"]:
            base.console.print(f"[bold red]not promotable:[/] {g['reason']} (continual/gate.json)", highlight=False)
            raise typer.Exit(GATE_BLOCKED_EXIT)
