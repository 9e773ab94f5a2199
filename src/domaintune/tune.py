"""Hyper-parameter search (`domaintune tune`): Optuna over `train_run`.

Why Optuna and not our own loop: it already has a seeded TPE sampler, median
pruning on intermediate values and a SQLite-backed study that survives a crash.
What this module adds is the glue a user of `domaintune train` expects:

* Each trial is an ordinary run directory, OUTPUT_DIR/tune/trial_<n>/, trained by
  `domaintune.run.train_run` on the config plus the sampled values. Its
  checkpoints are deleted when the trial ends (disk); metrics.json, report.md
  and config.yaml stay, and only the best trial keeps its `model/`.
* The default config (the values in CONFIG) is enqueued as trial 0, and the
  space is widened to contain it, so the best trial's dev score is >= the
  default's by construction: the best is a maximum over a set that includes it.
  The enqueued default is never pruned.
* Pruning: `train_run(on_evaluate=...)` reports each dev evaluation to the trial;
  after 5 finished trials, the median pruner stops a trial whose dev score is
  below the median of earlier trials at the same step, but never in the first
  third of its own steps (methods that do not evaluate during training, e.g.
  zero-shot, simply are never pruned).
* Resuming: the study lives in SQLite (OUTPUT_DIR/tune/study.db or
  `tune.storage`) and is loaded if it exists. `--trials N` means N finished
  trials in total, so a rerun after Ctrl-C or a kill runs only the missing
  ones. A trial cut off mid-way (left RUNNING by a kill, or FAIL by Ctrl-C)
  does not count; its parameters are enqueued again so, e.g., an interrupted
  default trial is retried rather than lost.
* All trials share one data split (read once), so their dev scores compare the
  same examples even when `train.seed` is searched.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

from domaintune.config import ConfigError, RunConfig, config_differences, dump_config
from domaintune.data.writers import write_table
from domaintune.evaluation.markdown import md_cell
from domaintune.training.checkpoint import atomic_write_json, atomic_write_text

log = logging.getLogger("domaintune")


class TuneError(RuntimeError):
    """The search cannot run as configured; the message says how to fix it."""


# --------------------------------------------------------------------------- search space

def default_space(cfg: RunConfig) -> dict[str, dict]:
    """A sane search space for the config's method (used when `tune.space` is empty): the method's
    `default_search_space` (domaintune.methods.base.Method); `_widen` later makes sure the config's own
    value is inside."""
    from domaintune.methods import get_method

    return get_method(cfg.method).default_search_space(cfg)


def _get(data: dict, key: str):
    node = data
    for p in key.split("."):
        if not isinstance(node, dict) or p not in node:
            raise TuneError(f"tune.space: {key!r} is not a config key (sections: data, train, peft, fewshot, ...)")
        node = node[p]
    return node


def _set(data: dict, key: str, value) -> None:
    *head, last = key.split(".")
    node = data
    for p in head:
        node = node[p]
    node[last] = value


def with_params(cfg: RunConfig, params: dict[str, Any], **top) -> RunConfig:
    """`cfg` with dotted-key values (and top-level fields such as output_dir) replaced, validated again."""
    data = cfg.model_dump(mode="json")
    for k, v in params.items():
        _get(data, k)
        _set(data, k, v)
    data.update(top)
    return RunConfig.model_validate(data)


def _widen(key: str, spec: dict, default) -> dict:
    """Copy of `spec` that contains the config's own value, so the default can be enqueued unchanged."""
    spec = dict(spec)
    if "choices" in spec:
        if default not in spec["choices"]:
            spec["choices"] = [*spec["choices"], default]
        return spec
    if default is None or isinstance(default, bool) or not isinstance(default, (int, float)):
        raise TuneError(f"tune.space: {key!r} has a numeric range but the config's value is {default!r}; "
                        f"use {{choices: [...]}} for it or set a number in the config")
    spec["low"], spec["high"] = min(spec["low"], default), max(spec["high"], default)
    return spec


