"""The fast CPU generation path and its quality gate, like `export --quantize int8` for classifiers.

`domaintune export RUN --format int8` on a generation run (`check_fast_path`) generates the test replies
(the run's evaluated rows, its decoding settings) with the fp32 model and with the int8 model
(`engine.quantize_int8`), scores both against the references with the run's metric (ROUGE-L, per character
for Chinese), measures decoding speed of both on the same prompts at batch 1 and batch 8, and records it all
in `RUN/export/generation_fast.json`. The gate passes when int8's ROUGE-L is at most `max_drop` points
(default 1.0) below fp32's; only then does `Predictor(backend="auto")` - the CLI and the service - decode with
it. A run whose gate failed still serves in fp32, and `--backend int8` forces the fast path by name.

There is no exported file: quantizing the linear layers at load time takes about a second and keeps the run
directory a plain Hugging Face (or PEFT) folder, so nothing unpickled or unverified is ever loaded.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger("domaintune")

RECORD = "generation_fast.json"
#: Per-channel activation maxima of the run's training replies, for the int8 path's smoothing (safetensors).
CALIBRATION = "int8_calibration.safetensors"
#: Training conversations the calibration runs through the fp32 model.
CALIBRATION_ROWS = 32
BACKENDS = ("torch", "int8")


def fast_path_record(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "export" / RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def choose_generation_backend(run_dir: str | Path, requested: str = "auto") -> str:
    """`torch` (fp32) or `int8`; `auto` picks int8 only when its recorded gate passed."""
    if requested in ("onnx", "onnx-int8"):
        raise ValueError(f"backend {requested!r} is for classifiers; a generation run decodes with torch or int8 "
                         f"(`domaintune export RUN --format int8` checks the int8 path)")
    if requested not in ("auto", *BACKENDS):
        raise ValueError(f"unknown backend {requested!r} for a generation run: use auto, torch or int8")
    if requested != "auto":
        return requested
    return "int8" if fast_path_record(run_dir).get("gate_passed") else "torch"


def calibration_maxima(generator, rows) -> dict:
    """Activation maxima of `generator`'s fp32 model over whole training conversations (prompt and reply)."""
    import torch

    from domaintune.generation.smoothing import activation_maxima, calibration_batches
    from domaintune.tasks.generation import prompt_messages

    texts = [generator.render([*prompt_messages(ex), {"role": "assistant", "content": str(ex.label)}])
             for ex in rows[:CALIBRATION_ROWS]]
    with torch.inference_mode():
        return activation_maxima(generator.model, calibration_batches(generator.tokenizer, texts, 512))


