#!/usr/bin/env python
"""Benchmark: supervised fine-tuning of small causal LMs on two service-reply data sets, against the starting
points, and the fast CPU generation path against plain transformers `generate` in fp32 - one invocation.

    .venv/bin/python bench/generation.py                         # both data sets (needs ../shared/datasets)
    .venv/bin/python bench/generation.py --data bitext --train-rows 800 --test-rows 100

Per data set (bench/configs/bitext_sft.yaml: SmolLM2-135M-Instruct + LoRA; crosswoz_sft.yaml: Gemma-3-270M
base + LoRA):

1. Quality. `domaintune train` on a training subset (--train-rows rows of train, --dev-rows of dev, evenly
   spaced over the files, which are sorted by intent / dialogue; stated with their token counts) with
   --test-rows evenly spaced rows of test as its test split, then the
   run's own test scoring on those rows (generation and perplexity alike):
   fine-tuned, zero-shot (the untuned model, same prompt and template) and nearest neighbour (the reply of the
   most similar training prompt; minilm-l6 / m3e-small embeddings) - ROUGE-L, chrF, BLEU (per character for
   Chinese), perplexity of the references, mean reply length. Training seconds and trained tokens/s.
2. Speed. The same --speed-prompts test prompts decoded by plain transformers (`model.generate`, fp32, the
   merged fine-tuned model) and by our fast path (the same model with int8 dynamic linear layers, through the
   same `generate`), at batch 1 and batch 8, each generating exactly --speed-tokens tokens per prompt
   (min_new_tokens = max_new_tokens, so both do the same work); batch 1 also measures time to first token.
   Ratios are from this one run on this machine; the CPU flags are recorded.
3. The gate. `domaintune export RUN --format int8` (`generation/fast_path.check_fast_path`): test ROUGE-L of
   fp32 and int8 replies on the same rows; the gate passes within 1 point.
4. GGUF. `domaintune export RUN --format gguf` (q8_0) and, if `llama_cpp` (llama-cpp-python) is importable
   here, its tokens/s at batch 1 on the same prompts; otherwise the table says it was not available.

Writes bench/results/generation.md and .json; the work folder (data subsets, runs) is deleted at the end
unless --keep.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets"
SETS = {
    "bitext": {"config": "bitext_sft.yaml", "folder": "bitext_support", "files": ("train.csv", "dev.csv", "test.csv")},
    "crosswoz": {"config": "crosswoz_sft.yaml", "folder": "crosswoz_sft",
                 "files": ("train.jsonl", "dev.jsonl", "test.jsonl")},
}


def spread(rows: list, n: int | None) -> list:
    """`n` rows evenly spaced over `rows` (all when n is None or larger). Not the first n: both files are
    sorted (bitext by intent - its first 480 training rows hold 4 of 27 intents -, crosswoz by dialogue)."""
    from domaintune.tasks.generation import evenly_spaced  # the task's own choice of evaluated rows

    return evenly_spaced(rows, n)


def subset_rows(src: Path, dst: Path, n: int | None) -> int:
    """`n` evenly spaced data rows of a CSV (header kept) or JSONL file; returns how many were written."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix == ".csv":
        with src.open(newline="", encoding="utf-8") as f, dst.open("w", newline="", encoding="utf-8") as g:
            rows = list(csv.reader(f))
            keep = spread(rows[1:], n)
            csv.writer(g).writerows([rows[0], *keep])
            return len(keep)
    keep = spread([ln for ln in src.read_text(encoding="utf-8").splitlines() if ln.strip()], n)
    dst.write_text("\n".join(keep) + "\n", encoding="utf-8")
    return len(keep)


