"""`muxplan replan` end to end: from-scratch optimum, the configuration pool, the budgeted MILP (planner.replan),
the value per migration budget, and the new Plan with kept units at their GPUs."""
from __future__ import annotations

import time
from dataclasses import dataclass

from muxplan.catalog import get_gpu
from muxplan.files import InputError
from muxplan.schema import Plan, SolverRecord, Workload
from planner.budget import Budget, for_limit
from planner.migration import Migration, locations, migration, place_new_units
from planner.placement import UnitChoice, build_plan, inputs_digest
from planner.replan import Config, balance, candidate_options, enumerate_configs, location_space, solve_budgeted
from planner.tables import demands_from_workload
from profiler.plan_check import TIME_SLICED_DEVICE

OBJECTIVES = ("goodput", "throughput", "weighted", "fairness")
COMPLETE_MAX_MODELS = 4  # instances this small get every configuration in the pool: the budgeted optimum is exact
COMPLETE_MAX_GPUS = 4
CURVE_POINTS = 6  # budgets solved for the value-per-budget table


@dataclass(frozen=True)
class ReplanResult:
    plan: Plan
    from_scratch: Plan
    migration: Migration
    scratch_migration: Migration
    curve: tuple[tuple[int, float], ...]  # (moves allowed, best value)
    complete: bool


def _configs_of(plan: Plan, demands, cost_model) -> list[Config]:
    return [Config(loc.gpu, len(loc.gpu_ids), loc.members) for loc in locations(plan, demands, cost_model) if loc.members]


def _singles(demands, cluster, cost_model) -> list[Config]:
    out = []
    for gpu_name, largest in {n.gpu: 1 << (n.num_gpus.bit_length() - 1) for n in cluster.nodes}.items():
        gpu, n = get_gpu(gpu_name, cluster.gpus), 1
        while n <= largest:
            for i, d in enumerate(demands):
                fits = candidate_options(d, gpu, n, cost_model, None)
                if fits and d.rate_rps > 0:
                    out.append(Config(gpu_name, n, ((i, max(fits, key=lambda o: (o.max_rps, -o.decode_sm_pct))),)))
            n *= 2
    return out


def build_pool(demands, cluster, cost_model, scratch: Plan, complete: bool, option_limit: int | None, temporal: bool) -> list[Config]:
    if complete:  # exactly the space of the cut tables (what a brute force over them enumerates)
        pool = []
        for gpu_name, largest in {n.gpu: 1 << (n.num_gpus.bit_length() - 1) for n in cluster.nodes}.items():
            n = 1
            while n <= largest:
                pool += enumerate_configs(demands, gpu_name, get_gpu(gpu_name, cluster.gpus), n, cost_model, option_limit, temporal)
                n *= 2
        return list(dict.fromkeys(pool))
    return list(dict.fromkeys(_configs_of(scratch, demands, cost_model) + _singles(demands, cluster, cost_model)))


