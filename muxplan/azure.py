"""Azure LLM inference traces (``TIMESTAMP, ContextTokens, GeneratedTokens``) turned into multi-model workloads.

The Azure trace has no model column. :func:`import_azure` keeps every request's real arrival time
(seconds from the first request, exact to the file's 100 ns resolution) and lengths, and assigns
each request to a served model drawn independently from the popularity distribution
p_k ∝ (k+1)^-alpha (ranks as in :mod:`muxplan.workload`), with ``default_rng(seed)``.
"""
from __future__ import annotations

import csv
import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from muxplan.files import InputError, load_trace
from muxplan.schema import MAX_TOKENS, LengthDist, Slo, TraceRow, Workload, WorkloadModel
from muxplan.measured import empirical, measured_span_problem
from muxplan.workload import popularity_ranks, popularity_rates, served_names

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
AZURE_ATTRIBUTION = (
    "Azure LLM inference trace 2023, Azure Public Dataset (AzureLLMInferenceDataset2023), CC-BY 4.0; "
    "Patel et al., 'Splitwise: Efficient generative LLM inference using phase splitting', ISCA 2024"
)
_EPOCH = dt.datetime(1970, 1, 1)
_MAX_PROBLEMS = 20
_COUNT = re.compile(r"[0-9]{1,12}")  # ASCII digits only; more than 12 digits is over MAX_TOKENS anyway


@dataclass(frozen=True)
class AzureTrace:
    """Requests in file order: arrival seconds from the earliest request, prompt and output tokens."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray


def timestamp_ns(text: str) -> int:
    """'2023-11-16 18:17:03.9799600' -> integer nanoseconds (naive time; only differences matter)."""
    whole, _, frac = text.strip().partition(".")
    if frac and not frac.isdigit():
        raise ValueError(f"bad fraction '{frac}'")
    delta = dt.datetime.fromisoformat(whole) - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 10**9 + int(frac.ljust(9, "0")[:9] or 0)


def read_azure_csv(path: str | Path) -> AzureTrace:
    """Parse an Azure-format CSV; GeneratedTokens 0 counts as 1 (a request yields at least one token)."""
    p = Path(path)
    stamps, prompts, outputs, problems = [], [], [], []
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            absent = [c for c in AZURE_COLUMNS if c not in (reader.fieldnames or [])]
            if absent:
                raise InputError(f"{p}: header: missing column {absent[0]} (need {', '.join(AZURE_COLUMNS)})")
            for i, raw in enumerate(reader):
                try:
                    stamps.append(timestamp_ns(raw["TIMESTAMP"] or ""))
                except (ValueError, TypeError, OverflowError):
                    problems.append(f"{p}: rows[{i}].TIMESTAMP: '{str(raw['TIMESTAMP'])[:40]}' is not YYYY-MM-DD HH:MM:SS.fff")
                for column, low, sink in (("ContextTokens", 1, prompts), ("GeneratedTokens", 0, outputs)):
                    value = (raw[column] or "").strip()
                    if not (_COUNT.fullmatch(value) and low <= int(value) <= MAX_TOKENS):
                        problems.append(f"{p}: rows[{i}].{column}: '{str(raw[column])[:40]}' is not an integer in {low}..{MAX_TOKENS}")
                    else:
                        sink.append(max(1, int(value)))
                if len(problems) >= _MAX_PROBLEMS:
                    break
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{p}: cannot read: {exc.__class__.__name__}: {exc}") from None
    if problems:
        raise InputError(problems)
    if not stamps:
        raise InputError(f"{p}: rows: no requests")
    ns = np.asarray(stamps, dtype=np.int64)
    return AzureTrace((ns - ns.min()) / 1e9, np.asarray(prompts, dtype=np.int64), np.asarray(outputs, dtype=np.int64))


def lengths_from(path: str | Path) -> tuple[LengthDist, LengthDist]:
    """Empirical prompt and output length distributions of an Azure CSV or a muxplan trace file."""
    p = Path(path)
    try:
        with p.open(encoding="utf-8-sig") as f:
            header = f.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read: {exc.__class__.__name__}: {exc}") from None
    if "ContextTokens" in header:
        trace = read_azure_csv(p)
        return empirical(trace.prompt_tokens), empirical(trace.output_tokens)
    rows = load_trace(p).requests
    return empirical(np.array([r.prompt_tokens for r in rows])), empirical(np.array([r.output_tokens for r in rows]))


def import_azure(
    path: str | Path, counts: list[tuple[str, int]], alpha: float, seed: int, order: str = "size",
    explicit_order: list[str] | None = None, slo: Slo = Slo(),
) -> Workload:
    """A Workload keeping the trace's arrivals and lengths, requests assigned to models by popularity.

    Rows are sorted by arrival (ties in file order). Per-model ``rate_rps`` = its requests / the last
    arrival (the trace's span); lengths are each model's empirical distribution (the whole trace's for a
    model that drew no request). ``source`` keeps the trace's CC-BY attribution.
    """
    trace = read_azure_csv(path)
    span_problem = measured_span_problem(trace.arrival_s.size, float(trace.arrival_s.max()))
    if span_problem:
        raise InputError(f"{path}: rows: {span_problem}")
    instances = served_names(counts)
    ranks = popularity_ranks(instances, order, seed, explicit_order)
    weights = popularity_rates(len(instances), alpha, 1.0, None)[ranks]
    picks = np.random.default_rng(seed).choice(len(instances), size=trace.arrival_s.size, p=weights / weights.sum())
    order_idx = np.argsort(trace.arrival_s, kind="stable")
    names = [name for name, _ in instances]
    requests = [
        TraceRow.model_construct(arrival_s=float(trace.arrival_s[i]), model=names[picks[i]],
                                 prompt_tokens=int(trace.prompt_tokens[i]), output_tokens=int(trace.output_tokens[i]))
        for i in order_idx
    ]
    duration_s = float(trace.arrival_s.max())
    models = []
    for k, (served, ref) in enumerate(instances):
        mine = picks == k
        pool = mine if mine.any() else np.ones_like(mine)
        models.append(WorkloadModel(
            name=served, model=ref, rate_rps=float(mine.sum()) / duration_s, slo=slo,
            prompt_tokens=empirical(trace.prompt_tokens[pool]), output_tokens=empirical(trace.output_tokens[pool]),
        ))
    gaps = np.diff(np.sort(trace.arrival_s))
    cv = float(gaps.std() / gaps.mean()) if gaps.size > 1 and gaps.mean() > 0 else 1.0
    source = (f"muxplan workload import {Path(path).name} alpha={alpha} seed={seed} order={order}; "
              f"trace: {AZURE_ATTRIBUTION}")
    return Workload(
        name=Path(path).stem, duration_s=duration_s, seed=seed, arrivals={"process": "gamma", "cv": round(max(cv, 1e-3), 3)},
        models=models, requests=requests, source=source,
    )
