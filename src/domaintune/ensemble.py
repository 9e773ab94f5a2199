"""Ensembles of finished runs: average the members' probabilities, serve the result as a run directory.

`domaintune ensemble RUN_A RUN_B ... -o RUN_E` checks that the members can be
averaged (same task, same label map, same tokenizer, compatible task state),
copies each member's `model/` into `RUN_E/model/members/<i>/` (the ensemble is
self-contained: deleting a member run does not break it), and writes
`model/domaintune_head.json` (`kind: ensemble`), the first member's tokenizer,
config.yaml, task.json and labels.json. `domaintune.model_io.load_run_model`
then loads it through `load_ensemble`, so the Predictor, `evaluate`,
`predict` and the server serve it like any other run.

How members are combined (`EnsembleModel`): logits = log(mean of the members'
softmax probabilities), so `softmax(logits)` is exactly the averaged
distribution and argmax, top-k and thresholds work unchanged (per token for
NER). Multi-label: the logit of the mean sigmoid probability; regression and
pair scoring: the mean prediction. Members may be any method (full, PEFT
adapter, few-shot head...), since each loads through `load_run_model`.

Why one shared tokenizer: a run directory encodes its input once (the
Predictor tokenises with `run/model`'s tokenizer, NER aligns labels to those
tokens), so members with different vocabularies would each need the raw text
and their own word alignment; averaging per-token NER outputs across different
tokenisations is not even defined. Ensembles are in practice seeds, methods or
a DAPT variant of one base model, which share the tokenizer; a mismatch is a
clear error naming the two runs.

When the first member's config still points at readable data, the ensemble
and every member are scored on the same test split (and thresholds of
out-of-scope / multi-label runs are re-tuned on dev for the ensemble);
metrics.json and report.md hold the table.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import torch
import yaml
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

from domaintune.security.safe_yaml import load_yaml_file

log = logging.getLogger("domaintune")

HEAD_FILE = "domaintune_head.json"
#: task.json keys tuned on dev after training (re-tuned for the ensemble, else taken from the first member).
CALIBRATED_KEYS = {"oos_threshold", "thresholds", "mode_reason"}
PROBE_TEXTS = ["The Quick brown fox, 2024!", "今天天气很好，我们去公园", "naïve café straße ÀÉ", "退款 refund ##x [UNK]"]


class EnsembleError(ValueError):
    """The runs cannot be ensembled; the message says which run and why."""


#: How members' outputs are averaged, by the task's declared `output_activation` (tasks/base.py).
COMBINE_BY_ACTIVATION = {"softmax": "softmax", "sigmoid": "sigmoid", "identity": "mean"}


def combine_mode(task_name: str, state: dict) -> str:
    """softmax / sigmoid / mean for a run of `task_name` with task.json `state` (a pair run's mode is in it)."""
    from domaintune.tasks import get_task, task_names_where

    try:
        task = get_task(task_name)
    except ValueError:
        task = None
    else:
        task.load_state(state)
    combine = COMBINE_BY_ACTIVATION.get(task.output_activation or "") if task is not None else None
    if combine is None:
        supported = task_names_where(lambda t: t.output_activation in COMBINE_BY_ACTIVATION)
        raise EnsembleError(f"task {task_name!r} cannot be ensembled by averaging probabilities "
                            f"(supported: {', '.join(supported)})")
    return combine


class EnsembleModel(nn.Module):
    """Averages member outputs; `logits` are such that the task's usual decoding gives the averaged prediction."""

    def __init__(self, members: list[nn.Module], combine: str = "softmax"):
        super().__init__()
        if combine not in ("softmax", "sigmoid", "mean"):
            raise ValueError(f"unknown combine mode {combine!r}")
        self.members = nn.ModuleList(members)
        self.combine = combine

    @property
    def config(self):  # the first member's config, for code that reads model.config (labels, sizes)
        return self.members[0].config

    def forward(self, labels=None, **batch):
        outs = torch.stack([m(**batch).logits.float() for m in self.members])  # [members, ...]
        n = outs.shape[0]
        if self.combine == "softmax":
            # log(mean p) computed in log space: stable even when a member is very confident
            logits = torch.logsumexp(outs.log_softmax(-1), dim=0) - math.log(n)
        elif self.combine == "sigmoid":
            p = torch.sigmoid(outs).mean(0).clamp(1e-7, 1 - 1e-7)
            logits = torch.log(p) - torch.log1p(-p)
        else:
            logits = outs.mean(0)
        return (TokenClassifierOutput if logits.dim() == 3 else SequenceClassifierOutput)(logits=logits)


def load_ensemble(task, model_dir) -> EnsembleModel:
    """`model_io` loader for `kind: ensemble`: every member through `load_run_model`."""
    from domaintune.model_io import load_run_model

    model_dir = Path(model_dir)
    head = json.loads((model_dir / HEAD_FILE).read_text(encoding="utf-8"))
    members = []
    for rel in head["members"]:
        folder = model_dir / rel
        if not folder.is_dir():
            raise FileNotFoundError(f"{model_dir}: ensemble member {rel} is missing; rebuild the ensemble with "
                                    f"`domaintune ensemble RUN_A RUN_B ... -o {model_dir.parent}`")
        members.append(load_run_model(task, folder))
    return EnsembleModel(members, head.get("combine", "softmax")).eval()


# ---------------------------------------------------------------- building
def _read_run(run_dir: Path) -> dict:
    model = run_dir / "model"
    if not any((model / f).is_file() for f in ("config.json", "adapter_config.json", HEAD_FILE)):
        raise EnsembleError(f"{run_dir}: not a finished run directory (no model/); train it with `domaintune train` first")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise EnsembleError(f"{run_dir}: config.yaml is missing, so its task is unknown")
    config = load_yaml_file(cfg_path) or {}
    state = {}
    if (run_dir / "task.json").is_file():
        state = json.loads((run_dir / "task.json").read_text(encoding="utf-8"))
    elif (run_dir / "labels.json").is_file():
        from domaintune.data import LabelMap

        state = {"labels": list(LabelMap.load(run_dir / "labels.json").labels)}
    return {"dir": run_dir, "config": config, "task": config.get("task", "classification"), "state": state}


def _same_tokenizer(a, b) -> bool:
    if a.get_vocab() != b.get_vocab():
        return False
    return all(a(t)["input_ids"] == b(t)["input_ids"] for t in PROBE_TEXTS)


def check_members(runs: list[dict]) -> None:
    """Same task, same labels (same order), compatible task state, one tokenizer; raise EnsembleError otherwise."""
    from transformers import AutoTokenizer

    first = runs[0]
    for r in runs[1:]:
        if r["task"] != first["task"]:
            raise EnsembleError(f"{r['dir']} is a {r['task']!r} run but {first['dir']} is {first['task']!r}; "
                                "ensemble members must solve the same task")
        la, lb = first["state"].get("labels", []), r["state"].get("labels", [])
        if la != lb:
            only_a, only_b = sorted(set(la) - set(lb)), sorted(set(lb) - set(la))
            detail = (f"only in {first['dir']}: {only_a[:8]}; only in {r['dir']}: {only_b[:8]}" if only_a or only_b
                      else "same labels in a different order")
            raise EnsembleError(f"label maps differ ({detail}); members must be trained on the same label set "
                                "(labels.json / task.json)")
        diff = sorted(k for k in set(first["state"]) | set(r["state"])
                      if k not in CALIBRATED_KEYS and first["state"].get(k) != r["state"].get(k))
        if diff:
            raise EnsembleError(f"task state differs between {first['dir']} and {r['dir']} in {diff} "
                                "(e.g. target scaling or tag scheme); their outputs cannot be averaged")
    toks = [AutoTokenizer.from_pretrained(str(r["dir"] / "model")) for r in runs]
    for r, tok in zip(runs[1:], toks[1:]):
        if not _same_tokenizer(toks[0], tok):
            raise EnsembleError(f"{r['dir']} uses a different tokenizer than {first['dir']}: an ensemble encodes its "
                                "input once, so members must share a base model's tokenizer (different seeds or "
                                "methods of one model, or its `domaintune pretrain` variant)")
    combine_mode(first["task"], first["state"])


def build_ensemble(run_dirs: list[str | Path], out_dir: str | Path, overwrite: bool = False,
                   evaluate: bool = True) -> dict:
    """Write the ensemble run directory `out_dir`; return its metrics.json content."""
    from transformers import AutoTokenizer

    from domaintune.training.checkpoint import atomic_dir

    dirs = [Path(d) for d in run_dirs]
    out = Path(out_dir)
    if len(dirs) < 2:
        raise EnsembleError("give at least two run directories to ensemble")
    if len({d.resolve() for d in dirs}) < len(dirs):
        raise EnsembleError("the same run is listed twice")
    if any(out.resolve() == d.resolve() or d.resolve() in out.resolve().parents for d in dirs):
        raise EnsembleError(f"{out}: the output must not be one of the members or inside one")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise EnsembleError(f"{out} already exists; pass --overwrite to replace it or choose another -o")
    runs = [_read_run(d) for d in dirs]
    check_members(runs)
    first = runs[0]
    combine = combine_mode(first["task"], first["state"])
    config = dict(first["config"])
    config["output_dir"] = str(out)
    lengths = [int((r["config"].get("train") or {}).get("max_length", 128)) for r in runs]
    config.setdefault("train", {})
    config["train"] = {**config["train"], "max_length": max(lengths)}
    members_info = [{"run": str(r["dir"]), "method": r["config"].get("method"), "model": r["config"].get("model"),
                     "seed": (r["config"].get("train") or {}).get("seed")} for r in runs]
    state = dict(first["state"])
    metrics: dict = {"name": out.name, "task": first["task"], "method": "ensemble", "combine": combine,
                     "model": [m["model"] for m in members_info], "labels": list(state.get("labels", [])),
                     "members": members_info, "warnings": []}

    def write(tmp: Path) -> None:
        model_dir = tmp / "model"
        (model_dir / "members").mkdir(parents=True)
        for i, r in enumerate(runs):
            shutil.copytree(r["dir"] / "model", model_dir / "members" / str(i))
        AutoTokenizer.from_pretrained(str(first["dir"] / "model")).save_pretrained(str(model_dir))
        head = {"kind": "ensemble", "combine": combine, "members": [f"members/{i}" for i in range(len(runs))],
                "sources": [m["run"] for m in members_info],
                "note": "logits = log(mean member softmax) (softmax), logit(mean sigmoid) (sigmoid) or mean output "
                        "(mean); each member loads with domaintune.model_io.load_run_model"}
        (model_dir / HEAD_FILE).write_text(json.dumps(head, ensure_ascii=False, indent=2), encoding="utf-8")
        text = "# domaintune ensemble of: " + ", ".join(m["run"] for m in members_info) + "\n"
        (tmp / "config.yaml").write_text(text + yaml.safe_dump(config, sort_keys=False, allow_unicode=True),
                                         encoding="utf-8")
        if evaluate:
            try:
                metrics.update(_score(first, runs, model_dir, state, config, metrics["warnings"]))
            except Exception as e:  # noqa: BLE001 - scoring is optional; the ensemble itself is valid
                log.warning("ensemble scoring skipped: %s", e)
                metrics["warnings"].append(f"scoring skipped: {e}")
        (tmp / "task.json").write_text(json.dumps(state, ensure_ascii=False, indent=2), encoding="utf-8")
        if state.get("labels"):
            from domaintune.data import LabelMap

            LabelMap(tuple(state["labels"])).save(tmp / "labels.json")
        (tmp / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=2, default=float), encoding="utf-8")
        (tmp / "report.md").write_text(render_report(metrics), encoding="utf-8")

    atomic_dir(out, write)  # an existing RUN_E (with --overwrite) is replaced in one rename
    log.info("ensemble of %d runs written to %s", len(runs), out)
    return metrics


