"""One pure-ASGI middleware for what every request needs: bounded metrics and an audit row.

Why one place and not per endpoint: "every request is audited, whatever its status" and "no
metric label holds user text" are properties of the service, not of an endpoint. A 401 raised
by `authorize`, a 413 from the body reader, a 422 from validation, a 429, a 500 from a bug and
an admin reload all pass through here, so none of them can be forgotten.

* **Metrics labels are bounded.** `endpoint` is the name of the matched route (one per
  registered route: predict, explain, generate, chat_completions, list_models, model_info,
  reload, healthz, readyz, metrics, openapi, docs); a path that matches no route counts as
  `_unmatched`, whatever its text. `model` is a served model's name or `_unknown` / `_service`
  (a route without the name in its path, `/v1/chat/completions`, gets the served model its
  handler resolved through `note_audit`). So 10,000 requests to random paths add no series,
  and no path text (e-mails, phone numbers) reaches `/metrics`.
* **A 2xx is sent only after its audit row is durable.** The response's start and body
  messages are held back; the row is handed to the audit writer, and only when the writer has
  committed it (`AuditLog.record(..., durable=True)` returns a future) are they released. If
  the store cannot take the row within `ServeSettings.audit_timeout_s`, the client gets 503
  with Retry-After instead of the prediction - an acknowledged request is never missing from
  the audit, even after kill -9. Error responses (4xx/5xx) are sent at once and audited
  without waiting: nothing was acknowledged.
* **Except a stream.** A streamed 2xx (server-sent events of a generation, marked by its
  handler with `mark_streaming`) cannot be held: its pieces must reach the client as they are
  made, so it passes through untouched and its row - the whole prompt and output, masked - is
  written when the stream has ended. Such a row is queued, not awaited: nothing is left to
  refuse once the stream is out, and a crash mid-stream loses the row of an answer that never
  finished.
* What is audited: every request to a `/v1/...` route, and any error status on the other
  routes (e.g. a `/metrics` scrape refused with 401). Requests to paths that match no route
  are counted, not audited (a scanner must not be able to fill the audit disk with 404s).

Handlers add what they know through `note_audit(request, ...)` (model, version, inputs,
output); `authorize` notes the key's name as soon as the key is verified, so a 403 or 429
carries it too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping

log = logging.getLogger("domaintune.serving")

AUDIT_STATE = "domaintune_audit"  # key in the ASGI scope's "state" dict (Starlette's request.state)
STREAM_STATE = "domaintune_streaming"  # set by a handler whose 2xx is a stream (never held, audited at its end)


def note_audit(request, **fields) -> None:
    """Attach audit fields (key_name, model, version, inputs, output) to the current request."""
    state = request.scope.setdefault("state", {})
    state.setdefault(AUDIT_STATE, {}).update(fields)


def mark_streaming(request) -> None:
    """This request's 2xx is a stream: pass it through unheld and audit it once it has ended (module docstring)."""
    request.scope.setdefault("state", {})[STREAM_STATE] = True


def _streaming(scope) -> bool:
    return bool((scope.get("state") or {}).get(STREAM_STATE))


def _route_of(scope) -> tuple[str, str | None, bool]:
    """(endpoint label, model name from the path or None, route matched?) after the app has routed the request."""
    route = scope.get("route")
    if route is None:
        return "_unmatched", None, False
    name = getattr(route, "name", None) or "_route"
    model = (scope.get("path_params") or {}).get("name")
    return name, model, True


