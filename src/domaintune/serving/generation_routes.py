"""Text generation over HTTP: `POST /v1/models/{name}/generate` and OpenAI's `POST /v1/chat/completions`.

Served for every model whose Predictor generates (`Predictor.is_generator`, a `task: generation` run), with the
same API keys, body limits, audit log, metrics and back-pressure as the predict routes (`domaintune.serving.app`).

* `/v1/chat/completions` speaks OpenAI's chat completions protocol, so the official `openai` client (and the
  tools built on it) work with `base_url=http://HOST:PORT/v1`: the `chat.completion` object, or with `stream`
  server-sent `chat.completion.chunk` events ending in `data: [DONE]`; errors in OpenAI's shape
  `{"error": {"message", "type", "param", "code"}}`. The model is the body's `model` (a served name), or the
  only generation model when one is served and `model` is left out.
* `/v1/models/{name}/generate` is domaintune's own, smaller form: `{"prompt": "..."}` (or `messages`), streamed
  by default as `data: {"text": piece}` events and a final `data: {"done": true, "text", "finish_reason",
  "usage"}`; `"stream": false` answers that final object as JSON.

A sampling field left out takes the run's own setting (`generation:` of its config: greedy unless the run says
otherwise - unlike OpenAI's default temperature of 1, because the owner of a domain model decides how it
decodes), and `max_tokens` is capped by `ServeSettings.max_new_tokens`. A streamed reply is the same text as a
non-streamed one, piece by piece: like the final text, it starts and ends without whitespace.

Why a thread per generation and not the micro-batcher: a generation runs for seconds and yields pieces as it
goes, so it cannot share a batched predict call. `Predictor.chat_stream` is a blocking iterator; one dedicated
thread pulls it (an iterator that holds thread-local state, such as torch's inference mode, must stay on one
thread) and hands each piece to the event loop, which never blocks. The threads are bounded: at most
`ServeSettings.max_concurrent_generations` per model run at once (2 cores: more would only slow every one of
them down); a request beyond that gets 429 with Retry-After at once instead of queueing without bound.
A client that hangs up mid-stream stops its generation: the thread stops pulling after the next piece.

Why the first piece is awaited before the response starts: a prompt over the model's context
(`PromptTooLongError`) is only found by tokenizing it on the worker thread, and it must become a 422
(`context_length_exceeded`), which is impossible once a 200 stream has begun.

Audit: a JSON answer is held until its row is durable, as every 2xx is (`middleware.RequestObserver`). A stream
cannot be held - its pieces must reach the client as they are made - so it is marked with `mark_streaming` and
its row (the whole prompt and reply, PII-masked by the audit writer, and the token counts) is written when the
stream ends. Prompts and replies never reach the log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import threading
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from domaintune.serving.app import ApiError, parse, read_json
from domaintune.serving.middleware import mark_streaming, note_audit

log = logging.getLogger("domaintune.serving")

MAX_STOP_SEQUENCES = 4    # OpenAI's limit; each one is checked after every token
MAX_STOP_CHARS = 256
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may buffer the pieces


# ---------------------------------------------------------------------------------------------- request bodies
class TextPart(BaseModel):
    """One part of a message's content in OpenAI's list form; only text parts exist for a text model."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "developer", "user", "assistant"] = Field(
        ..., description="developer is OpenAI's newer name for system and is read as system.")
    content: str | list[TextPart]
    name: str | None = Field(None, description="Accepted for compatibility; not shown to the model.")


