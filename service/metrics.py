"""Prometheus metrics, in a registry of the app's own (several apps in one process do not collide).

When the service runs several worker processes, `PROMETHEUS_MULTIPROC_DIR` is set and every process
writes its values there; `render` then reports the sum over the processes (gauges: over live ones).
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("extractor_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("extractor_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.engine_latency = Histogram("extractor_engine_duration_seconds",
                                        "time an extraction spent waiting on the engine, all attempts",
                                        ["schema"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("extractor_queue_wait_seconds", "time a request waited for an in-flight slot",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.attempts = Histogram("extractor_extraction_attempts", "attempts per finished extraction",
                                  ["schema", "outcome"], buckets=(1, 2, 3, 4, 5, 8), registry=r)
        self.validation_failures = Counter("extractor_validation_failures",
                                           "engine outputs that failed validation (each one retried or final)",
                                           ["schema"], registry=r)
        self.tokens = Counter("extractor_tokens", "tokens through the engine", ["schema", "kind"], registry=r)
        self.inflight = Gauge("extractor_queue_inflight", "slots held by extracting requests (a large document holds several)", registry=r,
                              multiprocess_mode="livesum")
        self.waiting = Gauge("extractor_queue_waiting", "requests waiting for an in-flight slot", registry=r,
                             multiprocess_mode="livesum")
        self.slots = Gauge("extractor_queue_slots", "in-flight slots open now (adapted to the deadline)", registry=r,
                           multiprocess_mode="livesum")

    def queue_depth(self, inflight: int, waiting: int, slots: int) -> None:
        self.inflight.set(inflight)
        self.waiting.set(waiting)
        self.slots.set(slots)

    def extraction(self, schema: str, *, outcome: str, attempts: int, failures: int, engine_s: float,
                   prompt_tokens: int, completion_tokens: int) -> None:
        """One extraction that reached the engine: `outcome` is ok, failed (validation) or error."""
        self.attempts.labels(schema, outcome).observe(attempts)
        if failures:
            self.validation_failures.labels(schema).inc(failures)
        self.tokens.labels(schema, "prompt").inc(prompt_tokens)
        self.tokens.labels(schema, "completion").inc(completion_tokens)
        self.engine_latency.labels(schema).observe(engine_s)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            every_process = CollectorRegistry()
            multiprocess.MultiProcessCollector(every_process)  # type: ignore[no-untyped-call]
            return generate_latest(every_process)
        return generate_latest(self.registry)
