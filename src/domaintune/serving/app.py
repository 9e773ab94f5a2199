"""The HTTP service: FastAPI over Predictors, with auth, limits, micro-batching, metrics and an audit log.

Endpoints (all JSON):

* `POST /v1/models/{name}/predict` - `{"text": "..."}` or `{"texts": [...]}` (pairs: `text_pair` / `text_pairs`;
  `top_k`); the task's usual prediction dicts come back.
* `POST /v1/models/{name}/explain` - per-token attributions for one text (+ an HTML snippet).
* `POST /v1/models/{name}/generate`, `POST /v1/chat/completions` (OpenAI-compatible) - text generation by a
  `task: generation` run, streamed as server-sent events (`domaintune.serving.generation_routes`).
* `GET /v1/models`, `GET /v1/models/{name}` - what is served, its version and backend (`data` entries with
  `id` and `object: "model"` too, as OpenAI clients expect).
* `GET /healthz` (process alive), `GET /readyz` (every model loaded), `GET /metrics` (Prometheus).
* `POST /v1/admin/reload` - admin scope: load a run directory and swap it in between two batches.

Why the body is read by hand instead of by a FastAPI body parameter: the size
limit must hold before a byte more than `max_body_bytes` is buffered (413),
and every malformed input - invalid JSON, invalid UTF-8, lone surrogates,
wrong types, empty strings - must become a 4xx with a message, never a 500.
The schema is still published in the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect

from domaintune.data.pii import PiiConfig
from domaintune.serving.batching import MicroBatcher, QueueFull
from domaintune.serving.docs import mount_docs
from domaintune.serving.middleware import RequestObserver, note_audit
from domaintune.serving.metrics import ServiceMetrics

log = logging.getLogger("domaintune.serving")


@dataclass
class ServeSettings:
    """Limits and switches of one service instance (`domaintune serve --help` documents each)."""

    max_batch: int = 32            # texts per model call
    max_wait_ms: float = 0.0       # extra wait for company; 0: batches form while the model is busy
    max_queue: int = 1024          # texts waiting per model before 503
    max_body_bytes: int = 1_000_000
    body_timeout_s: float = 10.0   # the whole body must arrive within this (408 + close): no slow-body hold
    max_texts: int = 256           # texts per request
    max_text_chars: int = 20_000   # characters per text (the model reads max_length tokens of it anyway)
    max_top_k: int = 50
    auth: bool = True
    backend: str = "auto"
    num_threads: int | None = None
    runs_root: Path | None = None  # admin reload may only load run directories under this folder
    pii: PiiConfig = field(default_factory=PiiConfig)
    monitor: bool = True           # drift statistics and alert rules on every prediction (--no-monitor: off)
    audit_timeout_s: float = 5.0   # a 2xx waits at most this long for its audit row; then 503 + Retry-After
    metrics_auth: bool = False     # /metrics needs a key (any scope) when True (--metrics-auth)
    docs: bool = False             # Swagger UI at /docs from the packaged swagger-ui-bundle (--docs)
    max_new_tokens: int = 512      # cap on a generation request's max_tokens (larger: 422 naming the cap)
    max_concurrent_generations: int = 2  # generations running at once per model; beyond: 429 + Retry-After
    faq_index: Path | None = None  # a `task: retrieval` run whose top entries ground every generator's prompts
    faq_top_k: int = 3


class PredictRequest(BaseModel):
    """One text or a batch; `text_pair(s)` for pair tasks."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: str | None = Field(None, description="One input text.")
    texts: list[str] | None = Field(None, description="A batch of input texts.")
    text_pair: str | None = Field(None, description="Second text of a pair (pair tasks), with `text`.")
    text_pairs: list[str] | None = Field(None, description="Second texts, one per `texts` item (pair tasks).")
    top_k: int = Field(1, description="How many labels to return per text (classification).")


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str = Field(..., description="The text to explain.")
    text_pair: str | None = None
    label: str | None = Field(None, description="Label to explain (default: the predicted one).")
    method: str = Field("auto", description="auto, ig (integrated gradients) or occlusion.")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = Field(None, description="Served model name (default: every model).")
    run_dir: str | None = Field(None, description="New run directory for `model` (default: reload the same one).")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def model_version(run_dir: Path) -> str:
    """Content-derived version: changes whenever the served files change (names, sizes, mtimes)."""
    h = hashlib.sha256()
    for p in sorted((run_dir / "model").glob("*")) + sorted((run_dir / "export").glob("*.onnx")):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


