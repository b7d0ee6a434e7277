"""Prepared cost tables: per model the discrete (SM%, batch) options of the unit model (planner.estimator).

For model i at option o (decode SM%, max batch b) on a mesh of ``tp`` GPUs, with L_in, L_out the mean prompt
and output tokens and C the time-average context of a decoding sequence (length-biased: long outputs stay in
the batch longest, C = sum(L_in L_out + L_out (L_out - 1) / 2) / sum L_out over the requests):
    prefill seconds per request  p = T_pre(1, L_in)        (ADBS prefills start as soon as a prompt waits and
                                                            the SMs drain: realised batches are ~1 prompt)
    decode step seconds          t = T_dec(b, C) at decode SM%
    decode seconds per request   d = L_out * t / b        (the decode job's time share per req/s at batch b)
    KV bytes per GPU             kv = b * (L_in + L_out) * kv_bytes_per_token_per_gpu(tp)
    TPOT limit                   tau = TPOT_MARGIN * k * TPOT_iso   (k = the model's SLO scale, TPOT_iso at
                                                            batch 1 on full SMs of the smallest mesh that fits;
                                                            or the absolute tpot_ms target)
Prefill runs on the whole mesh (100% SMs), one prefill at a time. Options whose decode step alone exceeds tau
can never meet the SLO and are dropped, as are options dominated in (d, t, kv, sm).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from muxplan.catalog import flops_per_token, get_model
from muxplan.schema import GpuSpec, ModelSpec, Workload
from profiler.memory import isolated_tp, kv_bytes_per_token_per_gpu, reserve_bytes, weight_bytes_per_gpu

DECODE_SM_PCTS = (30, 50, 70, 90, 100)
BATCHES = (4, 8, 16, 32, 64, 128, 256)
from unitsched.config import PREFILL_TOKEN_BUDGET  # noqa: E402,F401
POOL_TOLERANCE = 0.10  # same-architecture models whose mean lengths differ less than this share one estimate
# Fitted by bench/fit_unit_model.py (coordinate search on 23 training instances: the size-ordered paper sweep, two of its
# instances with gamma arrivals of CV 3 and 4, the demo; loss = served-rate error + SLO-attainment error over the probed
# rate scales + 0.25 |ln(predicted / simulated max rate)|; held-out error in bench/RESULTS.md "Fitting the unit model"):
TPOT_MARGIN = 0.75  # share of the SLO's TPOT a plan may use at full batch (the rest absorbs queueing and TTFT); the fit
# is flat from 0.75 to 1.0 (the cap no longer binds once DRAIN_FACTOR is 0) and worse at 0.6, so the margin stays
DRAIN_FACTOR = 0.0  # drain charged per prefill, x the longest running decode step (planner.estimator); hand-set 0.5
# before the fit. The simulator does drain, but under load its prefills batch several prompts (which the unit model's
# one-prompt prefill does not): the fit charges nothing extra (training loss 0.420 -> 0.292 at UTIL_CAP 0.95)
LENGTH_SAMPLES = 400  # (prompt, output) pairs kept per model for predicted SLO attainment


@dataclass(frozen=True)
class Demand:
    name: str
    ref: str
    spec: ModelSpec
    rate_rps: float
    mean_prompt_tokens: float
    mean_output_tokens: float
    decode_context_tokens: float = 0.0  # C above; 0: L_in + L_out / 2
    slo_scale: float = 5.0
    tpot_target_s: float | None = None
    ttft_target_s: float | None = None
    arrival_cv: float = 1.0
    lengths: tuple[tuple[int, int], ...] = ()  # sampled (prompt, output) pairs

    @property
    def compute_per_s(self) -> float:
        """The paper's 'computation requirement': rate x FLOPs of a request."""
        return self.rate_rps * flops_per_token(self.spec) * (self.mean_prompt_tokens + self.mean_output_tokens)

    @property
    def context_tokens(self) -> int:
        return max(1, round(self.decode_context_tokens or self.mean_prompt_tokens + self.mean_output_tokens / 2))

    @property
    def table_key(self) -> tuple:
        """Models with equal keys have identical option tables (interchangeable 'twins')."""
        return (self.spec.name, self.spec.num_layers, round(self.mean_prompt_tokens), round(self.mean_output_tokens),
                self.context_tokens, self.slo_scale, self.tpot_target_s, self.ttft_target_s, round(self.arrival_cv, 2))

    def scaled(self, factor: float) -> "Demand":
        from dataclasses import replace

        return replace(self, rate_rps=self.rate_rps * factor)


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
    decode_step_s: float = 0.0
    tpot_limit_s: float = float("inf")

    @property
    def mem_bytes(self) -> int:
        return self.weight_bytes_per_gpu + self.reserve_bytes + self.kv_bytes_per_gpu

    @property
    def prefill_cap(self) -> float:
        """Largest share of the unit's time prefills (and their drains) may take with this option's TPOT within
        its limit: TPOT = t / (1 - share) <= tau."""
        return 1.0 - self.decode_step_s / self.tpot_limit_s

    @property
    def max_rps(self) -> float:
        """Rate this option serves when alone on its unit (planner.estimator's LP with one member, closed form)."""
        from planner.estimator import UTIL_CAP

        q = self.prefill_s_per_req + DRAIN_FACTOR * self.decode_step_s
        pmax = min(UTIL_CAP, self.prefill_cap)
        return 0.0 if pmax < 0 else min(UTIL_CAP / (q + self.decode_s_per_req), pmax / q)