def _score(first: dict, runs: list[dict], model_dir: Path, state: dict, config: dict, warnings: list[str]) -> dict:
    """Test (and dev) scores of each member and of the ensemble on the first member's data splits."""
    from transformers import AutoTokenizer

    from domaintune.config import load_config
    from domaintune.data import prepare_data
    from domaintune.evaluation.metrics import summary
    from domaintune.model_io import load_run_model
    from domaintune.tasks import EvalContext, get_task

    cfg = load_config(first["dir"] / "config.yaml")
    task = get_task(first["task"])
    task.configure(cfg)
    splits = prepare_data(cfg, task)
    if list(task.labels) != list(state.get("labels", [])) and task.labels:
        raise EnsembleError("the data in the first member's config no longer gives its label map")
    task.load_state(state)
    if not splits.test:
        raise EnsembleError("the first member's config has no test split")
    if splits.test_from_train and len({(r["config"].get("train") or {}).get("seed") for r in runs}) > 1:
        warnings.append("test was split from train with different seeds per member: members may have trained on "
                        "some ensemble test examples, so scores can be optimistic")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    max_length = int(config["train"]["max_length"])
    ctx = EvalContext(tokenizer, pad_id, cfg.train.eval_batch_size, max_length, False)
    feats = {name: task.encode(tokenizer, part, max_length) for name, part in (("dev", splits.dev), ("test", splits.test))}
    member_scores = []
    for i, r in enumerate(runs):
        member_task = get_task(first["task"])
        member_task.configure(cfg)
        member_task.load_state(r["state"])
        m = load_run_model(member_task, model_dir / "members" / str(i))
        member_scores.append(member_task.evaluate(m, splits.test, feats["test"], ctx))
        del m
    ensemble = load_ensemble(task, model_dir)
    calibration = task.calibrate(ensemble, splits.dev, feats["dev"], ctx) if splits.dev else {}
    state.update(task.state())
    dev = task.evaluate(ensemble, splits.dev, feats["dev"], ctx) if splits.dev else {}
    test = task.evaluate(ensemble, splits.test, feats["test"], ctx)
    clean = lambda d: {k: v for k, v in d.items() if k not in ("confusion_matrix",)}  # noqa: E731
    return {"headline": list(task.headline), "calibration": calibration, "dev": clean(dev), "test": clean(test),
            "data": {"dev_examples": len(splits.dev), "test_examples": len(splits.test), "source": str(first["dir"])},
            "member_test": [summary(s) for s in member_scores]}


