"""The one yardstick: the rates a unit serves within its SLO, used by every solver and by reports.

A unit is a mesh of n GPUs (TP = n) hosting models i, each with an Option (decode SM%, max batch b) and
a routed rate r_i. Under ADBS a prefill takes the whole mesh and starts only once the running decodes
have drained, so every prefill stalls every decode of the unit for q_j = p_j + delta seconds per request:
its own time p_j plus the drain delta = DRAIN_FACTOR * max_i t_i (the residual of the longest running
decode step, t_i = the step at batch b_i). With Q = sum_j q_j x_j the stalled share of time, served
rates x solve

    max  sum_i w_i x_i   s.t.  0 <= x_i <= r_i,
         d_i x_i + Q <= UTIL_CAP               for every i   (decode keeps up at batch b_i, with headroom)
         Q <= 1 - t_i / tau_i                  for every i   (TPOT = t_i / (1 - Q) within its limit tau_i)
         Q <= UTIL_CAP

(temporal, one job at a time: sum_j (p_j + d_j) x_j <= UTIL_CAP). For fixed Q = P this is a fractional
knapsack on prefill seconds with caps min(r_i, (UTIL_CAP - P) / d_i); its value V(P) is concave, so a
golden-section search over P in [0, P_max] solves it to ~1e-12, vectorised over many candidate units
(``best_rates``; the exact pricing uses the same function). Every constraint is linear in x, so the exact
optimiser optimises exactly what this function measures. Feasibility: memory sum(weights/n + reserve +
KV) <= usable GPU memory, and decode SM shares sum(decode_sm_pct) <= 120 (the paper's overbooking
allowance) when multiplexed. Latencies and SLO attainment at these rates: planner.latency.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from muxplan.schema import GpuSpec
from planner.tables import DRAIN_FACTOR, Demand, Option
from profiler.memory import usable_bytes

from unitsched.config import SM_BUDGET_PCT  # noqa: E402  (percent: 12 parts of 10%)
UTIL_CAP = 1.0  # largest busy share of a decode job or of the unit's prefill path; fitted by bench/fit_unit_model.py
# (hand-set 0.95 before; training loss 0.292 -> 0.281 with DRAIN_FACTOR 0): the decode batch cap b already bounds a
# decode job's queue, and the SLO headroom comes from planner.latency's predicted attainment, not from this cap
EPS = 1e-9


@dataclass(frozen=True)
class UnitEstimate:
    served_rps: tuple[float, ...]
    mem_bytes: int
    sm_pct: int
    problems: tuple[str, ...]
    stall_share: float = 0.0  # Q: share of time every decode waits for prefills and their drains

    @property
    def feasible(self) -> bool:
        return not self.problems

    @property
    def total_rps(self) -> float:
        return sum(self.served_rps)


def unit_problems(gpu: GpuSpec, options: list[Option], temporal: bool = False) -> list[str]:
    problems = []
    mem = sum(o.mem_bytes for o in options)
    if mem > usable_bytes(gpu):
        problems.append(f"memory {mem / 2**30:.1f} GiB > usable {usable_bytes(gpu) / 2**30:.1f} GiB per GPU")
    sm = sum(o.decode_sm_pct for o in options)
    if not temporal and sm > SM_BUDGET_PCT:
        problems.append(f"decode SM shares {sm}% > {SM_BUDGET_PCT}%")
    return problems


def drain_s(options) -> float:
    return DRAIN_FACTOR * max((o.decode_step_s for o in options), default=0.0)


def stall_costs(options: list[Option]) -> list[float]:
    """q_j: seconds of stall per request of model j (its prefill plus the drain before it)."""
    delta = drain_s(options)
    return [o.prefill_s_per_req + delta for o in options]


def prefill_limit(options: list[Option]) -> float:
    """P_max: the largest stalled share every member's TPOT limit and the utilisation cap allow."""
    return min([UTIL_CAP] + [o.prefill_cap for o in options])


