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

from dataclasses import dataclass

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
    from scipy.optimize import linprog

    n = len(options)
    if temporal:
        a_ub = [[pj + dj for pj, dj in zip(p, d)]]
        b_ub = [1.0]
    else:
        a_ub = [[p[j] + (d[i] if i == j else 0.0) for j in range(n)] for i in range(n)]
        b_ub = [1.0] * n
    res = linprog([-1.0] * n, A_ub=a_ub, b_ub=b_ub, bounds=list(zip([0.0] * n, routed)), method="highs")
    return [max(0.0, float(v)) for v in res.x]


def estimate_unit(gpu: GpuSpec, members: list[tuple[Demand, Option, float]], temporal: bool = False) -> UnitEstimate:
    options = [o for _, o, _ in members]
    problems = unit_problems(gpu, options, temporal)
    served = served_rates(options, [r for _, _, r in members], temporal) if not problems else [0.0] * len(members)
    return UnitEstimate(tuple(served), sum(o.mem_bytes for o in options), sum(o.decode_sm_pct for o in options), tuple(problems))
