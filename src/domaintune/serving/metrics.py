"""Prometheus metrics of the service, one registry per app (tests run several apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 128)


class ServiceMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("domaintune_requests_total", "HTTP requests by model, endpoint and status code",
                                ["model", "endpoint", "code"], registry=r)
        self.errors = Counter("domaintune_errors_total", "Requests answered with a 4xx/5xx status, by code",
                              ["model", "code"], registry=r)
        self.latency = Histogram("domaintune_request_latency_seconds", "Request latency (parse to response)",
                                 ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("domaintune_batch_size", "Texts per model call (micro-batching)", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("domaintune_batch_seconds", "Seconds per model call", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("domaintune_queue_depth", "Texts waiting for the model", ["model"], registry=r)
        self.texts = Counter("domaintune_texts_total", "Texts predicted", ["model"], registry=r)
        self.audit_pending = Gauge("domaintune_audit_pending", "Audit rows queued, not yet written", registry=r)
        self.audit_failures = Counter("domaintune_audit_failures_total", "Audit rows the store did not take in "
                                      "time (unavailable: request answered 503; dropped: backlog overflow; "
                                      "queue: not queued)", ["reason"], registry=r)
        self.model_info = Gauge("domaintune_model_info", "Served models (value 1)", ["model", "version", "backend"],
                                registry=r)

    def observe_batch(self, model: str, n: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(n)
        self.batch_seconds.labels(model).observe(seconds)
        self.texts.labels(model).inc(n)
