"""Replanning with a migration budget: K = 0 keeps every process, budgets hold exactly (recounted from the plans),
and on a small instance the budgeted optimum equals a brute force over every placement within the budget."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import linprog

from muxplan.cluster import load_cluster
from muxplan.schema import Workload, WorkloadModel
from planner.estimator import UTIL_CAP, prefill_limit, stall_costs, unit_problems
from planner.migration import locations, migration, same_placement
from planner.replan import candidate_options
from planner.replanning import replan
from planner.solve import run_solver
from planner.tables import demands_from_workload
from profiler.cost_model import load_cost_model
from muxplan.catalog import get_gpu

LIMIT = 2  # options per model table: keeps the brute force to a few thousand LPs


def _workload(rates):
    names = [("a", "llama-7b"), ("b", "llama-7b"), ("c", "llama-13b")]
    return Workload(name="w", duration_s=60, seed=1, models=[WorkloadModel(name=n, model=m, rate_rps=r) for (n, m), r in zip(names, rates)])


@pytest.fixture(scope="module")
def setup():
    cost = load_cost_model(None, None)
    cluster = load_cluster("1x2xA100-80GB")
    current = run_solver("exact", _workload([8, 2, 1]), cluster, cost, "", "goodput", 5)
    return cost, cluster, current, _workload([1, 3, 8])


def _served(units, demands):
    """max sum_i s_i over routed rates, every unit under planner.estimator's rows (an LP of its own)."""
    cols, rows, rhs = [], [], []
    for u, (gpu, members) in enumerate(units):
        for i, _ in members:
            cols.append((u, i))
    n = len(cols) + len(demands)
    for u, (gpu, members) in enumerate(units):
        opts = [o for _, o in members]
        q, pmax = stall_costs(opts), prefill_limit(opts)
        idx = [cols.index((u, i)) for i, _ in members]
        for k, (i, o) in enumerate(members):
            row = np.zeros(n)
            row[idx] = q
            row[idx[k]] += o.decode_s_per_req
            rows.append(row), rhs.append(UTIL_CAP)
            row = np.zeros(n)
            row[idx[k]] = 1
            rows.append(row), rhs.append(o.max_rps if pmax >= 0 else 0.0)
        row = np.zeros(n)
        row[idx] = q
        rows.append(row), rhs.append(max(pmax, 0.0))
    for i, d in enumerate(demands):  # s_i <= sum of its replicas' rates, s_i <= r_i (bounds)
        row = np.zeros(n)
        row[len(cols) + i] = 1
        for c, (_, j) in enumerate(cols):
            if j == i:
                row[c] = -1
        rows.append(row), rhs.append(0.0)
    bounds = [(0, None)] * len(cols) + [(0, d.rate_rps) for d in demands]
    res = linprog(-np.r_[np.zeros(len(cols)), np.ones(len(demands))], A_ub=np.array(rows), b_ub=rhs, bounds=bounds, method="highs")
    return -res.fun


def _slot_configs(gpu, ids, old_members, demands, cost):
    """Every configuration of one slot: per model its running option here (if any) or a table option, at most 4 models."""
    running = dict(old_members) if old_members is not None else {}
    choices = [(i, tuple(dict.fromkeys(((running[i],) if i in running else ()) + candidate_options(d, gpu, len(ids), cost, LIMIT))))
               for i, d in enumerate(demands)]
    out = [()]
    for size in range(1, 4):
        for group in itertools.combinations(choices, size):
            for opts in itertools.product(*[t for _, t in group]):
                if not unit_problems(gpu, list(opts)):
                    out.append(tuple((i, o) for (i, _), o in zip(group, opts)))
    return out


def _brute_force(current, workload, cost, max_moves, max_restarts):
    demands = demands_from_workload(workload)
    gpu = get_gpu("A100-80GB")
    old = {tuple(loc.gpu_ids): set(loc.members) for loc in locations(current, demands, cost)}
    best = 0.0
    for slots in (((0,), (1,)), ((0, 1),)):
        spaces = [_slot_configs(gpu, ids, old.get(ids), demands, cost) for ids in slots]
        for combo in itertools.product(*spaces):
            started = sum(len(set(c) - old.get(ids, set())) for ids, c in zip(slots, combo))
            stopped = sum(len(members - (set(dict(zip(slots, combo)).get(ids, ())))) for ids, members in old.items())
            if started <= max_moves and stopped <= max_restarts:
                units = [(gpu, c) for c in combo if c]
                best = max(best, _served(units, demands) if units else 0.0)
    return best


def test_zero_moves_keeps_every_process(setup):
    cost, _, current, new = setup
    result = replan(current, new, cost, max_moves=0, time_limit_s=10, option_limit=LIMIT)
    assert same_placement(current, result.plan)
    assert (result.migration.moves, result.migration.restarts) == (0, 0)
    shares = lambda p: sorted((u.id, m.name, round(m.rate_rps, 6)) for u in p.units for m in u.models)
    assert shares(current) != shares(result.plan)  # the rates are re-tuned to the new demand


@pytest.mark.parametrize("max_moves,max_restarts", [(1, 1), (2, 1), (2, 2), (3, 3)])
def test_budget_respected_and_matches_brute_force(setup, max_moves, max_restarts):
    cost, _, current, new = setup
    result = replan(current, new, cost, max_moves=max_moves, max_restarts=max_restarts, time_limit_s=20,
                    option_limit=LIMIT, curve=False)
    moved = migration(current, result.plan)
    assert moved.moves <= max_moves and moved.restarts <= max_restarts
    assert result.complete
    assert result.plan.solver.value == pytest.approx(_brute_force(current, new, cost, max_moves, max_restarts), rel=1e-5)


def test_more_budget_never_worse_and_reaches_from_scratch(setup):
    cost, _, current, new = setup
    result = replan(current, new, cost, max_moves=4, time_limit_s=20)  # full tables, the neighbourhood pool
    values = [v for _, v in result.curve]
    assert all(b >= a - 1e-6 for a, b in zip(values, values[1:])) and not result.complete
    assert result.scratch_migration.moves <= 4 and result.scratch_migration.restarts <= 4
    assert result.plan.solver.value >= result.from_scratch.solver.value * (1 - 1e-6)
