"""Workloads: synthetic multi-model workloads, request materialisation, and the shared loader.

Popularity follows a power law: the model of popularity rank k (0 = hottest) gets a rate
proportional to (k+1)^-alpha. With ``order="size"`` (the paper's setting) ranks go to models in
increasing parameter count (ties by position), so the largest model is the least popular;
``shuffled`` permutes them with the seed; ``explicit`` takes the served names hottest first.

Served names: a model given with count n > 1 becomes ``NAME-0 .. NAME-(n-1)``; a model given once
keeps its catalog name. Everything is deterministic under ``seed``: model k of a spec draws its
arrivals and lengths from ``numpy.random.default_rng([seed, k])``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from muxplan.catalog import get_model, model_catalog, num_params
from muxplan.files import InputError, load_trace, parse_contract, read_mapping
from muxplan.measured import workload_from_trace
from muxplan.schema import MAX_RATE_RPS, MAX_TIME_S, MAX_TOKENS, Arrivals, LengthDist, Slo, Trace, TraceRow, Workload, WorkloadModel

MAX_REQUESTS = 2_000_000
"""A spec expecting more requests than this is refused (it would not fit in memory as rows)."""


def parse_model_counts(text: str) -> list[tuple[str, int]]:
    """'llama-7b:12,llama-13b:4' -> [('llama-7b', 12), ('llama-13b', 4)]; every name must resolve."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        ref, sep, count = part.rpartition(":")
        if not sep:
            ref, count = part, "1"
        if not count.isdigit() or int(count) < 1:
            raise InputError(f"--models: '{part}': count must be a positive integer")
        get_model(ref)
        out.append((ref, int(count)))
    if not out:
        raise InputError("--models: no models given")
    return out


def served_names(counts: list[tuple[str, int]]) -> list[tuple[str, str]]:
    """(served name, model ref) per instance: 'llama-7b-0'.. when a model repeats, else the model name."""
    out = [(f"{get_model(ref).name}-{i}" if n > 1 else get_model(ref).name, ref) for ref, n in counts for i in range(n)]
    names = [name for name, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"--models: served names repeat ({', '.join(dup)}); give each model once with a count")
    return out


def popularity_rates(num_models: int, alpha: float, top_rate: float | None, total_rate: float | None) -> np.ndarray:
    """Rate per popularity rank: (k+1)^-alpha scaled so rank 0 gets top_rate, or all sum to total_rate."""
    weights = (np.arange(num_models) + 1.0) ** -alpha
    if total_rate is not None:
        return weights / weights.sum() * total_rate
    return weights * (top_rate if top_rate is not None else 1.0)


def popularity_ranks(instances: list[tuple[str, str]], order: str, seed: int, explicit: list[str] | None = None) -> list[int]:
    """Rank (0 = hottest) of each instance under the chosen popularity order."""
    n = len(instances)
    names = [name for name, _ in instances]
    if order == "size":
        hottest_first = sorted(range(n), key=lambda i: (num_params(get_model(instances[i][1])), i))
    elif order == "shuffled":
        hottest_first = [int(i) for i in np.random.default_rng(seed).permutation(n)]
    elif order == "explicit":
        if sorted(explicit or []) != sorted(names):
            raise InputError(f"--order: must list every served model once, hottest first: {', '.join(names)}")
        hottest_first = [names.index(x) for x in explicit]
    else:
        raise InputError(f"--popularity-order: '{order}' is not one of size, shuffled, explicit")
    ranks = [0] * n
    for rank, i in enumerate(hottest_first):
        ranks[i] = rank
    return ranks