class SamplingFields(BaseModel):
    """Sampling fields shared by both routes (mapped to `domaintune.generation.settings.SamplingSettings`)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    max_tokens: int | None = Field(None, description="Most tokens to generate (default: the run's; capped by "
                                                     "the server).")
    max_completion_tokens: int | None = Field(None, description="OpenAI's newer name for max_tokens.")
    temperature: float | None = Field(None, description="0 (greedy) to 2 (default: the run's, greedy unless "
                                                         "its config says otherwise).")
    top_p: float | None = Field(None, description="Nucleus sampling: keep the smallest set of tokens whose "
                                                  "probabilities add up to top_p (0 < top_p <= 1).")
    top_k: int | None = Field(None, description="Sample among the k most likely tokens (0: all). Extension.")
    repetition_penalty: float | None = Field(None, description="> 1 discourages repeating tokens. Extension.")
    stop: str | list[str] | None = Field(None, description="Up to 4 strings that end the reply (not included).")
    seed: int | None = Field(None, description="Makes sampling reproducible.")
    stream: bool = False


class ChatCompletionRequest(SamplingFields):
    """OpenAI's chat completions body (the fields a text-only model can honour; others are refused, not ignored)."""

    model: str | None = Field(None, description="A served model name (GET /v1/models); optional when the "
                                                "server serves one generation model.")
    messages: list[ChatMessage]
    n: int = Field(1, description="Only 1 is supported.")
    stream_options: dict | None = Field(None, description='{"include_usage": true}: a last chunk with usage.')
    user: str | None = Field(None, description="Accepted for compatibility; not stored.")
    presence_penalty: float = Field(0.0, description="Only 0 is supported (use repetition_penalty).")
    frequency_penalty: float = Field(0.0, description="Only 0 is supported (use repetition_penalty).")
    logprobs: bool | None = Field(None, description="Not supported (false or absent only).")


class GenerateRequest(SamplingFields):
    prompt: str | None = Field(None, description="The user's message (one turn).")
    messages: list[ChatMessage] | None = Field(None, description="A whole conversation instead of prompt.")
    stream: bool = True


