"""A deterministic toy cost model and tiny plans for the simulator tests (exact latencies by hand)."""
from __future__ import annotations

from muxplan.cluster import parse_cluster_shorthand
from muxplan.schema import PlacedModel, Plan, SolverRecord, TraceRow, Unit, Workload, WorkloadModel


class ToyCost:
    """prefill = 10 ms + 0.01 ms x batch x tokens, / SM fraction; decode = 5 ms + 0.5 ms x batch (+ ctx_ms x context)."""

    def __init__(self, ctx_ms: float = 0.0):
        self.ctx_ms = ctx_ms

    def prefill_ms(self, model, gpu, tp, sm_pct, batch, prompt_tokens):
        return (10.0 + 0.01 * batch * prompt_tokens) * 100.0 / sm_pct

    def decode_ms(self, model, gpu, tp, sm_pct, batch, context_tokens):
        return 5.0 + 0.5 * batch + self.ctx_ms * context_tokens


def placed(name: str, kv_bytes: int, prefill_sm: int = 100, decode_sm: int = 100, rate: float = 1.0, share: float = 1.0, seqs: int = 64) -> PlacedModel:
    return PlacedModel(name=name, model="llama-7b", tp=1, prefill_sm_pct=prefill_sm, decode_sm_pct=decode_sm, kv_bytes=kv_bytes,
                       max_num_seqs=seqs, routing_share=share, rate_rps=rate, predicted_rps=rate)


def make_plan(units: list[list[PlacedModel]]) -> Plan:
    cluster = parse_cluster_shorthand("1x8xA100-80GB")
    return Plan(cluster=cluster, solver=SolverRecord(method="test", objective="none", value=0.0),
                units=[Unit(id=i, node=0, gpu="A100-80GB", gpu_ids=[i], models=ms, predicted_rps=0.0) for i, ms in enumerate(units)],
                demand_rps=0.0, served_rps=0.0, num_gpus_used=len(units))


def make_workload(names: list[str], rows: list[tuple[float, str, int, int]], rates: list[float] | None = None) -> Workload:
    rates = rates or [1.0] * len(names)
    return Workload(models=[WorkloadModel(name=n, model="llama-7b", rate_rps=r) for n, r in zip(names, rates)],
                    requests=[TraceRow(arrival_s=a, model=m, prompt_tokens=p, output_tokens=o) for a, m, p, o in rows])
