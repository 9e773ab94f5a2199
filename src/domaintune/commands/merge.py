"""`domaintune merge RUN_DIR [-o OUT_DIR]`: fold a LoRA/AdaLoRA/IA3 adapter into a plain model.

An adapter run keeps only the adapter; serving it needs peft and the base model.
Merging writes a new run directory whose `model/` is an ordinary Hugging Face
model (the adapter's updates added into the weights by peft's
`merge_and_unload`, the trained head in place), which the Predictor and plain
`transformers` load without peft and which runs as fast as the base model.

The merged model is checked before it is published: it is reloaded from disk and
its logits on a few English and Chinese texts must match the adapter model's
within `tolerance` (default 1e-4) times the largest |logit| (at least 1), otherwise nothing is written.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by the merge itself, never by `domaintune --help` (see commands/__init__)
    import torch

log = logging.getLogger("domaintune")

#: Probe texts for the merge check; English and Chinese, short and long.
CHECK_TEXTS = [
    "I still have not received my new card, when will it arrive?",
    "The transfer to my savings account failed twice this morning.",
    "How do I change the PIN of my debit card",
    "我的银行卡被吞了，怎么办？",
    "这家酒店的服务很好，房间干净，早餐也很丰富，下次还会再来。",
    "Refund please",
    "Order 4521 arrived damaged; the box was open and two items were missing from the package.",
    "上海浦东发展银行的信用卡年费是多少",
]
#: Run-directory entries not copied: the model is rewritten, checkpoints hold adapter-run state.
SKIP = {"model", "checkpoints", "tensorboard", "model.old"}


class MergeError(ValueError):
    """The run cannot be merged (not an adapter run, prefix/prompt tuning, or the check failed)."""


def default_output(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + "-merged")


def _logits(model, task, feats, pad_id: int) -> list[torch.Tensor]:
    from domaintune.training.loop import predict_logits

    return predict_logits(model, feats, task.collate, pad_id, 16, stack=False)


def merge_run(run_dir: str | Path, out_dir: str | Path | None = None, overwrite: bool = False,
              check_texts: list | None = None, tolerance: float = 1e-4) -> dict:
    """Write OUT_DIR (default RUN_DIR-merged) with the merged full model; return the merge record."""
    from domaintune.methods.peft_methods import ADAPTER_INFO
    from domaintune.predictor import Predictor
    from domaintune.training.checkpoint import atomic_dir, atomic_write_json

    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else default_output(run_dir)
    model_dir = run_dir / "model"
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    if not (model_dir / "adapter_config.json").is_file():
        raise MergeError(f"{run_dir}: not an adapter run (no model/adapter_config.json); only runs trained with "
                         f"method lora, adalora or ia3 can be merged - this run's model is already a full model")
    info_path = model_dir / ADAPTER_INFO
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    peft_type = info.get("peft_type") or json.loads((model_dir / "adapter_config.json").read_text()).get("peft_type")
    if peft_type in ("PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING") or info.get("mergeable") is False:
        raise MergeError(f"{run_dir}: {info.get('method') or peft_type} adds virtual tokens, not weight updates, so "
                         f"there is nothing to fold into the weights; serve the adapter run as it is, or retrain "
                         f"with method: lora to get a mergeable adapter")
    if out.resolve() == run_dir.resolve():
        raise MergeError(f"the output directory must differ from the run directory {run_dir}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise MergeError(f"{out} already exists; pass --overwrite to replace it or choose another with -o")

    pred = Predictor(run_dir, backend="torch")  # merging needs the torch adapter model, not an export
    task, tokenizer, model = pred.task, pred.tokenizer, pred.model
    texts = list(check_texts or CHECK_TEXTS)
    if task.pair_input is True:  # pair tasks read (text, text_pair)
        texts = [(a, b) for a, b in zip(texts, texts[1:] + texts[:1])]
    feats = pred.features(pred.examples(texts))
    before = _logits(model, task, feats, pred.pad_id)
    merged = model.merge_and_unload().eval()
    record: dict = {}

    def write(tmp: Path) -> None:
        for item in run_dir.iterdir():
            if item.name in SKIP or item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        (tmp / "model").mkdir()
        task.save_model(merged, tokenizer, tmp / "model")
        after = _logits(task.load_model(tmp / "model"), task, feats, pred.pad_id)  # as the Predictor will load it
        diff = max(float((a - b).abs().max()) for a, b in zip(before, after))
        # relative to the logits' scale: a causal LM's logits over a 49k vocabulary reach ~20-30, where fp32
        # rounding of W + BA alone differs by ~1e-4 from computing BA on the side
        scale = max(1.0, max(float(a.abs().max()) for a in before))
        if not diff <= tolerance * scale:
            raise MergeError(f"merged model disagrees with the adapter model: max |logit difference| {diff:.2e} > "
                             f"{tolerance:.0e} x the largest |logit| {scale:.1f}; nothing written (report this with the run's adapter_config.json)")
        record.update({"merged_from": str(run_dir), "method": info.get("method"), "peft_type": peft_type,
                       "base_model": info.get("base_model"), "max_logit_difference": diff, "tolerance": tolerance * scale,
                       "checked_inputs": len(texts), "model_bytes": sum(
                           f.stat().st_size for f in (tmp / "model").glob("*.safetensors"))})
        atomic_write_json(tmp / "merge.json", record)
        metrics_path = tmp / "metrics.json"
        if metrics_path.is_file():
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
            metrics["merged"] = record
            atomic_write_json(metrics_path, metrics)

    atomic_dir(out, write)
    log.info("merged %s -> %s (max |logit difference| %.2e)", run_dir, out, record["max_logit_difference"])
    return {**record, "output_dir": str(out)}


def register(app) -> None:
    import typer

    @app.command()
    def merge(run_dir: Path = typer.Argument(..., help="An adapter run directory (method lora, adalora or ia3)."),
              output: Path = typer.Option(None, "-o", "--output", help="Where to write the merged run "
                                          "(default RUN_DIR-merged)."),
              overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
              verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
        """Fold a PEFT adapter into the base weights: a plain Hugging Face model, checked against the adapter."""
        from domaintune import cli as base
        from domaintune.models import ModelNotFoundError

        base._setup_logging(verbose)
        try:
            rec = merge_run(run_dir, output, overwrite=overwrite)
        except (MergeError, FileNotFoundError, ModelNotFoundError) as e:
            base._fail(e)
            return
        base.out.print(f"merged run written to {rec['output_dir']} (max |logit difference| vs the adapter "
                       f"{rec['max_logit_difference']:.2e}); predict with: domaintune predict {rec['output_dir']}")
