"""One entry point for every solver: demands + cluster + cost model -> Plan (with the others compared)."""
from __future__ import annotations

import time

from muxplan.files import InputError
from muxplan.schema import Cluster, Considered, Plan, SolverRecord, Workload
from planner.budget import Budget, for_limit
from planner.exact import WALL_NOTE, ExactSolution
from planner.placement import build_plan, inputs_digest
from planner.tables import demands_from_workload
from profiler.plan_check import TIME_SLICED_DEVICE

SOLVERS = ("exact", "greedy", "spatial", "temporal")
OBJECTIVES = ("goodput", "headroom", "min-gpus", "throughput", "weighted", "fairness")
ALL_SERVED = 1 - 1e-6  # share of the demand above which a plan counts as serving all of it
MAX_RATE_STEPS = 2  # bisections of the considered table's simulated max-rate search (each ~10 s on the demo's 240 s)
REPORT_UNITS = (311.0, 1.56)  # planner.budget units of building a plan's report: per plan, per placed model (bench/fit_work.py)
HEADROOM_TRY = 0.95  # goodput tries the headroom plan only when the served-rate plan serves at least this share


def run_solver(method: str, workload: Workload, cluster: Cluster, cost_model, cost_label: str = "", objective: str = "goodput",
               time_limit_s: float = 30.0, seed: int = 0, backend: str = "highs", greedy_units=None,
               corrections: dict[str, float] | None = None, budget: Budget | None = None) -> Plan:
    """One solver's plan within ``budget`` (planner.budget: counted work, reproducible on any machine), by default
    ``time_limit_s`` seconds of it; a caller that computed ``greedy_units`` charged them to the budget it passes.
    ``corrections`` scale the SLO the unit model plans for, per model (planner.verify's closed loop); the plan is
    still judged on the real SLO."""
    from planner.baselines import place_spatial
    from planner.exact import solve_exact
    from planner.greedy import place_greedy

    if method not in SOLVERS:
        raise InputError(f"--solver: '{method}' is not one of {', '.join(SOLVERS)}")
    if objective not in OBJECTIVES:
        raise InputError(f"--objective: '{objective}' is not one of {', '.join(OBJECTIVES)}")
    if cluster.num_gpus == 0:
        raise InputError("cluster: no GPUs")
    demands = [_corrected(d, (corrections or {}).get(d.name, 1.0)) for d in demands_from_workload(workload)]
    start = time.perf_counter()
    budget = budget if budget is not None else for_limit(time_limit_s)
    value = bound = gap = None
    status = "heuristic"
    headroom = None
    time_sliced = all(node.gpu == TIME_SLICED_DEVICE for node in cluster.nodes)
    if method == "exact" and time_sliced:
        # no SM partitions: jobs run in turn whatever their shares, so the multiplexed unit model does not apply
        units = place_greedy(demands, cluster, cost_model, budget, temporal=True)
        status = "time-sliced device (no SM partitions): jobs run in turn; temporal placement, no bound"
    elif method == "exact":
        # the greedy plan warm-starts the master when it was computed anyway (solve_and_compare with a comparison); on
        # its own it would take a third of the budget for columns that column generation finds in a few rounds
        warm = greedy_units if greedy_units is not None else []
        sol, headroom = _solve_exact_objective(demands, cluster, cost_model, objective, budget, seed, backend, warm)
        units, value, status = list(sol.units), sol.value, sol.status
        bound = None if sol.bound != sol.bound or sol.bound == float("inf") else sol.bound
        gap = None if sol.gap != sol.gap else sol.gap
    elif method == "spatial":
        units = place_spatial(demands, cluster, cost_model)
    else:
        units = greedy_units if greedy_units is not None and method == "greedy" else place_greedy(demands, cluster, cost_model, budget, temporal=method == "temporal")
    if budget.wall_stopped and WALL_NOTE not in status:
        status += WALL_NOTE
    seconds = time.perf_counter() - start
    if not units:
        raise InputError("no model fits on any mesh of this cluster (is a model bigger than any node's memory?)")
    record = SolverRecord(method=method, objective=objective, value=0.0, bound=bound, gap=gap, status=status, seconds=seconds,
                          seed=seed, time_limit_s=time_limit_s, inputs_digest=inputs_digest(workload, cluster, cost_label),
                          headroom=headroom)
    temporal = method == "temporal" or (method == "exact" and time_sliced)
    plan = _report(cluster, demands, units, record, cost_label, workload, cost_model, temporal)
    budget.charge(report_work(plan))
    final_value = value if value is not None else plan.served_rps
    return plan.model_copy(update={"solver": record.model_copy(update={"value": final_value})})


