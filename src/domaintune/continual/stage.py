"""`continue_run`: one continual-learning stage from a finished run to a new run directory.

    previous run ─▶ stage records (bootstrapped from a plain `train` run) ─▶ new data, label space extended
    ─▶ strategies' setup (buffer, Fisher, teacher) ─▶ train_run (ContinualMethod, shared Trainer)
    ─▶ strategies' finish (state for the next stage) ─▶ every stage's test set scored ─▶ matrix, gate, report

Everything a later stage needs is inside the new run directory (`continual/`):
`stages.json` (stage records, data paths and sha256, the accuracy matrix and
scores), `tests/stage-K.jsonl` (each stage's test rows, hashed), `gate.json`,
`replay/` and `ewc/` when those strategies ran. The previous run is only read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from domaintune.continual import ContinualOptions, StageContext, make_strategies, parse_strategy
from domaintune.continual.method import ContinualClassification, ContinualMethod
from domaintune.continual.metrics import gate as gate_of
from domaintune.continual.metrics import summarize
from domaintune.data import DataError, Example, LabelMap, Problem, prepare_data
from domaintune.training.checkpoint import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file

log = logging.getLogger("domaintune")
STATE = "continual"


class ContinualError(ValueError):
    """The run cannot be continued as asked; the message says why and what to do."""


def sha256_of(path: str | Path) -> str | None:
    p = Path(str(path).split("#", 1)[0])
    if not p.is_file():
        return None
    return sha256_file(p)


def _rows_bytes(examples: list[Example]) -> bytes:
    rows = []
    for ex in examples:
        row = {"text": ex.text, "label": ex.label, "source": ex.source, "line": ex.line}
        if ex.text_pair is not None:
            row["text_pair"] = ex.text_pair
        rows.append(json.dumps(row, ensure_ascii=False) + "\n")
    return "".join(rows).encode("utf-8")


def read_test_rows(run_dir: Path, record: dict) -> tuple[list[Example], bytes]:
    """A stage's stored test rows; the bytes must match the sha256 in stages.json."""
    path = run_dir / record["test_file"]
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ContinualError(f"{path}: test set of stage {record['index']} is missing ({e}); restore it from the run "
                             f"that wrote it") from None
    if hashlib.sha256(raw).hexdigest() != record["test_sha256"]:
        raise ContinualError(f"{path}: does not match the sha256 recorded in {run_dir / STATE / 'stages.json'}; "
                             f"the stored test set was changed - restore it from the run that wrote it")
    out = []
    for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        r = json.loads(line)
        out.append(Example(r["text"], r["label"], source=r.get("source", str(path)), line=int(r.get("line", n)),
                           text_pair=r.get("text_pair")))
    return out, raw


def _stage_data(run_dir: Path, record: dict) -> tuple[object, ContinualClassification]:
    """Re-read and re-split a stage's data exactly as its run did (same config, same seed); check it is unchanged."""
    from domaintune.config import load_config

    cfg = load_config(run_dir / "config.yaml")
    recorded = (record.get("data") or {}).get("train_sha256")
    now = sha256_of(cfg.data.train) if cfg.data.train else None
    if now is None:
        raise ContinualError(f"{run_dir}: stage {record['index']}'s training data {cfg.data.train!r} (config.yaml "
                             f"data.train) is not readable; replay and ewc need it once to start, and stage 0's test "
                             f"set comes from it - restore the file, or continue from a run made by `continue`")
    if recorded and now != recorded:
        raise ContinualError(f"{cfg.data.train}: changed since stage {record['index']} was trained (sha256 {now[:12]} "
                             f"!= {recorded[:12]}); restore the original file")
    task = ContinualClassification(record.get("labels_before", []))
    task.configure(cfg)
    try:
        splits = prepare_data(cfg, task)
    except DataError as e:
        raise ContinualError(f"{run_dir}: cannot re-read stage {record['index']}'s data:\n{e}") from None
    return splits, task


