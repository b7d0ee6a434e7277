"""Per-model statistics of a workload's requests (what `muxplan workload show` prints)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from muxplan.schema import Workload
from muxplan.workload import materialise_requests


@dataclass(frozen=True)
class ModelSummary:
    """Statistics of one model's requests (NaN lengths when it has none); ``name='total'`` for all."""

    name: str
    model: str
    spec_rate_rps: float
    num_requests: int
    rate_rps: float
    prompt_mean: float
    prompt_p50: float
    prompt_p99: float
    output_mean: float
    output_p50: float
    output_p99: float
    arrival_cv: float


@dataclass(frozen=True)
class WorkloadSummary:
    models: list[ModelSummary]
    total: ModelSummary
    materialised: bool
    """True when the rows were drawn from a spec (not stored in the file)."""


def arrival_cv(arrival_s: np.ndarray) -> float:
    """Coefficient of variation (std / mean) of inter-arrival gaps; NaN with fewer than 3 requests."""
    gaps = np.diff(np.sort(arrival_s))
    if gaps.size < 2 or gaps.mean() <= 0:
        return float("nan")
    return float(gaps.std() / gaps.mean())


def _stats(name: str, model: str, spec_rate: float, t: np.ndarray, p: np.ndarray, o: np.ndarray, duration_s: float) -> ModelSummary:
    def q(x: np.ndarray, pct: float) -> float:
        return float(np.percentile(x, pct)) if x.size else float("nan")

    return ModelSummary(
        name=name, model=model, spec_rate_rps=spec_rate, num_requests=int(t.size), rate_rps=t.size / duration_s,
        prompt_mean=float(p.mean()) if p.size else float("nan"), prompt_p50=q(p, 50), prompt_p99=q(p, 99),
        output_mean=float(o.mean()) if o.size else float("nan"), output_p50=q(o, 50), output_p99=q(o, 99),
        arrival_cv=arrival_cv(t),
    )


def summarize(workload: Workload) -> WorkloadSummary:
    """Measured rate (requests / duration_s), mean/p50/p99 lengths and arrival CV per model and in total.

    A spec-only workload is summarised over the rows :func:`materialise_requests` draws from it.
    """
    rows = materialise_requests(workload)
    n = len(rows)
    index = {m.name: i for i, m in enumerate(workload.models)}
    t = np.fromiter((r.arrival_s for r in rows), dtype=np.float64, count=n)
    k = np.fromiter((index[r.model] for r in rows), dtype=np.int64, count=n)
    p = np.fromiter((r.prompt_tokens for r in rows), dtype=np.int64, count=n)
    o = np.fromiter((r.output_tokens for r in rows), dtype=np.int64, count=n)
    duration_s = workload.duration_s
    models = []
    for i, m in enumerate(workload.models):
        mine = k == i
        models.append(_stats(m.name, m.model, m.rate_rps, t[mine], p[mine], o[mine], duration_s))
    total = _stats("total", "", sum(m.rate_rps for m in workload.models), t, p, o, duration_s)
    return WorkloadSummary(models=models, total=total, materialised=workload.requests is None)
