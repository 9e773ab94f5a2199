"""Fuzzing the real service with hypothesis: 2,000+ generated requests, none may get a 5xx.

The requests are generated from the OpenAPI request schema's fields (text, texts,
text_pair, text_pairs, top_k, label, method) filled with arbitrary JSON values,
plus raw bytes, wrong content types and odd paths - the inputs a buggy client or
an attacker sends."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving_support import running_server

from domaintune.serving.app import ServeSettings
from domaintune.serving.keys import KeyStore
from domaintune.serving.server import build_service

N_EXAMPLES = 2100

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                         st.text(max_size=60))
json_values = st.recursive(json_scalars, lambda c: st.one_of(st.lists(c, max_size=5),
                                                            st.dictionaries(st.text(max_size=8), c, max_size=5)),
                           max_leaves=12)
texts = st.one_of(st.text(max_size=80), st.sampled_from(["", " ", "\u0000", "配电柜跳闸", "a" * 300, "\ud800x",
                                                         "<script>alert(1)</script>", "💥" * 10]))
fields = st.fixed_dictionaries({}, optional={
    "text": st.one_of(texts, json_values), "texts": st.one_of(st.lists(texts, max_size=6), json_values),
    "text_pair": st.one_of(texts, json_values), "text_pairs": st.one_of(st.lists(texts, max_size=6), json_values),
    "top_k": st.one_of(st.integers(-3, 60), json_values), "label": st.one_of(texts, json_values),
    "method": st.one_of(st.sampled_from(["auto", "ig", "occlusion", "x"]), json_values),
    "junk": json_values})
plain = st.text(min_size=1, max_size=80).filter(lambda t: t.strip())
valid = st.one_of(plain.map(lambda t: {"text": t}), st.lists(plain, min_size=1, max_size=8).map(lambda ts: {"texts": ts}))
bodies = st.one_of(valid.map(lambda d: ("json", d)), fields.map(lambda d: ("json", d)), json_values.map(lambda v: ("json", v)),
                   st.binary(max_size=200).map(lambda b: ("raw", b)))
endpoints = st.sampled_from(["predict"] * 8 + ["explain", "nope/predict", "../predict"])


@pytest.fixture(scope="module")
def fuzz_service(exported_run, tmp_path_factory):
    run, _ = exported_run
    root = tmp_path_factory.mktemp("fuzz")
    _, key = KeyStore(root / "keys.db").create("fuzz", "predict")
    app, _ = build_service([run], settings=ServeSettings(backend="onnx-int8", max_text_chars=400, max_texts=8),
                           keys_db=root / "keys.db", audit_db=root / "audit.db")
    with running_server(app) as url, httpx.Client(timeout=60) as client:
        yield {"url": url, "name": run.name, "key": key, "client": client, "codes": []}


def test_fuzzed_requests_never_get_a_5xx(fuzz_service):
    svc = fuzz_service

    @settings(max_examples=N_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=bodies, endpoint=endpoints, auth=st.sampled_from(["good", "good", "good", "none", "bad"]),
           ctype=st.sampled_from(["application/json", "application/json", "text/plain", "application/x-www-form-urlencoded"]))
    def one(body, endpoint, auth, ctype):
        kind, value = body
        content = value if kind == "raw" else json.dumps(value, ensure_ascii=bool(hash(ctype) % 2)).encode("utf-8", "surrogatepass")
        headers = {"Content-Type": ctype}
        if auth == "good":
            headers["Authorization"] = f"Bearer {svc['key']}"
        elif auth == "bad":
            headers["Authorization"] = "Bearer " + svc["key"][:-2]
        path = f"/v1/models/{svc['name']}/{endpoint}" if not endpoint.startswith(("nope", "..")) else \
            f"/v1/models/{endpoint}"
        r = svc["client"].post(svc["url"] + path, content=content, headers=headers)
        svc["codes"].append(r.status_code)
        assert r.status_code < 500, (path, content[:200], r.status_code, r.text[:300])

    one()
    codes = svc["codes"]
    assert len(codes) >= 2000
    assert codes.count(200) > 50 and codes.count(401) > 50 and codes.count(422) > 50  # the fuzz reached every layer
