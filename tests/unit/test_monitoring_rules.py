"""Alert rules: parsing, every validation error with file/rule/field/fix, cooldown, z-score, webhook retries."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from domaintune.monitoring.alerts import RuleState, WebhookSink, make_alert
from domaintune.monitoring.profile import Profile
from domaintune.monitoring.rules import RulesError, WebhookSpec, check_labels, load_rules, parse_duration, parse_rules
from domaintune.monitoring.stats import Record, SlidingWindow


def test_expressions_parse():
    rs = parse_rules({"rules": [
        {"name": "a", "when": "share(label == \"negative\") > 0.4 over last 200", "severity": "critical",
         "cooldown": "15m"},
        {"name": "b", "when": "zscore(share(label == '负面'), baseline=30) >= 6 over last 50", "cooldown": 0},
        {"name": "c", "when": "oov_shift > 0.05 over last 500", "model": "tickets"},
        {"name": "d", "stat": "label_psi", "op": "<", "threshold": 0.1, "window": 100, "zscore_baseline": 5}]})
    a, b, c, d = rs.rules
    assert (a.stat, a.label, a.op, a.threshold, a.window, a.severity, a.cooldown) == \
        ("share", "negative", ">", 0.4, 200, "critical", 900.0)
    assert (b.label, b.zscore_baseline, b.op, b.window, b.cooldown) == ("负面", 30, ">=", 50, 0.0)
    assert (c.stat, c.model, c.cooldown) == ("oov_shift", "tickets", 300.0)
    assert d.expression == "zscore(label_psi, baseline=5) < 0.1 over last 100"
    assert parse_duration("2h") == 7200 and parse_duration("1d") == 86400


def test_every_problem_reported_with_file_rule_field_and_fix(tmp_path):
    p = tmp_path / "rules.yaml"
    p.write_text("""
rules:
  - name: typo-op
    when: share(label = "negative") > 0.4 over last 200
  - when: label_psi > 0.2 over last 100
  - name: unknown-stat
    when: label_drift > 0.2 over last 100
  - name: typo-field
    when: label_psi > 0.2 over last 100
    cooldwn: 5m
  - name: bad-cooldown
    when: label_psi > 0.2 over last 100
    cooldown: soon
  - name: typo-field
    when: label_psi > 0.3 over last 100
  - name: bad-severity
    when: label_psi > 0.3 over last 100
    severity: urgent