def _bootstrap(prev: Path, old_labels: list[str], evaluate) -> tuple[dict, dict, list[Example]]:
    """Stage 0 from a plain `train` run: its test split re-made from its config, scored by its own model."""
    from domaintune.config import load_config

    cfg = load_config(prev / "config.yaml")
    record = {"index": 0, "name": Path(str(cfg.data.train).split("#")[0]).stem, "run_dir": str(prev), "kind": "initial",
              "strategy": "train", "labels_before": [], "labels": list(old_labels), "new_labels": list(old_labels),
              "data": {"train": cfg.data.train, "train_sha256": sha256_of(cfg.data.train) if cfg.data.train else None,
                       "dev": cfg.data.dev, "test": cfg.data.test, "test_file_sha256": sha256_of(cfg.data.test) if cfg.data.test else None},
              "seed": cfg.train.seed}
    splits, task = _stage_data(prev, record)
    if list(task.labels) != list(old_labels):
        raise ContinualError(f"{prev}: re-reading its data gives labels {task.labels[:5]}... but labels.json has "
                             f"{old_labels[:5]}...; the data changed since the run was trained - restore it")
    record["train_examples"] = len(splits.train)
    record["test_examples"] = len(splits.test)
    raw = _rows_bytes(splits.test)
    record["test_file"] = f"{STATE}/tests/stage-0.jsonl"
    record["test_sha256"] = hashlib.sha256(raw).hexdigest()
    state = {"version": 1, "stages": [record], "matrix": [[evaluate(splits.test)]]}
    return state, {record["test_file"]: raw}, splits.train


