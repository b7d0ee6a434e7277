"""Closed loop: simulate a candidate plan on its workload, compare with its predictions, correct, re-solve.

A model whose simulated SLO attainment falls short of its prediction (by more than MISS, or below TARGET
while predicted above it) gets a tighter TPOT limit in the unit model (its SLO scale, as the planner sees it,
times TIGHTEN; all models of its architecture together so twins stay interchangeable), and the solver runs
again in the time left. The plan kept is the one with the highest simulated goodput (requests within SLO per
second), then headroom; it records its simulated check next to its predictions.
"""
from __future__ import annotations

import numpy as np

from muxplan.schema import ModelCheck, Plan, SimCheck, Workload
from planner.budget import Budget, as_budget
from planner.sim.engine import SimResult, run_table
from planner.sim.evaluate import policy_for
from planner.sim.metrics import Summary, summarize
from planner.sim.trace import build_request_table

MISS = 0.01
TARGET = 0.99
TIGHTEN = 0.85
MAX_ROUNDS = 3
# planner.budget units of a simulation (bench/fit_work.py): per request replayed, per decode step, per prefill batch
# (a skewed plan's cold models decode in small batches: many more steps per request)
SIM_UNITS = (0.0265, 0.003, 0.0)


def sim_work(result: SimResult) -> float:
    """What a simulation costs in planner.budget units, from what it counted."""
    return float(np.dot(SIM_UNITS, (len(result.records["request"]), result.num_decode_steps, result.num_prefill_batches)))


def simulated_check(plan: Plan, workload: Workload, cost_model, seed: int = 0, rounds: int = 1, table=None,
                    budget: Budget | None = None) -> tuple[SimCheck, Summary]:
    """The plan replayed under the policy its solver meant, at the workload's SLO scale; its work charged to ``budget``."""
    table = build_request_table(workload) if table is None else table
    policy = policy_for(plan.solver.method, plan)
    result = run_table(plan, workload, table, cost_model, policy, seed=seed)
    if budget is not None:
        budget.charge(sim_work(result))
    summary = summarize(result, workload)
    predicted: dict[str, list[float]] = {}
    for u in plan.units:
        for m in u.models:
            entry = predicted.setdefault(m.name, [0.0, 0.0])
            entry[0] += m.predicted_rps
            entry[1] += m.predicted_rps * (m.predicted_slo_attainment if m.predicted_slo_attainment is not None else float("nan"))
    models = []
    for s in summary.models:
        rps, met = predicted.get(s.name, [0.0, 0.0])
        models.append(ModelCheck(name=s.name, predicted_rps=rps, simulated_rps=s.throughput_rps,
                                 predicted_slo_attainment=None if rps <= 0 or met != met else met / rps,
                                 simulated_slo_attainment=s.slo_attainment))
    o = summary.overall
    goodput = o.slo_attainment * o.num_requests / summary.span_s if summary.span_s > 0 else 0.0
    check = SimCheck(policy=policy, slo_scale=summary.slo_scale, rounds=rounds, predicted_rps=plan.served_rps,
                     simulated_rps=o.throughput_rps, predicted_slo_attainment=plan.predicted_slo_attainment,
                     simulated_slo_attainment=o.slo_attainment, simulated_goodput_rps=goodput, models=models)
    return check, summary


def missed(check: SimCheck) -> list[str]:
    """Models whose simulated attainment misses their prediction."""
    out = []
    for m in check.models:
        if m.predicted_slo_attainment is None or m.predicted_rps <= 0:
            continue
        if m.simulated_slo_attainment < m.predicted_slo_attainment - MISS or (
                m.simulated_slo_attainment < TARGET <= m.predicted_slo_attainment):
            out.append(m.name)
    return out


def solve_verified(solve, workload: Workload, cost_model, budget: Budget | float, seed: int = 0) -> Plan:
    """``solve(budget, corrections) -> Plan``, run in rounds of the closed loop (module docstring) within ``budget``
    (planner.budget: the simulations are charged per request replayed, so the rounds run are the same on any machine)."""
    from muxplan.catalog import get_model

    budget = as_budget(budget)
    table = build_request_table(workload)
    arch = {m.name: get_model(m.model).name for m in workload.models}
    corrections: dict[str, float] = {}
    best, best_key, rounds = None, None, 0
    while rounds < MAX_ROUNDS:
        before = budget.used_units
        share = 0.8 if rounds == 0 else 0.85
        plan = solve(budget.share(share) if budget.left_s * share >= 1.0 else Budget(1.0, budget), dict(corrections))
        rounds += 1
        check, _ = simulated_check(plan, workload, cost_model, seed, rounds, table, budget)
        plan = plan.model_copy(update={"check": check})
        key = (round(check.simulated_goodput_rps, 6), plan.solver.headroom or 0.0)
        if best is None or key > best_key:
            best, best_key = plan, key
        bad = missed(check)
        if not bad or budget.used_units - before > budget.total_units - budget.used_units:  # another round would not fit
            break
        for name in {arch[b] for b in bad}:
            for m, a in arch.items():
                if a == name:
                    corrections[m] = corrections.get(m, 1.0) * TIGHTEN
    return best.model_copy(update={"check": best.check.model_copy(update={"rounds": rounds})})
