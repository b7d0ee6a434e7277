"""Workloads: synthetic multi-model workloads, trace import, request materialisation and summaries.

Popularity follows a power law: the model of popularity rank k (0 = hottest) gets a rate
proportional to (k+1)^-alpha. With ``order="size"`` (the paper's setting) ranks go to models in
increasing size, so the largest model is the least popular; ``shuffled`` permutes them with the
seed; ``explicit`` takes the order given. Everything is deterministic under ``seed``.
"""
from __future__ import annotations

import csv
import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from muxplan.catalog import get_model, model_catalog, num_params
from muxplan.files import InputError, load_trace, parse_contract, read_mapping
from muxplan.schema import Arrivals, LengthDist, Slo, Trace, TraceRow, Workload, WorkloadModel

AZURE_ATTRIBUTION = (
    "Azure LLM inference trace 2023 (CC-BY 4.0), Patel et al., 'Splitwise: Efficient generative LLM "
    "inference using phase splitting', ISCA 2024"
)


@dataclass(frozen=True)
class ModelSummary:
    name: str
    num_requests: int
    rate_rps: float
    prompt_mean: float
    prompt_p50: float
    prompt_p99: float
    output_mean: float
    output_p50: float
    output_p99: float
    arrival_cv: float


def parse_model_counts(text: str) -> list[tuple[str, int]]:
    """'llama-7b:12,llama-13b:4' -> [('llama-7b', 12), ('llama-13b', 4)]; every name must resolve."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        ref, _, count = part.partition(":")
        if count and not count.isdigit() or count == "0":
            raise InputError(f"--models: '{part}': count must be a positive integer")
        get_model(ref)
        out.append((ref, int(count or 1)))
    if not out:
        raise InputError("--models: no models given")
    return out


def served_names(counts: list[tuple[str, int]]) -> list[tuple[str, str]]:
    """(served name, model ref) per instance: 'llama-7b-0'.. when a model repeats, else the model name."""
    return [(f"{ref}-{i}" if n > 1 else ref, ref) for ref, n in counts for i in range(n)]


def popularity_rates(num_models: int, alpha: float, top_rate: float | None, total_rate: float | None) -> np.ndarray:
    weights = (np.arange(num_models) + 1.0) ** -alpha
    if total_rate is not None:
        return weights / weights.sum() * total_rate
    return weights * (top_rate if top_rate is not None else 1.0)


def popularity_ranks(instances: list[tuple[str, str]], order: str, seed: int, explicit: list[str] | None = None) -> list[int]:
    """Rank (0 = hottest) of each instance under the chosen popularity order."""
    n = len(instances)
    if order == "size":
        by_size = sorted(range(n), key=lambda i: (num_params(get_model(instances[i][1])), i))
    elif order == "shuffled":
        by_size = list(np.random.default_rng(seed).permutation(n))
    elif order == "explicit":
        names = [name for name, _ in instances]
        if sorted(explicit or []) != sorted(names):
            raise InputError(f"--order: must list every served model once: {', '.join(names)}")
        by_size = [names.index(x) for x in explicit]
    else:
        raise InputError(f"--popularity-order: '{order}' is not one of size, shuffled, explicit")
    ranks = [0] * n
    for rank, i in enumerate(by_size):
        ranks[i] = rank
    return ranks


def synthesize(
    counts: list[tuple[str, int]], alpha: float, top_rate: float | None = 40.0, total_rate: float | None = None,
    rate_scale: float = 1.0, duration_s: float = 240.0, seed: int = 0, order: str = "size",
    explicit_order: list[str] | None = None, arrivals: Arrivals = Arrivals(), prompt: LengthDist = LengthDist(mean=161),
    output: LengthDist = LengthDist(mean=338), slo: Slo = Slo(), materialise: bool = True,
) -> Workload:
    instances = served_names(counts)
    rates = popularity_rates(len(instances), alpha, top_rate, total_rate) * rate_scale
    ranks = popularity_ranks(instances, order, seed, explicit_order)
    models = [
        WorkloadModel(name=name, model=ref, rate_rps=float(rates[rank]), prompt_tokens=prompt, output_tokens=output, slo=slo)
        for (name, ref), rank in zip(instances, ranks)
    ]
    source = f"synth alpha={alpha} top_rate={top_rate} total_rate={total_rate} scale={rate_scale} order={order}"
    spec = Workload(name="synthetic", duration_s=duration_s, seed=seed, arrivals=arrivals, models=models, source=source)
    return spec.model_copy(update={"requests": materialise_requests(spec)}) if materialise else spec


def sample_lengths(dist: LengthDist, n: int, rng: np.random.Generator) -> np.ndarray:
    if dist.kind == "fixed":
        values = np.full(n, round(dist.mean))
    elif dist.kind == "lognormal":
        mu = np.log(dist.mean) - dist.sigma**2 / 2  # so that the mean is dist.mean before clipping
        values = np.rint(rng.lognormal(mu, dist.sigma, n))
    elif dist.kind == "uniform":
        values = rng.integers(dist.low, dist.high + 1, n)
    else:
        values = rng.choice(np.asarray(dist.values), n)
    return np.clip(values, dist.low, dist.high).astype(int)


def arrival_times(rate_rps: float, duration_s: float, arrivals: Arrivals, rng: np.random.Generator) -> np.ndarray:
    """Arrival instants in [0, duration): Poisson, or Gamma renewal with the given CV."""
    if rate_rps <= 0:
        return np.empty(0)
    expected = rate_rps * duration_s
    n = int(expected + 6 * np.sqrt(expected) + 16)
    if arrivals.process == "poisson":
        gaps = rng.exponential(1.0 / rate_rps, n)
    else:
        shape = 1.0 / arrivals.cv**2
        gaps = rng.gamma(shape, 1.0 / (rate_rps * shape), n)
    times = np.cumsum(gaps)
    while times[-1] < duration_s:  # rare: extend until the window is covered
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1.0 / rate_rps, n))])
    return times[times < duration_s]


def materialise_requests(workload: Workload) -> list[TraceRow]:
    """The workload's request rows: embedded ones, else generated deterministically from the spec."""
    if workload.requests is not None:
        return list(workload.requests)
    columns = []
    for index, m in enumerate(workload.models):
        rng = np.random.default_rng([workload.seed, index])
        times = arrival_times(m.rate_rps, workload.duration_s, workload.arrivals, rng)
        prompts = sample_lengths(m.prompt_tokens, len(times), rng)
        outputs = sample_lengths(m.output_tokens, len(times), rng)
        columns += [(float(t), m.name, int(p), int(o)) for t, p, o in zip(times, prompts, outputs)]
    columns.sort(key=lambda row: (row[0], row[1]))
    return [TraceRow.model_construct(arrival_s=t, model=n, prompt_tokens=p, output_tokens=o) for t, n, p, o in columns]


