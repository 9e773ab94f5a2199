"""Generation over HTTP, for real: uvicorn on loopback, smollm2-135m's packaged weights, the official `openai` client.

The served generation run is built by hand the way `Predictor` reads a `task: generation` run (config.yaml,
task.json, model/ = the prepared model's files); a classification run is served beside it, so model selection
and the "this model does not generate" answers are exercised against a real second model.

Streaming is checked without timing: a test hook holds the generation after its first piece until the client
has received that piece, so a buffered stream cannot pass (the hold would never be released).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
import threading
import time

import httpx
import openai
import pytest

from lm_support import smollm2_dir  # noqa: F401  (fixture)
from serving_support import running_server

from domaintune.data.pii import PiiConfig, mask_pii
from domaintune.serving.app import ServeSettings
from domaintune.serving.keys import KeyStore
from domaintune.serving.server import build_service

GEN = "chat"
CLS = "tickets"
PII_PROMPT = "Write one short sentence to li.wei@example.com about the pump; call +44 20 7946 0958 if unsure."
RAW_PII = ["li.wei@example.com", "+44 20 7946 0958"]


@pytest.fixture(scope="module")
def generation_run(smollm2_dir, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("genrun") / "chat-run"
    (run / "model").mkdir(parents=True)
    for f in smollm2_dir.iterdir():
        if f.is_file():
            shutil.copy2(f, run / "model" / f.name)
    (run / "config.yaml").write_text(f"task: generation\nmodel: {smollm2_dir}\n", encoding="utf-8")
    (run / "task.json").write_text(json.dumps({"labels": []}), encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def svc(generation_run, trained_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-gen")
    keys = KeyStore(root / "keys.db")
    _, key = keys.create("chatter", "predict")
    settings = ServeSettings(max_concurrent_generations=1, max_new_tokens=64, max_body_bytes=300_000)
    app, _ = build_service([generation_run, trained_run], names=[GEN, CLS], settings=settings,
                           keys_db=root / "keys.db", audit_db=root / "audit.db")
    with running_server(app) as url:
        yield {"url": url, "key": key, "app": app, "audit": root / "audit.db"}


def client(svc, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=svc["url"] + "/v1", api_key=svc["key"] if key is None else key, max_retries=0,
                         timeout=120)


def auth(svc) -> dict:
    return {"Authorization": f"Bearer {svc['key']}"}


def ask(content: str) -> list[dict]:
    return [{"role": "system", "content": "You are a maintenance assistant."}, {"role": "user", "content": content}]


def audit_rows(db) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("select * from predictions order by id")]
    finally:
        con.close()


def wait_for(condition, what: str, seconds: float = 120.0):
    """Poll until `condition()` is truthy (a bounded wait for a background effect, not a timing assertion)."""
    end = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.1)


@contextlib.contextmanager
def held_after_first_piece(svc):
    """Make the served generator stop after its first text piece until `release` is set; `pulled` lists the
    pieces the server took from it. A hold that is never released ends after 120 s (then `timed_out` is set)."""
    predictor = svc["app"].state.slots[GEN].predictor
    real = predictor.chat_stream
    release, pulled, timed_out = threading.Event(), [], threading.Event()

    def held(messages, settings):
        for item in real(messages, settings):
            piece = isinstance(item, str) and bool(item.strip())  # the server sends no blank piece
            if piece:
                pulled.append(item)
            yield item
            if piece and len(pulled) == 1 and not release.is_set() and not release.wait(120):
                timed_out.set()

    predictor.chat_stream = held
    try:
        yield release, pulled, timed_out
    finally:
        release.set()
        del predictor.chat_stream  # the class's method again


def test_openai_client_gets_a_completion_with_usage(svc):
    c = client(svc)
    assert GEN in {m.id for m in c.models.list().data}
    r = c.chat.completions.create(model=GEN, messages=ask("What should I check when a pump overheats?"),
                                  max_tokens=12, temperature=0)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == GEN
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_openai_client_streams_the_same_text_piece_by_piece(svc):
    c = client(svc)
    messages = ask("List three causes of a tripped breaker.")
    whole = c.chat.completions.create(model=GEN, messages=messages, max_tokens=14, temperature=0)
    chunks = list(c.chat.completions.create(model=GEN, messages=messages, max_tokens=14, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    content = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(content) > 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(content) == whole.choices[0].message.content  # greedy: the same reply either way
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len({ch.id for ch in chunks}) == 1


def test_requests_without_a_valid_key_are_refused(svc):
    for key in ("not-a-key", "dt_00000000_" + "A" * 43):  # (the client itself refuses an empty key)
        with pytest.raises(openai.AuthenticationError) as e:
            client(svc, key=key).chat.completions.create(model=GEN, messages=ask("hi"), max_tokens=4)
        assert "API key" in e.value.message
    r = httpx.post(svc["url"] + "/v1/chat/completions", json={"messages": ask("hi")})
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.post(f"{svc['url']}/v1/models/{GEN}/generate", json={"prompt": "hi"}).status_code == 401


def test_an_over_long_prompt_is_a_clear_4xx_not_a_5xx(svc):
    words = " ".join(f"v{i % 97}" for i in range(50_000))  # ~0.2 MB: under the body limit, over the context
    with pytest.raises(openai.APIStatusError) as e:
        client(svc).chat.completions.create(model=GEN, messages=[{"role": "user", "content": words}],
                                            max_tokens=4)
    assert e.value.status_code in (413, 422), e.value
    assert e.value.code == "context_length_exceeded" and "token" in e.value.message
    r = httpx.post(f"{svc['url']}/v1/models/{GEN}/generate", json={"prompt": words}, headers=auth(svc),
                   timeout=120)
    assert r.status_code == 422 and "token" in r.json()["error"]["message"]
    # over the byte limit: 413 before the body is read, in OpenAI's shape on the OpenAI route
    r = httpx.post(svc["url"] + "/v1/chat/completions", headers=auth(svc), timeout=120,
                   json={"model": GEN, "messages": [{"role": "user", "content": "x" * 320_000}]})
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(svc["url"] + "/readyz").status_code == 200


def test_generate_route_streams_pieces_then_a_done_event(svc):
    events = []
    with httpx.stream("POST", f"{svc['url']}/v1/models/{GEN}/generate", headers=auth(svc), timeout=120,
                      json={"prompt": "Name two kinds of industrial pump.", "max_tokens": 10}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line:
                assert line.startswith("data: ")
                events.append(json.loads(line[len("data: "):]))
    *pieces, done = events
    assert pieces and all(set(p) == {"text"} for p in pieces)
    assert done["done"] is True and done["model"] == GEN
    assert done["text"] == "".join(p["text"] for p in pieces)
    assert done["finish_reason"] in ("stop", "length") and 0 < done["usage"]["completion_tokens"] <= 10
    # not streamed: the final object as JSON, the same greedy text
    r = httpx.post(f"{svc['url']}/v1/models/{GEN}/generate", headers=auth(svc), timeout=120,
                   json={"prompt": "Name two kinds of industrial pump.", "max_tokens": 10, "stream": False})
    assert r.status_code == 200 and r.json()["text"] == done["text"]


def test_pieces_reach_the_client_while_the_model_is_still_generating(svc):
    """The first piece is read while the generation is held after it: nothing between model and client buffers."""
    with held_after_first_piece(svc) as (release, pulled, timed_out):
        with httpx.stream("POST", f"{svc['url']}/v1/models/{GEN}/generate", headers=auth(svc), timeout=150,
                          json={"prompt": "Describe a conveyor belt inspection.", "max_tokens": 12}) as r:
            lines = (line for line in r.iter_lines() if line)
            first = json.loads(next(lines)[len("data: "):])
            assert first["text"] == pulled[0].strip()  # (the reply starts without whitespace)
            assert not release.is_set() and len(pulled) == 1  # the model is still held after its first piece
            release.set()
            rest = [json.loads(line[len("data: "):]) for line in lines]
    assert not timed_out.is_set()
    assert len(rest) >= 2 and rest[-1]["done"] is True  # more pieces came after the release, then the end
    assert rest[-1]["text"] == first["text"] + "".join(e["text"] for e in rest[:-1])


def test_a_client_that_hangs_up_stops_the_generation(svc):
    prompt = "Count slowly from one to forty, one number per line."
    full = [ch for ch in client(svc).chat.completions.create(model=GEN, messages=ask(prompt), max_tokens=16,
                                                               temperature=0, stream=True)
            if ch.choices and ch.choices[0].delta.content]
    assert len(full) > 3
    with held_after_first_piece(svc) as (release, pulled, timed_out):
        with httpx.stream("POST", svc["url"] + "/v1/chat/completions", headers=auth(svc), timeout=150,
                          json={"model": GEN, "messages": ask(prompt), "max_tokens": 16, "temperature": 0,
                                "stream": True}) as r:
            lines = (line for line in r.iter_lines() if line)
            assert json.loads(next(lines)[6:])["choices"][0]["delta"]["role"] == "assistant"
            assert json.loads(next(lines)[6:])["choices"][0]["delta"]["content"] == pulled[0].strip()
        # hung up; the server notices, ends the stream and writes its audit row, then the model may go on
        row = wait_for(lambda: [x for x in audit_rows(svc["audit"]) if x["endpoint"] == "chat_completions"
                                and "one to forty" in x["input_masked"]
                                and json.loads(x["output"] or "{}").get("finish_reason") == "incomplete"],
                       "the audit row of the abandoned stream")[0]
        assert row["status"] == 200 and json.loads(row["output"])["text"] == pulled[0].strip()
        release.set()
        wait_for(lambda: 'domaintune_generations_active{model="chat"} 0.0' in httpx.get(svc["url"] + "/metrics").text,
                 "the generation thread to end")
    assert not timed_out.is_set()
    assert len(pulled) <= 2 < len(full)  # at most one more piece was pulled after the client left


def test_one_generation_too_many_gets_429_with_retry_after(svc):
    with held_after_first_piece(svc) as (release, pulled, _):
        with httpx.stream("POST", f"{svc['url']}/v1/models/{GEN}/generate", headers=auth(svc), timeout=150,
                          json={"prompt": "Explain lockout-tagout.", "max_tokens": 8}) as r:
            lines = (line for line in r.iter_lines() if line)
            next(lines)  # the first generation is running (held after its first piece)
            with pytest.raises(openai.RateLimitError) as e:
                client(svc).chat.completions.create(model=GEN, messages=ask("hi"), max_tokens=4)
            assert int(e.value.response.headers["retry-after"]) >= 1
            assert "--max-concurrent-generations" in e.value.message
            release.set()
            assert json.loads(list(lines)[-1][6:])["done"] is True
    r = client(svc).chat.completions.create(model=GEN, messages=ask("hi"), max_tokens=4)  # free again
    assert r.choices[0].message.content is not None


def test_model_choice_and_what_each_kind_of_model_refuses(svc):
    url, h = svc["url"], auth(svc)
    # `model` left out: the one generation model is used (a classifier is served too)
    r = httpx.post(url + "/v1/chat/completions", headers=h, timeout=120,
                   json={"messages": ask("hello"), "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200 and r.json()["model"] == GEN
    r = httpx.post(url + "/v1/chat/completions", headers=h, json={"model": "nope", "messages": ask("hello")})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.UnprocessableEntityError, match="does not generate text"):
        client(svc).chat.completions.create(model=CLS, messages=ask("hello"))
    r = httpx.post(f"{url}/v1/models/{CLS}/generate", headers=h, json={"prompt": "hello"})
    assert r.status_code == 422 and "does not generate text" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/v1/models/{GEN}/predict", headers=h, json={"text": "hello"})
    assert r.status_code == 422 and "/generate" in r.json()["error"]["message"]
    listed = httpx.get(url + "/v1/models", headers=h).json()
    assert {m["id"] for m in listed["data"]} == {GEN, CLS} and all(m["object"] == "model" for m in listed["data"])
    assert {m["name"]: m["generator"] for m in listed["models"]} == {GEN: True, CLS: False}


@pytest.mark.parametrize("body,param,message", [
    ({"max_tokens": 65}, "max_tokens", "limit of 64"),
    ({"max_completion_tokens": 0}, "max_completion_tokens", "at least 1"),
    ({"n": 2}, "n", "only 1"),
    ({"temperature": 3.0}, "temperature", "between 0"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, None, "last message must be the user"),
    ({"messages": []}, None, "empty list"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, None, "role"),
    ({"tools": []}, None, "tools"),
])
def test_bad_chat_requests_get_a_422_naming_the_field(svc, body, param, message):
    r = httpx.post(svc["url"] + "/v1/chat/completions", headers=auth(svc),
                   json={"model": GEN, "messages": ask("hi")} | body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert message in err["message"] and err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param


def test_audit_rows_hold_masked_prompts_and_replies(svc):
    c = client(svc)
    r = c.chat.completions.create(model=GEN, messages=ask(PII_PROMPT), max_tokens=12, temperature=0)
    streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model=GEN, messages=[{"role": "user", "content": PII_PROMPT + " (stream)"}], max_tokens=12, temperature=0,
        stream=True) if ch.choices)
    # the JSON reply's row is durable before the reply; the stream's is written once the stream has ended
    wait_for(lambda: any("(stream)" in x["input_masked"] for x in audit_rows(svc["audit"])),
             "the audit row of the streamed request")
    by_kind = {"stream" if "(stream)" in x["input_masked"] else "json": x for x in audit_rows(svc["audit"])
               if x["endpoint"] == "chat_completions" and x["status"] == 200 and "[EMAIL]" in x["input_masked"]}
    assert set(by_kind) == {"stream", "json"}
    for x in by_kind.values():
        assert x["key_name"] == "chatter" and x["model"] == GEN and x["model_version"]
        assert "[PHONE]" in x["input_masked"]
        out = json.loads(x["output"])
        assert out["usage"]["completion_tokens"] > 0 and out["finish_reason"] in ("stop", "length")
    assert json.loads(by_kind["json"]["output"])["usage"] == r.usage.model_dump(include={
        "prompt_tokens", "completion_tokens", "total_tokens"})
    assert json.loads(by_kind["stream"]["output"])["text"] == mask_pii(streamed, PiiConfig())
    con = sqlite3.connect(svc["audit"])
    dump = "\n".join(con.iterdump())
    con.close()
    for raw in RAW_PII:
        assert raw not in dump, raw


def test_generation_metrics_are_labelled_by_model_and_route(svc):
    client(svc).chat.completions.create(model=GEN, messages=ask("hi"), max_tokens=4)
    text = httpx.get(svc["url"] + "/metrics").text
    for metric in ("domaintune_generation_first_token_seconds_count", "domaintune_generation_seconds_count",
                   "domaintune_generation_tokens_per_second_count"):
        assert f'{metric}{{endpoint="chat_completions",model="{GEN}"}}' in text, metric
    assert f'domaintune_generation_seconds_count{{endpoint="generate",model="{GEN}"}}' in text
    tokens = re.search(rf'domaintune_generated_tokens_total{{endpoint="chat_completions",model="{GEN}"}} (\S+)', text)
    assert tokens and float(tokens.group(1)) > 0
    assert f'domaintune_requests_total{{code="200",endpoint="chat_completions",model="{GEN}"}}' in text
    assert "example.com" not in text and "valve" not in text
