"""The HTTP service, for real: uvicorn on loopback, the int8 ONNX model, API keys, limits, audit log, reload."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time

import httpx
import pytest

from serving_support import running_server

from domaintune.serving.app import ServeSettings
from domaintune.serving.keys import KeyStore
from domaintune.serving.server import ServeError, build_service

# Realistic PII that must never reach the audit store (checksums valid: ID MOD 11-2, card Luhn).
PII_TEXTS = [
    "Conveyor 3 stopped, call me on +44 20 7946 0958 or mail li.wei@example.com",
    "配电柜跳闸，联系人张伟，手机13812345678，身份证11010519491231002X",
    "Refund to card 4111 1111 1111 1111 please, the breaker tripped at 10.0.12.7",
]
RAW_PII = ["+44 20 7946 0958", "li.wei@example.com", "13812345678", "11010519491231002X", "4111 1111 1111 1111",
           "10.0.12.7"]


@pytest.fixture(scope="module")
def service(exported_run, tmp_path_factory):
    run, _ = exported_run
    root = tmp_path_factory.mktemp("serve")
    keys = KeyStore(root / "keys.db")
    _, predict_key = keys.create("client", "predict")
    _, admin_key = keys.create("ops", "admin")
    settings = ServeSettings(max_batch=16, max_wait_ms=5, max_queue=4096, max_texts=64, max_text_chars=2000,
                             max_body_bytes=64_000, backend="onnx-int8")
    app, close = build_service([run], settings=settings, keys_db=root / "keys.db", audit_db=root / "audit.db")
    with running_server(app) as url:
        yield {"url": url, "run": run, "name": run.name, "key": predict_key, "admin": admin_key, "keys": keys, "keys_db": root / "keys.db",
               "audit": root / "audit.db", "app": app}


def post(svc, body, key=None, path="predict", raw: bytes | None = None, headers=None):
    h = {"Authorization": f"Bearer {key or svc['key']}"} | (headers or {})
    url = f"{svc['url']}/v1/models/{svc['name']}/{path}"
    if raw is not None:
        return httpx.post(url, content=raw, headers=h | {"Content-Type": "application/json"}, timeout=30)
    return httpx.post(url, json=body, headers=h, timeout=30)


def test_predict_single_and_batch(service):
    r = post(service, {"text": "The main breaker tripped and line 2 lost power"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == service["name"] and len(body["version"]) == 12
    assert body["prediction"]["label"] in ("electrical_fault", "safety_incident", "spare_parts_request")
    r = post(service, {"texts": ["Order two bearings", "工人在冲床旁滑倒"], "top_k": 2})
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert len(preds) == 2 and all(len(p["top_k"]) == 2 for p in preds)
    models = httpx.get(service["url"] + "/v1/models", headers={"Authorization": f"Bearer {service['key']}"}).json()
    assert models["models"][0]["backend"] == "onnx-int8" and models["models"][0]["task"] == "classification"


def test_explain_endpoint_returns_token_attributions(service):
    r = post(service, {"text": "The breaker tripped <b>again</b>"}, path="explain")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "occlusion"  # the int8 ONNX backend has no gradients
    assert [t["token"] for t in body["tokens"]][:3] == ["the", "breaker", "tripped"]
    assert "&lt;" in body["html"] and "<b>" not in body["html"]
    assert post(service, {"text": "x", "label": "nope"}, path="explain").status_code == 422


def test_every_request_without_a_valid_key_is_rejected(service):
    url = f"{service['url']}/v1/models/{service['name']}/predict"
    bad = [{}, {"Authorization": "Bearer"}, {"Authorization": "Bearer nope"}, {"Authorization": service["key"]},
           {"Authorization": f"Basic {service['key']}"}, {"Authorization": f"Bearer {service['key']}x"},
           {"Authorization": "Bearer dt_00000000_" + "A" * 43}]
    for h in bad:
        r = httpx.post(url, json={"text": "hello"}, headers=h)
        assert r.status_code == 401, (h, r.status_code)
        assert r.headers["www-authenticate"] == "Bearer"
        assert "dt_" not in r.text and "hash" not in r.text  # no detail leak
    assert httpx.get(service["url"] + "/v1/models").status_code == 401
    # a predict key cannot use admin endpoints
    r = httpx.post(service["url"] + "/v1/admin/reload", headers={"Authorization": f"Bearer {service['key']}"})
    assert r.status_code == 403


def test_revoked_key_is_rejected_within_a_second(service):
    _, key = service["keys"].create("temp", "predict")
    assert post(service, {"text": "hello"}, key=key).status_code == 200
    KeyStore(service["keys_db"]).revoke("temp")  # another process's view: a second store
    time.sleep(1.0)
    assert post(service, {"text": "hello"}, key=key).status_code == 401


@pytest.mark.parametrize("body,raw,status,message", [
    ({"text": ""}, None, 422, "empty text"),
    ({"text": "   "}, None, 422, "empty text"),
    ({"text": 5}, None, 422, "text"),
    ({"texts": "not a list"}, None, 422, "texts"),
    ({"texts": []}, None, 422, "empty list"),
    ({"texts": ["ok", ""]}, None, 422, "texts.1"),
    ({"text": "a", "texts": ["b"]}, None, 422, "exactly one"),
    ({}, None, 422, "exactly one"),
    ({"text": "a", "extra": 1}, None, 422, "extra"),
    ({"text": "a", "top_k": 0}, None, 422, "top_k"),
    ({"text": "x" * 2001}, None, 413, "limit is 2000"),
    ({"texts": ["x"] * 65}, None, 413, "limit is 64"),
    (None, b'{"text": "unterminated', 422, "not valid JSON"),
    (None, b'{"text": "caf\xe9"}', 422, "not valid UTF-8"),
    (None, b'{"text": "\\ud800 lone"}', 422, "surrogate"),
    (None, b'["text"]', 422, "JSON object"),
    (None, b"", 422, "empty body"),
    (None, b'{"text": "' + b"x" * 70_000 + b'"}', 413, "limit"),
])
def test_bad_input_gets_a_clear_4xx(service, body, raw, status, message):
    r = post(service, body, raw=raw)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]


def test_unknown_model_is_404(service):
    r = httpx.post(f"{service['url']}/v1/models/nope/predict", json={"text": "a"},
                   headers={"Authorization": f"Bearer {service['key']}"})
    assert r.status_code == 404 and "GET /v1/models" in r.json()["error"]["message"]


def test_metrics_and_health(service):
    post(service, {"text": "motor overheating"})
    assert httpx.get(service["url"] + "/healthz").json() == {"status": "ok"}
    assert httpx.get(service["url"] + "/readyz").status_code == 200
    text = httpx.get(service["url"] + "/metrics").text
    name = service["name"]
    assert f'domaintune_requests_total{{code="200",endpoint="predict",model="{name}"}}' in text
    assert "domaintune_request_latency_seconds_bucket" in text and "domaintune_batch_size_bucket" in text
    assert f'domaintune_errors_total{{code="401",model="{name}"}}' in text or "domaintune_errors_total" in text
    assert "domaintune_queue_depth" in text


def test_admin_reload_swaps_without_failing_requests(service):
    async def load(n):
        async with httpx.AsyncClient(timeout=30) as c:
            async def one(i):
                r = await c.post(f"{service['url']}/v1/models/{service['name']}/predict", json={"text": f"pump {i}"},
                                 headers={"Authorization": f"Bearer {service['key']}"})
                return r.status_code
            return await asyncio.gather(*[one(i) for i in range(n)])

    async def scenario():
        task = asyncio.create_task(load(300))
        await asyncio.sleep(0.05)
        async with httpx.AsyncClient(timeout=60) as c:
            r = await c.post(service["url"] + "/v1/admin/reload", json={"model": service["name"]},
                             headers={"Authorization": f"Bearer {service['admin']}"})
        return r, await task

    r, codes = asyncio.run(scenario())
    assert r.status_code == 200, r.text
    assert r.json()["reloaded"][0]["model"] == service["name"]
    assert set(codes) == {200}
    r = httpx.post(service["url"] + "/v1/admin/reload", json={"model": service["name"], "run_dir": "../../etc"},
                   headers={"Authorization": f"Bearer {service['admin']}"})
    assert r.status_code == 403 and "runs root" in r.json()["error"]["message"]


def test_no_auth_is_refused_off_loopback(exported_run):
    with pytest.raises(ServeError, match="loopback"):
        build_service([exported_run[0]], settings=ServeSettings(auth=False), host="0.0.0.0")


def test_overload_gets_503_with_retry_after_and_server_stays_healthy(exported_run, tmp_path):
    run, _ = exported_run
    keys = KeyStore(tmp_path / "keys.db")
    _, key = keys.create("load", "predict")
    app, _ = build_service([run], settings=ServeSettings(max_batch=4, max_wait_ms=20, max_queue=4, backend="onnx"),
                           keys_db=tmp_path / "keys.db", audit_db=tmp_path / "audit.db")
    with running_server(app) as url:
        async def flood():
            limits = httpx.Limits(max_connections=200)
            async with httpx.AsyncClient(timeout=60, limits=limits) as c:
                return await asyncio.gather(*[c.post(f"{url}/v1/models/{run.name}/predict",
                                                     json={"texts": ["the breaker tripped again"] * 2},
                                                     headers={"Authorization": f"Bearer {key}"}) for _ in range(200)])
        replies = asyncio.run(flood())
        codes = [r.status_code for r in replies]
        assert codes.count(503) > 0 and codes.count(200) > 0
        assert set(codes) <= {200, 503}
        assert all(int(r.headers["retry-after"]) >= 1 for r in replies if r.status_code == 503)
        assert httpx.get(url + "/healthz").status_code == 200
        assert httpx.post(f"{url}/v1/models/{run.name}/predict", json={"text": "ok"},
                          headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_audit_log_keeps_every_request_masked_after_shutdown(exported_run, tmp_path, caplog):
    run, _ = exported_run
    keys = KeyStore(tmp_path / "keys.db")
    _, key = keys.create("auditor", "predict")
    app, _ = build_service([run], settings=ServeSettings(backend="onnx-int8"), keys_db=tmp_path / "keys.db",
                           audit_db=tmp_path / "audit.db")
    n = 240
    caplog.set_level(logging.DEBUG)
    with running_server(app) as url:
        async def burst():
            async with httpx.AsyncClient(timeout=60) as c:
                return await asyncio.gather(*[c.post(f"{url}/v1/models/{run.name}/predict",
                                                     json={"text": PII_TEXTS[i % 3] + f" #{i}"},
                                                     headers={"Authorization": f"Bearer {key}"}) for i in range(n)])
        assert {r.status_code for r in asyncio.run(burst())} == {200}
    # the server has shut down cleanly: every request must be in the store
    con = sqlite3.connect(tmp_path / "audit.db")
    rows = con.execute("select key_name, model, input_masked, output, status, input_sha256 from predictions").fetchall()
    assert len(rows) == n
    assert {r[0] for r in rows} == {"auditor"} and {r[4] for r in rows} == {200}
    dump = "\n".join(con.iterdump())
    for raw in RAW_PII:
        assert raw not in dump, raw
    assert "[EMAIL]" in dump and "[PHONE]" in dump and "[CN_ID]" in dump and "[BANK_CARD]" in dump
    assert json.loads(rows[0][3])["label"]
    assert key not in caplog.text and key not in dump  # keys never logged or stored
