"""No PII in any stored byte of a real service (issue 13, item 3), whatever form the PII was written in.

A real uvicorn server on loopback serves the shared `trained_run` (torch backend) with API keys, the audit
log, alert rules that fire on every prediction (so the alert history is written) and the drift monitor.
Texts holding PII - the forms named in the issue (full-width digits, zero-width-split numbers, a 10-digit
US number, a card with dots, an IP with leading zeros...) and sentences Hypothesis writes in every form
(`pii_support`) - are sent to /predict (one by one and as a batch) and /explain, and in the places a
careless client puts them: the URL path, the query string, a rejected body. Then the service is shut
down and every byte it stored is read: the audit database and its -wal/-shm (also while the service is
running, when the WAL holds the rows), the alert history, the state home (key store, installation
secret), anything it wrote into the run directory, and every log line (caplog, and the process's
stdout/stderr). The monitor itself keeps its windows in memory only (`domaintune.monitoring.online`);
the alert history is the one monitoring store it writes.

None of the PII may be readable there: not as sent, not after NFKC and removing format characters (what
any reader can undo), and no digit sequence of 7 or more digits of it, with separators removed.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pii_support import EN_TEMPLATES, KINDS, ZH_TEMPLATES, canon, disguised, squeeze
from serving_support import running_server

from domaintune.serving.app import ServeSettings
from domaintune.serving.keys import KeyStore
from domaintune.serving.server import build_service

# (text as sent, identifiers that must not be readable anywhere)
ISSUE_FORMS = [
    ("手机１３９１２３４５６７８，请回电", ["13912345678"]),                       # full-width digits
    ("手机137\u200b6543\u200b2109，配电柜跳闸", ["13765432109"]),                # zero-width spaces
    ("Call 4155552671 about the breaker", ["4155552671"]),                      # 10-digit US number
    ("or +1 (212) 555-0199, or 646.555.0143", ["2125550199", "6465550143"]),
    ("Refund card 4111.1111.1111.1111 please", ["4111111111111111"]),           # card with dots
    ("卡号５５００ ００００ ００００ ０００４，谢谢", ["5500000000000004"]),            # full-width card
    ("Request from 192.168.001.010 tripped the line", ["192.168.001.010", "192.168.1.10"]),  # leading zeros
    ("身份证１１０１０５１９４９１２３１００２Ｘ，请核对", ["11010519491231002x"]),         # full-width ID
    ("证件 440524 18800101 0014 已登记", ["440524188001010014"]),
    ("邮箱ｌｉ．ｗｅｉ＠ｅｘａｍｐｌｅ．ｃｏｍ，谢谢", ["li.wei@example.com"]),           # full-width e-mail
    ("mail zhang\u200bsan@corp.example.cn now", ["zhangsan@corp.example.cn"]),
    ("手机 158\u00a01234\u30005678 找我，或1862–345–6789", ["15812345678", "18623456789"]),
    ("London +44 20 7946 0958, 座机(0755) 2345 6789", ["442079460958", "075523456789"]),
    ("server ｆｅ８０：：１ｆｆ：ｆｅ２３：４５６７：８９０ａ down", ["fe80::1ff:fe23:4567:890a"]),
]


def generated_forms(n_per_kind: int) -> list[tuple[str, list[str]]]:
    """Sentences with PII in every form, drawn by Hypothesis (derandomized: the same texts every run)."""
    out: list[tuple[str, list[str]]] = []
    for kind, strategy in KINDS.items():
        @settings(max_examples=n_per_kind, database=None, derandomize=True, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(pii=strategy, data=st.data())
        def draw(pii, data):
            value, identifiers = pii
            rendered = data.draw(disguised(value))
            template = data.draw(st.sampled_from(ZH_TEMPLATES + EN_TEMPLATES))
            out.append((template.replace("{pii}", rendered), [rendered, *identifiers]))

        draw()
    return out


def _stored_text(paths: list[Path]) -> str:
    """Every byte of `paths` as text: UTF-8 (what SQLite and the logs write) plus JSON's \\uXXXX escapes undone."""
    chunks = []
    for p in paths:
        text = p.read_bytes().decode("utf-8", errors="ignore")
        chunks += [text, re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)]
    return "\n".join(chunks)


