"""`domaintune predict` on a generation run: the reply to each --text streamed to the terminal, or replies
for a whole --input file written to --output (batched by prompt length, the output atomic and spreadsheet-safe
like every prediction file)."""

from __future__ import annotations

from pathlib import Path


def predict_generation(predictor, out, console, texts: list[str], input_path: Path | None, output: Path | None,
                       settings: dict, faq_index: Path | None, faq_top_k: int, read_options, safe: bool) -> None:
    import sys

    predictor.use_faq(faq_index, faq_top_k)
    sampling = predictor.sampling(**settings)
    for text in texts:
        out.print(text, highlight=False, markup=False)
        result = None
        for piece in predictor.chat_stream(text, sampling):
            if isinstance(piece, str):
                sys.stdout.write(piece)
                sys.stdout.flush()
            else:
                result = piece
        sys.stdout.write("\n")
        if result is not None:
            console.print(f"[dim]{result.completion_tokens} tokens, {result.finish_reason}, "
                          f"{result.completion_tokens / max(result.seconds, 1e-9):.1f} tokens/s[/dim]")
    if input_path:
        from rich.progress import Progress

        predictor.task.generation = {**predictor.task.generation, **sampling.as_dict()}
        with Progress(console=console, disable=not sys.stderr.isatty()) as prog:
            bar = prog.add_task("generate", total=None)
            n = predictor.predict_file(input_path, output, read_options, chunk=64,
                                       progress=lambda done, total: prog.update(bar, completed=done, total=total),
                                       safe=safe)
        out.print(f"wrote {n} replies to {output}")