class ModelSlot:
    """One served model: its run directory, predictor, version and batcher (which owns the worker thread)."""

    def __init__(self, name: str, run_dir: Path, settings: ServeSettings, metrics: ServiceMetrics):
        self.name, self.settings, self.metrics = name, settings, metrics
        self.run_dir, self.predictor, self.version = self._load(run_dir)
        self.predictor.served_as = (self.version, self.run_dir)  # what a response answered by it reports
        self.batcher = MicroBatcher(self.predictor, name, settings.max_batch, settings.max_wait_ms, settings.max_queue,
                                    on_batch=lambda n, s: metrics.observe_batch(name, n, s))
        metrics.model_info.labels(name, self.version, self.predictor.backend).set(1)

    def _load(self, run_dir: Path):
        from domaintune.predictor import Predictor

        run_dir = Path(run_dir).resolve()
        predictor = Predictor(run_dir, batch_size=self.settings.max_batch, num_threads=self.settings.num_threads,
                              backend=self.settings.backend)
        if predictor.is_generator and self.settings.faq_index is not None:  # grounded answers (serve --faq-index)
            predictor.use_faq(self.settings.faq_index, self.settings.faq_top_k)
        return run_dir, predictor, model_version(run_dir)

    def reload(self, run_dir: Path | None = None) -> dict:
        """Load (slow, off the batcher) then swap between two batches: no request is dropped or fails."""
        new_dir, predictor, version = self._load(run_dir or self.run_dir)
        predictor.served_as = (version, new_dir)
        old = self.version
        self.batcher.swap(predictor)
        self.metrics.model_info.remove(self.name, old, self.predictor.backend)
        self.run_dir, self.predictor, self.version = new_dir, predictor, version
        self.metrics.model_info.labels(self.name, version, predictor.backend).set(1)
        return {"model": self.name, "version": version, "previous_version": old, "run_dir": str(new_dir)}

    def info(self) -> dict:
        """What is served; `id`, `object`, `created` and `owned_by` are OpenAI's model fields (its clients list
        and retrieve models through these routes)."""
        p = self.predictor
        return {"id": self.name, "object": "model", "created": int(self.run_dir.stat().st_mtime),
                "owned_by": "domaintune", "name": self.name, "task": p.task.name, "version": self.version,
                "backend": p.backend, "labels": list(p.labels or []), "run": self.run_dir.name,
                "generator": bool(getattr(p, "is_generator", False))}


def _problem(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status, headers=headers)


async def read_json(request: Request, limit: int, timeout_s: float, allow_empty: bool = False) -> object:
    """The body as JSON, whatever its framing (content-length or chunked), with every failure a 4xx:

    * more than `limit` bytes -> 413 before they are buffered;
    * not all of it within `timeout_s` -> 408 and the connection closed: a client holding a valid key must not
      keep a connection, a task and its buffers alive by trickling bytes (slowloris);
    * the client hangs up mid-body -> nobody is left to answer: one info line and a 499 (nginx's "client
      closed request"), never a 500 with tracebacks in the log and the error metric;
    * bad UTF-8 or JSON of any kind (including an integer over Python's digit limit, a ValueError that is not a
      JSONDecodeError, and nesting deep enough for a RecursionError) -> 422;
    * empty -> `{}` with `allow_empty` (optional bodies), else 422.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {limit} (send fewer or shorter texts)")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"request body exceeds {limit} bytes (send fewer or shorter texts)")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, f"request body incomplete after {timeout_s:g} s ({size} bytes received); send the whole "
                            f"body at once", {"Connection": "close"}) from None
    except ClientDisconnect:
        log.info("client disconnected after sending %d of %s body bytes to %s %s; no reply sent", size,
                 declared or "?", request.method, request.url.path)
        raise ApiError(499, "client closed the connection before sending the whole body") from None
    body = b"".join(chunks)
    if not body:
        if allow_empty:
            return {}
        raise ApiError(422, 'empty body: send JSON such as {"text": "..."}')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(422, f"body is not valid UTF-8 (byte {e.start}); encode the JSON as UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(422, f"body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise ApiError(422, "body is not valid JSON: nested too deeply") from None
    except ValueError as e:  # int("9" * 5000) in the parser: over sys.get_int_max_str_digits()
        what = (f"a number has more than {sys.get_int_max_str_digits()} digits; send numbers of ordinary size"
                if "integer string conversion" in str(e) else str(e))
        raise ApiError(422, f"body is not valid JSON: {what}") from None


def parse(model_cls, payload):
    if not isinstance(payload, dict):
        raise ApiError(422, f"body must be a JSON object, got {type(payload).__name__}")
    try:
        return model_cls.model_validate(payload)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "body"
        raise ApiError(422, f"{where}: {first.get('msg')} ({len(e.errors())} problem(s))") from None


def check_pairing(takes_pairs: bool, has_pair: bool, pair_field: str) -> None:
    """A pair model needs its second text, a single-text model must not get one (`Predictor.pair_input`).

    Why refuse rather than ignore: a stray `text_pair` would be encoded as a second segment that the model
    never saw in training and change its answer without a word; a missing one would fail the whole
    micro-batch that the request shares with other clients' requests."""
    if has_pair and not takes_pairs:
        raise ApiError(422, f'{pair_field}: this model takes single texts, not pairs; send "text"/"texts" alone')
    if takes_pairs and not has_pair:
        raise ApiError(422, f'{pair_field}: missing; this model compares two texts: send "{pair_field}" '
                            f'with the second text of each pair')