def continue_run(run_dir: str | Path, data: str | Path, output: str | Path, strategy: str = "naive",
                 options: ContinualOptions | None = None, overrides: list[str] | None = None, mode: str = "auto",
                 max_forgetting: float | None = None, name: str | None = None, overwrite: bool = False,
                 resume: bool = False) -> dict:
    """Train one more stage of RUN_DIR on DATA into OUTPUT; return the stage summary (also in continual/stages.json).

    `mode`: `auto` (new labels make the stage class-incremental), `domain` (new labels are an error),
    `class` (the data must bring new labels). `overrides`: `--set` keys on top of RUN_DIR's config
    (e.g. train.epochs=2, data.test=new_test.csv). `max_forgetting`: the gate in accuracy points.
    `resume`: finish an interrupted stage in OUTPUT from its latest checkpoint, with the same arguments: the
    strategies' state (replay sample, Fisher, teacher) is rebuilt from RUN_DIR, seeded, so it is the same.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from domaintune.config import load_config
    from domaintune.run import RunDirectoryError, train_run
    from domaintune.tasks import EvalContext, get_task
    from domaintune.training.loop import set_threads
    from domaintune.training.robust import robust_active

    prev, out, options = Path(run_dir), Path(output), options or ContinualOptions()
    parse_strategy(strategy)   # fail on a typo before any work
    if mode not in ("auto", "domain", "class"):
        raise ContinualError(f"--mode {mode!r}: choose auto, domain or class")
    for need in ("config.yaml", "labels.json", "model"):
        if not (prev / need).exists():
            raise FileNotFoundError(f"{prev}: not a finished run directory (no {need}); give the output of "
                                    f"`domaintune train` or `domaintune continue`")
    if (prev / "model" / "adapter_config.json").is_file() or (prev / "model" / "domaintune_head.json").is_file():
        raise ContinualError(f"{prev}: continual learning continues a full fine-tuning run (a plain Hugging Face "
                             f"model); this run saved an adapter or a custom head - `domaintune merge` a LoRA run first")
    if out.resolve() == prev.resolve():
        raise ContinualError(f"-o {out}: the new stage must go to a new run directory; the previous run is kept as it is")
    if resume and overwrite:
        raise ContinualError("--resume and --overwrite contradict each other: resume keeps OUTPUT's checkpoints")
    if resume and (out / "metrics.json").is_file() and (out / STATE / "stages.json").is_file():
        raise RunDirectoryError(f"{out}: this stage already finished; nothing to resume (use --overwrite to redo it)")
    if out.exists() and any(out.iterdir()) and not (overwrite or resume):
        raise RunDirectoryError(f"{out} already holds a run; pass --resume to finish an interrupted stage, "
                                f"--overwrite to replace it, or choose another -o")
    prev_cfg = load_config(prev / "config.yaml")
    if not get_task(prev_cfg.task).supports_continual or prev_cfg.data.oos_label:
        raise ContinualError(f"{prev}: continual learning supports `task: classification` without data.oos_label; "
                             f"this run is task {prev_cfg.task!r}" + (" with out-of-scope rows" if prev_cfg.data.oos_label else ""))
    old_labels = list(LabelMap.load(prev / "labels.json").labels)

    path, _, split = str(data).partition("#")   # absolute, so a later stage can re-read it from any directory
    data = str(Path(path).resolve()) + (f"#{split}" if split else "")
    forced = [f"data.train={data}", f"output_dir={out}", f"model={(prev / 'model').resolve()}", "method=full"]
    user_keys = {o.split("=", 1)[0].strip() for o in overrides or []}
    clash = user_keys & {"data.train", "output_dir", "model", "method"}
    if clash:
        raise ContinualError(f"--set {', '.join(sorted(clash))}: set by `continue` itself (the stage starts from "
                             f"RUN_DIR's model with full fine-tuning; use --data and -o for the data and the output)")
    sets = ["data.dev=null", "data.test=null", "baseline=false", "train.head_init=random", "data.k_shot=null",
            *(overrides or []), *forced]
    cfg = load_config(prev / "config.yaml", sets)
    strategies = make_strategies(strategy, options)
    if robust_active(cfg.robust) and any(s.adds_loss for s in strategies):
        raise ContinualError("robust: adversarial training / R-Drop bypass the loss hook that ewc and lwf use; "
                             "set robust.adversarial=none and robust.rdrop_alpha=0 for this stage")
    set_threads(cfg.train.num_threads)
    task = ContinualClassification(old_labels)
    task.configure(cfg)
    splits = prepare_data(cfg, task)                 # DataError: every problem with file:line
    new_labels = task.new_labels(splits.train)
    if mode == "domain" and new_labels:
        first = next(ex for ex in splits.train if ex.label in set(new_labels))
        raise DataError([Problem(first.source, first.line, f"--mode domain, but the data has {len(new_labels)} label(s) the "
                                 f"previous run does not know: {new_labels[:8]}",
                                 f"fix the labels (known: {old_labels[:8]}{' ...' if len(old_labels) > 8 else ''}) or use "
                                 f"--mode class to add them as new classes")])
    if mode == "class" and not new_labels:
        raise DataError([Problem(str(data), None, "--mode class, but every label in the data is already known",
                                 "use --mode domain (or auto) for new data of the same labels")])

    tokenizer = AutoTokenizer.from_pretrained(str(prev / "model"))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prev_model = AutoModelForSequenceClassification.from_pretrained(str(prev / "model"), dtype=torch.float32,
                                                                    weights_only=True).eval()
    for p in prev_model.parameters():
        p.requires_grad_(False)

    def accuracy(model, examples: list[Example], labels: list[str]) -> float:
        t = ContinualClassification(labels)
        t.fit([])
        feats = t.encode(tokenizer, examples, cfg.train.max_length)
        return float(t.evaluate(model, examples, feats, EvalContext(tokenizer, pad_id, cfg.train.eval_batch_size,
                                                                    cfg.train.max_length, False))["accuracy"])

    test_bytes: dict[str, bytes] = {}
    cache_train: list[Example] | None = None
    if (prev / STATE / "stages.json").is_file():
        state = json.loads((prev / STATE / "stages.json").read_text(encoding="utf-8"))
        for rec in state["stages"]:
            _, raw = read_test_rows(prev, rec)
            test_bytes[rec["test_file"]] = raw
    else:
        state, test_bytes, cache_train = _bootstrap(prev, old_labels, lambda exs: accuracy(prev_model, exs, old_labels))
    k = len(state["stages"])

    def prev_train() -> list[Example]:
        nonlocal cache_train
        if cache_train is None:
            cache_train = _stage_data(prev, state["stages"][-1])[0].train
        return cache_train

    ctx = StageContext(stage=k, prev_run=prev, out_dir=out, task=task, tokenizer=tokenizer, pad_id=pad_id,
                       max_length=cfg.train.max_length, prev_model=prev_model, n_old=len(old_labels),
                       new_train=splits.train, prev_train=prev_train, options=options, seed=cfg.train.seed)
    for s in strategies:
        s.setup(ctx)
    task.extra_rows = [ex for s in strategies for ex in s.extra_examples()]
    stage_name = name or Path(str(data).split("#")[0]).stem
    record = {"index": k, "name": stage_name, "run_dir": str(out), "previous_run": str(prev),
              "kind": "class-incremental" if new_labels else "domain-incremental", "strategy": "+".join(s.name for s in strategies),
              "settings": {key: v for s in strategies for key, v in s.settings().items()},
              "labels_before": old_labels, "labels": list(task.labels), "new_labels": new_labels,
              "data": {"train": cfg.data.train, "train_sha256": sha256_of(cfg.data.train), "test": cfg.data.test,
                       "test_file_sha256": sha256_of(cfg.data.test) if cfg.data.test else None},
              "train_examples": len(splits.train), "replayed_rows": len(task.extra_rows), "test_examples": len(splits.test),
              "seed": cfg.train.seed}
    log.info("stage %d (%s): %s, %d new label(s), strategy %s, %d training rows + %d replayed", k, stage_name,
             record["kind"], len(new_labels), record["strategy"], len(splits.train), len(task.extra_rows))
    metrics = train_run(cfg, overwrite=overwrite, resume=resume, splits=splits,
                        method=ContinualMethod(strategies, record), task=task)

    model = AutoModelForSequenceClassification.from_pretrained(str(out / "model"), dtype=torch.float32,
                                                               weights_only=True).eval()
    for s in strategies:
        record.update(s.finish(model, ctx))
    if "replay" not in record["strategy"].split("+") and (prev / STATE / "replay" / "meta.json").is_file():
        # a stage without replay still carries the buffer forward, so a later replay stage has every stage in it
        from domaintune.continual.replay import ReplayBuffer

        buffer = ReplayBuffer.load(prev / STATE / "replay", capacity=options.replay_size)
        buffer.add(splits.train, stage=k)
        buffer.save(out / STATE / "replay")
    if "ewc" not in record["strategy"].split("+") and (prev / STATE / "ewc" / "meta.json").is_file():
        # likewise the Fisher, with this stage's importance added: a later ewc stage reads the stored sum and
        # estimates nothing itself, so without this the stages since the last ewc stage would be unprotected
        from domaintune.continual.ewc import EWC

        carrier = EWC(options)
        carrier.setup(ctx)
        record["fisher_carried"] = carrier.finish(model, ctx)["fisher_stages"]
    raw = _rows_bytes(splits.test)
    record["test_file"] = f"{STATE}/tests/stage-{k}.jsonl"
    record["test_sha256"] = hashlib.sha256(raw).hexdigest()
    test_bytes[record["test_file"]] = raw
    for rel, data_bytes in test_bytes.items():
        atomic_write_bytes(out / rel, data_bytes)
    stages = [*state["stages"], record]
    row = [accuracy(model, read_test_rows(out, rec)[0], list(task.labels)) for rec in stages]
    matrix = [*state["matrix"], row]
    summary = summarize(matrix)
    names = [s["name"] for s in stages]
    gate = gate_of(matrix, max_forgetting, names)
    new_state = {"version": 1, "stages": stages, "matrix": matrix, "summary": summary}
    atomic_write_json(out / STATE / "stages.json", new_state)
    atomic_write_json(out / STATE / "gate.json", gate)

    from domaintune.continual.report import accuracy_heatmap_png, continual_section

    plot = None
    try:
        accuracy_heatmap_png(matrix, names, out / "plots" / "continual_accuracy.png")
        plot = "plots/continual_accuracy.png"
    except Exception as e:  # noqa: BLE001 - a plotting failure must not lose a trained stage
        log.warning("could not draw the accuracy heat-map: %s", e)
    report = (out / "report.md").read_text(encoding="utf-8")
    atomic_write_text(out / "report.md", report + continual_section(stages, matrix, summary, gate, plot))
    metrics["continual"] = {"stage": k, "strategy": record["strategy"], "kind": record["kind"], "matrix": matrix,
                            **summary, "promotable": gate["promotable"]}
    atomic_write_json(out / "metrics.json", metrics)
    return {"run_dir": str(out), "stage": k, "record": record, "matrix": matrix, "names": names, "summary": summary,
            "gate": gate, "metrics": metrics}