def report_work(plan: Plan) -> float:
    """planner.budget units of _report: per plan, per placed model (bench/fit_work.py)."""
    return REPORT_UNITS[0] + REPORT_UNITS[1] * sum(len(u.models) for u in plan.units)


def _report(cluster, demands, units, record, cost_label, workload, cost_model, temporal: bool) -> Plan:
    """The plan with its predictions, and (unless time-sliced or spatial) its predicted max rate."""
    plan = build_plan(cluster, demands, units, record, cost_label, workload.name, temporal=temporal, cost_model=cost_model)
    max_rate = None if temporal or record.method == "spatial" else _predicted_max_rate(plan, workload, cost_model)
    return plan.model_copy(update={"predicted_max_rate_scale": max_rate})


def _predicted_max_rate(plan: Plan, workload: Workload, cost_model) -> float:
    """planner.latency.predicted_headroom of the plan on its workload's requests (replayed faster, as
    ``muxplan simulate --max-rate`` does), judged on the real SLO."""
    from planner.latency import plan_units, predicted_headroom
    from planner.sim.trace import build_request_table

    t = build_request_table(workload).arrival_s
    units, demand = plan_units(plan, demands_from_workload(workload))
    return predicted_headroom(units, demand, cost_model, float(t[-1] - t[0]) if len(t) > 1 else 0.0)


def _corrected(demand, factor: float):
    from dataclasses import replace

    if factor == 1.0:
        return demand
    target = demand.tpot_target_s * factor if demand.tpot_target_s is not None else None
    return replace(demand, slo_scale=demand.slo_scale * factor, tpot_target_s=target)


def _solve_exact_objective(demands, cluster, cost_model, objective, budget, seed, backend, warm):
    """(ExactSolution in the objective's units, proven headroom scale or None). ``goodput`` maximises requests served
    within SLO; once all demand is, the GPUs left raise the headroom (the plan of the largest common scale)."""
    from planner.exact import solve_exact
    from planner.headroom import solve_headroom

    if objective == "headroom":
        sol = solve_headroom(demands, cluster, cost_model, budget, seed, backend, warm)
        return sol, sol.value
    # goodput: column generation stops once converged (fast when all demand fits), and only then does the headroom
    # stage need time; when demand exceeds capacity the whole budget goes to proving the served rate
    sol = solve_exact(demands, cluster, cost_model, "throughput" if objective == "goodput" else objective, budget, seed,
                      backend, warm)
    total = sum(d.rate_rps for d in demands)
    if objective != "goodput" or sol.bound < ALL_SERVED * total or sol.value < HEADROOM_TRY * total:
        return sol, None  # headroom plans serve every model in proportion: far short of all demand they cannot win
    # all demand may fit: the plan of the largest common scale serves it with the most room, when it serves as much
    room = solve_headroom(demands, cluster, cost_model, budget.share(1.0) if budget.left_s >= 1.0 else Budget(1.0, budget),
                          seed, backend, list(warm) + list(sol.units))
    goodput = sum(m.rate_rps for u in room.units for m in u.members)
    if goodput < sol.value * (1 - 1e-9):
        return sol, None
    gap = max(0.0, (sol.bound - goodput) / sol.bound) if sol.bound > 0 else 0.0
    gap = 0.0 if gap <= 1e-9 else gap  # rounding of the routed rates
    status = "optimal" if gap <= 1e-6 else f"within {gap:.2%} of the bound"
    return ExactSolution(room.units, goodput, sol.bound, gap, f"{status}; headroom x{room.value:.3f} (bound x{room.bound:.3f}, "
                         f"{room.status})", sol.seconds + room.seconds, room.num_columns), room.value


