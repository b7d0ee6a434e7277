"""Predicted latencies and SLO attainment of the models of a unit at the rates the estimator serves.

Steady state under ADBS (planner.estimator for the symbols): with lambda = sum_j x_j the unit's request rate
and Q = sum_j q_j x_j the share of time prefills and their drains stall every decode,
- decode batch N_i from Little's law, N = x_i L_out TPOT(N), TPOT(N) = T_dec(N, C) / (1 - Q), capped at b_i;
- a request's decode is interrupted by the other requests' prefills: K ~ Poisson(lambda D) stalls of mean
  S = Q / lambda during its D = (L_out - 1) T_dec(N) / (1 - Q) of decoding, so its TPOT is
  (L_out - 1) T_dec(N) + K S over L_out - 1 tokens;
- its prompt waits in the prefill path, an M/G/1-like server of utilisation Q: with probability Q it waits an
  exponential time of mean Wq / Q, Wq = Q / (1 - Q) (ca^2 + CS2) / 2 S (Kingman), then the drain and its
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
BURST = 1.0  # weight of the arrival CV^2 in the Kingman wait
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
    wq = stall / (1 - stall) * (BURST * ca2 + CS2) / 2 * mean_stall_s
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
