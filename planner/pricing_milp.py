"""Pricing by MILP (HiGHS), the fallback of planner.exact when the branch and bound of planner.pricing is not proven
within its work budget: binaries y_{i,o} (model i at option o) and rates x_{i,o} <= min(r_i, 1 / (p + d)) y_{i,o},
tightened by valid aggregated time shares (decode time weighted by SM, memory or model-count share, plus all prefill,
<= 1) and by dominance rows between interchangeable models. The drain before a prefill is counted at each model's own
decode step (a relaxation: the unit's longest step is at least that), so its dual bound stays valid.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from planner.estimator import DRAIN_FACTOR, SM_BUDGET_PCT, UTIL_CAP, served_rates
from planner.pricing import Priced
from planner.tables import model_options
from profiler.memory import usable_bytes

TOL = 1e-7


@contextmanager
def quiet_stdout():
    """HiGHS prints a banner on stdout from C++ whatever its options; keep --json output clean."""
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _highs():
    import highspy

    with quiet_stdout():
        h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    return h


def _dominance_pairs(demands, cand, pi):
    """(j, i) for interchangeable models (same option table) where i is at least as good as j: a dual at
    least as high and a rate at least as high (ties broken by index). Any unit hosting j but not i is
    no better than the same unit with i in j's place, so "j only if i" keeps an optimal unit."""
    from planner.exact import _twins

    twins = _twins(demands)
    pairs = []
    for j in cand:
        for i in twins[j]:
            if i == j or i not in cand:
                continue
            key_i, key_j = (pi[i], demands[i].rate_rps, -i), (pi[j], demands[j].rate_rps, -j)
            if pi[i] >= pi[j] and demands[i].rate_rps >= demands[j].rate_rps and key_i > key_j:
                pairs.append((j, i))
    return pairs


def _price(demands, gpu, n, cost_model, pi, budget) -> Priced | None:
    """Best unit of mesh size n for duals pi by the MILP (its dual bound proven, unless its node limit from ``budget``,
    planner.budget, stops it first), or None when no option fits."""
    from planner.budget import as_budget
    from planner.master import mip_work, node_limit

    budget = as_budget(budget)
    h = _highs()
    h.setOptionValue("time_limit", max(0.05, budget.wall_left_s))  # the safety stop only
    h.setOptionValue("mip_rel_gap", 1e-6)
    h.setOptionValue("presolve", "off")  # HiGHS presolve (probing) costs more than it saves on this small model
    usable = usable_bytes(gpu)
    cand = [i for i, d in enumerate(demands) if pi[i] > TOL and d.rate_rps > 0]
    ys, xs, opts = {}, {}, {}
    for i in cand:
        for k, o in enumerate(model_options(demands[i], gpu, n, cost_model)):
            if o.decode_sm_pct < 100 and o.mem_bytes <= usable:
                opts[i, k] = o
                ys[i, k] = h.addBinary()
                # a model never serves more than its demand, nor more than its option allows alone on the
                # unit: u = min(r, 1 / (p + d)); the tighter big-M keeps the relaxation and the dual bound tight
                cap = min(demands[i].rate_rps, o.max_rps)
                xs[i, k] = h.addVariable(lb=0, ub=cap)
                h.addConstr(xs[i, k] - cap * ys[i, k] <= 0)
    if not opts:
        return None
    mine = {i: [key for key in opts if key[0] == i] for i in cand}
    for i in cand:
        if mine[i]:
            h.addConstr(sum(ys[key] for key in mine[i]) <= 1)
    h.addConstr(sum(opts[key].mem_bytes / 2**30 * ys[key] for key in opts) <= usable / 2**30)
    h.addConstr(sum(opts[key].decode_sm_pct * ys[key] for key in opts) <= SM_BUDGET_PCT)
    most = SM_BUDGET_PCT // min(o.decode_sm_pct for o in opts.values())  # models per unit
    h.addConstr(sum(ys.values()) <= most)
    # a relaxation of the estimator: the drain before a prefill counted as the model's own decode step (the unit's
    # longest is at least that), so the dual bound stays valid; found members are re-rated by the estimator
    prefill = sum((opts[key].prefill_s_per_req + DRAIN_FACTOR * opts[key].decode_step_s) * xs[key] for key in opts)
    h.addConstr(prefill <= UTIL_CAP)
    for i in cand:
        if mine[i]:
            h.addConstr(sum(opts[key].decode_s_per_req * xs[key] for key in mine[i]) + prefill <= UTIL_CAP)
    for key, o in opts.items():  # TPOT limit of a hosted option: prefill <= its prefill cap
        h.addConstr(prefill + (1.0 - o.prefill_cap) * ys[key] <= 1.0)
    # Valid aggregated time shares: for weights a_io with sum a_io y_io <= 1 in every unit (SM share / budget,
    # memory / usable, 1 / models per unit), summing a_io (d_io x_io) <= a_io (UTIL_CAP - prefill) over the hosted
    # models gives sum a_io d_io x_io + prefill <= UTIL_CAP. They cut off relaxations that spread a little of many
    # models over one unit (no decode constraint binds there), which is what made the dual bound weak.
    for weight in (lambda o: o.decode_sm_pct / SM_BUDGET_PCT, lambda o: o.mem_bytes / usable, lambda o: 1.0 / most):
        h.addConstr(sum(weight(opts[key]) * opts[key].decode_s_per_req * xs[key] for key in opts) + prefill <= UTIL_CAP)
    for j, i in _dominance_pairs(demands, [i for i in cand if mine[i]], pi):
        h.addConstr(sum(ys[key] for key in mine[j]) - sum(ys[key] for key in mine[i]) <= 0)
    nnz = 12 * len(opts)  # about the nonzeros per option above
    h.setOptionValue("mip_max_nodes", node_limit(budget, nnz))
    h.maximize(sum(pi[key[0]] * xs[key] for key in opts))
    info = h.getInfo()
    budget.charge(mip_work(nnz, info.mip_node_count, info.simplex_iteration_count))
    bound = info.mip_dual_bound if info.mip_dual_bound == info.mip_dual_bound else float("inf")
    if info.primal_solution_status != 2:  # no feasible solution within the time limit
        return Priced(bound, float("-inf"), (), exact=True)
    chosen = [(i, opts[i, k]) for (i, k) in opts if h.val(ys[i, k]) > 0.5 and h.val(xs[i, k]) > TOL]
    rates = served_rates([o for _, o in chosen], [demands[i].rate_rps for i, _ in chosen])
    members = tuple((i, o, x) for (i, o), x in zip(chosen, rates) if x > TOL)
    return Priced(bound, sum(pi[i] * x for i, _, x in members), members, exact=True)


