"""Workloads measured from request rows (a trace): per-model rates over the trace's span and empirical lengths."""
from __future__ import annotations

import re

import numpy as np

from muxplan.catalog import model_catalog
from muxplan.files import InputError
from muxplan.schema import MAX_RATE_RPS, MAX_TIME_S, Arrivals, LengthDist, Slo, Trace, Workload, WorkloadModel

EMPIRICAL_POINTS = 1000
"""Empirical length distributions keep at most this many quantile points of the observed values."""


def empirical(values: np.ndarray) -> LengthDist:
    """An empirical length distribution of observed values, kept to at most EMPIRICAL_POINTS quantiles."""
    values = np.asarray(values, dtype=np.int64)
    kept = np.sort(values)
    if kept.size > EMPIRICAL_POINTS:  # evenly spaced order statistics: resampling them ~ resampling all
        kept = kept[np.linspace(0, kept.size - 1, EMPIRICAL_POINTS).round().astype(int)]
    return LengthDist(kind="empirical", mean=float(values.mean()), low=int(kept.min()), high=int(kept.max()),
                      values=[int(v) for v in kept])


def catalog_ref(name: str) -> str:
    """Catalog model of a trace's model column: the name itself, or NAME-<index> of a catalog model."""
    if name in model_catalog():
        return name
    base = re.sub(r"-\d+$", "", name)
    if base in model_catalog():
        return base
    raise InputError(f"model '{name}' is not a catalog model (or NAME-<index> of one); known: {', '.join(model_catalog())}")


def natural_key(name: str) -> list:
    """Sort key treating digit runs as numbers: llama-7b-2 < llama-7b-10 < llama-65b."""
    # digit runs compare by length then text (no int(): a 5000-digit run would exceed Python's int parsing limit)
    return [(0, len(part.lstrip("0")), part.lstrip("0")) if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def workload_from_trace(trace: Trace, slo: Slo = Slo(), name: str = "trace", where: str = "", rows_field: str = "requests") -> Workload:
    """Per-model rates (requests / last arrival) and empirical lengths measured from request rows.

    Models come in natural name order (llama-7b-2 before llama-7b-10); the requests are kept. The arrival process records
    the trace's aggregate inter-arrival CV as a gamma fit (used only if the requests are dropped).
    """
    rows = trace.requests
    where = where or trace.source or "trace"
    if not rows:
        raise InputError(f"{where}: {rows_field}: no requests")
    arrival = np.fromiter((r.arrival_s for r in rows), dtype=np.float64, count=len(rows))
    prompt = np.fromiter((r.prompt_tokens for r in rows), dtype=np.int64, count=len(rows))
    output = np.fromiter((r.output_tokens for r in rows), dtype=np.int64, count=len(rows))
    names = sorted({r.model for r in rows}, key=natural_key)
    index = {n: i for i, n in enumerate(names)}
    model = np.fromiter((index[r.model] for r in rows), dtype=np.int64, count=len(rows))
    if not np.isfinite(arrival).all():
        raise InputError(f"{where}: {rows_field}[{int(np.argmin(np.isfinite(arrival)))}].arrival_s: must be finite")
    duration_s = float(arrival.max())
    span_problem = measured_span_problem(len(rows), duration_s)
    if span_problem:
        raise InputError(f"{where}: {rows_field}: {span_problem}")
    models = []
    for i, served in enumerate(names):
        try:
            ref = catalog_ref(served)
        except InputError as exc:
            raise InputError(f"{where}: {rows_field}[{int(np.argmax(model == i))}].model: {exc}") from None
        mine = model == i
        models.append(WorkloadModel(name=served, model=ref, rate_rps=float(mine.sum()) / duration_s, slo=slo,
                                    prompt_tokens=empirical(prompt[mine]), output_tokens=empirical(output[mine])))
    gaps = np.diff(np.sort(arrival))
    cv = float(gaps.std() / gaps.mean()) if gaps.size > 1 and gaps.mean() > 0 else 1.0
    arrivals = Arrivals() if abs(cv - 1) < 0.05 or cv == 0 else Arrivals(process="gamma", cv=round(cv, 3))
    return Workload(name=name, duration_s=duration_s, arrivals=arrivals, models=models, requests=list(rows), source=trace.source)


def measured_span_problem(num_requests: int, span_s: float) -> str:
    """Why rates cannot be measured from requests spread over span_s seconds ('' if they can)."""
    if span_s <= 0:
        return (f"{num_requests} request(s) spanning 0 s: a rate cannot be measured "
                "(need >= 2 requests at different times)")
    if span_s > MAX_TIME_S:
        return f"the requests span {span_s:.3g} s, more than {MAX_TIME_S:.0e} s"
    if num_requests / span_s > MAX_RATE_RPS:
        return (f"{num_requests} requests in {span_s:.3g} s is {num_requests / span_s:.3g} req/s, "
                f"above {MAX_RATE_RPS:.0e}: the span is too short to measure a rate")
    return ""