def train_set(name: str, args, work: Path) -> dict:
    from domaintune.config import load_config
    from domaintune.run import train_run

    spec = SETS[name]
    src = DATA / spec["folder"]
    counts = {}
    paths = {}
    for split, fname, n in zip(("train", "dev", "test"), spec["files"], (args.train_rows, args.dev_rows, args.test_rows)):
        paths[split] = work / name / fname
        counts[split] = subset_rows(src / fname, paths[split], n)
    run_dir = work / name / "run"
    if args.reuse and (run_dir / "metrics.json").is_file():  # a finished run of an earlier invocation: its figures
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        return {"run_dir": str(run_dir), "rows": counts, "metrics": metrics, "reused": True,
                "wall_seconds": metrics["train"].get("total_seconds")}
    cfg = load_config(ROOT / "bench" / "configs" / spec["config"],
                      [f"data.train={paths['train']}", f"data.dev={paths['dev']}", f"data.test={paths['test']}",
                       f"output_dir={run_dir}", f"generation.eval_examples={args.test_rows}"]
                      + (["train.max_steps=%d" % args.max_steps] if args.max_steps else []))
    t0 = time.perf_counter()
    metrics = train_run(cfg, overwrite=True)
    return {"run_dir": str(run_dir), "rows": counts, "metrics": metrics, "wall_seconds": round(time.perf_counter() - t0, 1)}


def quality_rows(metrics: dict) -> list[dict]:
    out = []
    systems = [("zero-shot (untuned)", metrics["baseline"].get("zero_shot")),
               ("nearest neighbour", metrics["baseline"].get("nearest_neighbour")),
               (f"fine-tuned ({metrics['method']})", metrics["test"])]
    for label, m in systems:
        if not m:
            out.append({"system": label, "missing": True})
            continue
        out.append({"system": label, "rougeL": m.get("rougeL"), "chrf": m.get("chrf"), "bleu": m.get("bleu"),
                    "perplexity": m.get("perplexity"), "pred_len_mean": m.get("pred_len_mean"),
                    "ref_len_mean": m.get("ref_len_mean"), "rows": m.get("generated_rows"),
                    "tokenization": m.get("tokenization"), "samples": m.get("samples", [])[:3]})
    return out


def speed(run_dir: str, prompts_n: int, tokens: int) -> dict:
    """Plain transformers fp32 generate vs the int8 fast path, same prompts, same number of new tokens."""
    import torch

    from domaintune.generation.engine import quantize_int8
    from domaintune.predictor import Predictor
    from domaintune.tasks.generation import prompt_messages
    from domaintune.config import RunConfig
    from domaintune.data import prepare_data

    pred = Predictor(run_dir, backend="torch")
    gen = pred.generator()  # merged fp32 model, the run's template
    cfg = RunConfig.model_validate(pred.config)
    test = prepare_data(cfg, pred.task).test[:prompts_n]
    prompts = [gen.prompt_ids(prompt_messages(ex), tokens) for ex in test]
    tok = pred.tokenizer
    from domaintune.generation.fast_path import saved_maxima

    # the int8 model the Predictor serves: smoothed with the calibration the gate saved (run before this)
    systems = {"transformers fp32": gen.model,
               "domaintune int8 fast path": quantize_int8(gen.model, saved_maxima(run_dir))}
    out: dict = {"prompts": len(prompts), "new_tokens_each": tokens, "prompt_tokens_mean": round(sum(map(len, prompts)) / len(prompts), 1)}

    def run(model, batch: list[list[int]], n: int) -> float:
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), gen.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(batch):
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=gen.pad_id, eos_token_id=gen.stop_ids, temperature=None, top_p=None, top_k=None)
        return time.perf_counter() - t

    for name, model in systems.items():
        run(model, prompts[:1], 4)  # warm-up
        first = [run(model, [p], 1) for p in prompts]
        b1 = sum(run(model, [p], tokens) for p in prompts)
        b8 = sum(run(model, prompts[i:i + 8], tokens) for i in range(0, len(prompts), 8))
        out[name] = {"batch1_tokens_per_second": round(len(prompts) * tokens / b1, 2),
                     "batch8_tokens_per_second": round(len(prompts) * tokens / b8, 2),
                     "first_token_ms_mean": round(1000 * sum(first) / len(first), 1)}
        print(name, out[name], flush=True)
    a, b = out["transformers fp32"], out["domaintune int8 fast path"]
    out["ratio_batch1"] = round(b["batch1_tokens_per_second"] / a["batch1_tokens_per_second"], 3)
    out["ratio_batch8"] = round(b["batch8_tokens_per_second"] / a["batch8_tokens_per_second"], 3)
    out["ratio_first_token"] = round(a["first_token_ms_mean"] / b["first_token_ms_mean"], 3)
    del tok
    return out


