"""The service's monitor: per-model sliding windows, Prometheus gauges and continuous rule evaluation.

Why the work is split the way it is: the request path only calls `observe()`,
which appends a reference to the request's inputs and predictions to a queue
(O(1) per request, a lock held for a few instructions). One background thread
does everything else - tokenizing, the embedding lookup, the window updates,
rule evaluation after every text, the alert sinks. If that thread falls
behind by more than `max_pending` texts, new texts are counted as dropped
rather than queued, so monitoring can never grow memory without bound or slow
predictions down. A reloaded model (new version) gets its own profile and
fresh windows the first time one of its predictions arrives.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from pathlib import Path

from domaintune.monitoring.alerts import AlertStore, Dispatcher, LogSink, RuleState, WebhookSink, make_alert
from domaintune.monitoring.profile import Profile, TextFeaturizer, label_indices, load_profile, prediction_score
from domaintune.monitoring.rules import RuleSet
from domaintune.monitoring.stats import STATS, SlidingWindow

log = logging.getLogger("domaintune.monitoring")


def _text(x) -> str:
    return x if isinstance(x, str) else f"{x[0]}\n{x[1]}"


def _run_labels(run_dir: Path) -> list[str]:
    from domaintune.data import LabelMap

    p = run_dir / "labels.json"
    return list(LabelMap.load(p).labels) if p.is_file() else []


class ModelState:
    """Profile, featurizer, windows and rule states of one model version."""

    def __init__(self, name: str, version: str | None, run_dir: Path, window: int, rules: list):
        self.name, self.version, self.run_dir = name, version, Path(run_dir)
        profile = load_profile(self.run_dir)
        self.has_profile = profile is not None
        if profile is None:
            log.warning("%s: %s has no profile.json: drift statistics against training are off (absolute ones "
                        "stay); build it with `domaintune monitor profile %s`", name, self.run_dir, self.run_dir)
            profile = Profile(labels=_run_labels(self.run_dir), embedding=None)
        self.profile = profile
        emb = profile.embedding or {}
        self.featurizer = TextFeaturizer(self.run_dir, profile.vocab_ids, components=int(emb.get("components", 0)),
                                         seed=int(emb.get("seed", 0)))
        self.window_size = window
        sizes = {window} | {r.window for r in rules}
        self.windows = {n: SlidingWindow(n, profile) for n in sorted(sizes)}
        self.rule_states = [RuleState(r) for r in rules]
        self.lock = threading.Lock()
        self.seen = 0

    def add(self, texts: list[str], preds: list[dict], now: float) -> list:
        """Add texts; return (rule, value, z) for every rule that fires."""
        labels = [label_indices(p, self.profile.label_index) for p in preds]
        scores = [prediction_score(p) for p in preds]
        fired = []
        for rec in self.featurizer.records(texts, labels, scores):
            with self.lock:
                for w in self.windows.values():
                    w.add(rec)
                self.seen += 1
            for rs in self.rule_states:
                res = rs.evaluate(self.windows[rs.rule.window], now)
                if res is not None:
                    fired.append((rs.rule, *res))
        return fired

    def snapshot(self) -> dict:
        with self.lock:
            return self.windows[self.window_size].stats()


class MonitorHub:
    """observe() on the request path; a background thread updates windows, evaluates rules and alerts."""

    def __init__(self, rules: RuleSet | None = None, sinks: list | None = None, window: int = 500,
                 max_pending: int = 50_000, clock=time.monotonic):
        self.rules = rules
        self.window = window
        self.max_pending = max_pending
        self.clock = clock
        self.dispatch = Dispatcher(sinks or [])
        self.models: dict[str, ModelState] = {}
        self.observed: collections.Counter = collections.Counter()
        self.dropped: collections.Counter = collections.Counter()
        self._items: collections.deque = collections.deque()
        self._pending = 0
        self._cond = threading.Condition()
        self._busy = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._thread.start()

    def _rules_for(self, name: str) -> list:
        return [r for r in (self.rules.rules if self.rules else []) if r.model in (None, name)]

    def register(self, name: str, version: str | None, run_dir: Path) -> ModelState:
        """Load a model's profile and featurizer now (at startup) instead of at its first prediction."""
        state = ModelState(name, version, run_dir, self.window, self._rules_for(name))
        self.models[name] = state
        return state

    # --- request path -----------------------------------------------------------------------------
    def observe(self, name: str, version: str | None, run_dir, inputs: list, preds: list) -> None:
        """O(1): queue references to the inputs and predictions of one request."""
        n = len(inputs)
        with self._cond:
            if self._pending + n > self.max_pending or self._stop:
                self.dropped[name] += n
                return
            self._items.append((name, version, run_dir, inputs, preds))
            self._pending += n
            self._cond.notify()

    # --- background thread ------------------------------------------------------------------------
    def _state(self, name, version, run_dir) -> ModelState:
        st = self.models.get(name)
        if st is None or st.version != version:
            if st is not None:
                log.info("monitor: %s changed version %s -> %s; new profile and windows", name, st.version, version)
            st = self.register(name, version, Path(run_dir))
        return st

    def _process(self, item) -> None:
        name, version, run_dir, inputs, preds = item
        st = self._state(name, version, run_dir)
        for rule, value, z in st.add([_text(x) for x in inputs], list(preds), self.clock()):
            self.dispatch(make_alert(rule, name, version, value, z, st.seen))
        self.observed[name] += len(inputs)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._stop:
                    self._cond.wait()
                if not self._items:
                    return
                item = self._items.popleft()
                self._busy = True
            try:
                self._process(item)
            except Exception:  # noqa: BLE001 - monitoring must survive anything a request brings
                log.exception("monitor failed on a batch of model %s", item[0])
            with self._cond:
                self._pending -= len(item[3])
                self._busy = False
                self._cond.notify_all()

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every observed text has been processed (tests, benchmark, shutdown)."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._items or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    @property
    def pending(self) -> int:
        return self._pending

    def snapshot(self, name: str) -> dict | None:
        st = self.models.get(name)
        return st.snapshot() if st else None

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)
        self.dispatch.close(min(timeout, 5.0))


