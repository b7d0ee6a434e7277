"""The highest rate scale at which a target fraction of requests meets the SLO (the paper's "2.9x").

Rate scale x replays the same requests with arrival times divided by x. Attainment falls as x grows
(more overlap, longer queues), so the search brackets the threshold by doubling or halving from 1, then
bisects geometrically. Each probe is one full simulation. Near the cliff attainment is not monotone (a
slightly higher scale can pass where a lower one failed), so the answer is the highest passing scale from
which every tested higher scale fails, reported with its bracket (that scale, the lowest failing one above).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from muxplan.schema import Plan, Workload
from planner.sim.engine import run_table
from planner.sim.metrics import Summary, summarize
from unitsched.policy import Policy
from planner.sim.trace import RequestTable
from profiler.cost_model import CostModel


@dataclass(frozen=True)
class Capacity:
    """``rate_scale`` (0 when even ``min_scale`` misses the target) and every probe's summary."""

    rate_scale: float
    rate_rps: float
    target: float
    slo_scale: float
    probes: tuple[Summary, ...]
    bracket: tuple[float, float] = (0.0, float("inf"))


def max_rate_scale(plan: Plan, workload: Workload, table: RequestTable, cost: CostModel, policy: str | Policy = "adbs",
                   slo_scale: float = 5.0, target: float = 0.99, seed: int = 0, min_scale: float = 1 / 16,
                   max_scale: float = 16.0, steps: int = 6, drain_s: float | None = None,
                   on_probe: Callable[[Summary], None] | None = None) -> Capacity:
    """Bracket then bisect (``steps`` geometric halvings of the bracket) the target-attainment rate scale."""
    probes: list[Summary] = []

    def ok(scale: float) -> bool:
        result = run_table(plan, workload, table.rescaled(scale), cost, policy, seed=seed, rate_scale=scale, drain_s=drain_s)
        summary = summarize(result, workload, slo_scale)
        probes.append(summary)
        if on_probe is not None:
            on_probe(summary)
        return summary.overall.slo_attainment >= target

    scale = 1.0
    if ok(scale):
        lo, hi = scale, None
        while hi is None and lo < max_scale:
            hi = None if ok(lo * 2) else lo * 2
            lo = lo * 2 if hi is None else lo
    else:
        lo, hi = None, scale
        while lo is None and hi > min_scale:
            lo = hi / 2 if ok(hi / 2) else None
            hi = hi if lo is not None else hi / 2
    if lo is None:
        lo = 0.0
    elif hi is not None:
        for _ in range(steps):
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    passed = sorted(p.rate_scale for p in probes if p.overall.slo_attainment >= target)
    failed = sorted(p.rate_scale for p in probes if p.overall.slo_attainment < target)
    lo = passed[-1] if passed else 0.0  # every tested scale above the highest pass fails
    above = [f for f in failed if f > lo]
    demand = sum(m.rate_rps for m in workload.models)
    span = float(table.arrival_s[-1] - table.arrival_s[0]) if table.num_requests > 1 else 0.0
    base_rps = table.num_requests / span if span > 0 else demand
    return Capacity(rate_scale=lo, rate_rps=lo * base_rps, target=target, slo_scale=slo_scale, probes=tuple(probes),
                    bracket=(lo, above[0] if above else float("inf")))