def best_rates(W: np.ndarray, R: np.ndarray, Q: np.ndarray, D: np.ndarray, pmax: np.ndarray, iters: int = 64):
    """Row-wise max_P V(P) (module docstring) for arrays (rows x members); returns (value, x).

    Rows with pmax < 0 (some member's TPOT limit is broken by its decode step alone) get value 0."""
    order = np.argsort(-(W / Q), axis=1)  # fractional knapsack on stall seconds: best value per second first
    W, R, Q, D = (np.take_along_axis(a, order, axis=1) for a in (W, R, Q, D))
    hi0 = np.clip(pmax, 0.0, UTIL_CAP)

    def value(load):
        cap = np.minimum(R, np.maximum(0.0, UTIL_CAP - load)[:, None] / D)
        left = load.copy()
        x = np.empty_like(cap)
        for k in range(W.shape[1]):
            x[:, k] = np.clip(np.minimum(cap[:, k], left / Q[:, k]), 0.0, None)
            left = left - x[:, k] * Q[:, k]
        return (W * x).sum(axis=1), x

    lo, hi = np.zeros(len(W)), hi0.copy()
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = value(a)[0], value(b)[0]
    for _ in range(iters):  # concave: a maximiser stays in [lo, hi]
        left = fa < fb
        lo, hi = np.where(left, a, lo), np.where(left, hi, b)
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        fa, fb = value(a)[0], value(b)[0]
    best, x = value(np.where(fa >= fb, a, b))
    top, xt = value(hi0)  # the demand-capped optimum often sits at the upper end: take it exactly when better
    use_top = top > best
    best, x = np.where(use_top, top, best), np.where(use_top[:, None], xt, x)
    broken = pmax < 0
    best, x = np.where(broken, 0.0, best), np.where(broken[:, None], 0.0, x)
    inverse = np.argsort(order, axis=1)
    return best, np.take_along_axis(x, inverse, axis=1)


def served_rates(options: list[Option], routed: list[float], temporal: bool = False) -> list[float]:
    """The LP above; closed form when all routed demand fits."""
    n = len(options)
    if n == 0:
        return []
    d = [o.decode_s_per_req for o in options]
    if temporal:  # one knapsack row: serve the cheapest requests first
        cost = [o.prefill_s_per_req + dj for o, dj in zip(options, d)]
        x, left = [0.0] * n, UTIL_CAP
        for j in sorted(range(n), key=lambda j: cost[j]):
            x[j] = max(0.0, min(routed[j], left / cost[j]))
            left -= x[j] * cost[j]
        return x
    q = stall_costs(options)
    pmax = prefill_limit(options)
    if pmax < 0:
        return [0.0] * n
    load = sum(qj * rj for qj, rj in zip(q, routed))
    if load <= pmax + EPS and all(di * ri + load <= UTIL_CAP + EPS for di, ri in zip(d, routed)):
        return list(routed)
    caps = [min(r, 1e12) for r in routed]
    if n <= SMALL_LP:
        return _best_vertex(q, d, caps, pmax)
    _, x = best_rates(np.ones((1, n)), np.array([caps]), np.array([q]), np.array([d]), np.array([pmax]))
    return [float(v) for v in x[0]]


SMALL_LP = 4  # decode SM shares of >= 30% within 120%: at most four models on a multiplexed unit


@lru_cache(maxsize=None)
def _vertex_rows(n: int):
    return np.array(list(itertools.combinations(range(3 * n + 1), n)), dtype=np.intp)


def _best_vertex(q: list[float], d: list[float], caps: list[float], pmax: float) -> list[float]:
    """The LP solved exactly by enumerating its vertices (n <= 4: at most 715 n x n systems in one batched solve;
    several times faster than the golden-section search or a general LP call for a single unit)."""
    n = len(q)
    qv, dv, rv = np.asarray(q, float), np.asarray(d, float), np.asarray(caps, float)
    eye = np.eye(n)
    a = np.vstack([eye, -eye, np.diag(dv) + qv[None, :], qv[None, :]])  # x <= r, -x <= 0, d_i x_i + q.x <= cap, q.x <= pmax
    b = np.concatenate([rv, np.zeros(n), np.full(n, UTIL_CAP), [pmax]])
    rows = _vertex_rows(n)
    a_sel, b_sel = a[rows], b[rows]
    regular = np.abs(np.linalg.det(a_sel)) > 1e-12
    xs = np.linalg.solve(a_sel[regular], b_sel[regular][..., None])[..., 0]
    xs = xs[np.all(xs @ a.T <= b + 1e-9 * (1 + np.abs(b)), axis=1)]  # x = 0 is a vertex: never empty
    best = xs[int(np.argmax(xs.sum(axis=1)))]
    return [float(v) for v in np.clip(best, 0.0, rv)]


def estimate_unit(gpu: GpuSpec, members: list[tuple[Demand, Option, float]], temporal: bool = False) -> UnitEstimate:
    options = [o for _, o, _ in members]
    problems = unit_problems(gpu, options, temporal)
    served = served_rates(options, [r for _, _, r in members], temporal) if not problems else [0.0] * len(members)
    stall = 0.0 if temporal else sum(q * x for q, x in zip(stall_costs(options), served))
    return UnitEstimate(tuple(served), sum(o.mem_bytes for o in options), sum(o.decode_sm_pct for o in options), tuple(problems), stall)