def check_text(where: str, t: str, max_chars: int) -> str:
    if not t.strip():
        raise ApiError(422, f"{where}: empty text; send at least one non-space character")
    if len(t) > max_chars:
        raise ApiError(413, f"{where}: text has {len(t)} characters; the limit is {max_chars}")
    try:
        t.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(422, f"{where}: text contains an unpaired surrogate (\\ud800-\\udfff); send valid Unicode") from None
    return t


def predict_inputs(req: PredictRequest, s: ServeSettings, takes_pairs: bool = False) -> tuple[list, bool]:
    """(inputs for Predictor.predict, single?) after every limit check; `takes_pairs`: the model's
    `Predictor.pair_input` (see check_pairing)."""
    if (req.text is None) == (req.texts is None):
        raise ApiError(422, 'send exactly one of "text" (a string) or "texts" (a list of strings)')
    if not 1 <= req.top_k <= s.max_top_k:
        raise ApiError(422, f"top_k: must be between 1 and {s.max_top_k}")
    if req.text is not None:
        if req.text_pairs is not None:
            raise ApiError(422, 'use "text_pair" with "text" ("text_pairs" goes with "texts")')
        check_pairing(takes_pairs, req.text_pair is not None, "text_pair")
        text = check_text("text", req.text, s.max_text_chars)
        if req.text_pair is not None:
            return [(text, check_text("text_pair", req.text_pair, s.max_text_chars))], True
        return [text], True
    if req.text_pair is not None:
        raise ApiError(422, 'use "text_pairs" with "texts" ("text_pair" goes with "text")')
    check_pairing(takes_pairs, req.text_pairs is not None, "text_pairs")
    if not req.texts:
        raise ApiError(422, "texts: empty list; send at least one text")
    if len(req.texts) > s.max_texts:
        raise ApiError(413, f"texts: {len(req.texts)} texts in one request; the limit is {s.max_texts}")
    texts = [check_text(f"texts.{i}", t, s.max_text_chars) for i, t in enumerate(req.texts)]
    if req.text_pairs is not None:
        if len(req.text_pairs) != len(texts):
            raise ApiError(422, f"text_pairs: {len(req.text_pairs)} items for {len(texts)} texts; give one per text")
        return [(a, check_text(f"text_pairs.{i}", b, s.max_text_chars)) for i, (a, b) in
                enumerate(zip(texts, req.text_pairs))], False
    return texts, False


def _raw_texts(inputs: list) -> list[str]:
    return [x if isinstance(x, str) else f"{x[0]}\n{x[1]}" for x in inputs]


