"""Monitoring for real: the profile train_run writes, a real uvicorn service fed a stationary then a shifted
stream, a real local HTTP server as webhook receiver (live, hanging, and a closed port), the alert history,
`domaintune monitor` over the audit log and `domaintune alerts list`."""

from __future__ import annotations

import csv
import json
import shutil
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from typer.testing import CliRunner

from serving_support import free_port, running_server

from domaintune.cli import app as cli_app
from domaintune.monitoring.alerts import AlertStore
from domaintune.monitoring.profile import load_profile
from domaintune.monitoring.rules import RulesError
from domaintune.serving.app import ServeSettings
from domaintune.serving.server import build_service

STATIONARY, SHIFT = 30, 20


class Receiver:
    """A real HTTP server collecting alert POSTs; with `hang`, every POST blocks until `release` is set."""

    def __init__(self, hang: bool = False):
        self.bodies, self.entered, self.release = [], threading.Event(), threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.entered.set()
                if hang:
                    outer.release.wait(60)
                outer.bodies.append(body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def stream(trained_run, tiny_splits):
    """Texts grouped by the label the served model predicts; the shift label is the one with most texts."""
    from domaintune.predictor import Predictor

    texts = []
    for part in ("dev", "test", "train"):
        with open(tiny_splits[part], encoding="utf-8", newline="") as f:
            texts += [r["text"] for r in csv.DictReader(f)]
    by: dict[str, list[str]] = {}
    for t, p in zip(texts, Predictor(trained_run).predict(texts)):
        by.setdefault(p["label"], []).append(t)
    assert len(by) >= 2, by.keys()
    shift_label = max(by, key=lambda k: len(by[k]))
    labels = sorted(by)
    # round-robin over the predicted labels: every full window of 10 holds at most ceil(10/2) = 5 shift texts
    stationary = [by[labels[i % len(labels)]][i // len(labels) % len(by[labels[i % len(labels)]])]
                  for i in range(STATIONARY)]
    shifted = [by[shift_label][i % len(by[shift_label])] for i in range(SHIFT)]
    return {"label": shift_label, "stationary": stationary, "shifted": shifted}


def rules_file(tmp_path, label, webhook_url, extra=""):
    p = tmp_path / "rules.yaml"
    p.write_text(f"""
webhook: {{url: "{webhook_url}", timeout_seconds: 30, max_retries: 2, backoff_seconds: 0.05}}
rules:
  - name: shift-once
    when: share(label == "{label}") > 0.8 over last 10
    severity: critical
    cooldown: 1h
  - name: shift-every
    when: share(label == "{label}") > 0.8 over last 10
    cooldown: 0s
{extra}""", encoding="utf-8")
    return p


def start(trained_run, tmp_path, rules):
    settings = ServeSettings(auth=False, backend="torch", max_wait_ms=0)
    return build_service([trained_run], names=["tiny"], settings=settings, audit_db=tmp_path / "audit.db",
                         alerts=rules, alerts_db=tmp_path / "alerts.db")


def send(url, texts):
    codes = []
    for t in texts:
        r = httpx.post(f"{url}/v1/models/tiny/predict", json={"text": t}, timeout=60)
        codes.append(r.status_code)
    return codes


def wait_until(cond, what, timeout=60.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_train_run_writes_a_profile(trained_run):
    p = load_profile(trained_run)
    assert p is not None
    assert set(p.labels) == {"electrical_fault", "safety_incident", "spare_parts_request"}
    assert sum(p.predicted_share.values()) == pytest.approx(1.0) and sum(p.gold_share.values()) == pytest.approx(1.0)
    assert p.gold_share["safety_incident"] == pytest.approx(1 / 3)   # the tiny dev+test sets are balanced
    assert sum(p.confidence_share) == pytest.approx(1.0, abs=1e-4) and 0 < p.confidence_mean <= 1
    assert sum(p.length_share) == pytest.approx(1.0, abs=1e-4) and p.length_mean > 3
    assert p.vocab_ids and 0 <= p.oov_rate < 0.5 and p.embedding["components"] == 64
    assert p.meta["reference_texts"] == 48


def test_stream_shift_fires_alerts_webhook_gets_exactly_them(trained_run, stream, tmp_path):
    receiver = Receiver()
    try:
        app, _ = start(trained_run, tmp_path, rules_file(tmp_path, stream["label"], receiver.url))
        hub = app.state.monitor
        with running_server(app) as url:
            assert send(url, stream["stationary"]) == [200] * STATIONARY
            assert hub.flush(60)
            assert hub.dispatch.fired == []                      # no alert on the stationary part
            assert send(url, stream["shifted"]) == [200] * SHIFT
            assert hub.flush(60)
            fired = list(hub.dispatch.fired)
            once = [a for a in fired if a.rule == "shift-once"]
            every = [a for a in fired if a.rule == "shift-every"]
            assert len(once) == 1                                # cooldown 1h: one alert however long it lasts
            assert len(every) > 1                                # cooldown 0: fires on every breaching text
            assert all(a.texts_seen > STATIONARY for a in fired)
            assert once[0].severity == "critical" and once[0].value > 0.8
            history = AlertStore(tmp_path / "alerts.db").list()
            assert sorted(h["id"] for h in history) == sorted(a.id for a in fired)
            wait_until(lambda: len(receiver.bodies) == len(fired), "webhook deliveries")
            assert sorted(b["id"] for b in receiver.bodies) == sorted(h["id"] for h in history)
            assert {b["rule"] for b in receiver.bodies} == {"shift-once", "shift-every"}
            metrics = httpx.get(url + "/metrics").text
            assert 'domaintune_monitor_stat{model="tiny",stat="label_psi"}' in metrics
            assert f'domaintune_monitor_label_share{{label="{stream["label"]}",model="tiny"}}' in metrics
            assert 'domaintune_alerts_total{model="tiny",rule="shift-once",severity="critical"} 1.0' in metrics
            assert f'domaintune_monitor_texts_total{{model="tiny"}} {float(STATIONARY + SHIFT)}' in metrics
    finally:
        receiver.close()

    runner = CliRunner()
    r = runner.invoke(cli_app, ["alerts", "list", "--alerts-db", str(tmp_path / "alerts.db"), "--since", "1h"])
    assert r.exit_code == 0, r.output
    assert "shift-once" in r.output and "critical" in r.output
    r = runner.invoke(cli_app, ["alerts", "list", "--alerts-db", str(tmp_path / "alerts.db"), "--json"])
    assert len(json.loads(r.output)) == len(history)
    # offline: the same statistics from the audit log, windows of 10 texts -> 5 windows, the last all shifted
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = runner.invoke(cli_app, ["monitor", "--model", "tiny", "--since", "1h", "--audit-db",
                                    str(tmp_path / "audit.db"), "--run", str(trained_run), "--window", "10",
                                    "--plots", str(tmp_path / "plots"), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output[:r.output.rindex("]") + 1])
    assert [w["n"] for w in rows] == [10] * 5
    assert rows[-1]["label_share"][stream["label"]] == 1.0
    assert rows[-1]["label_psi"] > rows[0]["label_psi"]
    assert (tmp_path / "plots" / "tiny_label_share.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "tiny_drift.png").stat().st_size > 1000
    assert not [w for w in caught if "Glyph" in str(w.message)]


def test_hanging_webhook_delays_no_prediction(trained_run, stream, tmp_path):
    receiver = Receiver(hang=True)
    try:
        app, _ = start(trained_run, tmp_path, rules_file(tmp_path, stream["label"], receiver.url))
        with running_server(app) as url:
            assert send(url, stream["stationary"] + stream["shifted"]) == [200] * (STATIONARY + SHIFT)
            # the webhook thread is now stuck inside a POST the receiver will not answer
            assert receiver.entered.wait(60)
            assert send(url, stream["shifted"]) == [200] * SHIFT  # every prediction succeeds meanwhile
            assert not receiver.release.is_set() and receiver.bodies == []
            assert app.state.monitor.flush(60)
            history = AlertStore(tmp_path / "alerts.db").list()
            assert {h["rule"] for h in history} == {"shift-once", "shift-every"}
            receiver.release.set()
    finally:
        receiver.close()


def test_closed_webhook_port_delays_no_prediction(trained_run, stream, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/hook"
    app, _ = start(trained_run, tmp_path, rules_file(tmp_path, stream["label"], dead))
    hub = app.state.monitor
    with running_server(app) as url:
        assert send(url, stream["stationary"] + stream["shifted"]) == [200] * (STATIONARY + SHIFT)
        assert hub.flush(60)
        webhook = next(s for s in hub.dispatch.sinks if type(s).__name__ == "WebhookSink")
        wait_until(lambda: webhook.failed >= 1, "a failed delivery after retries")
        assert webhook.delivered == 0 and webhook.attempts >= 3
        assert send(url, stream["stationary"][:5]) == [200] * 5
        assert len(AlertStore(tmp_path / "alerts.db").list()) == len(hub.dispatch.fired) > 0


def test_service_refuses_a_rule_on_a_label_the_model_lacks(trained_run, tmp_path):
    p = rules_file(tmp_path, "no_such_label", "http://127.0.0.1:9/x")
    with pytest.raises(RulesError, match=r"rules\[0\] \(shift-once\): field 'when': label 'no_such_label'"):
        start(trained_run, tmp_path, p)


def test_no_monitor_serves_without_drift_gauges_and_refuses_alert_rules(trained_run, stream, tmp_path):
    from domaintune.serving.server import ServeError

    settings = ServeSettings(auth=False, backend="torch", max_wait_ms=0, monitor=False)
    app, _ = build_service([trained_run], names=["tiny"], settings=settings, audit_db=tmp_path / "audit.db")
    assert app.state.monitor is None
    with running_server(app) as url:
        assert send(url, stream["stationary"][:3]) == [200] * 3
        metrics = httpx.get(f"{url}/metrics").text
    assert 'domaintune_requests_total{code="200",endpoint="predict",model="tiny"} 3.0' in metrics
    assert "domaintune_monitor_" not in metrics
    with pytest.raises(ServeError, match="--no-monitor"):
        build_service([trained_run], names=["tiny"], settings=settings, audit_db=tmp_path / "audit2.db",
                      alerts=rules_file(tmp_path, stream["label"], "http://127.0.0.1:9/x"))


def test_service_reports_a_broken_rules_file_before_loading_any_model(tmp_path):
    p = tmp_path / "rules.yaml"
    p.write_text("rules:\n  - name: 负面激增\n    when: share(label == \"负面\") > 1.5 over last 10\n", encoding="utf-8")
    # The run directory does not exist: reaching model loading would raise a different error.
    with pytest.raises(RulesError, match=r"rules\[0\] \(负面激增\)"):
        start(tmp_path / "no_such_run", tmp_path, p)


def test_monitor_profile_rebuilds_the_same_profile_for_an_old_run(trained_run, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints", "profile.json"))
    r = CliRunner().invoke(cli_app, ["monitor", "profile", str(run)])
    assert r.exit_code == 0, r.output
    new, ref = load_profile(run), load_profile(trained_run)
    assert new.labels == ref.labels and new.vocab_ids == ref.vocab_ids
    assert new.gold_share == ref.gold_share and new.length_edges == ref.length_edges
    for k, v in ref.predicted_share.items():
        assert new.predicted_share[k] == pytest.approx(v, abs=1 / 48 + 1e-9)  # same split, reloaded model