def synthesize(
    counts: list[tuple[str, int]], alpha: float, top_rate: float | None = 40.0, total_rate: float | None = None,
    rate_scale: float = 1.0, duration_s: float = 240.0, seed: int = 0, order: str = "size",
    explicit_order: list[str] | None = None, arrivals: Arrivals = Arrivals(), prompt: LengthDist = LengthDist(mean=161),
    output: LengthDist = LengthDist(mean=338), slo: Slo = Slo(), materialise: bool = True, name: str = "synthetic",
) -> Workload:
    """A power-law multi-model workload; with ``materialise`` its requests are drawn from the spec."""
    instances = served_names(counts)
    rates = popularity_rates(len(instances), alpha, top_rate, total_rate) * rate_scale
    ranks = popularity_ranks(instances, order, seed, explicit_order)
    models = [
        WorkloadModel(name=served, model=ref, rate_rps=float(rates[rank]), prompt_tokens=prompt, output_tokens=output, slo=slo)
        for (served, ref), rank in zip(instances, ranks)
    ]
    rate = f"top_rate={top_rate}" if total_rate is None else f"total_rate={total_rate}"
    source = f"muxplan workload synth: alpha={alpha} {rate} scale={rate_scale} order={order}"
    spec = Workload(name=name, duration_s=duration_s, seed=seed, arrivals=arrivals, models=models, source=source)
    problems = spec_problems(spec)
    if problems:
        raise InputError(problems)
    return spec.model_copy(update={"requests": materialise_requests(spec)}) if materialise else spec


def sample_lengths(dist: LengthDist, n: int, rng: np.random.Generator) -> np.ndarray:
    """n token lengths; lognormal is parameterised so its mean (before clipping to [low, high]) is dist.mean."""
    if dist.kind == "fixed":
        values = np.full(n, round(dist.mean))
    elif dist.kind == "lognormal":
        mu = np.log(dist.mean) - dist.sigma**2 / 2
        values = np.rint(rng.lognormal(mu, dist.sigma, n))
    elif dist.kind == "uniform":
        values = rng.integers(dist.low, dist.high + 1, n)
    else:
        values = rng.choice(np.asarray(dist.values), n)
    return np.clip(values, dist.low, dist.high).astype(np.int64)


def arrival_times(rate_rps: float, duration_s: float, arrivals: Arrivals, rng: np.random.Generator) -> np.ndarray:
    """Arrival instants in [0, duration): Poisson, or a Gamma renewal process with the given CV."""
    if rate_rps <= 0:
        return np.empty(0)
    shape = 1.0 / arrivals.cv**2

    def gaps(n: int) -> np.ndarray:
        if arrivals.process == "poisson":
            return rng.exponential(1.0 / rate_rps, n)
        return rng.gamma(shape, 1.0 / (rate_rps * shape), n)

    expected = rate_rps * duration_s
    n = int(expected + 6 * arrivals.cv * np.sqrt(expected) + 16)
    times = np.cumsum(gaps(n))
    while times[-1] < duration_s:  # rare: extend until the window is covered
        times = np.concatenate([times, times[-1] + np.cumsum(gaps(n))])
    return times[times < duration_s]


def materialise_requests(workload: Workload) -> list[TraceRow]:
    """The workload's request rows: embedded ones, else drawn from the spec (same seed -> same rows).

    Rows are sorted by arrival time, ties by served name. Model k uses ``default_rng([seed, k])``:
    arrivals first, then prompt lengths, then output lengths.
    """
    if workload.requests is not None:
        return list(workload.requests)
    times, models, prompts, outputs = [], [], [], []
    for index, m in enumerate(workload.models):
        rng = np.random.default_rng([workload.seed, index])
        t = arrival_times(m.rate_rps, workload.duration_s, workload.arrivals, rng)
        times.append(t)
        models.append(np.full(t.size, index))
        prompts.append(sample_lengths(m.prompt_tokens, t.size, rng))
        outputs.append(sample_lengths(m.output_tokens, t.size, rng))
    t, k, p, o = (np.concatenate(c) for c in (times, models, prompts, outputs))
    name_rank = np.argsort(np.argsort([m.name for m in workload.models], kind="stable"))
    order = np.lexsort((name_rank[k], t))
    names = [m.name for m in workload.models]
    return [
        TraceRow.model_construct(arrival_s=float(t[i]), model=names[k[i]], prompt_tokens=int(p[i]), output_tokens=int(o[i]))
        for i in order
    ]