class RequestObserver:
    """Metrics for every request, an audit row for every audited one; a 2xx waits for its row to be durable."""

    def __init__(self, app, *, metrics, audit, models: Mapping, audit_timeout_s: float = 5.0):
        self.app, self.metrics, self.audit, self.models = app, metrics, audit, models
        self.audit_timeout_s = audit_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status: list[int | None] = [None]
        held: list[dict] = []

        async def hold_2xx(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if (self.audit is not None and 200 <= message["status"] < 300 and _audited(scope, message["status"])
                        and not _streaming(scope)):
                    held.append(message)
                    return
            elif held:
                held.append(message)
                return
            await send(message)

        try:
            await self.app(scope, receive, hold_2xx)
        except BaseException:
            code = status[0] if status[0] is not None and not held else 500
            self._audit(scope, code, t0, durable=False)
            self._count(scope, code, t0)
            raise
        code = status[0] or 500
        if held:
            if await self._audit_durably(scope, code, t0):
                for message in held:
                    await send(message)
            else:
                code = 503
                await _send_503(send, self.audit_timeout_s)
        else:
            self._audit(scope, code, t0, durable=False)
        self._count(scope, code, t0)

    def _labels(self, scope) -> tuple[str, str]:
        """(endpoint, model) labels: a route name, and a served model's name, `_unknown` or `_service`."""
        endpoint, model, _ = _route_of(scope)
        if model is None:  # a handler may have resolved a served model from the body (chat completions)
            noted = ((scope.get("state") or {}).get(AUDIT_STATE) or {}).get("model")
            return endpoint, (noted if isinstance(noted, str) and noted in self.models else "_service")
        return endpoint, (model if model in self.models else "_unknown")

    def _count(self, scope, code: int, t0: float) -> None:
        endpoint, model = self._labels(scope)
        code_s = str(code)
        self.metrics.requests.labels(model, endpoint, code_s).inc()
        if code >= 400:
            self.metrics.errors.labels(model, code_s).inc()
        self.metrics.latency.labels(model, endpoint).observe(time.perf_counter() - t0)

    def _row(self, scope, code: int, t0: float) -> dict | None:
        if self.audit is None or not _audited(scope, code):
            return None
        endpoint, label = self._labels(scope)
        fields = dict((scope.get("state") or {}).get(AUDIT_STATE) or {})
        model = fields.pop("model", None) or label  # an unknown model's name (user text) is never stored
        inputs = fields.pop("inputs", None) or []
        return {"key_name": fields.pop("key_name", None), "model": model, "version": fields.pop("version", None),
                "endpoint": endpoint[:16], "inputs": [str(x) for x in inputs], "output": fields.pop("output", None),
                "latency_ms": 1000 * (time.perf_counter() - t0), "status": code}

    def _audit(self, scope, code: int, t0: float, durable: bool):
        row = self._row(scope, code, t0)
        if row is None:
            return None
        try:
            return self.audit.record(**row, durable=durable)
        except Exception as e:  # a full queue or a closed log must not turn an error reply into a crash
            log.warning("audit row not queued (%s); counted in domaintune_audit_failures_total", type(e).__name__)
            self.metrics.audit_failures.labels("queue").inc()
            return None

    async def _audit_durably(self, scope, code: int, t0: float) -> bool:
        future = self._audit(scope, code, t0, durable=True)
        if future is None:
            return False
        try:
            # the writer resolves the future within audit_timeout_s (it fails it itself past the deadline);
            # the outer wait is only a backstop against a writer stuck inside a database driver call
            await asyncio.wait_for(asyncio.wrap_future(future), self.audit_timeout_s * 2 + 5)
            return True
        except Exception as e:
            self.metrics.audit_failures.labels("unavailable").inc()
            log.warning("audit store did not take a row in time (%s): answering 503 instead of %d",
                        type(e).__name__, code)
            return False


def _audited(scope, code: int) -> bool:
    endpoint, _, matched = _route_of(scope)
    if not matched:
        return False
    return scope.get("path", "").startswith("/v1/") or code >= 400


async def _send_503(send, retry_after: float) -> None:
    body = json.dumps({"error": {"status": 503, "message": "the audit log cannot record this request right now, "
                                 "so it was not answered; retry later"}}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(max(1, round(retry_after))).encode())]})
    await send({"type": "http.response.body", "body": body})
