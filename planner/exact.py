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
of the final plan equals the objective. It is solved exactly by branch and bound (planner.pricing: sum, relaxation,
level and LP-duality bounds; dominant option vectors; milliseconds to a few hundred), from a floor: the best column
already generated (and mu_t n at the LP's own duals), since only units above it are columns and the pricing optimum
is at least it. Past its work budget the search is not proven and a MILP (planner.pricing_milp) takes over. The
loop (planner.colgen): restricted LP by an interior point method (central duals), quick rounds that rate only the
most promising candidates, then exact rounds at smoothed duals (Wentges). Bound (Lagrangian, valid at every
round and for any pi >= 0, mu >= 0, so at smoothed duals too):
    UB = sum_i (w_i - pi_i) r_i + sum_t mu_t G_t + sum_t G_t max(0, max_n rc*_{t,n} / n)
with rc*_{t,n} the pricing dual bound (inf for a mesh size not priced that round); minimising over mu_t for the same
pi gives
    UB = sum_i max(0, w_i - pi_i) r_i + sum_t G_t max_n (R*_{t,n} / n),  R*_{t,n} = max sum pi_i x_i,
and both are kept; at convergence UB = the LP value (plus the pricing tolerance). When the LP serves all
demand, columns from the min-GPU LP are added to help the integer master pack whole units. The integer plan's rates
are then re-optimised within its units (planner.master.polish_rates), and a throughput plan still short of its bound
goes through a neighbourhood search that re-solves two units' GPUs at a time (planner.neighbourhood); neither touches
the bound.
Objectives: throughput (w = 1), weighted (w_i = r_i / sum r), fairness (max min s_i / r_i, then
throughput at that level), min-gpus (min sum n_c lambda_c with s = r over the generated columns).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from muxplan.catalog import get_gpu
from muxplan.files import InputError
from muxplan.schema import Cluster
from planner.budget import Budget, as_budget
from planner.colgen import column_generation
from planner.master_lp import lp_work, master_lp, min_gpu_lp
from planner.neighbourhood import improve as improve_plan
from planner.placement import UnitChoice
from planner.pricing import Priced, price_enumerated
from planner.pricing_milp import _highs, _price, quiet_stdout  # noqa: F401  (re-exported: master, master_lp, tests)
from planner.tables import Demand, model_options
from profiler.memory import usable_bytes

TOL = 1e-7
FILL_GAP = 0.015  # see solve_exact: column generation for packing stops once the plan is this close to demand,
FILL_SHARE = 0.3  # or when this share of the time limit has passed
QUICK_CHUNKS = 1  # quick pricing rounds rate only the most promising chunk per unit size (planner.colgen)
TOP = 8  # columns kept per pricing problem: the best unit and the runners-up the search rated anyway
MASTER_SHARE = 0.5  # of the budget left that the integer master may use: a master at its node limit gains less per unit
# of work than planner.neighbourhood's search does with the rest (bench/RESULTS.md)
IMPROVE_GAP = 0.005  # a plan this far below its bound goes through planner.neighbourhood's search
IMPROVE_SHARE = 0.8  # of the budget left (the goodput objective's headroom stage and the closed loop need the rest)
WALL_NOTE = " (cut short by the wall-clock safety stop: not reproducible)"


@dataclass(frozen=True)
class ExactSolution:
    units: tuple[UnitChoice, ...]
    value: float
    bound: float
    gap: float
    status: str
    seconds: float
    num_columns: int


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


def _pricing_round(demands, gpus, cost_model, pi, mu, budget, price_s, seen, exact=True, cols=(), quick=False, skip=(),
                   at_lp=False):
    """New columns with positive reduced cost (the best unit per mesh size and up to TOP - 1 runners-up, with their
    clones), per GPU type the best proven reduced cost per GPU and the best proven pricing value per GPU, and whether
    every mesh size was priced exactly (planner.pricing). Pricing work is charged to ``budget``; ``price_s`` is what a
MILP fallback may spend."""
    new_cols, slack, per_gpu = [], {t: 0.0 for t in gpus}, {t: 0.0 for t in gpus}
    enumerated = True
    floors = _column_floors(cols, pi)
    for t, (gpu, max_n) in gpus.items():
        n = 1
        while n <= max_n:
            if (t, n) in skip:  # not priced this round (planner.colgen): no bound from it
                slack[t] = per_gpu[t] = float("inf")
                enumerated = False
                n *= 2
                continue
            if budget.exhausted():
                slack[t] = per_gpu[t] = float("inf")  # not priced: no bound from this round
                enumerated = False
                break
            # at the LP's own duals a unit worth <= mu n is no column, and max(R*, mu n) gives the same bound as R*
            # (the Lagrangian at its best mu, module docstring): pricing need only look above mu n too
            floor = max(floors.get((t, n), 0.0), mu[t] * n if at_lp else 0.0)
            priced = price_enumerated(demands, gpu, n, cost_model, pi, TOL, floor=floor, top=TOP,
                                      chunks=QUICK_CHUNKS if quick else None)
            if priced is not None:
                budget.charge(priced.work)
            inexact = priced is not None and not priced.exact
            if exact and not quick and (priced is None or inexact and priced.value - mu[t] * n <= 1e-6):
                # the search ran past its budget and found no improving column: the MILP, for a column or a proof
                milp = _price(demands, gpu, n, cost_model, pi, budget.at_most(price_s))
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
    demands: list[Demand], cluster: Cluster, cost_model, objective: str = "throughput", budget: Budget | float = 30.0,
    seed: int = 0, backend: str = "highs", warm_start: list[UnitChoice] | None = None, improve: bool = True,
) -> ExactSolution:
    """Column generation + integer master over the columns (see module docstring), within ``budget`` (planner.budget:
    counted work; a number is seconds of it); with ``improve``, a throughput plan short of its bound by more than
    IMPROVE_GAP goes through planner.neighbourhood's search."""
    from planner.master import solve_master

    start = time.perf_counter()
    budget = as_budget(budget)
    time_limit_s = budget.left_s
    if cluster.num_gpus == 0 or not demands:
        raise InputError("nothing to plan: the cluster has no GPUs or the workload no models")
    gpus, counts = cluster_gpus(cluster)
    total = sum(d.rate_rps for d in demands) or 1.0
    w = [d.rate_rps / total if objective == "weighted" else 1.0 for d in demands]
    cols = list(warm_start or []) + _single_columns(demands, gpus, cost_model)
    if not cols:
        raise InputError("no model fits on any mesh of this cluster (a model bigger than any node's memory?)")
    seen = {(c.gpu, c.mesh_size, tuple((i, o, round(r, 9)) for i, o, r in c.members)) for c in cols}
    colgen_budget, price_s = budget.share(0.7), max(0.25, time_limit_s / 20)

    def bound_at(pi, mu, slack, per_gpu):  # the module docstring's two forms of the Lagrangian bound
        demand_part = sum(max(0.0, wi - p) * d.rate_rps for wi, p, d in zip(w, pi, demands))
        return min(demand_part + sum(mu[t] * counts[t] + counts[t] * max(0.0, slack[t]) for t in counts),
                   demand_part + sum(counts[t] * per_gpu[t] for t in counts))

    lp, bound, converged = column_generation(
        lambda c: master_lp(c, demands, w, counts, interior=True), bound_at,
        lambda pi, mu, c, stalls, quick, skip, at_lp: _pricing_round(demands, gpus, cost_model, pi, mu, colgen_budget, price_s * 3 ** stalls,
                                                                     seen, cols=c, quick=quick, skip=skip, at_lp=at_lp),
        cols, sum(wi * d.rate_rps for wi, d in zip(w, demands)), colgen_budget)  # the first bound: serving all demand

    value, units, status = solve_master(cols, demands, w, counts, objective, backend, budget.share(MASTER_SHARE), seed)
    if converged and objective in ("throughput", "weighted") and lp >= sum(wi * d.rate_rps for wi, d in zip(w, demands)) * (1 - 1e-9):
        # The LP serves all demand, so its duals (pi = 0 where served, mu = 0) say nothing about which units pack
        # well into whole GPUs, and the integer master may fall short. Generate GPU-efficient columns from the LP
        # that serves all demand on the fewest GPUs until the integer master is within FILL_GAP of the demand (or FILL_SHARE of the time is spent)
        # (the bound stays the total demand).
        fill = budget.at_most(FILL_SHARE * time_limit_s)
        while value < bound * (1 - FILL_GAP) and not fill.exhausted():
            duals = min_gpu_lp(cols, demands, counts)
            if duals is None:
                break
            fill.charge(lp_work(cols))
            new_cols = _pricing_round(demands, gpus, cost_model, duals[0], duals[1], fill, price_s, seen, exact=False)[0]
            if not new_cols:
                break
            cols += new_cols
            found = solve_master(cols, demands, w, counts, objective, backend, fill.share(MASTER_SHARE), seed)
            if found[0] > value:
                value, units, status = found
    better = 0
    if improve and objective == "throughput" and value < bound * (1 - IMPROVE_GAP) and not budget.exhausted():
        units, value, better = improve_plan(list(units), demands, cluster, cost_model, budget.share(IMPROVE_SHARE))
    if objective in ("fairness", "min-gpus"):
        bound_out = float("nan")  # the configuration-LP bound is for served rate, not for these objectives
    else:
        bound_out = max(bound, value)
    finite = bound_out == bound_out and bound_out != float("inf")
    gap = max(0.0, (bound_out - value) / bound_out) if finite and bound_out > 0 else (0.0 if finite else float("nan"))
    # "optimal" only when proven; otherwise say what the integer master achieved over the generated columns
    label = "optimal" if finite and gap <= 1e-6 else f"within {gap:.2%} of the bound (integer master {status} over the generated columns)"
    if better:
        label += f"; neighbourhood search improved it {better}x"
    if not converged:
        label += " (column generation stopped at its work budget)"
    if budget.wall_stopped:
        label += WALL_NOTE
    return ExactSolution(tuple(units), value, bound_out, gap, label, time.perf_counter() - start, len(cols))