def _inline_refs(schema: dict) -> dict:
    """The schema with its `$defs` substituted in place: the OpenAPI document has no `#/$defs` to point to.
    (Our bodies are not recursive, so substitution ends.)"""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(dict(defs[ref.rsplit("/", 1)[1]]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def _body_schema(model_cls) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": _inline_refs(model_cls.model_json_schema())}}}}


# ------------------------------------------------------------------------------------------- OpenAI-shaped errors
class OpenAIError(ApiError):
    """An ApiError answered in OpenAI's error shape, which OpenAI clients parse into their exception's message."""

    def __init__(self, status: int, message: str, headers: dict | None = None, *, param: str | None = None,
                 code: str | None = None):
        super().__init__(status, message, headers)
        self.param, self.code = param, code

    @classmethod
    def of(cls, e: ApiError) -> OpenAIError:
        return e if isinstance(e, OpenAIError) else cls(e.status, e.message, e.headers)

    def body(self) -> dict:
        kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                429: "rate_limit_error"}.get(self.status, "server_error" if self.status >= 500
                                              else "invalid_request_error")
        code = self.code or {401: "invalid_api_key", 404: "model_not_found", 413: "request_too_large",
                             429: "rate_limit_exceeded"}.get(self.status)
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": code}}


# ------------------------------------------------------------------------------------------------ validation
def is_generator(slot) -> bool:
    return bool(getattr(slot.predictor, "is_generator", False))


# The checks below raise OpenAIError (param and code filled in); the generate route answers them in the
# service's own error shape (`as_service_error`).
def require_generator(slot) -> None:
    if not is_generator(slot):
        raise OpenAIError(422, f"model {slot.name!r} is a {slot.predictor.task.name} model and does not generate "
                               f"text; generation needs a run trained with `task: generation` (GET /v1/models "
                               f"lists each model's task; POST /v1/models/{slot.name}/predict serves this one)",
                          param="model")


def chat_messages(messages: list[ChatMessage]) -> list[dict]:
    """OpenAI-shaped messages for `Predictor.chat_stream`, after every check a bad conversation can fail."""
    cls = OpenAIError
    if not messages:
        raise cls(422, 'messages: empty list; send at least one {"role": "user", "content": "..."}')
    out = []
    for i, m in enumerate(messages):
        content = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            raise cls(422, f"messages.{i}.content: contains an unpaired surrogate (\\ud800-\\udfff); send valid "
                           f"Unicode") from None
        out.append({"role": "system" if m.role == "developer" else m.role, "content": content})
    if out[-1]["role"] != "user":
        raise cls(422, f"messages.{len(out) - 1}: the last message must be the user's (role \"user\"), not "
                       f"{out[-1]['role']!r}: the model answers the user's last message")
    if not out[-1]["content"].strip():
        raise cls(422, f"messages.{len(out) - 1}.content: empty; send the user's question")
    return out


def sampling_settings(req: SamplingFields, cap: int, predictor):
    """The request's `SamplingSettings`: every given field range-checked with a message naming it, the others
    the run's own (`Predictor.sampling`), the reply's length at most `cap` tokens."""
    def bad(msg: str, param: str) -> OpenAIError:
        return OpenAIError(422, msg, param=param)

    field = "max_tokens" if req.max_tokens is not None else "max_completion_tokens"
    if req.max_tokens is not None and req.max_completion_tokens is not None \
            and req.max_tokens != req.max_completion_tokens:
        raise bad("max_tokens and max_completion_tokens differ; send one of them", "max_tokens")
    n = req.max_tokens if req.max_tokens is not None else req.max_completion_tokens
    if n is not None and n < 1:
        raise bad(f"{field}: must be at least 1", field)
    if n is not None and n > cap:
        raise bad(f"{field}: {n} is over this server's limit of {cap} tokens per reply (serve "
                  f"--max-new-tokens); ask for at most {cap}", field)
    if req.temperature is not None and not 0.0 <= req.temperature <= 2.0:
        raise bad("temperature: must be between 0 (greedy) and 2", "temperature")
    if req.top_p is not None and not 0.0 < req.top_p <= 1.0:
        raise bad("top_p: must be over 0 and at most 1", "top_p")
    if req.top_k is not None and req.top_k < 0:
        raise bad("top_k: must be 0 (no limit) or more", "top_k")
    if req.repetition_penalty is not None and not 0.0 < req.repetition_penalty <= 10.0:
        raise bad("repetition_penalty: must be over 0 and at most 10 (1: none)", "repetition_penalty")
    stop = None if req.stop is None else [req.stop] if isinstance(req.stop, str) else list(req.stop)
    if stop is not None and len(stop) > MAX_STOP_SEQUENCES:
        raise bad(f"stop: {len(stop)} sequences; at most {MAX_STOP_SEQUENCES}", "stop")
    if stop is not None and any(not s or len(s) > MAX_STOP_CHARS for s in stop):
        raise bad(f"stop: each sequence must have 1 to {MAX_STOP_CHARS} characters", "stop")
    if req.seed is not None and not 0 <= req.seed < 2 ** 63:
        raise bad("seed: must be between 0 and 2**63 - 1", "seed")
    try:
        settings = predictor.sampling(max_new_tokens=n, temperature=req.temperature, top_p=req.top_p,
                                      top_k=req.top_k, repetition_penalty=req.repetition_penalty, stop=stop,
                                      seed=req.seed)
    except ValueError as e:  # SamplingSettings' own checks, should a combination pass ours
        raise OpenAIError(422, str(e)) from None
    if settings.max_new_tokens > cap:  # the run's default reply length, over this server's cap
        settings = dataclasses.replace(settings, max_new_tokens=cap)
    return settings


# ------------------------------------------------------------------------------------ back-pressure and bridge
class GenerationGate:
    """At most `limit` generations of one model at once; the one beyond is refused at once (429), never queued:
    a queued generation would hold its connection for minutes while the client's own timeout runs out."""

    def __init__(self, limit: int):
        self.limit, self.active = max(1, limit), 0
        self.mean_seconds = 5.0  # running estimate of one generation, for Retry-After
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self.active >= self.limit:
                return False
            self.active += 1
            return True

    def release(self, seconds: float) -> None:
        with self._lock:
            self.active -= 1
            self.mean_seconds = 0.8 * self.mean_seconds + 0.2 * seconds

    def retry_after(self) -> int:
        return max(1, math.ceil(self.mean_seconds / self.limit))


_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class GenerationStream:
    """`Predictor.chat_stream` on a thread of its own; its items (text pieces, then the `GenerationResult`)
    reach the event loop through an asyncio queue. `stop` makes the thread stop pulling after the next piece."""

    def __init__(self, predictor, messages: list[dict], settings, on_done):
        self.predictor, self.messages, self.settings, self.on_done = predictor, messages, settings, on_done
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.stop = threading.Event()
        self.t0 = time.perf_counter()
        self.first_piece_s: float | None = None
        self.thread = threading.Thread(target=self._pump, name="generate", daemon=True)

    def start(self) -> GenerationStream:
        self.thread.start()
        return self

    def _put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop has closed (server shut down): nobody is left to read
            self.stop.set()

    def _pump(self) -> None:
        try:
            it = self.predictor.chat_stream(self.messages, self.settings)
            try:
                for item in it:
                    if isinstance(item, str) and item and self.first_piece_s is None:
                        self.first_piece_s = time.perf_counter() - self.t0
                    self._put(item)
                    if self.stop.is_set():
                        break
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()  # a generator's own cleanup (its inference context) runs now, on this thread
        except BaseException as e:  # handed to the request, which turns it into its status
            self._put(_Failure(e))
        finally:
            self.on_done(time.perf_counter() - self.t0)
            self._put(_END)

    async def get(self):
        """The next item; raises what the generation raised."""
        item = await self.queue.get()
        if isinstance(item, _Failure):
            raise item.error
        if item is _END:
            raise RuntimeError("the generation ended without a result")
        return item


class EventStream(StreamingResponse):
    """A StreamingResponse that always closes its body iterator when it ends, however it ends: a client that
    hangs up while a piece is being sent must still stop its generation and get its audit row now, not when the
    garbage collector finalizes the suspended iterator."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _usage(result) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def _audit_inputs(messages: list[dict]) -> list[str]:
    return [messages[0]["content"]] if len(messages) == 1 else [f"{m['role']}: {m['content']}" for m in messages]


# ------------------------------------------------------------------------------------------------------ routes
def add_generation_routes(app: FastAPI, *, slots: dict, settings, metrics, authorize, slot_for) -> None:
    """Register the generation routes on `app` (called by `create_app`, which owns auth and the slots)."""
    gates: dict[str, GenerationGate] = {}

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, e: OpenAIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    async def start(slot, predictor, messages: list[dict], sampling):
        """(stream, version, first item) of a started generation; 429 when the model is at its limit."""
        gate = gates.setdefault(slot.name, GenerationGate(settings.max_concurrent_generations))
        if not gate.try_acquire():
            metrics.generations_refused.labels(slot.name).inc()
            retry = gate.retry_after()
            raise OpenAIError(429, f"model {slot.name!r} is already running {gate.limit} generation(s), the "
                                   f"server's limit (serve --max-concurrent-generations); retry in {retry} s",
                              {"Retry-After": str(retry)})
        active = metrics.generations_active.labels(slot.name)
        active.inc()

        def done(seconds: float) -> None:
            gate.release(seconds)
            active.dec()

        version = getattr(predictor, "served_as", (slot.version, None))[0]
        stream = GenerationStream(predictor, messages, sampling, done).start()
        return stream, version, await next_item(stream)

    async def next_item(stream: GenerationStream):
        try:
            return await stream.get()
        except BaseException as e:
            stream.stop.set()
            raise generation_error(e) from None

    async def result_of(slot, endpoint: str, stream: GenerationStream, first):
        """The final GenerationResult (pieces skipped), its metrics observed."""
        item = first
        while isinstance(item, str):
            item = await next_item(stream)
        first_s = item.first_token_seconds if item.first_token_seconds is not None else stream.first_piece_s
        metrics.observe_generation(slot.name, endpoint, item.prompt_tokens, item.completion_tokens, first_s,
                                   item.seconds)
        return item

    async def pieces_then_result(slot, endpoint: str, stream: GenerationStream, first, sent: list):
        """Async iterator over the text pieces (each appended to `sent`), then the final result.

        Whitespace at the start is dropped and whitespace is held back until more text follows: the final text
        (`GenerationResult.text`) is stripped, and the pieces must add up to exactly it."""
        item, held = first, ""
        while isinstance(item, str):
            text = held + item if sent else item.lstrip()
            body = text.rstrip()
            held = text[len(body):]
            if body:
                sent.append(body)
                yield body
            item = await next_item(stream)
        yield await result_of(slot, endpoint, stream, item)

    # ---------------------------------------------------------------------------------- /v1/chat/completions
    @app.post("/v1/chat/completions", name="chat_completions", summary="OpenAI-compatible chat completion",
              openapi_extra=_body_schema(ChatCompletionRequest))
    async def chat_completions(request: Request):
        try:
            return await _chat(request)
        except ApiError as e:  # auth, body limits and validation too: every error in OpenAI's shape
            raise OpenAIError.of(e) from None

    async def _chat(request: Request):
        authorize(request, "predict")
        req = parse(ChatCompletionRequest, await read_json(request, settings.max_body_bytes,
                                                           settings.body_timeout_s))
        slot = chat_slot(req.model)
        note_audit(request, model=slot.name, version=slot.version)
        require_generator(slot)
        if req.n != 1:
            raise OpenAIError(422, "n: only 1 choice per request is supported; send n=1 (or leave it out) and "
                                   "repeat the request for more", param="n")
        if req.presence_penalty or req.frequency_penalty:
            raise OpenAIError(422, "presence_penalty / frequency_penalty are not supported; use "
                                   "repetition_penalty (> 1 discourages repetition)", param="presence_penalty")
        if req.logprobs:
            raise OpenAIError(422, "logprobs are not supported", param="logprobs")
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        messages = chat_messages(req.messages)
        predictor = slot.predictor  # the one that answers, even if a reload swaps the slot meanwhile
        sampling = sampling_settings(req, settings.max_new_tokens, predictor)
        note_audit(request, inputs=_audit_inputs(messages))
        stream, version, first = await start(slot, predictor, messages, sampling)
        note_audit(request, version=version)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": slot.name,
                "system_fingerprint": version}
        if not req.stream:
            result = await result_of(slot, "chat_completions", stream, first)
            note_audit(request, output=_audit_output(result))
            return JSONResponse({**head, "object": "chat.completion", "choices": [{
                "index": 0, "message": {"role": "assistant", "content": result.text}, "logprobs": None,
                "finish_reason": result.finish_reason}], "usage": _usage(result)})

        def chunk(delta: dict, finish_reason=None) -> str:
            return _sse({**head, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]})

        async def events():
            sent, result = [], None
            try:
                yield chunk({"role": "assistant", "content": ""})
                async for item in pieces_then_result(slot, "chat_completions", stream, first, sent):
                    if isinstance(item, str):
                        yield chunk({"content": item})
                    else:
                        result = item
                yield chunk({}, result.finish_reason)
                if include_usage:
                    yield _sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": _usage(result)})
                yield "data: [DONE]\n\n"
            except OpenAIError as e:  # the 200 is out: an error can only be an event (OpenAI clients raise it)
                yield _sse(e.body())
                sent.append(f"[error: {e.message}]")
            finally:
                stream.stop.set()
                note_audit(request, output=_audit_output(result, "".join(sent)))

        mark_streaming(request)
        return EventStream(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    def chat_slot(model: str | None):
        if model is not None:
            slot = slots.get(model)
            if slot is None:
                raise OpenAIError(404, f"no model named {model!r}; GET /v1/models lists the served models",
                                  param="model", code="model_not_found")
            return slot
        generators = [s for s in slots.values() if is_generator(s)]
        if len(generators) == 1:
            return generators[0]
        if not generators:
            raise OpenAIError(404, "this server serves no generation model (GET /v1/models lists what it serves)",
                              param="model", code="model_not_found")
        raise OpenAIError(422, f"model: required, this server serves several generation models "
                               f"({', '.join(s.name for s in generators)}); name one", param="model")

    # ------------------------------------------------------------------------------- /v1/models/{name}/generate
    @app.post("/v1/models/{name}/generate", name="generate", summary="Generate a reply (server-sent events)",
              openapi_extra=_body_schema(GenerateRequest))
    async def generate(name: str, request: Request):
        try:
            return await _generate(name, request)
        except OpenAIError as e:  # the shared checks raise OpenAI's shape; this route answers in the service's
            raise ApiError(e.status, e.message, e.headers) from None

    async def _generate(name: str, request: Request):
        authorize(request, "predict")
        slot = slot_for(name)
        require_generator(slot)
        req = parse(GenerateRequest, await read_json(request, settings.max_body_bytes, settings.body_timeout_s))
        if (req.prompt is None) == (req.messages is None):
            raise ApiError(422, 'send exactly one of "prompt" (a string) or "messages" (a conversation)')
        if req.prompt is not None and not req.prompt.strip():
            raise ApiError(422, "prompt: empty; send at least one non-space character")
        messages = chat_messages(req.messages or [ChatMessage(role="user", content=req.prompt)])
        predictor = slot.predictor
        sampling = sampling_settings(req, settings.max_new_tokens, predictor)
        note_audit(request, inputs=_audit_inputs(messages))
        stream, version, first = await start(slot, predictor, messages, sampling)
        note_audit(request, version=version)
        head = {"model": slot.name, "version": version}

        def final(result) -> dict:
            return {**head, "text": result.text, "finish_reason": result.finish_reason, "usage": _usage(result)}

        if not req.stream:
            result = await result_of(slot, "generate", stream, first)
            note_audit(request, output=_audit_output(result))
            return JSONResponse(final(result))

        async def events():
            sent, result = [], None
            try:
                async for item in pieces_then_result(slot, "generate", stream, first, sent):
                    if isinstance(item, str):
                        yield _sse({"text": item})
                    else:
                        result = item
                yield _sse({"done": True, **final(result)})
            except OpenAIError as e:
                yield _sse({"error": {"status": e.status, "message": e.message}})
                sent.append(f"[error: {e.message}]")
            finally:
                stream.stop.set()
                note_audit(request, output=_audit_output(result, "".join(sent)))

        mark_streaming(request)
        return EventStream(events(), media_type="text/event-stream", headers=SSE_HEADERS)


def _audit_output(result, partial: str = "") -> dict:
    """What the audit row stores as output (masked by the writer): the reply and its token counts; a stream the
    client left (or that failed) keeps what had been sent."""
    if result is None:
        return {"text": partial, "finish_reason": "incomplete"}
    return {"text": result.text, "finish_reason": result.finish_reason, "usage": _usage(result)}


def generation_error(e: BaseException) -> BaseException:
    """What a failed generation answers: a prompt over the context or a bad setting is the client's (422),
    anything else the server's (500, the traceback in the log - never the prompt); cancellation passes through."""
    from domaintune.generation.settings import PromptTooLongError

    if isinstance(e, ApiError) or not isinstance(e, Exception):
        return e
    if isinstance(e, PromptTooLongError):
        return OpenAIError(422, str(e), param="messages", code="context_length_exceeded")
    if isinstance(e, ValueError):
        return OpenAIError(422, str(e))
    log.error("generation failed (%s)", type(e).__name__, exc_info=(type(e), e, e.__traceback__))
    return OpenAIError(500, "generation failed; the server log has the details")
