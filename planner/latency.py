"""Predicted latencies and SLO attainment of the models of a unit at the rates the estimator serves.

Steady state under ADBS (planner.estimator for the symbols): with lambda = sum_j x_j the unit's request rate
and Q = sum_j q_j x_j the share of time prefills and their drains stall every decode,
- decode batch N_i from Little's law, N = x_i L_out TPOT(N), TPOT(N) = T_dec(N, C) / (1 - Q), capped at b_i;
- a request's decode is interrupted by the other requests' prefills: K ~ Poisson(lambda D) stalls of mean
  S = Q / lambda during its D = (L_out - 1) T_dec(N) / (1 - Q) of decoding, so its TPOT is
  (L_out - 1) T_dec(N) + K S over L_out - 1 tokens;
- its prompt waits in the prefill path, an M/G/1-like server of utilisation Q: with probability Q it waits an
  exponential time of mean Wq / Q, Wq = Q / (1 - Q) (1 + BURST (ca^2 - 1) + CS2) / 2 S (Kingman; BURST = 1
  is Kingman's ca^2 + cs^2), then the drain and its
  prefill T_pre(1, L_in) on the unit's mesh.
SLO attainment is the share of the model's sampled requests (Demand.lengths) whose end-to-end latency is within
k x its isolated latency (planner.sim.isolated.isolated_request_s, the simulator's yardstick), or
within the absolute TTFT/TPOT targets; the random parts are drawn DRAWS times per request from a fixed seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from muxplan.schema import GpuSpec
from planner.estimator import drain_s, stall_costs
from planner.tables import Demand, Option
from planner.sim.isolated import _evaluate, isolated_request_s

CS2 = 0.25  # squared CV of the stall service time (prompts of one model vary little in prefill time)
BURST = 1.0  # weight of the arrivals' excess variability ca^2 - 1 over Poisson in the Kingman wait
DRAWS = 32
SLACK_QUANTILES = np.linspace(0.005, 0.995, 100)  # shares of the (request, draw) pairs


@dataclass(frozen=True)
class ModelPrediction:
    name: str
    served_rps: float
    decode_batch: float
    ttft_ms: tuple[float, float]  # p50, p99
    tpot_ms: tuple[float, float]
    slo_attainment: float
    slack_s: tuple[float, ...] = ()  # quantiles (SLACK_QUANTILES) of the SLO slack: how much longer a request could have
    # waited and still met its SLO (< 0: missed); what a backlog may add (bench.fit_unit_model's trace-window term)


_PER_REQUEST: dict[tuple, np.ndarray] = {}


def _per_request(key: tuple, compute) -> np.ndarray:
    """Per-request latencies of a model's sampled lengths that no constant of the unit model changes (memoised: the
    fit bench predicts the same plans under many constants)."""
    if key not in _PER_REQUEST:
        if len(_PER_REQUEST) > 4096:
            _PER_REQUEST.clear()
        _PER_REQUEST[key] = compute()
    return _PER_REQUEST[key]


def _decode_batch(cost, demand: Demand, gpu: GpuSpec, option: Option, rate: float, stall: float) -> tuple[float, float]:
    """(N, T_dec(N) in s) solving N = rate L_out T_dec(N) / (1 - stall), N in [1, b]."""
    n = float(option.batch)
    step = option.decode_step_s
    for _ in range(30):
        step = cost.decode_ms(demand.spec, gpu, option.tp, option.decode_sm_pct, max(1, round(n)), demand.context_tokens) / 1e3
        n = min(float(option.batch), max(1.0, rate * demand.mean_output_tokens * step / max(1e-9, 1 - stall)))
    return n, step


def predict_unit(gpu: GpuSpec, members: list[tuple[Demand, Option, float]], served: list[float], cost, seed: int = 0) -> list[ModelPrediction]:
    """Per member: the prediction above at its served rate ``served[k]``."""
    options = [o for _, o, _ in members]
    q = stall_costs(options)
    lam = sum(served)
    stall = min(0.999, sum(qj * x for qj, x in zip(q, served)))
    mean_stall_s = stall / lam if lam > 0 else 0.0
    ca2 = float(np.mean([d.arrival_cv ** 2 for d, _, _ in members]))
    wq = stall / (1 - stall) * (1 + BURST * (ca2 - 1) + CS2) / 2 * mean_stall_s
    delta = drain_s(options)
    rng = np.random.default_rng(seed)
    out = []
    for (demand, option, _), rate in zip(members, served):
        n, step = _decode_batch(cost, demand, gpu, option, rate, stall)
        pairs = np.array(demand.lengths or [(round(demand.mean_prompt_tokens), round(demand.mean_output_tokens))], dtype=np.int64)
        prompt, output = pairs[:, 0], pairs[:, 1]
        pre = _per_request(("pre", id(cost), demand.spec.name, gpu.name, option.tp, pairs.tobytes()), lambda: _evaluate(
            lambda p: cost.prefill_ms(demand.spec, gpu, option.tp, 100, 1, int(p)) / 1e3, prompt))
        shape = (len(pairs), DRAWS)
        waits = np.where(rng.random(shape) < stall, rng.exponential(wq / stall if stall > 0 else 0.0, shape), 0.0)
        ttft = waits + delta + pre[:, None]
        busy = (output - 1) * step / (1 - stall)
        stalls = rng.poisson(np.broadcast_to((lam * busy)[:, None], shape)) * mean_stall_s
        decode = (output - 1)[:, None] * step + stalls
        tpot = np.where(output[:, None] > 1, decode / np.maximum(output - 1, 1)[:, None], 0.0)
        if demand.ttft_target_s is None and demand.tpot_target_s is None:
            isolated = _per_request(("iso", id(cost), demand.spec.name, gpu.name, pairs.tobytes()),
                                    lambda: isolated_request_s(demand.spec, gpu, cost, prompt, output)[1])
            slack = demand.slo_scale * isolated[:, None] + 1e-9 - (ttft + decode)
            met = slack >= 0
        else:
            met = np.ones(shape, dtype=bool)
            slack = np.full(shape, np.inf)
            if demand.ttft_target_s is not None:
                met &= ttft <= demand.ttft_target_s
                slack = demand.ttft_target_s - ttft
            if demand.tpot_target_s is not None:
                met &= tpot <= demand.tpot_target_s
            slack = np.where(met, slack, -1.0)
        multi = output > 1
        tp_vals = tpot[multi] if multi.any() else np.zeros(1)
        out.append(ModelPrediction(demand.name, rate, n, tuple(float(v) * 1e3 for v in np.percentile(ttft, (50, 99))),
                                   tuple(float(v) * 1e3 for v in np.percentile(tp_vals, (50, 99))), float(met.mean()) if rate > 0 else 1.0,
                                   tuple(np.sort(np.minimum(slack, 1e9), axis=None)[(SLACK_QUANTILES * slack.size).astype(int)].tolist())))
    return out


# ---- a fixed plan at a rate scale: predicted attainment and headroom ----------------------------------------------
# The headroom the solver reports (planner.headroom) is a capacity bound: the largest common scale at which every unit
# still serves its routed rates within the LP's caps. It knows no queueing, so it is optimistic for bursty arrivals
# (x38 predicted, x1.76 simulated on the Azure code trace). The predicted headroom below is the largest scale at which
# the latency model above predicts 99% of all demand within SLO (the simulator's max-rate definition).

TARGET = 0.99
MIN_SCALE, MAX_SCALE = 1 / 16, 16.0


@dataclass(frozen=True)
class PlacedDemand:
    demand: Demand
    tp: int
    decode_sm_pct: int
    batch: int
    rate_rps: float  # routed to this replica at x1
    model_share: float  # the model's routing shares summed over its replicas (the share of its demand it admits)


def plan_units(plan, demands: list[Demand]) -> tuple[list, float]:
    """([(GpuSpec, [PlacedDemand])] per unit, total demand req/s) of a plan, for predict_plan."""
    from muxplan.catalog import get_gpu

    by_name = {d.name: d for d in demands}
    share: dict[str, float] = {}
    for u in plan.units:
        for m in u.models:
            share[m.name] = share.get(m.name, 0.0) + m.routing_share
    units = [(get_gpu(u.gpu, plan.cluster.gpus), [PlacedDemand(by_name[m.name], m.tp, m.decode_sm_pct, m.max_num_seqs, m.rate_rps,
                                                               min(1.0, share[m.name])) for m in u.models]) for u in plan.units]
    return units, sum(d.rate_rps for d in demands)


def routed_at(placed: PlacedDemand, scale: float) -> float:
    """A replica's arrival rate at rate scale ``scale`` under the simulator's admission (planner.sim.layout): a plan
    admitting a share S of a model admits min(1, S / min(1, scale)) of its requests."""
    if scale >= 1:
        return placed.rate_rps * scale
    return placed.rate_rps * min(1.0, scale / max(placed.model_share, 1e-12))


def backlog_met(arrival_rps: float, served_rps: float, window_s: float, slack_s) -> float:
    """Requests/s of one model meeting the SLO when ``arrival_rps`` exceeds the rate ``served_rps`` its unit sustains,
    for arrivals over a window of ``window_s`` seconds that then drain (the simulator sheds nothing above the routed
    rate): fluid backlog, a request arriving at t waits t (arrival / served - 1), uniform in [0, W], W = window x
    (arrival / served - 1); it meets its SLO when that wait is within its slack (``slack_s``: quantiles, < 0 = missed
    anyway). Within capacity: arrival x attainment. Overloaded, attainment falls to 0 as the window grows."""
    if served_rps <= 0 or not len(slack_s):
        return 0.0
    slack = np.asarray(slack_s)
    if arrival_rps <= served_rps * (1 + 1e-9):
        return arrival_rps * float(np.mean(slack >= 0))
    wait = window_s * (arrival_rps / served_rps - 1)
    return arrival_rps * float(np.mean(np.clip(slack / wait, 0.0, 1.0)))


def predict_plan(units: list, demand_rps: float, cost, scale: float = 1.0, window_s: float = 0.0) -> tuple[float, float]:
    """(served req/s, SLO attainment over all demand) of a fixed plan (plan_units) at rate scale ``scale``, its options
    rebuilt under the current constants. ``window_s`` > 0: arrivals over a window of that many seconds (backlog_met);
    0: steady state, requests above a unit's served rate miss."""
    from planner.estimator import estimate_unit
    from planner.tables import option_for

    served = met = 0.0
    seen: dict[tuple, tuple] = {}  # replicas of one model (and twins) at one option and rate: predicted once
    for gpu, placed in units:
        members = [(p.demand, option_for(p.demand, gpu, p.tp, p.decode_sm_pct, p.batch, cost), routed_at(p, scale)) for p in placed]
        key = (gpu.name, tuple((d.table_key, d.lengths, o, round(r, 12)) for d, o, r in members))
        if key not in seen:
            est = estimate_unit(gpu, members)
            seen[key] = (est, predict_unit(gpu, members, list(est.served_rps), cost))
        est, preds = seen[key]
        served += est.total_rps
        for (_, _, routed), x, p in zip(members, est.served_rps, preds):
            met += backlog_met(routed, x, window_s, p.slack_s) if window_s > 0 else x * p.slo_attainment
    return served, min(1.0, met / (scale * demand_rps)) if demand_rps > 0 else 1.0