class MonitorCollector:
    """Prometheus collector: reads the latest window statistics at scrape time (no work between scrapes)."""

    def __init__(self, hub: MonitorHub):
        self.hub = hub

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stat = GaugeMetricFamily("domaintune_monitor_stat", "Drift statistic over the monitor's sliding window "
                                 "(see the README for each stat)", labels=["model", "stat"])
        share = GaugeMetricFamily("domaintune_monitor_label_share", "Share of predictions per label in the window",
                                  labels=["model", "label"])
        texts = GaugeMetricFamily("domaintune_monitor_window_texts", "Texts in the monitor window", labels=["model"])
        observed = CounterMetricFamily("domaintune_monitor_texts", "Texts processed by the monitor", labels=["model"])
        dropped = CounterMetricFamily("domaintune_monitor_dropped_texts", "Texts not monitored because the monitor "
                                      "queue was full", labels=["model"])
        alerts = CounterMetricFamily("domaintune_alerts", "Alerts fired", labels=["model", "rule", "severity"])
        pending = GaugeMetricFamily("domaintune_monitor_pending_texts", "Texts queued for the monitor thread")
        for name, st in list(self.hub.models.items()):
            snap = st.snapshot()
            texts.add_metric([name], snap["n"])
            for s in STATS:
                v = snap.get(s)
                stat.add_metric([name, s], v if v is not None else math.nan)
            for label, v in snap["label_share"].items():
                share.add_metric([name, label], v)
        for name in set(self.hub.observed) | set(self.hub.models):
            observed.add_metric([name], self.hub.observed[name])
        for name in set(self.hub.dropped) | set(self.hub.models):
            dropped.add_metric([name], self.hub.dropped[name])
        for (model, rule, sev), n in list(self.hub.dispatch.counts.items()):
            alerts.add_metric([model, rule, sev], n)
        pending.add_metric([], self.hub.pending)
        yield from (stat, share, texts, observed, dropped, alerts, pending)


def build_monitor(models: list[tuple[str, str | None, Path]], registry=None, ruleset=None,
                  alerts_db: str | Path | None = None, window: int = 500) -> MonitorHub:
    """The service's monitor: a parsed `ruleset` (`rules.load_rules`; validated here against the served
    labels), sinks, gauges.

    `models`: (name, version, run_dir) of each served model. Sinks: the log (unless `log: false`), the
    webhook of the rules file, and the alert history in `alerts_db` (SQLite path or SQLAlchemy URL)."""
    from domaintune.monitoring.rules import check_labels

    sinks: list = []
    if ruleset is not None:
        if ruleset.log:
            sinks.append(LogSink())
        if alerts_db is not None:
            sinks.append(AlertStore(alerts_db))
        if ruleset.webhook is not None:
            sinks.append(WebhookSink(ruleset.webhook))
    hub = MonitorHub(ruleset, sinks, window=window)
    try:
        states = [hub.register(n, v, Path(r)) for n, v, r in models]
        if ruleset is not None:
            check_labels(ruleset, {s.name: list(s.profile.labels) for s in states})
    except BaseException:
        hub.close(1.0)
        raise
    if registry is not None:
        registry.register(MonitorCollector(hub))
    return hub
