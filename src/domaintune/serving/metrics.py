"""Prometheus metrics of the service, one registry per app (tests run several apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 128)
# generation on a CPU: a first token within tens of ms (short prompt) to seconds (long prompt, busy cores)
GEN_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKENS_PER_SECOND_BUCKETS = (1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500)


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
        # generation (endpoint: the route name, generate or chat_completions - never path text)
        gen = ["model", "endpoint"]
        self.first_token = Histogram("domaintune_generation_first_token_seconds", "Time to the first generated "
                                     "token (prompt processing included)", gen, buckets=GEN_SECONDS_BUCKETS,
                                     registry=r)
        self.generation_seconds = Histogram("domaintune_generation_seconds", "Seconds per generation, prompt to "
                                            "last token", gen, buckets=GEN_SECONDS_BUCKETS, registry=r)
        self.tokens_per_second = Histogram("domaintune_generation_tokens_per_second", "Generated tokens per "
                                           "second of one generation", gen, buckets=TOKENS_PER_SECOND_BUCKETS,
                                           registry=r)
        self.generated_tokens = Counter("domaintune_generated_tokens_total", "Tokens generated", gen, registry=r)
        self.prompt_tokens = Counter("domaintune_prompt_tokens_total", "Prompt tokens read by generations", gen,
                                     registry=r)
        self.generations_active = Gauge("domaintune_generations_active", "Generations running now", ["model"],
                                        registry=r)
        self.generations_refused = Counter("domaintune_generations_refused_total", "Generation requests answered "
                                           "429 because the model's concurrent generations were all taken",
                                           ["model"], registry=r)

    def observe_generation(self, model: str, endpoint: str, prompt_tokens: int, completion_tokens: int,
                           first_token_s: float | None, seconds: float) -> None:
        if first_token_s is not None:
            self.first_token.labels(model, endpoint).observe(first_token_s)
        self.generation_seconds.labels(model, endpoint).observe(seconds)
        if seconds > 0 and completion_tokens:
            self.tokens_per_second.labels(model, endpoint).observe(completion_tokens / seconds)
        self.generated_tokens.labels(model, endpoint).inc(completion_tokens)
        self.prompt_tokens.labels(model, endpoint).inc(prompt_tokens)

    def observe_batch(self, model: str, n: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(n)
        self.batch_seconds.labels(model).observe(seconds)
        self.texts.labels(model).inc(n)
