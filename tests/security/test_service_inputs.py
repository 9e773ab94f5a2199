"""Issue 13, item 6 (service): hostile or careless input gets a clear 4xx, never a 500, a traceback or a held socket.

Everything runs against a real uvicorn server on loopback over real weights (the shared `trained_run`, torch
backend). Raw sockets send what httpx will not: a body that stops half-way, a body that trickles in.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from serving_support import running_server

from domaintune.serving.app import ServeSettings
from domaintune.serving.keys import KeyStore
from domaintune.serving.server import build_service

BODY_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def runs(trained_run, tmp_path_factory):
    """(runs root, single-text run, pair run), copies the service may reload and the tests may add siblings to.

    The pair run is the trained run declared as a pair classifier (`task: pair`, mode classification): a
    cross-encoder pair classifier is the same sequence-classification model fed two segments, so the real
    loading path runs on real weights without training a second model (what it learnt is irrelevant here)."""
    root = tmp_path_factory.mktemp("input-runs")
    single, pair = root / "tickets", root / "pairs"
    for dst in (single, pair):
        shutil.copytree(trained_run, dst, ignore=shutil.ignore_patterns("checkpoints"))
    cfg = yaml.safe_load((pair / "config.yaml").read_text(encoding="utf-8"))
    cfg["task"], cfg["data"]["text_pair_column"] = "pair", "text_b"
    (pair / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    labels = json.loads((single / "task.json").read_text(encoding="utf-8"))["labels"]
    (pair / "task.json").write_text(json.dumps({"mode": "classification", "mode_reason": "test", "symmetric": False,
                                                "pair_encoder": "cross", "labels": labels}), encoding="utf-8")
    return root, single, pair


@pytest.fixture(scope="module")
def service(runs, tmp_path_factory):
    root, single, pair = runs
    home = tmp_path_factory.mktemp("input-serve")
    keys = KeyStore(home / "keys.db")
    _, key = keys.create("client", "predict")
    _, admin = keys.create("ops", "admin")
    settings = ServeSettings(max_batch=8, backend="torch", body_timeout_s=BODY_TIMEOUT_S, max_body_bytes=64_000)
    app, _ = build_service([single, pair], names=["tickets", "pairs"], settings=settings, keys_db=home / "keys.db",
                           audit_db=home / "audit.db")
    with running_server(app) as url:
        yield {"url": url, "port": int(url.rsplit(":", 1)[1]), "key": key, "admin": admin, "app": app, "root": root}


def call(svc, model, path, body=None, raw=None, key=None):
    headers = {"Authorization": f"Bearer {key or svc['key']}", "Content-Type": "application/json"}
    url = f"{svc['url']}/v1/models/{model}/{path}"
    return httpx.post(url, content=raw if raw is not None else json.dumps(body).encode(), headers=headers, timeout=60)


def reload(svc, content, headers=None):
    return httpx.post(svc["url"] + "/v1/admin/reload", content=content, timeout=120,
                      headers={"Authorization": f"Bearer {svc['admin']}", "Content-Type": "application/json"}
                      | (headers or {}))


def error(r) -> str:
    return r.json()["error"]["message"]


def raw_request(svc, head: str, body: bytes = b"") -> socket.socket:
    """A socket that has sent `head` (request line + headers, CRLF-separated, no blank line) and `body`."""
    sock = socket.create_connection(("127.0.0.1", svc["port"]), timeout=30)
    sock.sendall(head.encode() + b"\r\n\r\n" + body)
    return sock


def test_integer_over_the_digit_limit_is_a_422_on_a_live_connection(service):
    """A 5,000-digit top_k made json.loads raise a plain ValueError (not JSONDecodeError): 500 and a reset."""
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {service['key']}"}) as client:
        url = f"{service['url']}/v1/models/tickets/predict"
        r = client.post(url, content=b'{"text": "breaker tripped", "top_k": ' + b"9" * 5000 + b"}")
        assert r.status_code == 422, r.text
        assert "not valid JSON" in error(r) and "digits" in error(r)
        assert r.headers.get("connection") != "close"
        assert client.post(url, json={"text": "breaker tripped"}).status_code == 200  # same client, still served


def test_explain_with_an_empty_text_pair_is_a_422(service):
    r = call(service, "pairs", "explain", {"text": "breaker tripped", "text_pair": ""})
    assert r.status_code == 422, r.text
    assert "text_pair" in error(r) and "empty text" in error(r)
    r = call(service, "tickets", "explain", {"text": "breaker tripped", "text_pair": ""})
    assert r.status_code == 422, r.text
    assert "text_pair" in error(r)


def test_pair_and_single_text_models_refuse_the_other_kind_of_input(service):
    """A single-text model used to encode a stray text_pair as a second segment and answer 200."""
    for path, body in [("predict", {"text": "breaker tripped", "text_pair": "order bearings"}),
                       ("predict", {"texts": ["breaker tripped"], "text_pairs": ["order bearings"]}),
                       ("explain", {"text": "breaker tripped", "text_pair": "order bearings"})]:
        r = call(service, "tickets", path, body)
        assert r.status_code == 422, (path, body, r.text)
        assert "single texts" in error(r)
    for path, body in [("predict", {"text": "breaker tripped"}), ("predict", {"texts": ["breaker tripped"]}),
                       ("explain", {"text": "breaker tripped"})]:
        r = call(service, "pairs", path, body)
        assert r.status_code == 422, (path, body, r.text)
        assert "two texts" in error(r)
    r = call(service, "pairs", "predict", {"texts": ["breaker tripped"], "text_pairs": ["line 2 lost power"]})
    assert r.status_code == 200, r.text
    assert call(service, "tickets", "predict", {"text": "breaker tripped"}).status_code == 200


class Records(logging.Handler):
    """Every record of the service's and uvicorn's loggers; `disconnect` is set by the disconnect line."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.disconnect = threading.Event()

    def emit(self, record):
        self.records.append(record)
        if "disconnected" in record.getMessage():
            self.disconnect.set()


