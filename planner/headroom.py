"""Headroom: the largest common rate scale h at which every model is still served within its SLO.

Column generation over the same unit configurations as planner.exact, on the common-scale LP

    max  z   s.t.  z R_i - sum_c a_{c,i} lambda_c <= 0   [pi_i]     (R_i = H r_i, h = H z)
                   sum_{c of type t} n_c lambda_c <= G_t  [mu_t]

with H = min_i (G x the best req/s per GPU model i reaches alone) / r_i, an upper bound on h, so capping a
column's rates at R_i (what pricing does) loses nothing. The duals satisfy sum_i pi_i R_i = 1, and for
any pi >= 0 with that sum and any mu >= 0 (Lagrangian bound, valid at every iteration)

    z <= sum_t mu_t G_t + sum_t G_t max(0, max_n (R*_{t,n} - mu_t n) / n)  and  z <= sum_t G_t max_n R*_{t,n} / n

with R*_{t,n} the pricing optimum (max sum_i pi_i x_i over units of n GPUs of type t; planner.pricing). The
integer master maximises min_i s_i / R_i over the generated columns (planner.master, 'fairness') and the
plan then routes exactly each model's demand r_i over its replicas, in proportion to their rates.
"""
from __future__ import annotations

import time

from planner.budget import as_budget
from planner.colgen import column_generation
from planner.exact import MASTER_SHARE, TOL, WALL_NOTE, ExactSolution, _pricing_round, _single_columns, cluster_gpus
from planner.master_lp import headroom_lp
from planner.placement import UnitChoice, served_per_model
from planner.tables import Demand, model_options
from profiler.memory import usable_bytes

MAX_SCALE = 64.0


def scale_bound(demands: list[Demand], gpus, counts, cost_model) -> float:
    """H: no model can be served beyond all GPUs of the cluster running it alone at its best rate per GPU."""
    bound = MAX_SCALE
    for d in demands:
        if d.rate_rps <= 0:
            continue
        best = 0.0
        for t, (gpu, max_n) in gpus.items():
            n = 1
            while n <= max_n:
                rates = [o.max_rps for o in model_options(d, gpu, n, cost_model) if o.mem_bytes <= usable_bytes(gpu)]
                if rates:
                    best = max(best, counts[t] // n * max(rates))
                n *= 2
        bound = min(bound, best / d.rate_rps)
    return bound


def route_demand(units: list[UnitChoice], demands: list[Demand]) -> list[UnitChoice]:
    """The same units routing each model's demand (or all they can serve, when less), split in proportion to the
    replicas' rates."""
    placed = served_per_model(units, len(demands))
    out = []
    for u in units:
        members = tuple((i, o, r * min(1.0, demands[i].rate_rps / placed[i])) for i, o, r in u.members if placed[i] > 0)
        out.append(UnitChoice(u.mesh_size, u.gpu, members))
    return out


def solve_headroom(demands: list[Demand], cluster, cost_model, budget, seed: int = 0, backend: str = "highs",
                   warm_start: list[UnitChoice] | None = None) -> ExactSolution:
    """Units serving every model's demand at the largest common scale found within ``budget`` (planner.budget, or
    seconds of it); value and bound in units of h."""
    from planner.master import solve_master

    start = time.perf_counter()
    budget = as_budget(budget)
    time_limit_s = budget.left_s
    gpus, counts = cluster_gpus(cluster)
    active = [d for d in demands if d.rate_rps > 0]
    h_max = scale_bound(active, gpus, counts, cost_model) if active else 0.0
    if h_max <= 0:
        return ExactSolution((), 0.0, 0.0, 0.0, "no model can be served", time.perf_counter() - start, 0)
    scaled = [d.scaled(h_max) for d in demands]
    cols = list(warm_start or []) + _single_columns(scaled, gpus, cost_model)
    seen = {(c.gpu, c.mesh_size, tuple((i, o, round(r, 9)) for i, o, r in c.members)) for c in cols}
    colgen_budget, price_s = budget.share(0.7), max(0.25, time_limit_s / 20)

    def bound_at(pi, mu, slack, per_gpu):  # the module docstring's two bounds
        return min(sum(mu[t] * counts[t] + counts[t] * max(0.0, slack[t]) for t in counts), sum(counts[t] * per_gpu[t] for t in counts))

    _, bound, converged = column_generation(
        lambda c: headroom_lp(c, scaled, counts), bound_at,
        lambda pi, mu, c, stalls, quick, skip, at_lp: _pricing_round(scaled, gpus, cost_model, pi, mu, colgen_budget, price_s * 3 ** stalls,
                                                                     seen, cols=c, quick=quick, skip=skip, at_lp=at_lp),
        cols, 1.0, colgen_budget)
    value, units, status = solve_master(cols, scaled, [1.0] * len(scaled), counts, "fairness", backend, budget.share(MASTER_SHARE), seed)
    value = max(0.0, value)
    bound = max(bound, value)
    gap = (bound - value) / bound if bound > TOL else 0.0
    label = "optimal" if gap <= 1e-6 else f"within {gap:.2%} of the bound (integer master {status} over the generated columns)"
    if not converged:
        label += " (column generation stopped at its work budget)"
    if budget.wall_stopped:
        label += WALL_NOTE
    return ExactSolution(tuple(route_demand(list(units), demands)), value * h_max, bound * h_max, gap, label,
                         time.perf_counter() - start, len(cols))
