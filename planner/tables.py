"""Prepared cost tables: per model the discrete (SM%, batch) options and their time shares.

For model i at option o on a mesh of ``tp`` GPUs (L_in, L_out = mean prompt and output tokens):
    prefill seconds per request  p = T_pre(b_p, L_in) / b_p,  b_p = min(b, max(1, 2048 // L_in))
    decode seconds per request   d = L_out * T_dec(b, L_in + L_out / 2) / b
    KV bytes per GPU             kv = b * (L_in + L_out) * kv_bytes_per_token_per_gpu(tp)
Prefill runs on the whole mesh (100% SMs), one prefill at a time; decode runs on ``decode_sm_pct``.
Options dominated in (d, kv, sm) are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

from muxplan.catalog import flops_per_token, get_model
from muxplan.schema import GpuSpec, ModelSpec, Workload
from profiler.memory import kv_bytes_per_token_per_gpu, reserve_bytes, weight_bytes_per_gpu

DECODE_SM_PCTS = (30, 50, 70, 90, 100)
BATCHES = (4, 8, 16, 32, 64, 128, 256)
PREFILL_TOKEN_BUDGET = 2048
POOL_TOLERANCE = 0.10  # same-architecture models whose mean lengths differ less than this share one estimate


@dataclass(frozen=True)
class Demand:
    name: str
    ref: str
    spec: ModelSpec
    rate_rps: float
    mean_prompt_tokens: float
    mean_output_tokens: float

    @property
    def compute_per_s(self) -> float:
        """The paper's 'computation requirement': rate x FLOPs of a request."""
        return self.rate_rps * flops_per_token(self.spec) * (self.mean_prompt_tokens + self.mean_output_tokens)


@dataclass(frozen=True)
class Option:
    tp: int
    decode_sm_pct: int
    prefill_sm_pct: int
    batch: int
    prefill_s_per_req: float
    decode_s_per_req: float
    kv_bytes_per_gpu: int
    weight_bytes_per_gpu: int
    reserve_bytes: int

    @property
    def mem_bytes(self) -> int:
        return self.weight_bytes_per_gpu + self.reserve_bytes + self.kv_bytes_per_gpu

    @property
    def max_rps(self) -> float:
        """Rate this option serves when alone on its unit."""
        return 1.0 / (self.prefill_s_per_req + self.decode_s_per_req)


def demands_from_workload(workload: Workload) -> list[Demand]:
    """Per model: rate and mean prompt/output lengths (from the requests when materialised, else the spec).

    Models of one architecture whose sample means all lie within POOL_TOLERANCE of the architecture's pooled
    means get the pooled means: a few percent apart is sampling noise, and identical option tables let the
    exact solver treat them as interchangeable (twins), which is what keeps its pricing fast on real traces.
    """
    by_model: dict[str, tuple[list[int], list[int]]] = {m.name: ([], []) for m in workload.models}
    for r in workload.requests or []:
        by_model[r.model][0].append(r.prompt_tokens)
        by_model[r.model][1].append(r.output_tokens)
    stats = {}
    for m in workload.models:
        prompts, outputs = by_model[m.name]
        stats[m.name] = (float(sum(prompts) / len(prompts)) if prompts else float(m.prompt_tokens.mean),
                         float(sum(outputs) / len(outputs)) if outputs else float(m.output_tokens.mean), max(1, len(prompts)))
    specs = {m.name: get_model(m.model) for m in workload.models}
    groups: dict[str, list[str]] = {}
    for m in workload.models:
        groups.setdefault(specs[m.name].name, []).append(m.name)
    for names in groups.values():
        total = sum(stats[n][2] for n in names)
        pooled = tuple(sum(stats[n][k] * stats[n][2] for n in names) / total for k in (0, 1))
        if all(abs(stats[n][k] - pooled[k]) <= POOL_TOLERANCE * pooled[k] for n in names for k in (0, 1)):
            for n in names:
                stats[n] = (*pooled, stats[n][2])
    return [Demand(m.name, m.model, specs[m.name], m.rate_rps, stats[m.name][0], stats[m.name][1]) for m in workload.models]


_CACHE: dict[tuple, tuple[Option, ...]] = {}


def model_options(demand: Demand, gpu: GpuSpec, tp: int, cost_model) -> tuple[Option, ...]:
    """Non-dominated options of a model on a mesh of ``tp`` GPUs (memoised per cost model)."""
    mean_in, mean_out = round(demand.mean_prompt_tokens), round(demand.mean_output_tokens)
    key = (id(cost_model), demand.spec.name, demand.spec.num_layers, mean_in, mean_out, gpu.name, tp)
    if key not in _CACHE:
        _CACHE[key] = _options(demand.spec, mean_in, mean_out, gpu, tp, cost_model)
    return _CACHE[key]


def _options(spec: ModelSpec, mean_in: int, mean_out: int, gpu: GpuSpec, tp: int, cost_model) -> tuple[Option, ...]:
    mean_in, mean_out = max(1, mean_in), max(1, mean_out)
    kv_tok = kv_bytes_per_token_per_gpu(spec, tp)
    weights = weight_bytes_per_gpu(spec, tp)
    context = mean_in + mean_out // 2
    found = []
    for b in BATCHES:
        b_p = min(b, max(1, PREFILL_TOKEN_BUDGET // mean_in))
        p = cost_model.prefill_ms(spec, gpu, tp, 100, b_p, mean_in) / 1e3 / b_p
        for sm in DECODE_SM_PCTS:
            d = mean_out * cost_model.decode_ms(spec, gpu, tp, sm, b, context) / 1e3 / b
            found.append(Option(tp, sm, 100, b, p, d, b * (mean_in + mean_out) * kv_tok, weights, reserve_bytes(spec, tp, max_num_seqs=b)))
    return tuple(o for o in found if not any(_dominates(q, o) for q in found))


def _dominates(q: Option, o: Option) -> bool:
    no_worse = q.decode_s_per_req <= o.decode_s_per_req and q.prefill_s_per_req <= o.prefill_s_per_req \
        and q.mem_bytes <= o.mem_bytes and q.decode_sm_pct <= o.decode_sm_pct
    better = q.decode_s_per_req < o.decode_s_per_req or q.mem_bytes < o.mem_bytes or q.decode_sm_pct < o.decode_sm_pct \
        or q.prefill_s_per_req < o.prefill_s_per_req
    return no_worse and better