def solve_and_compare(chosen: str, workload: Workload, cluster: Cluster, cost_model, cost_label: str = "", objective: str = "goodput",
                      time_limit_s: float = 30.0, seed: int = 0, backend: str = "highs", compare: bool = True,
                      verify: bool = True) -> Plan:
    """The chosen solver's plan, with a 'considered' table of every solver; with ``verify`` exact runs the closed
    loop (planner.verify) within its time limit and every considered plan is judged by simulation."""
    from planner.greedy import place_greedy

    demands = demands_from_workload(workload)
    start = time.perf_counter()
    exact_budget = for_limit(time_limit_s)  # the greedy warm start counts against exact's budget
    greedy_units = place_greedy(demands, cluster, cost_model, exact_budget.share(1 / 3)) if chosen == "greedy" or compare else None
    greedy_s = time.perf_counter() - start
    methods = SOLVERS if compare else (chosen,)

    def solve(m):
        if m != "exact" or not verify:
            return run_solver(m, workload, cluster, cost_model, cost_label, objective if m == "exact" else "goodput",
                              time_limit_s, seed, backend, greedy_units, budget=exact_budget if m == "exact" else None)
        from planner.verify import solve_verified

        # a corrected round must not warm-start from the greedy units: their options carry the uncorrected TPOT limits
        return solve_verified(lambda limit, fix: run_solver(m, workload, cluster, cost_model, cost_label, objective, time_limit_s, seed,
                                                            backend, [] if fix else greedy_units, fix, budget=limit),
                              workload, cost_model, exact_budget, seed)

    plans = {m: solve(m) for m in methods}
    if "greedy" in plans:  # its units were computed once above and shared as the exact warm start
        g = plans["greedy"]
        plans["greedy"] = g.model_copy(update={"solver": g.solver.model_copy(update={"seconds": greedy_s})})
    max_rates = {}
    if verify:
        from planner.sim.capacity import max_rate_scale
        from planner.sim.trace import build_request_table
        from planner.verify import simulated_check

        plans = {m: p if p.check is not None else p.model_copy(update={"check": simulated_check(p, workload, cost_model, seed)[0]})
                 for m, p in plans.items()}
        if compare:
            table = build_request_table(workload)
            max_rates = {m: max_rate_scale(p, workload, table, cost_model, p.check.policy, p.check.slo_scale, steps=MAX_RATE_STEPS,
                                           seed=seed).rate_scale for m, p in plans.items()}
    considered = [Considered(method=m, value=p.solver.value, served_rps=p.served_rps, num_gpus_used=p.num_gpus_used,
                             seconds=p.solver.seconds, gap=p.solver.gap, chosen=m == chosen,
                             simulated_slo_attainment=p.check.simulated_slo_attainment if p.check else None,
                             simulated_goodput_rps=p.check.simulated_goodput_rps if p.check else None,
                             predicted_max_rate_scale=p.predicted_max_rate_scale, simulated_max_rate_scale=max_rates.get(m))
                  for m, p in plans.items()]
    return plans[chosen].model_copy(update={"considered": considered})


def solve_by_simulation(workload: Workload, cluster: Cluster, cost_model, cost_label: str = "", objective: str = "goodput",
                        time_limit_s: float = 30.0, seed: int = 0, backend: str = "highs", slo_scale: float | None = None,
                        progress=None):
    """Every solver's plan, the one with the best simulated SLO attainment (then throughput) chosen:
    (chosen method, its plan with a 'considered' table of every solver, the simulation verdicts).
    ``progress(description, steps done)`` is told before each solver and before the simulations."""
    from planner.sim.evaluate import choose_by_simulation

    plans = {}
    for i, method in enumerate(SOLVERS):
        if progress:
            progress(f"solving ({method})", i)
        plans[method] = solve_and_compare(method, workload, cluster, cost_model, cost_label, objective, time_limit_s, seed,
                                          backend, compare=False)
    if progress:
        progress("simulating the candidate plans", len(SOLVERS))
    chosen, verdicts = choose_by_simulation(plans, workload, cost_model, slo_scale, seed)
    considered = [Considered(method=m, value=p.solver.value, served_rps=p.served_rps, num_gpus_used=p.num_gpus_used,
                             seconds=p.solver.seconds, gap=p.solver.gap, chosen=m == chosen) for m, p in plans.items()]
    return chosen, plans[chosen].model_copy(update={"considered": considered}), verdicts