def assert_no_pii(where: str, stored: str, forms: list[tuple[str, list[str]]]) -> None:
    stored_canon, stored_squeezed = canon(stored).lower(), squeeze(stored)
    for text, identifiers in forms:
        for value in identifiers:
            for v in {value.lower(), canon(value).lower()}:
                if len(v) >= 7 and v in stored_canon:  # pytest.fail: no diff of megabytes of database pages
                    pytest.fail(f"{v!r} (from {text!r}) is readable in {where}")
            digit_runs = {"".join(c for c in squeeze(value) if c.isdigit())}
            digit_runs |= set(re.findall(r"[0-9]{7,}", canon(value)))
            for digits in digit_runs:
                if len(digits) >= 7 and digits in stored_squeezed:
                    pytest.fail(f"{digits} (from {text!r}) is readable in {where}")


def files_under(*roots: Path, since: float = 0.0) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*") if p.is_file() and p.stat().st_mtime >= since)


def test_no_pii_in_any_stored_byte(trained_run, tmp_path, monkeypatch, caplog, capfd):
    started = time.time() - 1
    home = tmp_path / "home"
    monkeypatch.setenv("DOMAINTUNE_HOME", str(home))
    keys = KeyStore(home / "keys.db")
    _, key = keys.create("client", "predict")
    keys.close()
    label = json.loads((trained_run / "task.json").read_text(encoding="utf-8"))["labels"][0]
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"""rules:
  - name: every-text
    when: share(label == "{label}") >= 0 over last 2
    cooldown: 0s
""", encoding="utf-8")
    audit_db, alerts_db = tmp_path / "audit.db", tmp_path / "alerts.db"
    app, close = build_service([trained_run], names=["tickets"], settings=ServeSettings(backend="torch", max_batch=16),
                               keys_db=home / "keys.db", audit_db=audit_db, alerts=rules, alerts_db=alerts_db)
    forms = ISSUE_FORMS + generated_forms(8)
    texts = [t for t, _ in forms]
    caplog.set_level(logging.DEBUG)
    auth = {"Authorization": f"Bearer {key}"}
    with running_server(app) as url:
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # uvicorn's loggers do not propagate to root
            logging.getLogger(name).addHandler(caplog.handler)
        base = f"{url}/v1/models/tickets"
        with httpx.Client(timeout=120, headers=auth) as client:
            for t in texts:
                assert client.post(f"{base}/predict", json={"text": t}).status_code == 200, t
            r = client.post(f"{base}/predict", json={"texts": texts, "top_k": 2})
            assert r.status_code == 200, r.text
            for t, _ in ISSUE_FORMS[:3]:
                r = client.post(f"{base}/explain", json={"text": t})
                assert r.status_code == 200, r.text
            # where careless clients put PII: path, query string, rejected bodies, no key
            pii = ISSUE_FORMS[0][0]
            assert client.post(f"{url}/v1/models/{pii}/predict", json={"text": pii}).status_code == 404
            assert client.post(f"{base}/predict", params={"phone": pii}, json={"text": pii}).status_code == 200
            assert client.post(f"{base}/predict", json={"text": pii, "top_k": pii}).status_code == 422
            assert client.post(f"{base}/predict", json={"text": pii, pii: pii}).status_code == 422
            assert client.post(f"{base}/explain", json={"text": pii, "label": pii}).status_code == 422
            assert httpx.post(f"{base}/predict", json={"text": pii}, timeout=60).status_code == 401
        app.state.monitor.flush()
        # while running: acknowledged rows are durable, so they sit in the WAL (or the database) now
        assert_no_pii("the audit database while the service runs",
                      _stored_text(files_under(tmp_path)), forms)
    close()
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).removeHandler(caplog.handler)

    # the stores were really written (else the checks below prove nothing)
    with sqlite3.connect(audit_db) as con:
        rows = con.execute("select input_masked from predictions").fetchall()
    assert len(rows) >= len(texts) + 5
    masked = "\n".join(r[0] for r in rows)
    for tag in ("[PHONE]", "[BANK_CARD]", "[CN_ID]", "[EMAIL]", "[IP]"):
        assert tag in masked, tag
    with sqlite3.connect(alerts_db) as con:
        assert con.execute("select count(*) from alerts").fetchone()[0] > 0

    stored = files_under(tmp_path) + files_under(trained_run, since=started)
    assert audit_db in stored and alerts_db in stored
    assert_no_pii("the stored files", _stored_text(stored), forms)
    out, err = capfd.readouterr()
    assert_no_pii("the logs", caplog.text + "\n" + out + "\n" + err, forms)