def request_count(metrics) -> float:
    return sum(s.value for m in metrics.registry.collect() if m.name == "domaintune_requests"
               for s in m.samples if s.name == "domaintune_requests_total")


def test_client_gone_mid_body_is_one_log_line_not_a_500(service):
    metrics = service["app"].state.metrics
    handler, loggers = Records(), [logging.getLogger("domaintune"), logging.getLogger("uvicorn.error")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        before = request_count(metrics)
        sock = raw_request(service, f"POST /v1/models/tickets/predict HTTP/1.1\r\nHost: x\r\n"
                                    f"Authorization: Bearer {service['key']}\r\nContent-Type: application/json\r\n"
                                    f"Content-Length: 200", b'{"text": "the breaker')
        sock.close()
        assert handler.disconnect.wait(30), [r.getMessage() for r in handler.records]
        end = time.monotonic() + 30  # the request is counted when the middleware finishes, just after the log line
        while request_count(metrics) < before + 1 and time.monotonic() < end:
            time.sleep(0.01)
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)
    assert request_count(metrics) == before + 1
    assert not [r for r in handler.records if r.levelno >= logging.ERROR or r.exc_info], \
        [r.getMessage() for r in handler.records]
    line = [r for r in handler.records if "disconnected" in r.getMessage()]
    assert len(line) == 1 and line[0].levelno in (logging.INFO, logging.WARNING)
    codes = {s.labels.get("code") for m in metrics.registry.collect() for s in m.samples if "code" in s.labels}
    assert "500" not in codes


def test_a_body_that_trickles_in_gets_408_and_the_connection_closed(service):
    sock = raw_request(service, f"POST /v1/models/tickets/predict HTTP/1.1\r\nHost: x\r\n"
                                f"Authorization: Bearer {service['key']}\r\nContent-Type: application/json\r\n"
                                f"Content-Length: 100", b'{"text": ')
    sock.settimeout(15)  # far above the service's 1 s body deadline; before the fix the socket hung here
    reply = b""
    with sock:
        while chunk := sock.recv(65536):  # until the server closes the connection
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), reply
    assert b"connection: close" in head.lower()
    assert "body incomplete" in json.loads(body)["error"]["message"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/models"])
def test_head_is_answered_like_get(service, path):
    r = httpx.head(service["url"] + path, headers={"Authorization": f"Bearer {service['key']}"})
    assert r.status_code == 200 and r.content == b""
    assert not any(op == "head" for ops in service["app"].openapi()["paths"].values() for op in ops)


def test_admin_reload_reads_a_chunked_body(service):
    """A chunked body has no content-length; the old code skipped it and reloaded every model from its own run."""
    target = service["root"] / "tickets-v2"
    shutil.copytree(service["root"] / "tickets", target)
    order = json.dumps({"model": "tickets", "run_dir": target.name}).encode()
    r = reload(service, iter([order[:10], order[10:]]))  # an iterator: httpx sends Transfer-Encoding: chunked
    assert r.status_code == 200, r.text
    assert [Path(d["run_dir"]).name for d in r.json()["reloaded"]] == ["tickets-v2"]
    r = reload(service, iter([b""]))  # chunked and empty: the same as no body (reload every model)
    assert r.status_code == 200, r.text
    assert sorted(d["model"] for d in r.json()["reloaded"]) == ["pairs", "tickets"]


@pytest.mark.parametrize("crafted", [False, True], ids=["plain-pickle", "code-running-pickle"])
def test_admin_reload_of_a_pickle_checkpoint_is_a_422_and_keeps_serving(service, crafted, tmp_path):
    import os

    import torch
    from safetensors.torch import load_file

    target = service["root"] / f"pickled-{crafted}"
    shutil.copytree(service["root"] / "tickets", target)
    weights = target / "model" / "model.safetensors"
    marker = tmp_path / "pickle-ran"

    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"x": RunsCode()} if crafted else load_file(weights), target / "model" / "pytorch_model.bin")
    weights.unlink()
    before = call(service, "tickets", "predict", {"text": "breaker tripped"}).json()["version"]
    r = reload(service, json.dumps({"model": "tickets", "run_dir": target.name}).encode())
    assert r.status_code == 422, r.text
    message = error(r)
    assert message.startswith("reload failed, still serving the previous version")
    assert "pytorch_model.bin" in message and "safetensors" in message
    assert not marker.exists()
    after = call(service, "tickets", "predict", {"text": "breaker tripped"})
    assert after.status_code == 200 and after.json()["version"] == before
