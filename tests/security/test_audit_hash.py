"""Issue 13, item 3: the audit's input hash is keyed (HMAC under a per-installation secret), not plain SHA-256.

Before the fix `input_sha256` was an unsalted SHA-256 of the raw text: for a masked Chinese mobile number
(~10^8 candidates) brute force gave the number back in 0.3 s.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3

from domaintune.serving.audit import AuditLog


def test_stored_hash_is_an_hmac_under_the_installation_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("DOMAINTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DOMAINTUNE_SECRET", raising=False)
    text = "手机13800138000，请回电"
    log = AuditLog(tmp_path / "audit.db")
    log.record(key_name="k", model="m", version="v", endpoint="predict", inputs=[text], output={"label": "x"},
               latency_ms=1.0, status=200, durable=True).result(timeout=30)
    log.close()
    stored, masked = sqlite3.connect(tmp_path / "audit.db").execute(
        "select input_sha256, input_masked from predictions").fetchone()
    assert "13800138000" not in masked
    assert stored != hashlib.sha256(text.encode()).hexdigest()  # the brute-forceable hash of before
    secret_file = tmp_path / "home" / "secret.key"
    assert os.stat(secret_file).st_mode & 0o777 == 0o600
    assert stored == hmac.new(secret_file.read_bytes().strip(), text.encode(), hashlib.sha256).hexdigest()