def replan(current: Plan, workload: Workload, cost_model, cost_label: str = "", objective: str = "goodput",
           max_moves: int = 0, max_restarts: int | None = None, time_limit_s: float = 30.0, seed: int = 0,
           complete: bool | None = None, option_limit: int | None = None, curve: bool = True,
           scratch: Plan | None = None, where: str = "workload") -> ReplanResult:
    """The best plan within the budget (planner.replan), the from-scratch plan beside it (``scratch`` when the caller
    already has it), the value per budget."""
    from planner.solve import run_solver

    if objective not in OBJECTIVES:
        raise InputError(f"--objective: '{objective}' is not one of {', '.join(OBJECTIVES)}")
    if max_moves < 0 or (max_restarts is not None and max_restarts < 0):
        raise InputError("--max-moves/--max-restarts: must be >= 0")
    restarts = max_moves if max_restarts is None else max_restarts  # each move may stop one running process
    start = time.perf_counter()
    budget = for_limit(time_limit_s)
    cluster = current.cluster
    demands = demands_from_workload(workload)
    unknown = sorted({m.name for u in current.units for m in u.models} - {d.name for d in demands})
    if unknown:
        raise InputError(f"{where}: models: the plan serves {', '.join(unknown)}, which the workload does not name")
    temporal = all(n.gpu == TIME_SLICED_DEVICE for n in cluster.nodes)
    if scratch is None:
        scratch = run_solver("exact", workload, cluster, cost_model, cost_label, objective, time_limit_s / 2, seed,
                             budget=budget.share(0.5))
    if complete is None:
        complete = option_limit is not None and len(demands) <= COMPLETE_MAX_MODELS and cluster.num_gpus <= COMPLETE_MAX_GPUS
    locs = locations(current, demands, cost_model)
    pool = build_pool(demands, cluster, cost_model, scratch, complete, option_limit, temporal)
    left = max(1.0, budget.left_s)
    budgets = sorted({round(k * max_moves / (CURVE_POINTS - 1)) for k in range(CURVE_POINTS)} - {max_moves}) if curve and max_moves else []
    share = left / (1 + 0.5 * len(budgets))
    spaces = None
    if complete:
        gpus = {n.gpu: get_gpu(n.gpu, cluster.gpus) for n in cluster.nodes}
        spaces = {u: location_space(loc, demands, gpus[loc.gpu], cost_model, option_limit, temporal) for u, loc in enumerate(locs)}

    focus = None if complete else _short(current, demands)

    def solve(k, r, limit_s):
        return solve_budgeted(demands, cluster, locs, pool, cost_model, _master_objective(objective), k, r, Budget(limit_s, budget),
                              temporal, spaces, focus)

    sol = solve(max_moves, restarts, share)
    points = [(k, solve(k, min(k, restarts), share / 2).value) for k in budgets]
    seconds = time.perf_counter() - start
    bound = scratch.solver.bound if scratch.solver.bound is not None else None
    if complete and option_limit is None:  # every configuration was in the pool: the MILP's bound is the budget's
        bound = sol.dual_bound if bound is None else min(bound, sol.dual_bound)
    bound = None if bound is None else max(bound, sol.value)
    gap = None if not bound else max(0.0, (bound - sol.value) / bound)
    status = sol.status + ("; every configuration in the pool: bound proven for the budget" if complete and option_limit is None else
                           "; bound: the from-scratch bound (the pool holds the running units' neighbours and the from-scratch units)")
    record = SolverRecord(method="replan", objective=objective, value=sol.value, bound=bound, gap=gap, status=status,
                          seconds=seconds, seed=seed, time_limit_s=time_limit_s,
                          inputs_digest=inputs_digest(workload, cluster, cost_label))
    units, headroom = balance(sol.units, demands, cluster, temporal)  # all demand served: spread it for the most headroom
    if headroom >= 1.0:
        record = record.model_copy(update={"headroom": headroom})
    plan = to_plan(current, demands, locs, units, record, cost_label, workload.name, temporal, cost_model)
    moved = migration(current, plan)
    if moved.moves != sol.moves or moved.restarts != sol.restarts:
        raise RuntimeError(f"internal error: the MILP counted {sol.moves} moves/{sol.restarts} restarts, the plans differ by "
                           f"{moved.moves}/{moved.restarts}")
    return ReplanResult(plan, scratch, moved, migration(current, scratch), tuple(points) + ((max_moves, sol.value),), complete)


FOCUS_MODELS = 4  # models whose growth the neighbours may add to a running unit


def _short(current: Plan, demands) -> set[int]:
    """The models whose new demand most exceeds what the current plan routes to them (those worth adding somewhere)."""
    routed = {}
    for u in current.units:
        for m in u.models:
            routed[m.name] = routed.get(m.name, 0.0) + m.rate_rps
    gap = sorted(range(len(demands)), key=lambda i: -(demands[i].rate_rps - routed.get(demands[i].name, 0.0)))
    return set(gap[:FOCUS_MODELS])


def _master_objective(objective: str) -> str:
    return "throughput" if objective == "goodput" else objective  # goodput: served within SLO = the unit model's rate


def to_plan(current: Plan, demands, locs, chosen, record, cost_label, workload_name, temporal, cost_model) -> Plan:
    """A Plan of the chosen units: kept locations at their GPUs, new units in the aligned blocks left free."""
    cluster = current.cluster
    occupied: dict[int, set[int]] = {}
    for c in chosen:
        if c.location is not None:
            occupied.setdefault(locs[c.location].node, set()).update(locs[c.location].gpu_ids)
    new = [c for c in chosen if c.location is None]
    spots = iter(place_new_units([(n.gpu, n.num_gpus) for n in cluster.nodes], occupied, [(c.gpu, c.mesh_size) for c in new]))
    where = [(locs[c.location].node, list(locs[c.location].gpu_ids)) if c.location is not None else next(spots) for c in chosen]
    units = [UnitChoice(c.mesh_size, c.gpu, tuple((i, o, max(x, 0.0)) for i, o, x in c.members)) for c in chosen]
    # kept units come first in their old order, so unit ids stay stable for the deployment's state file
    order = sorted(range(len(units)), key=lambda k: (chosen[k].location is None, chosen[k].location or 0))
    units, where = [units[k] for k in order], [where[k] for k in order]
    plan = build_plan(cluster, demands, units, record, cost_label, workload_name, temporal=temporal, cost_model=cost_model)
    fixed = [u.model_copy(update={"node": node, "gpu_ids": ids}) for u, (node, ids) in zip(plan.units, where)]
    return plan.model_copy(update={"units": fixed})