def _arrival_cv(workload: Workload, rows) -> float:
    if workload.requests is None:
        return 1.0 if workload.arrivals.process == "poisson" else float(workload.arrivals.cv)
    cvs = []
    for m in workload.models:
        t = np.sort(np.array([r.arrival_s for r in rows if r.model == m.name]))
        gaps = np.diff(t)
        if gaps.size >= 10 and gaps.mean() > 0:
            cvs.append((gaps.std() / gaps.mean(), gaps.size))
    return float(sum(c * n for c, n in cvs) / sum(n for _, n in cvs)) if cvs else 1.0


def _length_stats(prompts: np.ndarray, outputs: np.ndarray, fallback: tuple[float, float]) -> tuple:
    """(mean prompt, mean output, decode context C, sampled pairs, count) of one model's requests."""
    if not prompts.size:
        mean_in, mean_out = fallback
        return mean_in, mean_out, 0.0, (), 1
    p, o = prompts.astype(np.float64), outputs.astype(np.float64)
    context = float((p * o + o * (o - 1) / 2).sum() / o.sum())
    pick = np.linspace(0, p.size - 1, min(LENGTH_SAMPLES, p.size)).round().astype(int)
    pairs = tuple(zip(prompts[pick].tolist(), outputs[pick].tolist()))
    return float(p.mean()), float(o.mean()), context, pairs, int(p.size)


def demands_from_workload(workload: Workload) -> list[Demand]:
    """Per model: rate and length statistics of its requests (drawn from the spec's seed when not materialised; the
    rate over the workload's duration or its last arrival, whichever is later), SLO and arrival CV.

    Models of one architecture whose sample means all lie within POOL_TOLERANCE of the architecture's pooled
    means get the pooled statistics: a few percent apart is sampling noise, and identical option tables let the
    exact solver treat them as interchangeable (twins), which is what keeps its pricing fast on real traces.
    """
    from muxplan.workload import materialise_requests

    rows = materialise_requests(workload)
    cols: dict[str, tuple[list[int], list[int]]] = {m.name: ([], []) for m in workload.models}
    for r in rows:
        cols[r.model][0].append(r.prompt_tokens)
        cols[r.model][1].append(r.output_tokens)
    stats = {m.name: _length_stats(np.array(cols[m.name][0], dtype=np.int64), np.array(cols[m.name][1], dtype=np.int64),
                                   (float(m.prompt_tokens.mean), float(m.output_tokens.mean))) for m in workload.models}
    specs = {m.name: get_model(m.model) for m in workload.models}
    groups: dict[str, list[str]] = {}
    for m in workload.models:
        groups.setdefault(specs[m.name].name, []).append(m.name)
    for names in groups.values():
        total = sum(stats[n][4] for n in names)
        pooled = tuple(sum(stats[n][k] * stats[n][4] for n in names) / total for k in (0, 1, 2))
        if all(abs(stats[n][k] - pooled[k]) <= POOL_TOLERANCE * pooled[k] for n in names for k in (0, 1)):
            pairs = tuple(sorted(pair for n in names for pair in stats[n][3]))
            pairs = tuple(pairs[i] for i in np.linspace(0, len(pairs) - 1, min(LENGTH_SAMPLES, len(pairs))).round().astype(int)) if pairs else ()
            for n in names:
                stats[n] = (*pooled, pairs, stats[n][4])
    cv = _arrival_cv(workload, rows)
    window = max([workload.duration_s] + [r.arrival_s for r in rows[-1:]])
    out = []
    for m in workload.models:
        mean_in, mean_out, context, pairs, count = stats[m.name]
        # the rows are what the simulator replays and what a trace measured: plan for their rate (a spec's rate
        # differs from its drawn rows by sampling noise, ~3% per model in 60 s); a model with no row keeps its rate
        rate = len(cols[m.name][0]) / window if cols[m.name][0] and window > 0 else m.rate_rps
        out.append(Demand(m.name, m.model, specs[m.name], rate, mean_in, mean_out, context, m.slo.scale,
                          m.slo.tpot_ms / 1e3 if m.slo.tpot_ms else None, m.slo.ttft_ms / 1e3 if m.slo.ttft_ms else None,
                          cv, pairs))
    return out


