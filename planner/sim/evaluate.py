"""Choosing among candidate plans by simulation: highest SLO attainment, then highest throughput."""
from __future__ import annotations

from dataclasses import dataclass

from muxplan.schema import Plan, Workload
from planner.sim.engine import run_table
from planner.sim.metrics import Summary, summarize
from planner.sim.trace import RequestTable, build_request_table
from profiler.cost_model import CostModel


@dataclass(frozen=True)
class Verdict:
    index: int
    summary: Summary

    @property
    def key(self) -> tuple[float, float]:
        return (round(self.summary.overall.slo_attainment, 4), self.summary.overall.throughput_rps)


def rank_plans(plans: list[Plan], workload: Workload, cost: CostModel, policy: str = "adbs", slo_scale: float | None = None,
               seed: int = 0, table: RequestTable | None = None) -> list[Verdict]:
    """Simulate every plan on the same requests; best first (attainment to 0.01%, then throughput, then input order)."""
    table = build_request_table(workload) if table is None else table
    verdicts = [Verdict(i, summarize(run_table(p, workload, table, cost, policy, seed=seed), workload, slo_scale)) for i, p in enumerate(plans)]
    return sorted(verdicts, key=lambda v: (-v.key[0], -v.key[1], v.index))


def policy_for(method: str, plan: Plan) -> str:
    """The policy a solver's plan is meant to run under."""
    if method == "temporal":
        return "temporal"
    if method == "spatial" and all(len(u.models) == 1 for u in plan.units):
        return "spatial"
    return "adbs"


def choose_by_simulation(plans: dict[str, Plan], workload: Workload, cost: CostModel, slo_scale: float | None = None,
                         seed: int = 0) -> tuple[str, list[tuple[str, str, Summary]]]:
    """The method whose plan simulates best (SLO attainment, then throughput), and every (method, policy, summary)."""
    table = build_request_table(workload)
    rows = []
    for method, plan in plans.items():
        policy = policy_for(method, plan)
        rows.append((method, policy, summarize(run_table(plan, workload, table, cost, policy, seed=seed), workload, slo_scale)))
    best = min(range(len(rows)), key=lambda i: (-round(rows[i][2].overall.slo_attainment, 4), -rows[i][2].overall.throughput_rps, i))
    return rows[best][0], rows