def saved_maxima(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / "export" / CALIBRATION
    if not path.is_file():
        return None
    from domaintune.generation.smoothing import load_maxima

    return load_maxima(path)


def decoding_speed(generator, prompts: list[list[dict]], settings, batch_size: int) -> dict:
    """Tokens/s of `generator` over `prompts` at `batch_size` (batch 1: also mean time to first token)."""
    from domaintune.generation.settings import SamplingSettings

    fixed = SamplingSettings(**{**settings.as_dict(), "stop": tuple(settings.stop)})
    generator.generate(prompts[:1], SamplingSettings(max_new_tokens=2))  # warm-up: first-call allocations
    t0 = time.perf_counter()
    if batch_size == 1:
        first, tokens = [], 0
        for p in prompts:
            result = None
            for item in generator.stream(p, fixed):
                result = item
            first.append(result.first_token_seconds or 0.0)
            tokens += result.completion_tokens
        seconds = time.perf_counter() - t0
        return {"batch": 1, "prompts": len(prompts), "tokens": tokens, "seconds": round(seconds, 3),
                "tokens_per_second": round(tokens / max(seconds, 1e-9), 2),
                "first_token_ms_mean": round(1000 * sum(first) / max(len(first), 1), 1)}
    results = generator.generate(prompts, fixed, batch_size)
    seconds = time.perf_counter() - t0
    tokens = sum(r.completion_tokens for r in results)
    return {"batch": batch_size, "prompts": len(prompts), "tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_second": round(tokens / max(seconds, 1e-9), 2)}


def check_fast_path(run_dir: str | Path, max_drop: float = 1.0, rows: int | None = None,
                    speed_prompts: int = 8) -> dict:
    """Score and time int8 against fp32 on the run's test rows; write export/generation_fast.json."""
    from domaintune.data import prepare_data
    from domaintune.config import RunConfig
    from domaintune.generation.engine import ChatGenerator, quantize_int8
    from domaintune.predictor import Predictor
    from domaintune.tasks.generation import prompt_messages, score_replies
    from domaintune.training.checkpoint import atomic_write_json

    run_dir = Path(run_dir)
    fp32 = Predictor(run_dir, backend="torch")
    if not fp32.is_generator:
        raise ValueError(f"{run_dir}: `--format int8` checks the fast generation path of a `task: generation` run; "
                         f"for this run use `--format onnx --quantize int8`")
    cfg = RunConfig.model_validate(fp32.config)
    task = fp32.task
    splits = prepare_data(cfg, task)
    test = task.eval_rows(splits.test)[:rows] if rows else task.eval_rows(splits.test)
    settings = task.settings()
    batch = int(task.generation.get("eval_batch_size", 8))
    context = int(task.generation.get("context_tokens", 2048))
    from domaintune.generation.smoothing import ALPHA, save_maxima

    # calibrated on training conversations (never the test rows the gate scores), saved for the Predictor
    maxima = calibration_maxima(fp32.generator(), task.eval_rows(splits.train))
    save_maxima(maxima, run_dir / "export" / CALIBRATION)
    gens = {"fp32": fp32.generator(), "int8": ChatGenerator(quantize_int8(fp32.generator().model, maxima),
                                                            fp32.tokenizer, task.chat_template, context)}
    record: dict = {"rows": len(test), "max_drop": max_drop, "smoothing": {"alpha": ALPHA, "calibration_rows":
                    min(CALIBRATION_ROWS, len(splits.train)), "file": CALIBRATION}, "decoding": settings.as_dict(), "systems": {}}
    prompts = [prompt_messages(ex) for ex in test[:speed_prompts]]
    # The run's own test scoring decoded these rows with this fp32 model and these settings (greedy is
    # deterministic): reuse its scores rather than decode them all again.
    saved = (json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")).get("test") or {}) \
        if (run_dir / "metrics.json").is_file() else {}
    reuse = (saved.get("generated_rows") == len(test) and saved.get("decoding") == settings.as_dict()
             and settings.greedy and not rows)
    for name, gen in gens.items():
        if name == "fp32" and reuse:
            scores = {**saved, "samples": saved.get("samples", [])[:3]}
            record["fp32_scores_from"] = "metrics.json (the run's test scoring: same rows, same greedy decoding)"
        else:
            scores = score_replies(gen, test, settings, batch, name, samples=3)
        record["systems"][name] = {"quality": {k: scores[k] for k in ("rougeL", "chrf", "bleu", "language",
                                                                     "tokenization", "generated_rows")},
                                   "samples": scores["samples"],
                                   "speed": [decoding_speed(gen, prompts, settings, 1),
                                             decoding_speed(gen, prompts, settings, batch)]}
        log.info("%s: ROUGE-L %.2f, %s tokens/s at batch 1", name, scores["rougeL"],
                 record["systems"][name]["speed"][0]["tokens_per_second"])
    q32, q8 = (record["systems"][k]["quality"]["rougeL"] for k in ("fp32", "int8"))
    s32, s8 = (record["systems"][k]["speed"][0]["tokens_per_second"] for k in ("fp32", "int8"))
    record.update(rougeL_drop=round(q32 - q8, 3), speedup_batch1=round(s8 / max(s32, 1e-9), 3),
                  gate_passed=bool(q32 - q8 <= max_drop))
    from domaintune.training.loop import cpu_flags  # every speed figure names the CPU it ran on

    record["cpu_flags"] = cpu_flags()
    atomic_write_json(run_dir / "export" / RECORD, record)
    return record