def resolve_space(cfg: RunConfig) -> dict[str, dict]:
    """Validate `tune.space` (or the method's default space) and widen it around the config's values."""
    space = cfg.tune.space or default_space(cfg)
    data = cfg.model_dump(mode="json")
    out: dict[str, dict] = {}
    for key, spec in space.items():
        where = f"tune.space.{key}"
        if not isinstance(spec, dict):
            raise TuneError(f"{where}: expected {{low, high[, log]}} or {{choices: [...]}}, got {spec!r}")
        unknown = set(spec) - {"low", "high", "log", "step", "choices"}
        if unknown:
            raise TuneError(f"{where}: unknown field(s) {sorted(unknown)}; use low/high/log/step or choices")
        if "choices" in spec:
            if not isinstance(spec["choices"], list) or not spec["choices"]:
                raise TuneError(f"{where}.choices must be a non-empty list")
        elif not ({"low", "high"} <= set(spec)) or not all(isinstance(spec[b], (int, float)) for b in ("low", "high")):
            raise TuneError(f"{where}: a range needs numeric low and high, e.g. {{low: 1e-5, high: 1e-4, log: true}}")
        elif spec["low"] > spec["high"] or (spec.get("log") and spec["low"] <= 0):
            raise TuneError(f"{where}: need low <= high (and low > 0 with log: true), got {spec}")
        out[key] = _widen(key, spec, _get(data, key))
    if not out:
        raise TuneError("tune.space is empty: nothing to search")
    for probe in ("low", "high"):  # every bound must make a valid config (catches e.g. dropout >= 1)
        values = {k: (s["choices"][0] if "choices" in s else s[probe]) for k, s in out.items()}
        try:
            with_params(cfg, _as_types(out, values))
        except Exception as e:  # noqa: BLE001 - re-raised with the key that caused it
            raise TuneError(f"tune.space: the {probe} end of the space is not a valid config: {e}") from None
    return out


def _is_int_range(spec: dict) -> bool:
    return "choices" not in spec and all(isinstance(spec[b], int) and not isinstance(spec[b], bool)
                                         for b in ("low", "high")) and not isinstance(spec.get("step", 1), float)


def _as_types(space: dict, values: dict) -> dict:
    return {k: (int(v) if _is_int_range(space[k]) else v) for k, v in values.items()}


def suggest(trial, space: dict[str, dict]) -> dict:
    params = {}
    for key, spec in space.items():
        if "choices" in spec:
            params[key] = trial.suggest_categorical(key, spec["choices"])
        elif _is_int_range(spec):
            params[key] = trial.suggest_int(key, spec["low"], spec["high"], log=bool(spec.get("log")),
                                            step=spec.get("step", 1))
        else:
            params[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")),
                                              step=spec.get("step"))
    return params


# --------------------------------------------------------------------------- the search

def _explicit(cfg: RunConfig) -> dict:
    """The values the config sets away from the defaults, minus what a resumed search may change."""
    data = cfg.model_dump(mode="json", exclude_defaults=True)
    data.pop("output_dir", None)
    data.get("tune", {}).pop("trials", None)
    return data


def _fingerprint(cfg: RunConfig, space: dict) -> str:
    """What a resumed study must agree on: the explicitly set config values and the space.

    Only non-default values count, so a domaintune upgrade that adds config
    fields (with defaults) does not make an existing study unresumable."""
    return hashlib.sha256(json.dumps([_explicit(cfg), space], sort_keys=True, default=str).encode()).hexdigest()[:16]


def _storage_url(cfg: RunConfig, tune_dir: Path) -> str:
    return cfg.tune.storage or f"sqlite:///{(tune_dir / 'study.db').resolve()}"


def _clean_trial_dir(d: Path, keep_model: bool) -> None:
    for sub in ("checkpoints", "tensorboard"):
        shutil.rmtree(d / sub, ignore_errors=True)
    if not keep_model:
        shutil.rmtree(d / "model", ignore_errors=True)