def spec_problems(w: Workload, where: str = "") -> list[str]:
    """What a schema-valid workload can still get wrong: non-finite numbers, unknown models, huge sizes."""
    pre = f"{where}: " if where else ""
    problems = []
    if not w.duration_s <= MAX_TIME_S:
        problems.append(f"{pre}duration_s: must be finite and at most {MAX_TIME_S:.0e} s")
    for i, m in enumerate(w.models):
        try:
            get_model(m.model)
        except InputError as exc:
            problems.append(f"{pre}models[{i}].model: {exc}")
        if not math.isfinite(m.rate_rps):
            problems.append(f"{pre}models[{i}].rate_rps: must be finite")
        elif m.rate_rps > MAX_RATE_RPS:
            problems.append(f"{pre}models[{i}].rate_rps: at most {MAX_RATE_RPS:.0e} req/s")
        for key in ("prompt_tokens", "output_tokens"):
            d: LengthDist = getattr(m, key)
            if not math.isfinite(d.mean) or not math.isfinite(d.sigma) or d.sigma > 10:
                problems.append(f"{pre}models[{i}].{key}: mean and sigma must be finite (sigma <= 10)")
            if d.high > MAX_TOKENS or d.mean > MAX_TOKENS:
                problems.append(f"{pre}models[{i}].{key}.high: at most {MAX_TOKENS} tokens")
            if any(v < 1 or v > MAX_TOKENS for v in d.values):
                problems.append(f"{pre}models[{i}].{key}.values: every value must be in 1..{MAX_TOKENS}")
    if not problems and w.requests is None:
        expected = sum(m.rate_rps for m in w.models) * w.duration_s
        if expected > MAX_REQUESTS:
            problems.append(f"{pre}models: rates x duration_s expect {expected:.3g} requests; at most {MAX_REQUESTS:,}")
    return problems


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # too long for a path, or a NUL byte: not a file
        return False


def _resolve_config_paths(w: Workload, folder: Path) -> Workload:
    """Model refs that are paths relative to the workload file become absolute (callers run elsewhere)."""
    models = []
    for m in w.models:
        local = folder / m.model
        if m.model not in model_catalog() and not Path(m.model).is_absolute() and _exists(local):
            m = m.model_copy(update={"model": str(local.resolve())})
        models.append(m)
    return w.model_copy(update={"models": models})


def load_workload(path: str | Path) -> Workload:
    """Load a workload file OR a request trace as a :class:`Workload`; the loader planner and simulator use.

    - ``.json/.yaml/.yml`` with ``models:`` -> the Workload as written (``requests`` may be None:
      a spec; call :func:`materialise_requests` for rows, deterministic in its seed).
    - ``.csv/.jsonl`` trace, or ``.json/.yaml`` with only ``requests:`` -> a Workload with the rows
      kept in ``requests`` and per-model rates and empirical lengths measured from them (see
      :func:`workload_from_trace`); a row's model must be a catalog name or ``NAME-<index>``.
    Every model must resolve in the catalog (or be a config.json path, relative to the file);
    problems raise InputError, one line each naming the file and field.
    """
    p = Path(path)
    if p.suffix.lower() in (".csv", ".jsonl"):
        _reject_azure(p)
        return workload_from_trace(load_trace(p), name=p.stem, where=str(p), rows_field="rows")
    data = read_mapping(p)
    if isinstance(data, dict) and "models" not in data and "requests" in data:
        return workload_from_trace(parse_contract(p, data, Trace), name=p.stem, where=str(p))
    workload = _resolve_config_paths(parse_contract(p, data, Workload), p.parent)
    problems = spec_problems(workload, str(p))
    if problems:
        raise InputError(problems)
    return workload


def _reject_azure(path: Path) -> None:
    try:
        with path.open(encoding="utf-8-sig") as f:
            header = f.readline()
    except (OSError, UnicodeDecodeError):
        return  # load_trace reports it
    if "ContextTokens" in header and "model" not in header:
        raise InputError(f"{path}: header: an Azure trace has no model column; convert it with `muxplan workload import`")
