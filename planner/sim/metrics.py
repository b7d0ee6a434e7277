"""Summaries of a simulation: throughput, TTFT/TPOT percentiles and SLO attainment per model and overall.

SLO at scale k: a request meets it when its end-to-end latency <= k x its isolated latency (batch 1,
full GPUs). A model whose workload Slo sets absolute ``ttft_ms``/``tpot_ms`` is judged on those instead,
scaled by k / Slo.scale (so k = Slo.scale means exactly the targets). Dropped requests never meet it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from muxplan.schema import Workload
from planner.sim.engine import SimResult

PERCENTILES = (50, 90, 99)
UNFINISHED = "unfinished at the horizon"
SHED = "shed: above the rate the plan admits"


@dataclass(frozen=True)
class Stats:
    name: str
    num_requests: int
    num_finished: int
    num_dropped: int
    num_unfinished: int
    num_shed: int
    num_preemptions: int
    throughput_rps: float
    ttft_ms: tuple[float, float, float]
    tpot_ms: tuple[float, float, float]
    slo_attainment: float


@dataclass(frozen=True)
class Summary:
    policy: str
    rate_scale: float
    slo_scale: float
    span_s: float
    overall: Stats
    models: tuple[Stats, ...]
    drop_reasons: dict[str, int]
    num_decode_steps: int
    wall_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def latency_columns(result: SimResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(TTFT s, TPOT s, end-to-end s) per request; NaN where the request did not finish."""
    r = result.records
    ttft = r["first_token_s"] - r["arrival_s"]
    e2e = r["finish_s"] - r["arrival_s"]
    steps = np.maximum(r["output_tokens"] - 1, 1)
    tpot = np.where(r["output_tokens"] > 1, (r["finish_s"] - r["first_token_s"]) / steps, 0.0)
    return ttft, tpot, e2e


def slo_met(result: SimResult, workload: Workload, slo_scale: float) -> np.ndarray:
    """Boolean per request: finished within the SLO at ``slo_scale`` (see module docstring)."""
    r = result.records
    ttft, tpot, e2e = latency_columns(result)
    finished = np.isfinite(r["finish_s"])
    met = finished & (e2e <= slo_scale * r["isolated_latency_s"] + 1e-9)
    for m, wm in enumerate(workload.models):
        slo = wm.slo
        if slo.ttft_ms is None and slo.tpot_ms is None:
            continue
        sel = r["model"] == m
        ok = finished[sel].copy()
        factor = slo_scale / slo.scale
        if slo.ttft_ms is not None:
            ok &= ttft[sel] <= slo.ttft_ms / 1e3 * factor
        if slo.tpot_ms is not None:
            ok &= tpot[sel] <= slo.tpot_ms / 1e3 * factor
        met[sel] = ok
    return met


def attainment_curve(result: SimResult, workload: Workload, slo_scales) -> np.ndarray:
    """Fraction of all requests meeting the SLO at each scale."""
    n = max(result.records["request"].size, 1)
    return np.array([slo_met(result, workload, k).sum() / n for k in slo_scales])


def _pcts(values: np.ndarray) -> tuple[float, float, float]:
    values = values[np.isfinite(values)]
    if not values.size:
        return (float("nan"),) * 3
    return tuple(float(v) * 1e3 for v in np.percentile(values, PERCENTILES))


def _stats(name: str, sel: np.ndarray, result: SimResult, met: np.ndarray, span_s: float) -> Stats:
    r = result.records
    ttft, tpot, _ = latency_columns(result)
    finished = np.isfinite(r["finish_s"]) & sel
    multi = finished & (r["output_tokens"] > 1)
    n = int(sel.sum())
    return Stats(
        name=name, num_requests=n, num_finished=int(finished.sum()), num_dropped=int((sel & (r["dropped"] != "")).sum()),
        num_unfinished=int((sel & (r["dropped"] == UNFINISHED)).sum()), num_shed=int((sel & (r["dropped"] == SHED)).sum()),
        num_preemptions=int(r["preemptions"][sel].sum()), throughput_rps=float(finished.sum() / span_s) if span_s > 0 else 0.0,
        ttft_ms=_pcts(ttft[finished]), tpot_ms=_pcts(tpot[multi]), slo_attainment=float(met[sel].sum() / n) if n else 1.0,
    )


def summarize(result: SimResult, workload: Workload, slo_scale: float | None = None) -> Summary:
    """Per-model and overall statistics; throughput is requests served per second of the arrival window (first to
    last arrival; first arrival to last finish for a single burst), so a backlog drained after the window does not
    dilute it."""
    r = result.records
    k = slo_scale if slo_scale is not None else workload.models[0].slo.scale
    met = slo_met(result, workload, k)
    finished = np.isfinite(r["finish_s"])
    span = float(np.max(r["arrival_s"]) - np.min(r["arrival_s"])) if r["arrival_s"].size > 1 else 0.0
    if span <= 0 and finished.any():  # one burst: no arrival window, so first arrival .. last finish
        span = float(np.max(r["finish_s"][finished]) - np.min(r["arrival_s"]))
    everyone = np.ones(r["request"].size, dtype=bool)
    models = tuple(_stats(name, r["model"] == m, result, met, span) for m, name in enumerate(result.model_names))
    reasons, counts = np.unique(r["dropped"][r["dropped"] != ""].astype(str), return_counts=True)
    return Summary(
        policy=result.policy, rate_scale=result.rate_scale, slo_scale=k, span_s=span,
        overall=_stats("all", everyone, result, met, span), models=models,
        drop_reasons={str(a): int(b) for a, b in zip(reasons, counts)},
        num_decode_steps=result.num_decode_steps, wall_s=result.wall_s,
    )