webhook: {url: "ftp://x"}
""", encoding="utf-8")
    with pytest.raises(RulesError) as e:
        load_rules(p)
    msgs = e.value.problems
    text = "\n".join(msgs)
    assert f"{p}: rules[0] (typo-op): field 'when': cannot parse" in text and "over last 200" in text
    assert f"{p}: rules[1]: field 'name'" in text and "unique name" in text
    assert "rules[2] (unknown-stat): field 'when': unknown statistic 'label_drift'" in text and "label_psi" in text
    assert "rules[3] (typo-field): field 'cooldwn'" in text and "allowed fields" in text
    assert "rules[4] (bad-cooldown): field 'cooldown'" in text and "15m" in text
    assert "rules[5] (typo-field): field 'name': 'typo-field' already used by rules[3]" not in text  # rules[3] failed
    assert "rules[6] (bad-severity): field 'severity'" in text
    assert "webhook.url" in text
    assert len(msgs) == 7


def test_a_share_threshold_written_as_a_percentage_is_refused_with_the_fraction_to_write():
    with pytest.raises(RulesError, match=r"rules\[0\] \(投诉激增\): field 'when': .*not 30; write 0.3 for 30 %"):
        parse_rules({"rules": [{"name": "投诉激增", "when": 'share(label == "投诉") > 30 over last 200'}]}, "r.yaml")
    with pytest.raises(RulesError, match=r"field 'when': a share is a fraction"):
        parse_rules({"rules": [{"name": "x", "stat": 'share(label == "a")', "threshold": 1.2, "window": 5}]})
    # A z-score of a share is not a fraction; neither are the plain statistics.
    assert parse_rules({"rules": [{"name": "z", "when": 'zscore(share(label == "a"), baseline=5) > 6 over last 50'}]})
    assert parse_rules({"rules": [{"name": "p", "when": "label_psi > 0.25 over last 200"}]})


def test_yaml_syntax_error_has_line_and_missing_rules(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("rules:\n  - name: a\n    when: [unclosed\n", encoding="utf-8")
    with pytest.raises(RulesError, match=r"bad\.yaml:\d+:\d+: not valid YAML"):
        load_rules(p)
    with pytest.raises(RulesError, match="non-empty list of rules"):
        parse_rules({"rules": []}, "x.yaml")
    with pytest.raises(RulesError, match="no such file"):
        load_rules(tmp_path / "missing.yaml")
    with pytest.raises(RulesError, match="already used by rules\\[0\\]"):
        parse_rules({"rules": [{"name": "a", "when": "label_js > 0.1 over last 10"},
                               {"name": "a", "when": "label_js > 0.2 over last 10"}]})


def test_labels_checked_against_the_served_models():
    rs = parse_rules({"rules": [{"name": "neg", "when": 'share(label == "negatve") > 0.4 over last 20'},
                                {"name": "m", "when": "label_psi > 0.2 over last 20", "model": "other"}]}, "r.yaml")
    with pytest.raises(RulesError) as e:
        check_labels(rs, {"fpb": ["negative", "neutral", "positive"]})
    assert "rules[0] (neg): field 'when': label 'negatve' is not a label of fpb; labels: negative, neutral, positive" \
        in str(e.value)
    assert "rules[1] (m): field 'model': no served model named 'other'" in str(e.value)


def _window(n):
    return SlidingWindow(n, Profile(labels=["a", "b"], predicted_share={"a": 0.5, "b": 0.5}))


def test_cooldown_suppresses_repeats_until_it_expires():
    rule = parse_rules({"rules": [{"name": "a", "when": 'share(label == "a") > 0.5 over last 4',
                                   "cooldown": "10m"}]}).rules[0]
    st, w, fired = RuleState(rule), _window(4), []
    clock = 0.0
    for i in range(40):  # all "a": the condition holds on every text once the window is full
        w.add(Record(0, 0.9))
        clock += 10.0    # 10 s per text
        if st.evaluate(w, clock):
            fired.append(i)
    # first at the 4th text (window full), next exactly when 600 s have passed: text 3 + 60 = 63 > 39, so once
    assert fired == [3]
    for i in range(40, 80):
        w.add(Record(0, 0.9))
        clock += 10.0
        if st.evaluate(w, clock):
            fired.append(i)
    assert fired == [3, 63]
    rule0 = parse_rules({"rules": [{"name": "a", "when": 'share(label == "a") > 0.5 over last 4',
                                    "cooldown": 0}]}).rules[0]
    st0, w0 = RuleState(rule0), _window(4)
    hits = 0
    for _ in range(10):
        w0.add(Record(0, 0.9))
        hits += st0.evaluate(w0, 0.0) is not None
    assert hits == 7


def test_zscore_fires_on_a_spike_not_on_a_stationary_stream():
    rule = parse_rules({"rules": [{"name": "z", "when": 'zscore(share(label == "b"), baseline=20) > 5 over last 20',
                                   "cooldown": "1h"}]}).rules[0]
    st, w = RuleState(rule), _window(20)
    rng = np.random.default_rng(1)
    for i in range(2000):  # b with probability 0.2
        w.add(Record(int(rng.random() < 0.2), 0.9))
        assert st.evaluate(w, float(i)) is None
    first = None
    for i in range(200):   # b with probability 0.9
        w.add(Record(int(rng.random() < 0.9), 0.9))
        res = st.evaluate(w, 2000.0 + i)
        if res is not None:
            first = i
            value, z = res
            assert z > 5
            break
    assert first is not None and first < 20


class _Flaky(BaseHTTPRequestHandler):
    """Answers 500 to the first two POSTs, then 200; keeps every body."""

    bodies: list = []
    calls = 0

    def do_POST(self):  # noqa: N802
        type(self).calls += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        code = 500 if type(self).calls <= 2 else 200
        if code == 200:
            type(self).bodies.append(body)
        self.send_response(code)
        self.end_headers()

    def log_message(self, *a):
        pass


def test_webhook_retries_with_backoff_then_delivers_once():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sink = WebhookSink(WebhookSpec(url=f"http://127.0.0.1:{server.server_port}/hook", backoff_seconds=0.01,
                                       max_retries=3))
        rule = parse_rules({"rules": [{"name": "a", "when": "label_psi > 0.1 over last 10"}]}).rules[0]
        alert = make_alert(rule, "m", "v1", 0.5, None, 10)
        sink.emit(alert)
        sink.close(timeout=10)
        assert _Flaky.calls == 3 and sink.attempts == 3 and sink.delivered == 1 and sink.failed == 0
        assert [b["id"] for b in _Flaky.bodies] == [alert.id]
        assert _Flaky.bodies[0]["rule"] == "a" and _Flaky.bodies[0]["value"] == 0.5
    finally:
        server.shutdown()
