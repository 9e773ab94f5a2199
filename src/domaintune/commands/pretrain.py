"""`domaintune pretrain CONFIG -o OUT`: domain-adaptive masked-LM pre-training (see domaintune.pretrain)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app) -> None:
    @app.command()
    def pretrain(config: Path = typer.Argument(..., help="YAML config: `model` to adapt, `pretrain.text_file`, `train.*` options."),
                 output: Optional[Path] = typer.Option(None, "--output", "-o",
                                                       help="Output directory (default: OUTPUT_DIR-dapt); the model goes to OUT/model."),
                 set_: list[str] = typer.Option([], "--set", help="Override a key, e.g. --set pretrain.text_file=corpus.txt (repeatable)."),
                 resume: bool = typer.Option(False, "--resume", help="Continue from OUT's latest checkpoint."),
                 overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT."),
                 verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
        """Continue masked-LM training of CONFIG's model on unlabelled domain text; writes a base model folder."""
        from domaintune import cli as base

        base._setup_logging(verbose)
        from domaintune.config import load_config
        from domaintune.pretrain import PretrainError, pretrain as run_pretrain

        try:
            cfg = load_config(config, set_)
            m = run_pretrain(cfg, output, overwrite=overwrite, resume=resume)
        except (*base.USER_ERRORS, PretrainError, FileExistsError) as e:
            base._fail(e)
        before, after = m.get("held_out_before") or {}, m.get("held_out_after") or {}
        if before and after:
            base.out.print(f"held-out masked-LM loss {before['mlm_loss']:.4f} -> {after['mlm_loss']:.4f}, "
                           f"accuracy {100 * before['mlm_accuracy']:.2f} % -> {100 * after['mlm_accuracy']:.2f} %")
        base.out.print(f"adapted {m['adapted_from']} on {m['texts']} texts in {m['train']['seconds']:.0f} s "
                       f"({m['global_step']} steps); use it with:  model: {m['model_dir']}", highlight=False)