def tune(cfg: RunConfig, trials: int | None = None, timeout: float | None = None) -> dict:
    """Run (or resume) the search; write best_config.yaml, trials.csv/.md, the plot; return a summary."""
    import optuna
    from optuna.trial import TrialState

    from domaintune.data import prepare_data
    from domaintune.methods import get_method
    from domaintune.run import train_run
    from domaintune.tasks import get_task

    n_target = trials or cfg.tune.trials
    space = resolve_space(cfg)
    out_dir = Path(cfg.output_dir)
    tune_dir = out_dir / "tune"
    tune_dir.mkdir(parents=True, exist_ok=True)
    data = cfg.model_dump(mode="json")
    default_params = {k: _get(data, k) for k in space}

    # One split for every trial (unless the data itself is searched).
    splits = None if any(k.startswith("data.") for k in space) else prepare_data(cfg, get_task(cfg.task))
    if splits is not None and not splits.dev:
        raise TuneError("tune needs a dev set to score trials: set data.dev or data.dev_fraction > 0")
    if not get_method(cfg.method).trains and cfg.tune.pruning:
        log.info("method %s does not train: no intermediate scores, no pruning", cfg.method)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _storage_url(cfg, tune_dir)
    study_name = out_dir.name or "domaintune"
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5) if cfg.tune.pruning \
        else optuna.pruners.NopPruner()
    # The sampler's seed moves on with the trials already stored: a resumed search re-seeded with the same
    # value would replay the random start-up samples and run finished parameter sets again.
    n_before = _count_trials(storage, study_name)
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=cfg.train.seed + n_before), pruner=pruner)
    fp = _fingerprint(cfg, space)
    seen = study.user_attrs.get("fingerprint")
    if seen is None:
        study.set_user_attr("fingerprint", fp)
        study.set_user_attr("space", space)
        study.set_user_attr("config", _explicit(cfg))
        study.enqueue_trial(default_params, user_attrs={"default": True})
    elif seen != fp:
        diff = config_differences({"config": study.user_attrs.get("config", {}), "space": study.user_attrs.get("space", {})},
                            {"config": _explicit(cfg), "space": space})
        raise TuneError(f"{storage} holds a study made for a different config or search space "
                        f"({'; '.join(diff[:5]) or 'see the study'}); delete {tune_dir} to start over, "
                        f"or choose another output_dir (--set output_dir=runs/NAME)")
    else:
        _requeue_interrupted(study, TrialState)

    metric_key: dict[str, str] = {}

    def objective(trial) -> float:
        params = suggest(trial, space)
        is_default = bool(trial.user_attrs.get("default"))
        run_dir = tune_dir / f"trial_{trial.number}"
        trial_cfg = with_params(cfg, params, output_dir=str(run_dir), baseline=False)
        trial.set_user_attr("run_dir", str(run_dir))
        metric = trial_cfg.train.metric_for_best or get_task(trial_cfg.task).default_metric

        warmup = _pruning_warmup(trial_cfg, splits)

        def on_evaluate(step: int, dev: dict) -> None:
            if metric not in dev:
                return
            trial.report(float(dev[metric]), step)
            if not is_default and step >= warmup and trial.should_prune():
                raise optuna.TrialPruned(f"dev {metric} {dev[metric]:.4f} at step {step} is below the median")

        t0 = time.perf_counter()
        try:
            m = train_run(trial_cfg, overwrite=True, splits=splits, on_evaluate=on_evaluate)
        except optuna.TrialPruned:
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except Exception as e:  # noqa: BLE001 - one bad corner of the space must not end the search
            if is_default:
                raise TuneError(f"the default config itself failed in trial {trial.number}: {e}") from e
            log.warning("trial %d failed: %s", trial.number, e)
            trial.set_user_attr("error", str(e)[:500])
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
            return float("nan")  # optuna records the trial as FAIL and goes on
        finally:
            gc.collect()
        metric_key["name"] = m["metric_for_best"]
        value = (m.get("dev") or {}).get(m["metric_for_best"])
        if value is None:
            raise TuneError(f"trial {trial.number} has no dev {m['metric_for_best']}: tune needs a dev set")
        head = (m.get("headline") or [m["metric_for_best"]])[0]
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
        trial.set_user_attr("metric", m["metric_for_best"])
        trial.set_user_attr("test_metric", head)
        trial.set_user_attr("test", (m.get("test") or {}).get(head))
        return float(value)

    def after_trial(study, frozen) -> None:
        best = _best(study)
        for t in study.trials:
            d = t.user_attrs.get("run_dir")
            if d and t.state.is_finished() and Path(d).exists():
                _clean_trial_dir(Path(d), keep_model=best is not None and t.number == best.number)
        write_outputs(study, cfg, tune_dir)

    remaining = n_target - _n_done(study, TrialState)
    if remaining > 0:
        log.info("tune: %d trial(s) to run (%d of %d done) -> %s", remaining, n_target - remaining, n_target, tune_dir)
        study.optimize(objective, n_trials=remaining, timeout=timeout, callbacks=[after_trial])
    else:
        log.info("tune: %d trials already done in %s", n_target - remaining, storage)
    return write_outputs(study, cfg, tune_dir)


