"""The one yardstick F(b, W): served throughput of a unit, used by every solver and by reports.

A unit is a mesh of n GPUs (TP = n) hosting models i, each with an Option (decode SM%, batch) and
a routed rate r_i. Served rates x solve the LP

    max  sum_i x_i   s.t.  0 <= x_i <= r_i,
         d_i x_i + sum_j p_j x_j <= 1       for every i   (multiplexed: 'spatial-temporal')
         sum_j (p_j + d_j) x_j <= 1                         (one job at a time: 'temporal')

where p_j, d_j are prefill and decode seconds per request (planner.tables). In the multiplexed
form model i's decode runs beside the other decodes on its own SM share, and all prefills are
serialised on the whole mesh, so the time left to i's decode is what the prefills leave: this is
the linear time-share form of MuxServe's round formula tpt_i = b_i / (L_out T_dec_i + sum_j T_pre_j),
chosen (DESIGN §4) so that the exact optimiser optimises exactly what this function measures.
Feasibility: memory sum(weights/n + reserve + KV) <= usable GPU memory, and decode SM shares
sum(decode_sm_pct) <= 120 (the paper's overbooking allowance) when multiplexed.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from muxplan.schema import GpuSpec
from planner.tables import Demand, Option
from profiler.memory import usable_bytes

SM_BUDGET_PCT = 120
EPS = 1e-9


@dataclass(frozen=True)
class UnitEstimate:
    served_rps: tuple[float, ...]
    mem_bytes: int
    sm_pct: int
    problems: tuple[str, ...]

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


def served_rates(options: list[Option], routed: list[float], temporal: bool = False) -> list[float]:
    """The LP above; closed form when all routed demand fits."""
    p = [o.prefill_s_per_req for o in options]
    d = [o.decode_s_per_req for o in options]
    prefill_load = sum(pj * rj for pj, rj in zip(p, routed))
    if temporal:
        if prefill_load + sum(dj * rj for dj, rj in zip(d, routed)) <= 1 + EPS:
            return list(routed)
    elif all(di * ri + prefill_load <= 1 + EPS for di, ri in zip(d, routed)):
        return list(routed)
    n = len(options)
    if temporal:  # one knapsack row: serve the cheapest requests first
        x, left = [0.0] * n, 1.0
        for j in sorted(range(n), key=lambda j: p[j] + d[j]):
            x[j] = max(0.0, min(routed[j], left / (p[j] + d[j])))
            left -= x[j] * (p[j] + d[j])
        return x
    if n <= SMALL_LP:
        return _best_vertex(p, d, routed)
    from scipy.optimize import linprog

    if temporal:
        a_ub = [[pj + dj for pj, dj in zip(p, d)]]
        b_ub = [1.0]
    else:
        a_ub = [[p[j] + (d[i] if i == j else 0.0) for j in range(n)] for i in range(n)]
        b_ub = [1.0] * n
    res = linprog([-1.0] * n, A_ub=a_ub, b_ub=b_ub, bounds=list(zip([0.0] * n, routed)), method="highs")
    return [max(0.0, float(v)) for v in res.x]


SMALL_LP = 4  # decode SM shares of >= 30% within 120%: at most four models on a multiplexed unit


@lru_cache(maxsize=None)
def _vertex_rows(n: int):
    return np.array(list(itertools.combinations(range(3 * n), n)), dtype=np.intp)


def _best_vertex(p: list[float], d: list[float], routed: list[float]) -> list[float]:
    """The multiplexed LP solved exactly by enumerating its vertices (n <= 4: at most 495 n x n systems, one
    batched solve; several times faster than a general LP call, which dominated the greedy's run time)."""
    n = len(p)
    pv, dv, rv = np.asarray(p, float), np.asarray(d, float), np.asarray(routed, float)
    eye = np.eye(n)
    a = np.vstack([eye, -eye, np.diag(dv) + pv[None, :]])  # x <= r, -x <= 0, d_i x_i + p.x <= 1
    b = np.concatenate([rv, np.zeros(n), np.ones(n)])
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
    return UnitEstimate(tuple(served), sum(o.mem_bytes for o in options), sum(o.decode_sm_pct for o in options), tuple(problems))