def gguf_and_llamacpp(run_dir: str, prompts_n: int, tokens: int) -> dict:
    try:
        from domaintune.export.gguf_export import export_gguf
    except ImportError as e:
        return {"exported": False, "why": f"gguf export not available: {e}"}
    try:
        rec = export_gguf(run_dir, quantize="q8_0")
    except Exception as e:  # noqa: BLE001 - reported, the rest of the bench stands
        return {"exported": False, "why": f"{type(e).__name__}: {e}"}
    out = {"exported": True, "record": rec}
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        out["llama_cpp"] = "llama-cpp-python is not installed here (it builds llama.cpp from source; not attempted)"
        return out
    from domaintune.predictor import Predictor
    from domaintune.config import RunConfig
    from domaintune.data import prepare_data
    from domaintune.tasks.generation import prompt_messages

    pred = Predictor(run_dir, backend="torch")
    gen = pred.generator()
    test = prepare_data(RunConfig.model_validate(pred.config), pred.task).test[:prompts_n]
    llm = llama_cpp.Llama(model_path=str(Path(run_dir) / "export" / Path(rec["file"]).name), n_ctx=1024, n_threads=2,
                          verbose=False)
    t = time.perf_counter()
    n = 0
    for ex in test:
        r = llm(gen.render(prompt_messages(ex)), max_tokens=tokens, temperature=0.0)
        n += r["usage"]["completion_tokens"]
    out["llama_cpp"] = {"batch1_tokens_per_second": round(n / (time.perf_counter() - t), 2), "tokens": n}
    return out


def cpu_flags() -> list[str]:
    from domaintune.training.loop import cpu_flags as flags

    return flags()