def _pruning_warmup(cfg: RunConfig, splits) -> int:
    """First step at which a trial may be pruned: a third of its planned steps.

    The first evaluations mostly reflect the probe-initialised head and the
    warm-up, and trials with different batch sizes reach a step number after
    different amounts of data; judging them that early pruned good configs."""
    t = cfg.train
    if t.max_steps:
        return max(1, t.max_steps // 3)
    n = len(splits.train) if splits is not None else 0
    per_epoch = math.ceil(n / (t.batch_size * t.grad_accum)) if n else 0
    return max(1, int(per_epoch * t.epochs / 3))


def _count_trials(storage: str, study_name: str) -> int:
    import optuna

    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:  # no such study yet
        return 0


def _n_done(study, TrialState) -> int:
    return sum(1 for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted")))


def _requeue_interrupted(study, TrialState) -> None:
    """Trials a kill left RUNNING, or Ctrl-C left FAIL, are marked interrupted and enqueued again (once).

    One `tune` process per study is assumed (a second concurrent one would see
    the first one's running trial as interrupted)."""
    done = set(study.user_attrs.get("requeued", []))
    for t in study.trials:
        if t.number in done:
            continue
        if t.state == TrialState.RUNNING:
            study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        elif not (t.state == TrialState.FAIL and t.user_attrs.get("interrupted")):
            continue
        done.add(t.number)
        if not t.params:  # killed before it drew its parameters: nothing to repeat, the sampler fills the slot
            log.info("trial %d was interrupted before it drew parameters", t.number)
            continue
        log.info("trial %d was interrupted: running its parameters again", t.number)
        study.enqueue_trial(t.params, user_attrs={k: v for k, v in t.user_attrs.items()
                                                  if k == "default"}, skip_if_exists=False)
        done.add(t.number)
    study.set_user_attr("requeued", sorted(done))


def _best(study):
    from optuna.trial import TrialState

    done = [t for t in study.trials if t.state == TrialState.COMPLETE and t.value is not None and not math.isnan(t.value)]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


# --------------------------------------------------------------------------- outputs

def _rows(study) -> list[dict]:
    rows = []
    for t in study.trials:
        if t.state.name in ("WAITING",):
            continue
        value = t.value if t.value is not None else (t.intermediate_values[max(t.intermediate_values)]
                                                     if t.intermediate_values else None)
        rows.append({"number": t.number, "state": t.state.name.lower()
                     + (" (interrupted)" if t.user_attrs.get("interrupted") else ""),
                     "default": bool(t.user_attrs.get("default")), "dev": value,
                     "dev_is_last_intermediate": t.value is None and value is not None,
                     "test": t.user_attrs.get("test"), "seconds": t.user_attrs.get("seconds"),
                     "params": dict(t.params), "error": t.user_attrs.get("error")})
    return rows


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-2 and v != 0 else f"{v:.4f}".rstrip("0").rstrip(".") if v % 1 else f"{v:g}"
    return str(v)


def write_outputs(study, cfg: RunConfig, tune_dir: Path) -> dict:
    """best_config.yaml, trials.csv, trials.md, optimization_history.png and summary.json in tune_dir."""
    rows = _rows(study)
    best = _best(study)
    keys = list(study.user_attrs.get("space") or {})
    metric = next((t.user_attrs["metric"] for t in study.trials if "metric" in t.user_attrs), "dev")
    test_metric = next((t.user_attrs["test_metric"] for t in study.trials if "test_metric" in t.user_attrs), "test")
    default = next((r for r in rows if r["default"] and r["state"] == "complete"), None)

    # Through the shared table writer: parameter values and error messages are text a spreadsheet must not run.
    write_table(([r["number"], r["state"], r["default"], r["dev"], r["test"], r["seconds"],
                  *[r["params"].get(k) for k in keys], r["error"] or ""] for r in rows), tune_dir / "trials.csv",
                header=["number", "state", "default", f"dev_{metric}", f"test_{test_metric}", "seconds", *keys, "error"])

    md = [f"# Hyper-parameter search: {cfg.output_dir}", "",
          f"Method `{cfg.method}`, model `{cfg.model}`; objective: dev `{metric}` (maximised). "
          f"Trial 0 is the config's own values (the default), so the best trial is at least as good on dev.", ""]
    if best is not None:
        md.append(f"**Best: trial {best.number}**, dev {metric} {best.value:.4f}"
                  + (f" (default: {default['dev']:.4f})" if default else "") + ". Config: `best_config.yaml`.")
        md.append("")
    md += ["| trial | state | dev " + metric + " | test " + test_metric + " | seconds | " + " | ".join(map(md_cell, keys)) + " |",
           "|---" * (5 + len(keys)) + "|"]
    for r in rows:
        dev = _fmt(r["dev"]) + (" (last eval)" if r["dev_is_last_intermediate"] else "")
        md.append(f"| {r['number']}{' (default)' if r['default'] else ''}{' **best**' if best and r['number'] == best.number else ''}"
                  f" | {r['state']} | {dev} | {_fmt(r['test'])} | {_fmt(r['seconds'])} | "
                  + " | ".join(md_cell(_fmt(r["params"].get(k))) for k in keys) + " |")
    atomic_write_text(tune_dir / "trials.md", "\n".join(md) + "\n")

    summary = {"study": study.study_name, "metric": metric, "n_trials": len(rows),
               "states": {s: sum(1 for r in rows if r["state"].split()[0] == s) for s in ("complete", "pruned", "fail")},
               "default_dev": default["dev"] if default else None,
               "best": ({"number": best.number, "dev": best.value, "test": best.user_attrs.get("test"),
                         "params": best.params, "run_dir": best.user_attrs.get("run_dir")} if best else None),
               "space": study.user_attrs.get("space"), "trials": rows}
    if best is not None:
        best_cfg = with_params(cfg, dict(best.params))
        atomic_write_text(tune_dir / "best_config.yaml",
                          f"# best of {len(rows)} trials: dev {metric} {best.value:.4f} (trial {best.number})\n"
                          + dump_config(best_cfg))
    try:
        history_png(rows, tune_dir / "optimization_history.png", metric)
    except Exception as e:  # noqa: BLE001 - a plot must never lose the search results
        log.warning("optimisation history plot failed: %s", e)
    atomic_write_json(tune_dir / "summary.json", summary)
    return summary


def history_png(rows: list[dict], path: Path, metric: str) -> Path:
    """Dev score per trial (pruned trials at their last evaluation) with the best-so-far line."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    from domaintune.evaluation.plots import _rc, _save_atomic

    with rc_context(_rc()):
        fig = Figure(figsize=(8, 4.5), layout="constrained")
        ax = fig.add_subplot()
        done = [(r["number"], r["dev"]) for r in rows if r["state"] == "complete" and _ok(r["dev"])]
        pruned = [(r["number"], r["dev"]) for r in rows if r["state"].startswith("pruned") and _ok(r["dev"])]
        if done:
            ax.scatter(*zip(*done), color="tab:blue", label="complete", zorder=3)
            best, xs, ys = -math.inf, [], []
            for n, v in sorted(done):
                best = max(best, v)
                xs.append(n)
                ys.append(best)
            ax.step(xs, ys, where="post", color="tab:red", label="best so far")
        if pruned:
            ax.scatter(*zip(*pruned), marker="x", color="0.5", label="pruned (last eval)", zorder=3)
        default = [(r["number"], r["dev"]) for r in rows if r["default"] and r["state"] == "complete" and _ok(r["dev"])]
        if default:
            ax.axhline(default[0][1], color="tab:green", linestyle="--", linewidth=1, label="default config")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trial")
        ax.set_ylabel(f"dev {metric}")
        ax.set_title("Optimisation history")
        if done or pruned:
            ax.legend(loc="lower right")
        return _save_atomic(fig, path, 120)


def _ok(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


__all__ = ["TuneError", "default_space", "resolve_space", "suggest", "tune", "with_params", "write_outputs"]
