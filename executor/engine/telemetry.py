"""Prometheus metrics of an engine: per-model queue, running sequences, KV blocks vs quota, TTFT/TPOT."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from executor.engine.sequence import Sequence

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _EngineCollector:
    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        families = {
            "queued": GaugeMetricFamily("muxplan_engine_queued_requests", "Requests waiting for prefill", labels=["model"]),
            "running": GaugeMetricFamily("muxplan_engine_running_sequences", "Sequences in prefill or decode", labels=["model"]),
            "kv_blocks_used": GaugeMetricFamily("muxplan_engine_kv_blocks_used", "Physical KV blocks held", labels=["model"]),
            "kv_blocks_quota": GaugeMetricFamily("muxplan_engine_kv_blocks_quota", "Physical KV blocks the model may hold", labels=["model"]),
        }
        for model, row in self.engine.usage().items():
            for key, family in families.items():
                family.add_metric([model], row[key])
        yield from families.values()
        pool = GaugeMetricFamily("muxplan_engine_kv_blocks_free", "Free blocks of the unit's KV pool")
        pool.add_metric([], self.engine.blocks.num_free)
        yield pool
        mech = GaugeMetricFamily("muxplan_engine_sm_mechanism", "How prefill and decode jobs share the device", labels=["mechanism"])
        mech.add_metric([self.engine.jobs.mechanism], 1)
        yield mech
        steps = GaugeMetricFamily("muxplan_engine_steps", "Jobs executed by kind", labels=["kind"])
        for kind, n in self.engine.num_steps.items():
            steps.add_metric([kind], n)
        yield steps


class Telemetry:
    def __init__(self, engine):
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine))
        self.requests = Counter("muxplan_engine_requests", "Finished or rejected requests", ["model", "finish_reason"], registry=self.registry)
        self.ttft = Histogram("muxplan_engine_ttft_seconds", "Time to first token", ["model"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.tpot = Histogram("muxplan_engine_tpot_seconds", "Time per output token after the first", ["model"], buckets=LATENCY_BUCKETS_S,
                              registry=self.registry)

    def finished(self, seq: Sequence) -> None:
        self.requests.labels(seq.model, seq.finish_reason or "unknown").inc()
        if seq.first_token_s is not None:
            self.ttft.labels(seq.model).observe(seq.first_token_s - seq.arrival_s)
            if len(seq.output_ids) > 1 and seq.finish_s is not None:
                self.tpot.labels(seq.model).observe((seq.finish_s - seq.first_token_s) / (len(seq.output_ids) - 1))

    def rejected(self, model: str) -> None:
        self.requests.labels(model, "rejected").inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