def fmt(v, nd=2):
    return "–" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def markdown(results: dict) -> str:
    from domaintune.evaluation.markdown import md_cell

    lines = ["# Generation benchmark (bench/generation.py)", "",
             f"{results['date']} · CPU flags: {', '.join(results['cpu_flags']) or 'none of avx2/avx512/amx'} · "
             f"{results['cores']} cores · torch {results['torch']} · transformers {results['transformers']}", "",
             f"Command: `{results['command']}`", ""]
    for name, r in results["sets"].items():
        m = r["train"]["metrics"]
        enc = m["data"].get("encoding", {}).get("train", {})
        lines += [f"## {name}: {m['model']} + {m['method']}", "",
                  *([f"Training and test scoring: from the finished run of an earlier invocation (--reuse), "
                     f"written {m.get('train', {}).get('total_seconds')} s after it started.", ""]
                    if r["train"].get("reused") else []),
                  f"Trained on {r['train']['rows']['train']} evenly spaced training rows ({enc.get('tokens')} tokens, "
                  f"{enc.get('label_tokens')} of them reply tokens with loss; {enc.get('dropped')} left out as longer "
                  f"than max_length), dev {r['train']['rows']['dev']} rows, scored on "
                  f"{m['test'].get('generated_rows')} test rows. Training {m['train']['seconds']:.0f} s "
                  f"({enc.get('tokens', 0) * m['train']['epochs_completed'] / max(m['train']['seconds'], 1e-9):.0f} "
                  f"tokens/s, {m['train']['global_step']} steps, bf16 {m['train']['bf16']}, best step "
                  f"{m['train']['best_step']}).", "",
                  "| system | ROUGE-L | chrF | BLEU | perplexity | reply length (pred / ref) |", "|---|---|---|---|---|---|"]
        for q in r["quality"]:
            if q.get("missing"):
                lines.append(f"| {q['system']} | failed | | | | |")
                continue
            lines.append(f"| {q['system']} | {fmt(q['rougeL'])} | {fmt(q['chrf'])} | {fmt(q['bleu'])} | "
                         f"{fmt(q['perplexity'])} | {fmt(q['pred_len_mean'], 1)} / {fmt(q['ref_len_mean'], 1)} |")
        lines += ["", f"Scoring: {r['quality'][-1].get('tokenization')}.", ""]
        s = r.get("speed") or {}
        if s:
            a, b = s["transformers fp32"], s["domaintune int8 fast path"]
            lines += [f"Decoding speed, {s['prompts']} test prompts (mean {s['prompt_tokens_mean']} tokens), exactly "
                      f"{s['new_tokens_each']} new tokens each:", "",
                      "| system | tokens/s batch 1 | tokens/s batch 8 | first token ms (batch 1) |", "|---|---|---|---|",
                      f"| transformers `generate`, fp32 | {a['batch1_tokens_per_second']} | {a['batch8_tokens_per_second']} | {a['first_token_ms_mean']} |",
                      f"| domaintune fast path (int8 linear) | {b['batch1_tokens_per_second']} | {b['batch8_tokens_per_second']} | {b['first_token_ms_mean']} |",
                      f"| ratio | **{s['ratio_batch1']}×** | {s['ratio_batch8']}× | {s['ratio_first_token']}× |", ""]
        g = r.get("gate") or {}
        if g:
            lines += [f"Gate (`domaintune export RUN --format int8`): test ROUGE-L fp32 "
                      f"{g['systems']['fp32']['quality']['rougeL']:.2f} vs int8 {g['systems']['int8']['quality']['rougeL']:.2f} "
                      f"on {g['rows']} rows (drop {g['rougeL_drop']:.2f}, limit {g['max_drop']}): "
                      f"**{'passed' if g['gate_passed'] else 'failed'}**.", ""]
        gg = r.get("gguf") or {}
        if gg:
            if gg.get("exported"):
                rec = gg["record"]
                lines.append(f"GGUF: {rec.get('file')} ({rec.get('bytes', 0) / 1e6:.1f} MB, {rec.get('quantization')}), "
                             f"read back: {md_cell(json.dumps(rec.get('check', {}), ensure_ascii=False)[:300])}.")
            else:
                lines.append(f"GGUF: not exported ({md_cell(gg.get('why'))}).")
            lc = gg.get("llama_cpp")
            lines += [f"llama.cpp: {lc if isinstance(lc, str) else json.dumps(lc)}", ""]
        lines += ["Sample outputs (first test rows):", "", "| prompt | reference | fine-tuned | zero-shot | nearest neighbour |",
                  "|---|---|---|---|---|"]
        by = {q["system"]: {s_["prompt"]: s_["generated"] for s_ in q.get("samples", [])} for q in r["quality"] if not q.get("missing")}
        for smp in r["quality"][-1].get("samples", [])[:3]:
            cells = [smp["prompt"], smp["reference"], smp["generated"]] + [
                next((v.get(smp["prompt"], "") for k, v in by.items() if k.startswith(pfx)), "")
                for pfx in ("zero-shot", "nearest")]
            lines.append("| " + " | ".join(md_cell(str(c)[:300]) for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=["bitext", "crosswoz", "both"], default="both")
    ap.add_argument("--train-rows", type=int, default=640)
    ap.add_argument("--dev-rows", type=int, default=64)
    ap.add_argument("--test-rows", type=int, default=48)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--speed-prompts", type=int, default=8)
    ap.add_argument("--speed-tokens", type=int, default=64)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-generation")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="reuse a finished run in --work (its training and test "
                    "scoring) and measure the rest; the report says so")
    ap.add_argument("--out", type=Path, default=None, help="results path without suffix (default "
                    "bench/results/generation, or generation_<set> for one --data set)")
    args = ap.parse_args()
    if args.out is None:
        args.out = ROOT / "bench" / "results" / ("generation" if args.data == "both" else f"generation_{args.data}")
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: this benchmark needs the shared data sets")
    import torch
    import transformers

    from domaintune.training.loop import set_threads

    set_threads(None)
    results = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu_flags": cpu_flags(),
               "cores": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__,
               "platform": platform.platform(), "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
               "sets": {}}
    names = ["bitext", "crosswoz"] if args.data == "both" else [args.data]
    for name in names:
        r: dict = {}
        results["sets"][name] = r
        r["train"] = train_set(name, args, args.work)
        r["quality"] = quality_rows(r["train"]["metrics"])
        print(json.dumps(r["quality"], ensure_ascii=False, default=str)[:2000], flush=True)
        from domaintune.generation.fast_path import check_fast_path

        r["gate"] = check_fast_path(r["train"]["run_dir"])  # the run's evaluated rows (generation.eval_examples)
        r["speed"] = speed(r["train"]["run_dir"], args.speed_prompts, args.speed_tokens)
        r["gguf"] = gguf_and_llamacpp(r["train"]["run_dir"], args.speed_prompts, args.speed_tokens)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))
        args.out.with_suffix(".md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