def _catalog_ref(name: str) -> str:
    if name in model_catalog():
        return name
    base = re.sub(r"-\d+$", "", name)
    if base in model_catalog():
        return base
    raise InputError(f"trace model '{name}' is not a catalog model (or NAME-<index> of one); known: {', '.join(model_catalog())}")


def workload_from_trace(trace: Trace, slo: Slo = Slo(), name: str = "trace") -> Workload:
    """Per-model rates and empirical length distributions measured from request rows."""
    rows = trace.requests
    duration_s = max(max(r.arrival_s for r in rows), 1e-9)
    models = []
    for model in sorted({r.model for r in rows}):
        mine = [r for r in rows if r.model == model]
        prompts = [r.prompt_tokens for r in mine]
        outputs = [r.output_tokens for r in mine]
        models.append(WorkloadModel(
            name=model, model=_catalog_ref(model), rate_rps=len(mine) / duration_s, slo=slo,
            prompt_tokens=LengthDist(kind="empirical", mean=float(np.mean(prompts)), values=prompts[:2000], high=max(prompts)),
            output_tokens=LengthDist(kind="empirical", mean=float(np.mean(outputs)), values=outputs[:2000], high=max(outputs)),
        ))
    return Workload(name=name, duration_s=duration_s, models=models, requests=list(rows), source=trace.source)


