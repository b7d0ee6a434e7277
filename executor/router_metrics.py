"""The router's Prometheus metrics. Labels are served model names only: every name the plan does not
serve counts under ``UNKNOWN`` and bodies without a readable model under ``INVALID``, so clients cannot
grow the label set.

An admitted request is described by one ``Finished`` record, filled in along its way and handed to
``RouterMetrics.finished`` once at its end: the one place where a finished request's model, arrival,
sizes, length bounds, timings and status are all known (a traffic recorder hooks in there). Records are
folded into the counters and histograms at the next scrape or once ``FLUSH_AT`` wait: prometheus_client
takes a lock per increment, and a request's nine increments were a tenth of the router's CPU. The histograms
are plain per-model counts (``Histograms``, exported in Prometheus's histogram format): folding a record into
prometheus_client's took two locks and a Python walk over the buckets per value, a quarter of the fast path's CPU.

Client connections (open, the cap, refused and evicted at the cap: executor.router_refusal) are read from
the router's own server at scrape time, when the app runs on it (``watch_server``); they have no labels.
"""
from __future__ import annotations

import math
import time
from bisect import bisect_left

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

UNKNOWN = "_unknown"
INVALID = "_invalid"
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)  # prometheus_client's default
_BYTES = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
_TPOT = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
FLUSH_AT = 1024


class Finished:
    """One admitted request as the router saw it. ``start`` is perf_counter at arrival, ``arrived`` the wall
    clock; ``prompt_tokens_min`` and ``max_tokens`` come from the body (router_request.Parsed); ``headers_s``,
    ``ttft_s`` and ``tpot_s`` stay None when no backend answered or nothing was streamed. ``stream_events`` counts
    the ``data:`` events relayed ([DONE] included); output tokens of plain answers are in their ``usage``."""

    __slots__ = ("model", "start", "arrived", "request_bytes", "prompt_tokens_min", "max_tokens", "stream", "status",
                 "response_bytes", "headers_s", "ttft_s", "tpot_s", "stream_events")

    def __init__(self, model: str, start: float, request_bytes: int, parsed):
        self.model, self.start, self.arrived, self.request_bytes = model, start, time.time(), request_bytes
        self.prompt_tokens_min, self.max_tokens, self.stream = parsed.prompt_tokens_min, parsed.max_tokens, parsed.stream
        self.status, self.response_bytes, self.stream_events = 500, 0, 0
        self.headers_s = self.ttft_s = self.tpot_s = None


class RouterMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, models: list[str], predicted_rps: dict[str, float]):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("muxplan_router_requests", "Requests by model and status", ["model", "status"], registry=r)
        self.latency = Histograms("muxplan_router_latency_seconds", "Time to the backend's response headers", _SECONDS, models)
        self.ttft = Histograms("muxplan_router_ttft_seconds", "Time to the first streamed chunk", _SECONDS, models)
        self.tpot = Histograms("muxplan_router_tpot_seconds", "Time per output token (streamed event) after the first", _TPOT, models)
        self.request_bytes = Histograms("muxplan_router_request_bytes", "Request body size", _BYTES, models)
        self.response_bytes = Histograms("muxplan_router_response_bytes", "Response body size", _BYTES, models)
        for h in (self.latency, self.ttft, self.tpot, self.request_bytes, self.response_bytes):
            r.register(h)
        self.retries = Counter("muxplan_router_retries", "Requests retried on another replica (failed before headers)", ["model"], registry=r)
        self.failovers = Counter("muxplan_router_failovers", "Retried requests that another replica answered", ["model"], registry=r)
        self.replica_failures = Counter("muxplan_router_replica_failures", "Replicas marked down by a failed request or probe",
                                        ["model"], registry=r)
        self.stream_errors = Counter("muxplan_router_stream_errors", "Streams ended by an error event (backend cut the stream)",
                                     ["model"], registry=r)
        self.disconnects = Counter("muxplan_router_client_disconnects", "Clients gone before their response ended", ["model"], registry=r)
        self.in_flight = Gauge("muxplan_router_in_flight", "Requests in flight", ["model"], registry=r)
        self.queued = Gauge("muxplan_router_queued", "Requests waiting for an admission slot", ["model"], registry=r)
        self.quota = Gauge("muxplan_router_admission_quota", "Admission quota (in-flight requests)", ["model"], registry=r)
        self.predicted = Gauge("muxplan_plan_predicted_rps", "The plan's predicted throughput", ["model"], registry=r)
        self.healthy = Gauge("muxplan_router_healthy_replicas", "Healthy replicas", ["model"], registry=r)
        for model, rps in predicted_rps.items():
            self.predicted.labels(model).set(rps)
        self._status: dict[tuple[str, int], object] = {}
        self.pending: list[Finished] = []
        # label children resolved once: .labels() costs microseconds on every request otherwise
        self.per_model = {m: {name: getattr(self, name).labels(m) for name in (
            "retries", "failovers", "replica_failures", "stream_errors", "disconnects", "in_flight", "queued")} for m in models}

    def watch_server(self, server) -> None:
        """Export executor.router_server.Server's connection counts (read at each scrape, nothing per connection)."""
        self.registry.register(ConnectionCollector(server))

    def count(self, model: str, status: int, n: int = 1) -> None:
        child = self._status.get((model, status))
        if child is None:
            child = self._status[(model, status)] = self.requests.labels(model, str(status))
        child.inc(n)

    def finished(self, rec: Finished) -> None:
        self.pending.append(rec)
        if len(self.pending) >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        statuses: dict[tuple[str, int], int] = {}
        for r in pending:
            key = (r.model, r.status)
            statuses[key] = statuses.get(key, 0) + 1
            self.request_bytes.observe(r.model, r.request_bytes)
            if r.headers_s is not None:
                self.latency.observe(r.model, r.headers_s)
                self.response_bytes.observe(r.model, r.response_bytes)
            if r.ttft_s is not None:
                self.ttft.observe(r.model, r.ttft_s)
            if r.tpot_s is not None:
                self.tpot.observe(r.model, r.tpot_s)
        for (model, status), n in statuses.items():
            self.count(model, status, n)

    def render(self) -> bytes:
        self.flush()
        return generate_latest(self.registry)


class Histograms:
    """One histogram per model as plain bucket counts (``le`` as Prometheus's: a value counts in the first bucket
    whose bound is at least the value); a collector for the registry."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], models: list[str]):
        self.name, self.documentation = name, documentation
        self.bounds = [float(b) for b in buckets] + [math.inf]
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}
        for m in models:  # every served model exports its zeros from the start, as labelled prometheus_client children did
            self._new(m)

    def _new(self, model: str) -> list[int]:
        self.sums[model] = 0.0
        counts = self.counts[model] = [0] * len(self.bounds)
        return counts

    def observe(self, model: str, value: float) -> None:
        counts = self.counts.get(model) or self._new(model)
        counts[bisect_left(self.bounds, value)] += 1
        self.sums[model] += value

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation, labels=["model"])
        for model, counts in self.counts.items():
            total, buckets = 0, []
            for bound, n in zip(self.bounds, counts):
                total += n
                buckets.append((floatToGoString(bound), total))
            family.add_metric([model], buckets, self.sums[model])
        yield family


class ConnectionCollector:
    def __init__(self, server):
        self.server = server

    def collect(self):
        s = self.server
        yield GaugeMetricFamily("muxplan_router_client_connections", "Open client connections (idle keep-alive ones included)",
                                value=len(s.conns))
        yield GaugeMetricFamily("muxplan_router_client_connections_max", "The cap on open client connections",
                                value=s.limits.max_connections)
        yield CounterMetricFamily("muxplan_router_connections_refused", "Connections answered 503 at the cap (none idle to close)",
                                  value=s.num_refused)
        yield CounterMetricFamily("muxplan_router_idle_connections_evicted", "Idle keep-alive connections closed to admit one at the cap",
                                  value=s.num_evicted)
