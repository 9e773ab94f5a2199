"""`domaintune export RUN_DIR --format onnx [--quantize int8]` (see domaintune.export.onnx_export), and
`--format gguf [--quantize f32|f16|q8_0]` for causal-LM runs (see domaintune.export.gguf_export)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app) -> None:
    @app.command()
    def export(run_dir: Path = typer.Argument(..., help="A finished run directory."),
               fmt: str = typer.Option("onnx", "--format", help="onnx (encoder runs); gguf (causal-LM runs, "
                                       "for llama.cpp / Ollama); int8 (generation runs: check the fast CPU path)."),
               quantize: Optional[str] = typer.Option(None, "--quantize", help="onnx: int8 also writes "
                                                      "model.int8.onnx. gguf: f32, f16 or q8_0 (default q8_0)."),
               gate: float = typer.Option(1.0, "--gate", help="Fail when the headline metric drops more than this "
                                          "many points against the PyTorch model."),
               force: bool = typer.Option(False, "--force", help="Keep a model that failed the gate (it is still "
                                          "never picked by --backend auto)."),
               data: Optional[Path] = typer.Option(None, "--data", help="Labelled file to check on (default: the "
                                                   "run's test split, else dev)."),
               max_examples: Optional[int] = typer.Option(None, "--max-examples", help="Check on at most N examples."),
               no_check: bool = typer.Option(False, "--no-check", help="Skip scoring and the gate (not recommended)."),
               verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
        """Export to ONNX (fp32, optionally int8), score it against PyTorch and gate on accuracy; or a causal-LM
        run to GGUF (--format gguf), checked by reading it back."""
        from domaintune import cli as base

        base._setup_logging(verbose)
        from domaintune.export import ExportError, export_run

        if fmt == "gguf":
            _export_gguf(base, run_dir, quantize or "q8_0")
            return
        if fmt == "int8":
            _check_generation_fast_path(base, run_dir, gate, max_examples)
            return
        if fmt != "onnx":
            base._fail(ValueError(f"--format {fmt!r}: use onnx, gguf, or int8 (the fast path of a generation run)"))
        try:
            rec = export_run(run_dir, quantize=quantize, gate=gate, force=force, data=data,
                             max_examples=max_examples, check=not no_check)
        except (*base.USER_ERRORS, ExportError) as e:
            base._fail(e)
            return
        files = ", ".join(f"{f} {mb} MB" for f, mb in rec["files_mb"].items())
        base.out.print(f"exported to {run_dir / 'export'} ({files})", highlight=False)
        if rec.get("torch"):
            t = rec["torch"]
            base.out.print(f"torch      {t['metric']} {t['value']:.4f}  {t['texts_per_second']:.0f} texts/s  "
                           f"p50 {t['p50_ms']:.1f} ms  p99 {t['p99_ms']:.1f} ms", highlight=False)
            for name, b in rec["backends"].items():
                agree = "-" if b["argmax_agreement"] is None else f"{100 * b['argmax_agreement']:.2f} %"
                base.out.print(f"{name:<10} {b['metric']} {b['value']:.4f}  {b['texts_per_second']:.0f} texts/s  "
                               f"p50 {b['p50_ms']:.1f} ms  p99 {b['p99_ms']:.1f} ms  agreement {agree}  "
                               f"drop {b['drop_points']:+.2f} pt  gate {'passed' if b['gate_passed'] else 'FAILED'}",
                               highlight=False)

    def _export_gguf(base, run_dir: Path, quantize: str) -> None:
        """The GGUF path: write, read back with transformers, report the check (the ONNX gate options do not apply)."""
        from domaintune.export.gguf_export import GGUFExportError, export_gguf

        try:
            rec = export_gguf(run_dir, quantize=quantize)
        except (*base.USER_ERRORS, GGUFExportError) as e:
            base._fail(e)
            return
        c = rec["check"]
        base.out.print(f"exported to {rec['path']} ({rec['bytes'] / 1e6:.1f} MB, {rec['architecture']}, "
                       f"{rec['quantization']})", highlight=False)
        n, same_next, same_ids = (len(c["probes"]), sum(p["argmax_match"] for p in c["probes"]),
                                  sum(p["tokens_match"] for p in c["probes"]))
        base.out.print(f"read back with transformers: next token agrees on {same_next}/{n} probes, token ids on "
                       f"{same_ids}/{n}, max |logit diff| {c['max_abs_diff']:.4f}", highlight=False)

    def _check_generation_fast_path(base, run_dir: Path, gate: float, max_examples: int | None) -> None:
        """The int8 fast generation path: test replies and speed against fp32, gated on ROUGE-L."""
        from domaintune.generation.fast_path import check_fast_path

        try:
            rec = check_fast_path(run_dir, max_drop=gate, rows=max_examples)
        except (*base.USER_ERRORS, ValueError) as e:
            base._fail(e)
            return
        for name, sysrec in rec["systems"].items():
            q, sp = sysrec["quality"], sysrec["speed"]
            base.out.print(f"{name:<5} ROUGE-L {q['rougeL']:.2f}  chrF {q['chrf']:.2f}  "
                           + "  ".join(f"batch {x['batch']}: {x['tokens_per_second']} tokens/s" for x in sp),
                           highlight=False)
        base.out.print(f"int8 vs fp32: ROUGE-L {-rec['rougeL_drop']:+.2f} pt, {rec['speedup_batch1']}x tokens/s at "
                       f"batch 1; gate ({gate} pt) {'passed: --backend auto decodes with int8' if rec['gate_passed'] else 'FAILED: the run keeps decoding in fp32'}",
                       highlight=False)

    @app.command()
    def prune(run_dir: Path = typer.Argument(..., help="A finished full or LoRA fine-tuning run."),
              keep_layers: int = typer.Option(..., "--keep-layers", help="Encoder layers to keep."),
              output: Optional[Path] = typer.Option(None, "-o", "--output", help="New run directory "
                                                    "(default RUN_DIR-Nlayers)."),
              strategy: str = typer.Option("spread", "--strategy", help="spread (evenly spaced, first and last kept) or "
                                            "bottom (the lowest N)."),
              epochs: float = typer.Option(2.0, "--epochs", help="Re-fine-tuning epochs on the run's data."),
              lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default: the run's)."),
              distill: bool = typer.Option(False, "--distill", help="Also learn from the original run's outputs."),
              alpha: float = typer.Option(0.5, "--alpha", help="Weight of the task loss when distilling."),
              temperature: float = typer.Option(2.0, "--temperature", help="Distillation temperature."),
              overwrite: bool = typer.Option(False, "--overwrite"),
              verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
        """Drop encoder layers, re-fine-tune briefly (optionally distilling), and report accuracy vs speed."""
        from domaintune import cli as base

        base._setup_logging(verbose)
        from domaintune.export.prune import PruneError, prune_run

        try:
            rec = prune_run(run_dir, keep_layers, output, strategy=strategy, epochs=epochs, lr=lr, distill=distill,
                            alpha=alpha, temperature=temperature, overwrite=overwrite)
        except (*base.USER_ERRORS, PruneError) as e:
            base._fail(e)
            return
        from domaintune.export.prune import pruning_table

        base.out.print(pruning_table(rec), highlight=False, markup=False)
        base.out.print(f"pruned run written to {rec['output_run']}", highlight=False)
