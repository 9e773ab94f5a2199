"""The `domaintune` command: each command parses its arguments and calls one library function."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from domaintune.data import DataError, ReadOptions
from domaintune.errors import ConfigError  # not domaintune.config: its pydantic models would slow every --help
from domaintune.models import ModelNotFoundError, list_models

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Fine-tune pretrained language models on your labelled text, offline, on CPU.")
console = Console(stderr=True)
# Wide when piped, so tables stay one row per model in logs and CI output.
out = Console(width=None if sys.stdout.isatty() else 200)

USER_ERRORS = (ConfigError, DataError, ModelNotFoundError, FileNotFoundError)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the weight-loading report is noise for our users
    hf_logging.disable_progress_bar()


def _fail(e: Exception, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _read_options(fmt: str, text_column: str, label_column: Optional[str], delimiter: Optional[str], encoding: str,
                  no_header: bool) -> ReadOptions:
    as_col = lambda c: int(c) if c is not None and c.isdigit() and no_header else c  # noqa: E731
    return ReadOptions(format=fmt, text_column=as_col(text_column), label_column=as_col(label_column),
                       delimiter=delimiter, encoding=encoding, has_header=not no_header)


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the pretrained models available offline."""
    rows = list_models()
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title="Offline model catalog")
    for col in ("name", "language", "architecture", "parameters", "licence", "package", "installed"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        table.add_row(r["name"], r["language"], r["architecture"], r["parameters"], r["licence"], r["package"],
                      "yes" if r["installed"] else "no")
    out.print(table)
    out.print("Any local Hugging Face folder also works as `model:`.")


@app.command()
def init(path: Path = typer.Argument(Path("domaintune.yaml"), help="Where to write the template."),
         force: bool = typer.Option(False, help="Overwrite an existing file.")) -> None:
    """Write a commented config template with every key and its default."""
    if path.exists() and not force:
        _fail(FileExistsError(f"{path} exists; pass --force to overwrite it"))
    from domaintune.config import template
    from domaintune.training.checkpoint import atomic_write_text

    atomic_write_text(path, template())
    out.print(f"wrote {path}; edit data.train and run: domaintune train {path}")


@app.command()
def train(config: Path = typer.Argument(..., help="YAML config file."),
          set_: list[str] = typer.Option([], "--set", help="Override a key, e.g. --set train.lr=3e-5 (repeatable)."),
          resume: bool = typer.Option(False, "--resume", help="Continue from the run's latest checkpoint."),
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
          verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Fine-tune a model as CONFIG says and write a run directory."""
    _setup_logging(verbose)
    from domaintune.config import load_config
    from domaintune.run import RunDirectoryError, train_run

    try:
        cfg = load_config(config, set_)
        metrics = train_run(cfg, overwrite=overwrite, resume=resume)
    except (*USER_ERRORS, RunDirectoryError) as e:
        _fail(e)
    _print_summary(metrics)


def _print_summary(metrics: dict) -> None:
    from domaintune.evaluation.report import BASELINE_NAMES, _fmt

    test, base = metrics.get("test") or {}, metrics.get("baseline") or {}
    keys = metrics.get("headline") or ["accuracy", "macro_f1"]
    table = Table(title=f"{metrics['name']}: test scores")
    table.add_column("model")
    for k in keys[:4]:
        table.add_column(k)
    for key, m in base.items():
        table.add_row(BASELINE_NAMES.get(key, key), *(_fmt(k, m.get(k)) for k in keys[:4]))
    if test:
        table.add_row("fine-tuned", *(_fmt(k, test.get(k)) for k in keys[:4]))
    out.print(table)
    t = metrics["train"]
    out.print(f"trained in {t['seconds']:.1f} s ({t['samples_per_second']:.0f} samples/s, "
              f"{'bf16' if t['bf16'] else 'fp32'}, peak RSS {t['peak_rss_mb']:.0f} MB); report: "
              f"{Path(metrics.get('run_dir', 'runs/' + metrics['name'])) / 'report.md'}")


@app.command()
def evaluate(run_dir: Path = typer.Argument(..., help="A finished run directory."),
             data: Path = typer.Option(..., "--data", help="Labelled file to score."),
             output: Optional[Path] = typer.Option(None, "--output", help="Write the metrics JSON here."),
             text_column: Optional[str] = typer.Option(None), label_column: Optional[str] = typer.Option(None),
             fmt: Optional[str] = typer.Option(None, "--format"), delimiter: Optional[str] = typer.Option(None),
             encoding: Optional[str] = typer.Option(None), no_header: Optional[bool] = typer.Option(None, "--no-header")) -> None:
    """Re-score a saved run on any labelled file (same reader options as the config)."""
    _setup_logging(False)
    from domaintune.evaluate import evaluate_run
    from domaintune.predictor import Predictor

    try:
        predictor = Predictor(run_dir)
        d = predictor.config.get("data", {})
        opts = _read_options(fmt or d.get("format", "auto"), text_column or str(d.get("text_column", "text")),
                             label_column or str(d.get("label_column", "label")),
                             delimiter if delimiter is not None else d.get("delimiter"), encoding or d.get("encoding", "utf-8"),
                             no_header if no_header is not None else not d.get("has_header", True))
        metrics = evaluate_run(run_dir, data, opts, output, predictor=predictor)
    except USER_ERRORS as e:
        _fail(e)
    from domaintune.evaluation.report import _fmt

    out.print("  ".join(f"{k} {_fmt(k, metrics.get(k))}" for k in predictor.task.headline) + f"  (n={metrics.get('n')})")
    if output:
        out.print(f"metrics written to {output}")


@app.command()
def predict(run_dir: Path = typer.Argument(..., help="A finished run directory."),
            text: list[str] = typer.Option([], "--text", help="Text to predict on (repeatable)."),
            text_pair: list[str] = typer.Option([], "--text-pair", help="Second text for pair tasks, one per --text."),
            input_: Optional[Path] = typer.Option(None, "--input", help="CSV/TSV/JSONL file or Excel .xlsx (book.xlsx#Sheet "
                                                  "for another sheet than the first) of texts."),
            output: Optional[Path] = typer.Option(None, "--output", help="Where to write the file with label, score added; "
                                                  ".csv, .tsv, .xlsx or .jsonl by its suffix (else the input's format)."),
            top_k: int = typer.Option(3, "--top-k", help="How many labels to show per text."),
            text_column: str = typer.Option("text"), fmt: str = typer.Option("auto", "--format"),
            delimiter: Optional[str] = typer.Option(None), encoding: str = typer.Option("utf-8"),
            no_header: bool = typer.Option(False, "--no-header"),
            backend: str = typer.Option("auto", "--backend", help="torch, onnx, onnx-int8, or auto: the fastest "
                                        "exported model that passed its accuracy gate (else torch)."),
            no_safe_cells: bool = typer.Option(False, "--no-safe-cells", help="Write cells starting with = + - @ "
                                               "verbatim instead of neutralising them for spreadsheets (for programs "
                                               "that read the output, never for files opened in Excel)."),
            max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Generation runs: longest reply (default: the run's generation.max_new_tokens)."),
            temperature: Optional[float] = typer.Option(None, "--temperature", help="Generation runs: 0 is greedy; above 0 samples."),
            top_p: Optional[float] = typer.Option(None, "--top-p", help="Generation runs: nucleus sampling mass."),
            top_k_tokens: Optional[int] = typer.Option(None, "--top-k-tokens", help="Generation runs: sample among the k most likely tokens (0: off)."),
            repetition_penalty: Optional[float] = typer.Option(None, "--repetition-penalty", help="Generation runs: 1.0 is off."),
            stop: list[str] = typer.Option([], "--stop", help="Generation runs: a string that ends the reply (repeatable)."),
            seed: Optional[int] = typer.Option(None, "--seed", help="Generation runs: seed for sampling."),
            faq_index: Optional[Path] = typer.Option(None, "--faq-index", help="Generation runs: a `task: retrieval` run whose "
                                                     "top FAQ entries are put into the prompt (grounded answers)."),
            faq_top_k: int = typer.Option(3, "--faq-top-k", help="With --faq-index: how many entries.")) -> None:
    """Predict labels for --text or for a whole --input file; a generation run streams its reply to --text."""
    _setup_logging(False)
    from domaintune.predictor import Predictor

    if not text and not input_:
        _fail(ValueError("give --text \"...\" or --input FILE --output FILE"))
    if input_ and not output:
        _fail(ValueError("--input needs --output (the input file is never modified)"))
    try:
        predictor = Predictor(run_dir, backend=backend)
        if predictor.is_generator:
            from domaintune.commands.generate import predict_generation

            settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k_tokens,
                            repetition_penalty=repetition_penalty, stop=stop or None, seed=seed)
            predict_generation(predictor, out, console, text, input_, output, settings, faq_index, faq_top_k,
                               _read_options(fmt, text_column, None, delimiter, encoding, no_header), not no_safe_cells)
            return
        if text:
            if text_pair and len(text_pair) != len(text):
                raise ValueError(f"give one --text-pair per --text ({len(text)} texts, {len(text_pair)} pairs)")
            inputs = list(zip(text, text_pair)) if text_pair else list(text)
            for t, p in zip(text, predictor.predict(inputs, top_k=top_k)):
                out.print(f"{t}\n  {predictor.task.format_prediction(p)}", highlight=False, markup=False)
        if input_:
            from rich.progress import Progress

            with Progress(console=console, disable=not sys.stderr.isatty()) as prog:
                task = prog.add_task("predict", total=None)
                n = predictor.predict_file(input_, output, _read_options(fmt, text_column, None, delimiter, encoding, no_header),
                                           progress=lambda done, total: prog.update(task, completed=done, total=total),
                                           safe=not no_safe_cells)
            out.print(f"wrote {n} predictions to {output}")
    except (*USER_ERRORS, ValueError) as e:
        _fail(e)


@app.command()
def index(run_dir: Path = typer.Argument(..., help="A finished `task: retrieval` run directory."),
          faq: Optional[Path] = typer.Option(None, "--faq", help="Knowledge base (CSV/TSV/JSONL/Parquet); default: the run's data.faq."),
          question_column: str = typer.Option("question", help="Column with the FAQ question (what queries are matched to)."),
          answer_column: str = typer.Option("answer", help="Column with the answer shown with each hit."),
          id_column: Optional[str] = typer.Option(None, help="Column with a unique entry id; default: `id` if present, else row numbers."),
          fmt: str = typer.Option("auto", "--format"), delimiter: Optional[str] = typer.Option(None),
          encoding: str = typer.Option("utf-8"), no_header: bool = typer.Option(False, "--no-header")) -> None:
    """Embed an FAQ file into RUN_DIR/index for `domaintune predict`; re-running embeds only new or changed questions."""
    _setup_logging(False)
    from domaintune.retrieval_index import index_run

    as_col = lambda c: int(c) if c is not None and c.isdigit() and no_header else c  # noqa: E731
    try:
        opts = ReadOptions(format=fmt, delimiter=delimiter, encoding=encoding, has_header=not no_header)
        m = index_run(run_dir, faq, opts, as_col(question_column), as_col(answer_column), as_col(id_column))
    except (*USER_ERRORS, ValueError) as e:
        _fail(e)
    c = m["changes"]
    out.print(f"indexed {m['count']} FAQ entries into {run_dir / 'index'}: {m['embedded']} embedded, {m['reused']} reused "
              f"({c['added']} added, {c['changed']} changed, {c['removed']} removed; {m['build']})", highlight=False)


@app.command()
def demo(output_dir: Path = typer.Option(Path("runs/demo"), help="Run directory for the demo."),
         epochs: float = typer.Option(4.0, help="Training epochs.")) -> None:
    """Fine-tune the default model on the built-in maintenance-ticket data and show what it learnt."""
    _setup_logging(False)
    from domaintune.demo import run_demo

    try:
        run_demo(output_dir, epochs, out)
    except USER_ERRORS as e:
        _fail(e)


# Commands of later features (merge, pretrain, ensemble, tune, compare, models prepare) live in
# domaintune.commands.<feature>; registered here, after the shared helpers above exist.
from domaintune.commands import register_all  # noqa: E402

register_all(app)


def main() -> None:  # pragma: no cover - console-script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
