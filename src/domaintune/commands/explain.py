"""`domaintune explain RUN_DIR --text "..."`: which tokens drove a prediction (see domaintune.explain)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app) -> None:
    @app.command()
    def explain(run_dir: Path = typer.Argument(..., help="A finished run directory."),
                text: str = typer.Option(..., "--text", help="The text whose prediction to explain."),
                text_pair: Optional[str] = typer.Option(None, "--text-pair", help="Second text, for pair runs."),
                label: Optional[str] = typer.Option(None, "--label", help="Explain this label instead of the predicted one."),
                method: str = typer.Option("auto", "--method", help="auto, ig (integrated gradients) or occlusion."),
                steps: int = typer.Option(32, "--steps", min=2, help="Integrated-gradients steps (more: closer to exact)."),
                html_path: Optional[Path] = typer.Option(None, "--html", help="Write a coloured HTML snippet here."),
                as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON instead of a table."),
                backend: str = typer.Option("torch", "--backend", help="torch (gradients: integrated gradients), or an "
                                            "exported onnx / onnx-int8 model (occlusion only)."),
                verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
        """Per-token attributions for one prediction: red tokens pushed towards the label, blue against it."""
        from domaintune import cli as base

        base._setup_logging(verbose)
        if method not in ("auto", "ig", "occlusion"):
            base._fail(ValueError(f"unknown --method {method!r}: use auto, ig or occlusion"))
        from domaintune.explain import explain as run_explain
        from domaintune.predictor import Predictor

        try:
            predictor = Predictor(run_dir, backend=backend)
            result = run_explain(predictor, text, target=label, method=method, n_steps=steps, text_pair=text_pair)
            if html_path is not None:
                html_path.parent.mkdir(parents=True, exist_ok=True)
                html_path.write_text(result["html"] + "\n", encoding="utf-8")
        except (*base.USER_ERRORS, ValueError, OSError) as e:
            base._fail(e)
        if as_json:  # plain print: rich would wrap long lines and read "[UNK]" as markup
            typer.echo(json.dumps(result, ensure_ascii=False, indent=2))
            return
        _print_table(base.out, result)
        if html_path is not None:
            base.out.print(f"HTML written to {html_path}", highlight=False, markup=False)


def _print_table(out, result: dict) -> None:
    from rich.table import Table
    from rich.text import Text

    what = "value" if result["label"] is None else f"label {result['label']}"
    delta = result.get("convergence_delta")
    out.print(f"{what}  score {result['score']:.4f}  method {result['method']}"
              + (f"  convergence delta {delta:+.4f}" if delta is not None else ""), highlight=False, markup=False)
    pair = result.get("text_pair") is not None
    table = Table(show_header=True, header_style="bold")
    for name, justify in (("#", "right"), ("token", "left"), ("chars", "right"), ("attribution", "right"), ("", "left")):
        table.add_column(name, justify=justify)
    if pair:
        table.add_column("text", justify="right")
    scale = max((abs(t["attribution"]) for t in result["tokens"]), default=0.0) or 1.0
    for i, t in enumerate(result["tokens"]):
        a = t["attribution"]
        bar = Text("█" * max(0, round(abs(a) / scale * 20)), style="red" if a >= 0 else "blue")
        row = [str(i), Text(t["token"]), f"{t['start']}-{t['end']}", f"{a:+.4f}", bar]
        if pair:
            row.append(str(t.get("segment", 0) + 1))
        table.add_row(*row)
    out.print(table)
