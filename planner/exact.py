"""Exact placement by column generation, with a proven bound and gap.

Columns are unit configurations c = (GPU type t, mesh size n_c, models with options and rates a_{c,i}).
Master (configuration LP, then integer over the generated columns):

    max  sum_i w_i s_i
    s.t. s_i <= r_i                                  (demand)
         s_i - sum_c a_{c,i} lambda_c <= 0   [pi_i]  (served only where placed; replicas add up)
         sum_{c of type t} n_c lambda_c <= G_t [mu_t] (GPUs of each type)
         lambda_c in Z+   (R+ in the LP)

Power-of-two meshes always pack into power-of-two nodes by first-fit decreasing, so node partitions
need not be enumerated. Pricing, per (t, n): the best unit maximising  sum pi_i x_i - mu_t n  subject to
exactly the estimator's unit constraints (planner.estimator): one option per hosted model, memory
sum mem_i <= usable, decode SM sum sm_i <= 120, 0 <= x_i <= r_i and for every hosted i
d_i x_i + Q <= UTIL_CAP and Q <= 1 - t_i / tau_i (Q the stalled share, planner.estimator). So the estimator
of the final plan equals the objective. It is solved exactly
by enumeration (planner.pricing, milliseconds); when too many distinct duals make that large, a restricted
enumeration proposes columns and, once it finds none, a MILP over binaries y_{i,o} (model i at option o)
and rates x_{i,o} <= min(r_i, 1 / (p + d)) y_{i,o} proves the round. The MILP is tightened by valid
aggregated time shares (decode time weighted by SM, memory or model-count share, plus all prefill, <= 1)
and by dominance rows between interchangeable models. Bound (Lagrangian, valid at every iteration):
    UB = sum_i (w_i - pi_i) r_i + sum_t mu_t G_t + sum_t G_t max(0, max_n rc*_{t,n} / n)
with rc*_{t,n} the pricing dual bound (enumeration: its value plus a tolerance; restricted enumeration: none,
inf); minimising over mu_t for the same pi gives
    UB = sum_i max(0, w_i - pi_i) r_i + sum_t G_t max_n (R*_{t,n} / n),  R*_{t,n} = max sum pi_i x_i,
and both are kept; at convergence UB = the LP value (plus the pricing tolerance). When the LP serves all
demand, columns from the min-GPU LP are added to help the integer master pack whole units.
Objectives: throughput (w = 1), weighted (w_i = r_i / sum r), fairness (max min s_i / r_i, then
throughput at that level), min-gpus (min sum n_c lambda_c with s = r over the generated columns).
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

from muxplan.catalog import get_gpu
from muxplan.files import InputError
from muxplan.schema import Cluster
from planner.estimator import DRAIN_FACTOR, SM_BUDGET_PCT, UTIL_CAP, served_rates
from planner.colgen import column_generation
from planner.master_lp import master_lp, min_gpu_lp
from planner.placement import UnitChoice
from planner.pricing import Priced, price_enumerated
from planner.tables import Demand, model_options
from profiler.memory import usable_bytes

TOL = 1e-7
FILL_GAP = 0.015  # see solve_exact: column generation for packing stops once the plan is this close to demand,
FILL_SHARE = 0.3  # or when this share of the time limit has passed
QUICK_CHUNKS = int(os.environ.get('QC', 1))  # quick pricing rounds rate only the most promising chunk per unit size (planner.colgen)
TOP = 8  # columns kept per pricing problem: the best unit and the runners-up the search rated anyway
MASTER_SHARE = 0.9  # of the time left that the integer master may use (model building and plan output need the rest)


@dataclass(frozen=True)
class ExactSolution:
    units: tuple[UnitChoice, ...]
    value: float
    bound: float
    gap: float
    status: str
    seconds: float
    num_columns: int


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


def _price(demands, gpu, n, cost_model, pi, time_limit_s) -> Priced | None:
    """Best unit of mesh size n for duals pi by the MILP (its dual bound proven), or None when no option fits."""
    h = _highs()
    h.setOptionValue("time_limit", max(0.05, time_limit_s))
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
    h.maximize(sum(pi[key[0]] * xs[key] for key in opts))
    info = h.getInfo()
    bound = info.mip_dual_bound if info.mip_dual_bound == info.mip_dual_bound else float("inf")
    if info.primal_solution_status != 2:  # no feasible solution within the time limit
        return Priced(bound, float("-inf"), (), exact=True)
    chosen = [(i, opts[i, k]) for (i, k) in opts if h.val(ys[i, k]) > 0.5 and h.val(xs[i, k]) > TOL]
    rates = served_rates([o for _, o in chosen], [demands[i].rate_rps for i, _ in chosen])
    members = tuple((i, o, x) for (i, o), x in zip(chosen, rates) if x > TOL)
    return Priced(bound, sum(pi[i] * x for i, _, x in members), members, exact=True)


def _single_columns(demands, gpus, cost_model):
    """Every model alone on every mesh size (its best option, full SMs allowed): the seed columns."""
    cols = []
    for t, (gpu, max_n) in gpus.items():
        n = 1
        while n <= max_n:
            for i, d in enumerate(demands):
                fits = [o for o in model_options(d, gpu, n, cost_model) if o.mem_bytes <= usable_bytes(gpu)]
                if fits and d.rate_rps > 0:
                    best = max(fits, key=lambda o: min(o.max_rps, d.rate_rps) - 1e-6 * o.decode_sm_pct)
                    cols.append(UnitChoice(n, t, ((i, best, min(best.max_rps, d.rate_rps)),)))
            n *= 2
    return cols


def _best_single(demands, gpu, n, cost_model, pi) -> float:
    """max_i pi_i x_i over one model alone on a mesh of n GPUs, any option (a column pricing omits)."""
    best = 0.0
    for i, d in enumerate(demands):
        if pi[i] > TOL and d.rate_rps > 0:
            rates = [o.max_rps for o in model_options(d, gpu, n, cost_model) if o.mem_bytes <= usable_bytes(gpu)]
            if rates:
                best = max(best, pi[i] * min(d.rate_rps, max(rates)))
    return best


def _twins(demands: list[Demand]) -> dict[int, list[int]]:
    """Models with the same architecture and mean lengths: their option tables are identical."""
    groups: dict[tuple, list[int]] = {}
    for i, d in enumerate(demands):
        groups.setdefault(d.table_key, []).append(i)
    return {i: g for g in groups.values() for i in g}


def _clones(demands, col: UnitChoice, pi, mu_t: float) -> list[UnitChoice]:
    """The column with one member swapped for an interchangeable model (DESIGN §4: clone found
    configurations): still feasible with x = min(x_i, r_j), kept when its reduced cost is positive."""
    twins = _twins(demands)
    inside = {i for i, _, _ in col.members}
    out = []
    for k, (i, o, x) in enumerate(col.members):
        for j in twins[i]:
            if j in inside:
                continue
            members = list(col.members)
            members[k] = (j, o, min(x, demands[j].rate_rps))
            rc = sum(pi[m] * r for m, _, r in members) - mu_t * col.mesh_size
            if rc > 1e-6:
                out.append(UnitChoice(col.mesh_size, col.gpu, tuple(members)))
    return out


def _column_floors(cols, pi) -> dict[tuple[str, int], float]:
    """Per (GPU type, mesh size), the best value sum_i pi_i a_{c,i} of a column already generated: a feasible pricing
    value, so pricing need only look above it (planner.pricing's floor) and the pricing optimum is at least it."""
    floors: dict[tuple[str, int], float] = {}
    for c in cols:
        v = sum(pi[i] * r for i, _, r in c.members)
        if v > floors.get((c.gpu, c.mesh_size), 0.0):
            floors[c.gpu, c.mesh_size] = v
    return floors


def _pricing_round(demands, gpus, cost_model, pi, mu, deadline, price_s, seen, exact=True, cols=(), quick=False):
    """New columns with positive reduced cost (the best unit per mesh size and up to TOP - 1 runners-up, with their
    clones), per GPU type the best proven reduced cost per GPU and the best proven pricing value per GPU, and whether
    every mesh size was priced exactly (planner.pricing)."""
    new_cols, slack, per_gpu = [], {t: 0.0 for t in gpus}, {t: 0.0 for t in gpus}
    enumerated = True
    floors = _column_floors(cols, pi)
    for t, (gpu, max_n) in gpus.items():
        n = 1
        while n <= max_n:
            left = deadline - time.perf_counter()
            if left <= 0:
                slack[t] = per_gpu[t] = float("inf")  # not priced: no bound from this round
                enumerated = False
                break
            priced = price_enumerated(demands, gpu, n, cost_model, pi, TOL, floor=floors.get((t, n), 0.0), top=TOP,
                                      chunks=QUICK_CHUNKS if quick else None)
            inexact = priced is not None and not priced.exact
            if exact and not quick and (priced is None or inexact and priced.value - mu[t] * n <= 1e-6):
                # the search ran past its budget and found no improving column: the MILP, for a column or a proof
                milp = _price(demands, gpu, n, cost_model, pi, min(left, price_s))
                if milp is not None and priced is not None:
                    milp = Priced(min(milp.dual_bound, priced.dual_bound), milp.value, milp.members, True)
                priced = milp or priced
                enumerated = enumerated and milp is None and not inexact
            elif inexact:
                enumerated = False
            if priced is None:
                slack[t] = per_gpu[t] = float("inf")
                n *= 2
                continue
            # pricing leaves out one model alone at 100% decode SMs (the seed columns): count those too
            dual_bound = max(priced.dual_bound, _best_single(demands, gpu, n, cost_model, pi))
            slack[t] = max(slack[t], (dual_bound - mu[t] * n) / n)
            per_gpu[t] = max(per_gpu[t], dual_bound / n)
            for value, members in ((priced.value, priced.members), *priced.more):
                if not members or value - mu[t] * n <= 1e-6:
                    continue
                for col in (UnitChoice(n, t, members), *_clones(demands, UnitChoice(n, t, members), pi, mu[t])):
                    ckey = (t, n, tuple((i, o, round(r, 9)) for i, o, r in col.members))
                    if ckey not in seen:
                        seen.add(ckey)
                        new_cols.append(col)
            n *= 2
    return new_cols, slack, per_gpu, enumerated


def cluster_gpus(cluster: Cluster):
    gpus, counts = {}, {}
    for node in cluster.nodes:
        largest = 1 << (node.num_gpus.bit_length() - 1)
        prev = gpus.get(node.gpu, (None, 0))[1]
        gpus[node.gpu] = (get_gpu(node.gpu, cluster.gpus), max(prev, largest))
        counts[node.gpu] = counts.get(node.gpu, 0) + node.num_gpus
    return gpus, counts


def solve_exact(
    demands: list[Demand], cluster: Cluster, cost_model, objective: str = "throughput", time_limit_s: float = 30.0,
    seed: int = 0, backend: str = "highs", warm_start: list[UnitChoice] | None = None,
) -> ExactSolution:
    """Column generation + integer master over the columns (see module docstring)."""
    from planner.master import solve_master

    start = time.perf_counter()
    if cluster.num_gpus == 0 or not demands:
        raise InputError("nothing to plan: the cluster has no GPUs or the workload no models")
    gpus, counts = cluster_gpus(cluster)
    total = sum(d.rate_rps for d in demands) or 1.0
    w = [d.rate_rps / total if objective == "weighted" else 1.0 for d in demands]
    cols = list(warm_start or []) + _single_columns(demands, gpus, cost_model)
    if not cols:
        raise InputError("no model fits on any mesh of this cluster (a model bigger than any node's memory?)")
    seen = {(c.gpu, c.mesh_size, tuple((i, o, round(r, 9)) for i, o, r in c.members)) for c in cols}
    deadline, price_s = start + 0.7 * time_limit_s, max(0.25, time_limit_s / 20)

    def bound_at(pi, mu, slack, per_gpu):  # the module docstring's two forms of the Lagrangian bound
        demand_part = sum(max(0.0, wi - p) * d.rate_rps for wi, p, d in zip(w, pi, demands))
        return min(demand_part + sum(mu[t] * counts[t] + counts[t] * max(0.0, slack[t]) for t in counts),
                   demand_part + sum(counts[t] * per_gpu[t] for t in counts))

    lp, bound, converged = column_generation(
        lambda c: master_lp(c, demands, w, counts), bound_at,
        lambda pi, mu, c, stalls, quick: _pricing_round(demands, gpus, cost_model, pi, mu, deadline, price_s * 3 ** stalls, seen,
                                                        cols=c, quick=quick),
        cols, sum(wi * d.rate_rps for wi, d in zip(w, demands)), deadline)  # the first bound: serving all demand

    remaining = max(0.5, MASTER_SHARE * (time_limit_s - (time.perf_counter() - start)))  # leave room to build the plan
    value, units, status = solve_master(cols, demands, w, counts, objective, backend, remaining, seed)
    if converged and objective in ("throughput", "weighted") and lp >= sum(wi * d.rate_rps for wi, d in zip(w, demands)) * (1 - 1e-9):
        # The LP serves all demand, so its duals (pi = 0 where served, mu = 0) say nothing about which units pack
        # well into whole GPUs, and the integer master may fall short. Generate GPU-efficient columns from the LP
        # that serves all demand on the fewest GPUs until the integer master is within FILL_GAP of the demand (or FILL_SHARE of the time is spent)
        # (the bound stays the total demand).
        fill_until = min(deadline, start + FILL_SHARE * time_limit_s)
        while value < bound * (1 - FILL_GAP) and time.perf_counter() < fill_until:
            duals = min_gpu_lp(cols, demands, counts)
            if duals is None:
                break
            new_cols = _pricing_round(demands, gpus, cost_model, duals[0], duals[1], deadline, price_s, seen, exact=False)[0]
            if not new_cols:
                break
            cols += new_cols
            remaining = max(0.5, min(MASTER_SHARE * (time_limit_s - (time.perf_counter() - start)), FILL_SHARE * time_limit_s))
            found = solve_master(cols, demands, w, counts, objective, backend, remaining, seed)
            if found[0] > value:
                value, units, status = found
    if objective in ("fairness", "min-gpus"):
        bound_out = float("nan")  # the configuration-LP bound is for served rate, not for these objectives
    else:
        bound_out = max(bound, value)
    finite = bound_out == bound_out and bound_out != float("inf")
    gap = max(0.0, (bound_out - value) / bound_out) if finite and bound_out > 0 else (0.0 if finite else float("nan"))
    # "optimal" only when proven; otherwise say what the integer master achieved over the generated columns
    label = "optimal" if finite and gap <= 1e-6 else f"within {gap:.2%} of the bound (integer master {status} over the generated columns)"
    if not converged:
        label += " (column generation stopped at the time limit)"
    return ExactSolution(tuple(units), value, bound_out, gap, label, time.perf_counter() - start, len(cols))