def create_app(slots: dict[str, ModelSlot], settings: ServeSettings, metrics: ServiceMetrics, keystore=None,
               audit=None, on_shutdown=None, monitor=None) -> FastAPI:
    """The FastAPI app over already-loaded model slots (see `domaintune.serving.server.build_service`).

    `monitor`: a `domaintune.monitoring.online.MonitorHub` fed every prediction (O(1) per request)."""
    from domaintune.serving.keys import RateLimiter

    limiter = RateLimiter()
    explain_lock = asyncio.Lock()  # explanations run tens of forward passes: one at a time

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if on_shutdown is not None:
            await asyncio.get_running_loop().run_in_executor(None, on_shutdown)

    # docs_url=None: FastAPI's default /docs page loads Swagger UI from a CDN, which is broken offline and
    # lets a third party run script on the service's origin; `--docs` serves the packaged copy instead.
    app = FastAPI(title="domaintune", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Predictions, explanations and health of fine-tuned domaintune runs.")
    app.state.slots, app.state.settings, app.state.metrics = slots, settings, metrics

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return _problem(e.status, e.message, e.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):  # the message stays in the server log, not the reply
        log.exception("unhandled error on %s", request.url.path)
        return _problem(500, "internal error; the server log has the details")

    if audit is not None and audit.on_failure is None:
        audit.on_failure = lambda reason: metrics.audit_failures.labels(reason).inc()
    app.add_middleware(RequestObserver, metrics=metrics, audit=audit, models=slots,
                       audit_timeout_s=settings.audit_timeout_s)
    if settings.docs:
        mount_docs(app)

    def authorize(request: Request, scope: str):
        """The key's record; 401 without a valid key, 403 without the scope, 429 over its rate limit."""
        if not settings.auth:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        record = keystore.verify(key.strip()) if scheme.lower() == "bearer" and key.strip() else None
        if record is None:
            raise ApiError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                           {"WWW-Authenticate": "Bearer"})
        note_audit(request, key_name=record.name)
        if not record.allows(scope):
            raise ApiError(403, f"this key's scope does not allow {scope}")
        ok, retry = limiter.allow(record.key_id, record.rate_limit_per_minute)
        if not ok:
            raise ApiError(429, "rate limit exceeded for this key", {"Retry-After": str(max(1, round(retry + 0.5)))})
        return record

    def slot_for(name: str) -> ModelSlot:
        slot = slots.get(name)
        if slot is None:
            raise ApiError(404, f"no model named {name!r}; GET /v1/models lists the served models")
        return slot

    def classifier_for(name: str) -> ModelSlot:
        """predict/explain: a generation model answers with text, not predictions (422 naming its routes)."""
        slot = slot_for(name)
        if getattr(slot.predictor, "is_generator", False):
            raise ApiError(422, f"model {name!r} generates text; use POST /v1/models/{name}/generate or "
                                f"POST /v1/chat/completions")
        return slot

    def audit_record(request, slot, endpoint, inputs, output, version=None):
        """What the audit row of this request says (written by RequestObserver, whatever the status)."""
        note_audit(request, model=slot.name, version=version or slot.version, inputs=_raw_texts(inputs),
                   output=output)

    predict_schema = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": PredictRequest.model_json_schema()}}}}

    @app.post("/v1/models/{name}/predict", openapi_extra=predict_schema, summary="Predict one text or a batch")
    async def predict(name: str, request: Request):
        t0 = time.perf_counter()
        key = authorize(request, "predict")
        slot = classifier_for(name)
        req = parse(PredictRequest, await read_json(request, settings.max_body_bytes, settings.body_timeout_s))
        inputs, single = predict_inputs(req, settings, slot.predictor.pair_input)
        try:
            preds, used = await slot.batcher.submit(inputs, req.top_k, with_predictor=True)
        except QueueFull as e:
            audit_record(request, slot, "predict", inputs, None)
            raise ApiError(503, "server busy: the request queue is full; retry later",
                           {"Retry-After": str(max(1, int(e.retry_after + 0.5)))}) from None
        # the version of the model that answered, not the slot's: a swap may land between the two
        version, run_dir = getattr(used, "served_as", (slot.version, slot.run_dir))
        body = {"model": slot.name, "version": version}
        body.update({"prediction": preds[0]} if single else {"predictions": preds})
        audit_record(request, slot, "predict", inputs, preds[0] if single else preds, version=version)
        if monitor is not None:
            monitor.observe(slot.name, version, run_dir, inputs, preds)
        return JSONResponse(body)

    @app.post("/v1/models/{name}/explain", summary="Per-token attributions for one text",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": ExplainRequest.model_json_schema()}}}})
    async def explain(name: str, request: Request):
        from domaintune.explain import explain as run_explain

        t0 = time.perf_counter()
        key = authorize(request, "predict")
        slot = classifier_for(name)
        req = parse(ExplainRequest, await read_json(request, settings.max_body_bytes, settings.body_timeout_s))
        predictor = slot.predictor
        text = check_text("text", req.text, settings.max_text_chars)
        check_pairing(predictor.pair_input, req.text_pair is not None, "text_pair")
        text_pair = None if req.text_pair is None else check_text("text_pair", req.text_pair, settings.max_text_chars)
        if req.method not in ("auto", "ig", "occlusion"):
            raise ApiError(422, "method: use auto, ig or occlusion")
        async with explain_lock:
            try:
                result = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: run_explain(predictor, text, target=req.label, method=req.method,
                                              text_pair=text_pair))
            except ValueError as e:
                raise ApiError(422, str(e)) from None
        audit_record(request, slot, "explain", [text],
                     {k: result[k] for k in ("label", "score", "method") if k in result})
        return JSONResponse({"model": slot.name, "version": slot.version, **result})

    from domaintune.serving.generation_routes import add_generation_routes

    add_generation_routes(app, slots=slots, settings=settings, metrics=metrics, authorize=authorize,
                          slot_for=slot_for)

    def get(path: str, **kw):
        """A GET route that answers HEAD too (uvicorn sends the headers without the body): load balancers and
        uptime probes (`curl -I`) use HEAD, and a 405 reads as "down". HEAD stays out of the OpenAPI document."""
        def register(fn):
            app.head(path, include_in_schema=False)(fn)
            return app.get(path, **kw)(fn)
        return register

    @get("/v1/models", summary="Served models")
    async def list_models(request: Request):
        authorize(request, "predict")
        infos = [s.info() for s in slots.values()]
        return {"object": "list", "data": infos, "models": infos}  # data: OpenAI's list shape; models: ours

    @get("/v1/models/{name}", summary="One served model")
    async def model_info(name: str, request: Request):
        authorize(request, "predict")
        return slot_for(name).info()

    @app.post("/v1/admin/reload", summary="Swap in a run directory without dropping requests (admin scope)",
              openapi_extra={"requestBody": {"required": False, "content": {"application/json": {
                  "schema": ReloadRequest.model_json_schema()}}}})
    async def reload(request: Request):
        authorize(request, "admin")
        # the body is optional, whatever its framing: a chunked body has no content-length but is still the order
        req = parse(ReloadRequest, await read_json(request, settings.max_body_bytes, settings.body_timeout_s,
                                                   allow_empty=True))
        targets = [slot_for(req.model)] if req.model else list(slots.values())
        if req.run_dir and not req.model:
            raise ApiError(422, "run_dir needs model: say which served model it replaces")
        note_audit(request, model=req.model or "_service", inputs=[json.dumps(req.model_dump(), ensure_ascii=False)])
        new_dir = safe_run_dir(req.run_dir, settings) if req.run_dir else None
        loop = asyncio.get_running_loop()
        try:
            done = [await loop.run_in_executor(None, slot.reload, new_dir) for slot in targets]
        except (OSError, ValueError) as e:  # missing/unreadable files (transformers raises OSError), bad config
            raise ApiError(422, f"reload failed, still serving the previous version: {e}") from None
        note_audit(request, output=done)
        return {"reloaded": done}

    @get("/healthz", summary="Liveness")
    async def healthz():
        return {"status": "ok"}

    @get("/readyz", summary="Readiness: every model loaded and its worker alive")
    async def readyz():
        dead = [n for n, s in slots.items() if not s.batcher.alive]
        if dead:
            return _problem(503, f"model worker(s) not running: {', '.join(dead)}")
        return {"status": "ready", "models": list(slots)}

    @get("/metrics", name="metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics_endpoint(request: Request):
        """Rendered on a worker thread: a large registry must not stall predictions on the event loop."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if settings.metrics_auth:
            authorize(request, "predict")  # any valid key; admin keys too
        for n, s in slots.items():
            metrics.queue_depth.labels(n).set(s.batcher.depth)
        if audit is not None:
            metrics.audit_pending.set(audit.pending())
        body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, metrics.registry)
        return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)

    return app


def safe_run_dir(path: str, settings: ServeSettings) -> Path:
    """A reload target must be a run directory inside `runs_root` (no `..` escapes, no symlink tricks)."""
    root = (settings.runs_root or Path.cwd()).resolve()
    target = Path(path)
    target = (target if target.is_absolute() else root / target).resolve()
    if target != root and root not in target.parents:
        raise ApiError(403, f"run_dir must be inside the server's runs root {root}")
    if not (target / "model").is_dir():
        raise ApiError(422, f"{target.name}: not a run directory (no model/ folder)")
    return target