def load_workload(path: str | Path) -> Workload:
    """A workload file (JSON/YAML) or a request trace (CSV, JSONL, JSON/YAML with `requests`) as a Workload."""
    p = Path(path)
    if p.suffix.lower() in (".csv", ".jsonl"):
        return workload_from_trace(load_trace(p), name=p.stem)
    data = read_mapping(p)
    if isinstance(data, dict) and "models" not in data and "requests" in data:
        return workload_from_trace(parse_contract(p, data, Trace), name=p.stem)
    return parse_contract(p, data, Workload)


def read_azure_csv(path: str | Path) -> list[tuple[float, int, int]]:
    """(seconds since the first request, prompt tokens, output tokens) from an Azure LLM trace CSV."""
    p = Path(path)
    rows = []
    try:
        with p.open(newline="") as f:
            reader = csv.DictReader(f)
            need = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
            if not all(c in (reader.fieldnames or []) for c in need):
                raise InputError(f"{p}: header: need columns {', '.join(need)}")
            for i, raw in enumerate(reader):
                try:
                    stamp = dt.datetime.fromisoformat(raw["TIMESTAMP"].strip()[:26])
                    rows.append((stamp.timestamp(), int(raw["ContextTokens"]), int(raw["GeneratedTokens"])))
                except (ValueError, TypeError, AttributeError):
                    raise InputError(f"{p}: rows[{i}]: bad TIMESTAMP/ContextTokens/GeneratedTokens") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{p}: cannot read: {exc}") from None
    if not rows:
        raise InputError(f"{p}: rows: no requests")
    start = min(r[0] for r in rows)
    return [(t - start, max(1, c), max(1, g)) for t, c, g in rows]


def import_azure(path: str | Path, counts: list[tuple[str, int]], alpha: float, seed: int, order: str = "size") -> Workload:
    """Real arrivals and lengths; each request goes to a model drawn from the popularity distribution."""
    rows = read_azure_csv(path)
    instances = served_names(counts)
    ranks = popularity_ranks(instances, order, seed)
    weights = popularity_rates(len(instances), alpha, 1.0, None)[ranks]
    picks = np.random.default_rng(seed).choice(len(instances), size=len(rows), p=weights / weights.sum())
    requests = [
        TraceRow(arrival_s=round(t, 6), model=instances[k][0], prompt_tokens=c, output_tokens=g)
        for (t, c, g), k in zip(rows, picks)
    ]
    requests.sort(key=lambda r: r.arrival_s)
    workload = workload_from_trace(Trace(requests=requests, source=f"{Path(path).name}: {AZURE_ATTRIBUTION}"), name=Path(path).stem)
    by_name = {name: ref for name, ref in instances}
    models = [m.model_copy(update={"model": by_name[m.name]}) for m in workload.models]
    return workload.model_copy(update={"models": models, "seed": seed})


def summarize(workload: Workload) -> list[ModelSummary]:
    rows = materialise_requests(workload)
    span_s = workload.duration_s if workload.requests is None else max(max((r.arrival_s for r in rows), default=0.0), 1e-9)
    out = []
    for m in workload.models:
        mine = [r for r in rows if r.model == m.name]
        p = np.array([r.prompt_tokens for r in mine] or [0])
        o = np.array([r.output_tokens for r in mine] or [0])
        gaps = np.diff([r.arrival_s for r in mine])
        cv = float(gaps.std() / gaps.mean()) if len(gaps) > 1 and gaps.mean() > 0 else 0.0
        out.append(ModelSummary(
            m.name, len(mine), len(mine) / span_s, float(p.mean()), float(np.percentile(p, 50)), float(np.percentile(p, 99)),
            float(o.mean()), float(np.percentile(o, 50)), float(np.percentile(o, 99)), cv,
        ))
    return out