def isolated_step_s(demand: Demand, gpu: GpuSpec, cost_model) -> tuple[float, float]:
    """(prefill s, decode step s) of one request alone: batch 1, full SMs, smallest mesh that fits (the SLO's yardstick)."""
    tp = isolated_tp(demand.spec, gpu)
    pre = cost_model.prefill_ms(demand.spec, gpu, tp, 100, 1, max(1, round(demand.mean_prompt_tokens))) / 1e3
    return pre, cost_model.decode_ms(demand.spec, gpu, tp, 100, 1, demand.context_tokens) / 1e3


def tpot_limit_s(demand: Demand, gpu: GpuSpec, cost_model) -> float:
    if demand.tpot_target_s is not None:
        return TPOT_MARGIN * demand.tpot_target_s
    return TPOT_MARGIN * demand.slo_scale * isolated_step_s(demand, gpu, cost_model)[1]


_CACHE: dict[tuple, tuple[Option, ...]] = {}


def model_options(demand: Demand, gpu: GpuSpec, tp: int, cost_model) -> tuple[Option, ...]:
    """Non-dominated options of a model on a mesh of ``tp`` GPUs (memoised per cost model)."""
    key = (id(cost_model), demand.table_key, gpu.name, tp)
    if key not in _CACHE:
        _CACHE[key] = _options(demand, gpu, tp, cost_model)
    return _CACHE[key]


def _options(demand: Demand, gpu: GpuSpec, tp: int, cost_model) -> tuple[Option, ...]:
    spec = demand.spec
    mean_in, mean_out = max(1, round(demand.mean_prompt_tokens)), max(1, round(demand.mean_output_tokens))
    kv_tok = kv_bytes_per_token_per_gpu(spec, tp)
    weights = weight_bytes_per_gpu(spec, tp)
    context = demand.context_tokens
    tau = tpot_limit_s(demand, gpu, cost_model)
    p = cost_model.prefill_ms(spec, gpu, tp, 100, 1, mean_in) / 1e3
    found = []
    for b in BATCHES:
        for sm in DECODE_SM_PCTS:
            step = cost_model.decode_ms(spec, gpu, tp, sm, b, context) / 1e3
            if step >= tau:
                continue  # can never meet the SLO
            found.append(Option(tp, sm, 100, b, p, mean_out * step / b, b * (mean_in + mean_out) * kv_tok, weights,
                                reserve_bytes(spec, tp, max_num_seqs=b), step, tau))
    return tuple(o for o in found if not any(_dominates(q, o) for q in found))


def option_for(demand: Demand, gpu: GpuSpec, tp: int, decode_sm_pct: int, batch: int, cost_model) -> Option:
    """The option a placed model runs at (decode SM%, max batch), under the current constants, whether or not it is in
    the model's non-dominated table (a plan fixed under other constants; bench.fit_unit_model)."""
    spec = demand.spec
    mean_in, mean_out = max(1, round(demand.mean_prompt_tokens)), max(1, round(demand.mean_output_tokens))
    p = cost_model.prefill_ms(spec, gpu, tp, 100, 1, mean_in) / 1e3
    step = cost_model.decode_ms(spec, gpu, tp, decode_sm_pct, batch, demand.context_tokens) / 1e3
    return Option(tp, decode_sm_pct, 100, batch, p, mean_out * step / batch,
                  batch * (mean_in + mean_out) * kv_bytes_per_token_per_gpu(spec, tp), weight_bytes_per_gpu(spec, tp),
                  reserve_bytes(spec, tp, max_num_seqs=batch), step, tpot_limit_s(demand, gpu, cost_model))


def _dominates(q: Option, o: Option) -> bool:
    keys = ("decode_s_per_req", "prefill_s_per_req", "mem_bytes", "decode_sm_pct", "decode_step_s")
    no_worse = all(getattr(q, k) <= getattr(o, k) for k in keys)
    return no_worse and any(getattr(q, k) < getattr(o, k) for k in keys)