def render_report(metrics: dict) -> str:
    from domaintune.evaluation.markdown import md_cell, md_code
    from domaintune.evaluation.report import _fmt

    keys = list(metrics.get("headline") or ["accuracy", "macro_f1"])[:4]
    lines = [f"# Ensemble {md_cell(metrics['name'])}", "",
             f"Task `{metrics['task']}`; {len(metrics['members'])} members combined by "
             f"{'averaging probabilities' if metrics['combine'] != 'mean' else 'averaging predictions'} "
             f"(`{metrics['combine']}`).", ""]
    if metrics.get("test"):
        lines += [f"Test scores on {metrics['data']['test_examples']} examples of the first member's test split:", "",
                  "| model | run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
        for i, (m, s) in enumerate(zip(metrics["members"], metrics.get("member_test", []))):
            lines.append(f"| member {i} ({md_cell(m['method'])}, {md_cell(m['model'])}, seed {m['seed']}) | {md_code(m['run'])} | "
                         + " | ".join(_fmt(k, s.get(k)) for k in keys) + " |")
        lines.append("| **ensemble** | | " + " | ".join(f"**{_fmt(k, metrics['test'].get(k))}**" for k in keys) + " |")
    else:
        lines += ["Not scored (the members' data was not available): "
                  "`domaintune evaluate RUN_E --data test.csv` scores it.", ""]
        lines += [f"- member {i}: {md_code(m['run'], table=False)} ({md_cell(m['method'])}, {md_cell(m['model'])})"
                  for i, m in enumerate(metrics["members"])]
    for w in metrics.get("warnings", []):
        lines += ["", f"Warning: {w}"]
    return "\n".join(lines) + "\n"
