"""Alert rules: a YAML file, one expression per rule, validated with errors that say where and how to fix.

```yaml
webhook:                                   # optional: JSON POST of every alert
  url: http://alerts.internal:9000/hook
  timeout_seconds: 5
  max_retries: 5                           # then the alert is logged as undelivered (history keeps it)
  backoff_seconds: 0.5                     # 0.5, 1, 2, 4 ... capped at max_backoff_seconds
rules:
  - name: negative-share
    when: share(label == "negative") > 0.4 over last 200
    severity: critical                     # info | warning (default) | critical
    cooldown: 15m                          # no repeat of this rule for 15 minutes (default 5m)
  - name: negative-spike
    when: zscore(share(label == "negative"), baseline=30) > 6 over last 50
  - name: vocabulary
    when: oov_shift > 0.05 over last 500
    model: tickets                         # only this served model (default: every model)
```

Expression: `STAT OP NUMBER over last N` where STAT is `share(label == "NAME")` or a
statistic of `domaintune.monitoring.stats.STATS`, OP is one of > >= < <=, and N
is the sliding window in texts. A rule is only evaluated once its window is
full. `zscore(STAT, baseline=K)` compares the window's value with the values the
same statistic had at the end of the K previous non-overlapping windows (mean
and standard deviation, the latter floored at `min_std`), and fires when the
z-score passes the threshold. The same fields can be given one by one instead of
`when`: `stat`, `op`, `threshold`, `window`, `zscore_baseline`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from domaintune.monitoring.stats import STATS
from domaintune.security.safe_yaml import YamlLimitError, load_yaml_file

_EXPR = re.compile(
    r"""^\s*(?P<z>zscore\(\s*)?
    (?P<stat>share\(\s*label\s*==\s*(?P<q>["'])(?P<label>.*?)(?P=q)\s*\)|[A-Za-z_][A-Za-z0-9_]*)
    \s*(?(z)(?:,\s*baseline\s*=\s*(?P<baseline>\d+)\s*)?\)\s*)
    (?P<op>>=|<=|>|<)\s*(?P<thr>[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)
    \s+over\s+last\s+(?P<window>\d+)\s*$""", re.X)
_SHARE = re.compile(r"""^share\(\s*label\s*==\s*(["'])(?P<label>.*?)\1\s*\)$""")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
EXAMPLE = 'share(label == "negative") > 0.4 over last 200'
MAX_WINDOW = 100_000


class RulesError(ValueError):
    """Every problem of a rules file, one per line: file, rule, field, what to do."""

    def __init__(self, problems: list[str]):
        super().__init__("invalid alert rules:\n  " + "\n  ".join(problems))
        self.problems = problems


def parse_duration(value) -> float:
    """Seconds from 90, '90s', '15m', '2h', '1d' (also used by `--since`)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration; write e.g. 30s, 15m, 2h or 1d")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


class RuleSpec(BaseModel):
    """One rule as written in the YAML file."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    when: str | None = None
    stat: str | None = None
    op: Literal[">", ">=", "<", "<="] = ">"
    threshold: float | None = None
    window: int | None = Field(None, ge=1, le=MAX_WINDOW)
    zscore_baseline: int | None = Field(None, ge=2, le=10_000)
    min_std: float = Field(1e-3, gt=0)
    severity: Literal["info", "warning", "critical"] = "warning"
    cooldown: float | str = Field("5m", validate_default=True)
    model: str | None = None
    description: str | None = None

    @field_validator("cooldown")
    @classmethod
    def _cooldown(cls, v):
        return parse_duration(v)


class WebhookSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=r"^https?://", description="http(s) URL receiving a JSON POST per alert")
    timeout_seconds: float = Field(5.0, gt=0)
    max_retries: int = Field(5, ge=0, le=20)
    backoff_seconds: float = Field(0.5, ge=0)
    max_backoff_seconds: float = Field(30.0, gt=0)
    queue_size: int = Field(1000, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    """A validated rule, ready to evaluate."""

    name: str
    stat: str                  # a STATS name, or "share"
    label: str | None          # for stat == "share"
    op: str
    threshold: float
    window: int
    zscore_baseline: int | None = None
    min_std: float = 1e-3
    severity: str = "warning"
    cooldown: float = 300.0
    model: str | None = None
    description: str | None = None

    @property
    def stat_text(self) -> str:
        return f'share(label == "{self.label}")' if self.stat == "share" else self.stat

    @property
    def expression(self) -> str:
        s = f"zscore({self.stat_text}, baseline={self.zscore_baseline})" if self.zscore_baseline else self.stat_text
        return f"{s} {self.op} {self.threshold:g} over last {self.window}"

    def compare(self, value: float) -> bool:
        return {">": value > self.threshold, ">=": value >= self.threshold, "<": value < self.threshold,
                "<=": value <= self.threshold}[self.op]


@dataclass
class RuleSet:
    rules: list[Rule]
    webhook: WebhookSpec | None = None
    log: bool = True
    source: str = "<rules>"

    def labels_used(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for r in self.rules:
            if r.stat == "share":
                out.setdefault(r.label, set()).add(r.name)
        return out


def _stat(text: str) -> tuple[str, str | None]:
    text = text.strip()
    m = _SHARE.match(text)
    if m:
        return "share", m.group("label")
    if text in STATS:
        return text, None
    raise ValueError(f"unknown statistic {text!r}; use share(label == \"NAME\") or one of: {', '.join(STATS)}")


def _to_rule(spec: RuleSpec) -> Rule:
    """Field problems as (field, message) through ValueError('field|message')."""
    if spec.when is not None:
        if any(v is not None for v in (spec.stat, spec.threshold, spec.window, spec.zscore_baseline)):
            raise ValueError("when|give either `when` or stat/threshold/window fields, not both")
        m = _EXPR.match(spec.when)
        if not m:
            raise ValueError(f"when|cannot parse {spec.when!r}; write STAT OP NUMBER over last N, e.g. {EXAMPLE}, "
                             f"or zscore(STAT, baseline=30) > 6 over last 50")
        try:
            stat, label = _stat(m.group("stat"))
        except ValueError as e:
            raise ValueError(f"when|{e}") from None
        window, baseline = int(m.group("window")), m.group("baseline")
        op, threshold = m.group("op"), float(m.group("thr"))
        zb = (int(baseline) if baseline else 20) if m.group("z") else None
    else:
        if spec.stat is None:
            raise ValueError(f"when|missing: give `when: {EXAMPLE}` (or stat, threshold and window)")
        try:
            stat, label = _stat(spec.stat)
        except ValueError as e:
            raise ValueError(f"stat|{e}") from None
        if spec.threshold is None:
            raise ValueError("threshold|missing: the number the statistic is compared with")
        if spec.window is None:
            raise ValueError("window|missing: how many recent texts the statistic covers, e.g. 200")
        window, op, threshold, zb = spec.window, spec.op, spec.threshold, spec.zscore_baseline
    if not 1 <= window <= MAX_WINDOW:
        raise ValueError(f"when|window {window} out of range; use 1..{MAX_WINDOW} texts")
    if stat == "share" and zb is None and not 0 <= threshold <= 1:
        # A share is a fraction: "> 30" (meant as 30 %) would never fire, silently.
        raise ValueError(f"when|a share is a fraction between 0 and 1, not {threshold:g}; "
                         f"write {threshold / 100:g} for {threshold:g} %" if threshold > 1 else
                         f"when|a share is a fraction between 0 and 1, not {threshold:g}")
    if zb is not None and zb < 2:
        raise ValueError("when|zscore baseline must be at least 2 windows")
    return Rule(spec.name, stat, label, op, threshold, window, zb, spec.min_std, spec.severity, float(spec.cooldown),
                spec.model, spec.description)


def parse_rules(data, source: str = "<rules>") -> RuleSet:
    """Validate an already-loaded YAML document; raise RulesError listing every problem."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise RulesError([f"{source}: the file must be a mapping with a `rules:` list (see `domaintune serve --help`)"])
    unknown = set(data) - {"rules", "webhook", "log"}
    if unknown:
        problems.append(f"{source}: unknown top-level key(s) {sorted(unknown)}; allowed: rules, webhook, log")
    webhook = None
    if data.get("webhook") is not None:
        try:
            webhook = WebhookSpec.model_validate(data["webhook"])
        except ValidationError as e:
            for err in e.errors():
                where = ".".join(str(x) for x in err["loc"]) or "webhook"
                problems.append(f"{source}: webhook.{where}: {err['msg']}")
    raw = data.get("rules")
    if not isinstance(raw, list) or not raw:
        problems.append(f"{source}: `rules` must be a non-empty list of rules, e.g.\n    rules:\n      - name: negative-share"
                        f"\n        when: {EXAMPLE}")
        raise RulesError(problems)
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        where = f"{source}: rules[{i}]" + (f" ({name})" if name else "")
        if not isinstance(item, dict):
            problems.append(f"{where}: each rule must be a mapping with name and when")
            continue
        try:
            spec = RuleSpec.model_validate(item)
        except ValidationError as e:
            for err in e.errors():
                field = ".".join(str(x) for x in err["loc"]) or "rule"
                hint = {"extra_forbidden": f"; allowed fields: {', '.join(RuleSpec.model_fields)}",
                        "missing": " (every rule needs a unique name)" if field == "name" else ""}.get(err["type"], "")
                problems.append(f"{where}: field '{field}': {err['msg']}{hint}")
            continue
        try:
            rule = _to_rule(spec)
        except ValueError as e:
            field, _, msg = str(e).partition("|")
            problems.append(f"{where}: field '{field}': {msg}")
            continue
        if spec.name in seen:
            problems.append(f"{where}: field 'name': {spec.name!r} already used by rules[{seen[spec.name]}]; "
                            f"names must be unique")
            continue
        seen[spec.name] = i
        rules.append(rule)
    log_flag = data.get("log", True)
    if not isinstance(log_flag, bool):
        problems.append(f"{source}: log: must be true or false")
    if problems:
        raise RulesError(problems)
    return RuleSet(rules, webhook, bool(log_flag), source)


def load_rules(path: str | Path) -> RuleSet:
    path = Path(path)
    if not path.is_file():
        raise RulesError([f"{path}: no such file; write a rules file (see the README, 'Monitoring and alerts')"])
    try:  # bounded in size and alias expansion: a rules file must not be able to exhaust the server's memory
        data = load_yaml_file(path)
    except YamlLimitError as e:
        raise RulesError([str(e)]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise RulesError([f"{path}{at}: not valid YAML ({getattr(e, 'problem', None) or e}); check indentation "
                          f"and quote expressions that contain ': '"]) from None
    except UnicodeDecodeError:
        raise RulesError([f"{path}: not UTF-8 text"]) from None
    return parse_rules(data, str(path))


def check_labels(ruleset: RuleSet, labels_by_model: dict[str, list[str]]) -> None:
    """A `share(label == X)` rule must name a label its model can predict (catches typos at startup)."""
    problems = []
    for i, r in enumerate(ruleset.rules):
        models = [r.model] if r.model else list(labels_by_model)
        if r.model and r.model not in labels_by_model:
            problems.append(f"{ruleset.source}: rules[{i}] ({r.name}): field 'model': no served model named "
                            f"{r.model!r}; served: {', '.join(labels_by_model)}")
            continue
        if r.stat == "share":
            if not any(r.label in (labels_by_model.get(m) or []) for m in models):
                known = sorted({x for m in models for x in (labels_by_model.get(m) or [])})
                problems.append(f"{ruleset.source}: rules[{i}] ({r.name}): field 'when': label {r.label!r} is not a "
                                f"label of {', '.join(models)}; labels: {', '.join(known) or '(none)'}")
    if problems:
        raise RulesError(problems)