def search_scale(ok, steps: int, min_scale: float = MIN_SCALE, max_scale: float = MAX_SCALE) -> float:
    """planner.sim.capacity.max_rate_scale's bracket-and-bisect search: the highest passing scale tested."""
    import math

    results: dict[float, bool] = {}

    def test(s):
        results[s] = ok(s)
        return results[s]

    if test(1.0):
        lo, hi = 1.0, None
        while hi is None and lo < max_scale:
            hi = None if test(lo * 2) else lo * 2
            lo = lo * 2 if hi is None else lo
    else:
        lo, hi = None, 1.0
        while lo is None and hi > min_scale:
            lo = hi / 2 if test(hi / 2) else None
            hi = hi if lo is not None else hi / 2
    if lo is not None and hi is not None:
        for _ in range(steps):
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if test(mid) else (lo, mid)
    passed = [s for s, good in results.items() if good]
    return max(passed) if passed else 0.0


def predicted_headroom(units: list, demand_rps: float, cost, window_s: float = 0.0, compressed: bool = True, steps: int = 6) -> float:
    """The largest rate scale (within [1/16, 16], ``steps`` bisections) at which predict_plan gives TARGET attainment.
    ``window_s`` with ``compressed``: one trace of that span replayed at scale s (planner.sim.capacity), i.e. arrivals
    over window_s / s; without ``compressed``: a window of window_s at every scale (a sustained rate)."""
    def ok(s):
        w = window_s / s if compressed else window_s
        return predict_plan(units, demand_rps, cost, s, w)[1] >= TARGET

    return search_scale(ok, steps)
