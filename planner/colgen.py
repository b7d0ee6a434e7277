"""Column generation with dual smoothing (Wentges), shared by planner.exact and planner.headroom.

Each round solves the restricted LP over the columns generated so far (duals pi_LP, mu_LP) and prices at the smoothed
point (pi, mu) = a (pi_c, mu_c) + (1 - a) (pi_LP, mu_LP), where (pi_c, mu_c), the centre, is the point that gave the
best bound so far and a = SMOOTHING (0 in the first round). The caller's Lagrangian bound is valid at any pi >= 0,
mu >= 0 (for headroom, any convex combination keeps sum_i pi_i R_i = 1), so every round's bound is a proven upper
bound and the smallest is kept. Pricing at the centre side damps the oscillation of LP duals, which is what made the
bound trail the LP value for many rounds. When no column priced at the smoothed point improves the restricted LP
(reduced cost under the LP duals <= 0: a mispricing), the next round prices at the LP duals themselves (a = 0); a
round at the LP duals whose exact pricing finds nothing proves the LP optimal. The loop also stops once the bound is
within CG_GAP of the LP value (the rest cannot move the reported gap by more), or once its budget (planner.budget:
counted work, so the same inputs stop at the same round on any machine) is spent.

Quick rounds come first: pricing rates only its most promising chunk (planner.pricing's ``chunks``), keeps runners-up,
and skips the mesh sizes whose last pricing did not improve the LP except every REVISIT rounds; once a quick round
at the LP duals that priced every mesh size finds nothing, the rounds are exact (and smoothed). Only exact rounds
can prove the LP optimal; every round's bound is valid (a mesh size not priced gives none).
"""
from __future__ import annotations

import os
import sys
import time

from planner.master_lp import lp_work

SMOOTHING = 0.5
QUICK_SHARE = 0.5  # of the time: quick rounds stop then at the latest
REVISIT = 4  # quick rounds price a mesh size whose last pricing did not help every REVISIT rounds
CG_GAP = 1e-3


def reduced_cost(col, pi, mu) -> float:
    return sum(pi[i] * r for i, _, r in col.members) - mu[col.gpu] * col.mesh_size


def column_generation(lp_fn, bound_fn, price_fn, cols: list, bound: float, budget):
    """Grow ``cols`` in place. ``lp_fn(cols) -> (value, pi, mu)``; ``price_fn(pi, mu, cols, stalls) -> (new columns,
    slack, per_gpu, enumerated)`` (planner.exact._pricing_round; ``stalls`` counts rounds at the LP duals in a row whose
    unproven pricing found nothing); ``bound_fn(pi, mu, slack, per_gpu)`` the Lagrangian bound at (pi, mu). Returns
    (LP value, best bound, converged: the bound is within CG_GAP of the LP value or the LP proven optimal). ``budget``
(planner.budget.Budget) is charged for the LPs here and for pricing by ``price_fn``."""
    quick_until = budget.used_units + QUICK_SHARE * (budget.total_units - budget.used_units)
    center, retry, lp, start, stalls, quick = None, False, float("-inf"), time.perf_counter(), 0, True
    last_useful: dict = {}  # (GPU type, mesh size) -> the last round whose pricing there improved the LP
    rnd, everywhere = 0, True
    while not budget.exhausted():
        lp, pi_lp, mu_lp = lp_fn(cols)
        budget.charge(lp_work(cols))
        a = 0.0 if center is None or retry or quick else SMOOTHING  # quick rounds want columns, not bounds
        pi = [a * c + (1 - a) * p for c, p in zip(center[0], pi_lp)] if a else list(pi_lp)
        mu = {t: a * center[1][t] + (1 - a) * m for t, m in mu_lp.items()} if a else dict(mu_lp)
        if quick and budget.used_units > quick_until:  # leave exact rounds the time to prove a bound
            quick, center = False, None
        # quick rounds price only where pricing helped lately (or not for REVISIT rounds); a round that helps nowhere
        # is followed by one that prices everywhere
        skip = set() if everywhere or not quick else {key for key, r in last_useful.items() if rnd - r > 1 and (rnd - r) % REVISIT}
        new_cols, slack, per_gpu, enumerated = price_fn(pi, mu, cols, stalls, quick, skip, not a)
        here = bound_fn(pi, mu, slack, per_gpu)
        if here < bound or center is None:
            center = (pi, mu)
        bound = min(bound, here)
        improving = [c for c in new_cols if reduced_cost(c, pi_lp, mu_lp) > 1e-6]
        for key in {(c.gpu, c.mesh_size) for c in cols} | {(c.gpu, c.mesh_size) for c in new_cols}:
            last_useful.setdefault(key, -1)
        for c in improving:
            last_useful[c.gpu, c.mesh_size] = rnd
        rnd, everywhere = rnd + 1, not improving and bool(skip)
        cols += new_cols
        if os.environ.get("MUXPLAN_DEBUG"):
            print(f"CG quick={quick} a={a} lp={lp:.4f} bound={bound:.4f} here={here:.4f} cols={len(cols)} new={len(new_cols)} "
                  f"improving={len(improving)} skip={len(skip)} work={budget.used_units:.0f} cpu={time.process_time():.2f} t={time.perf_counter() - start:.2f}", file=sys.stderr)
        if bound - lp <= CG_GAP * max(1e-9, abs(bound)):
            return lp, bound, True
        if everywhere:
            continue
        if improving:
            retry, stalls = False, 0
        elif a:
            retry = True  # mispricing: price at the LP duals next
        elif quick:
            quick, center = False, None  # quick pricing found nothing at the LP duals: exact (and smoothed) from now on
        elif enumerated:  # at the LP duals nothing improves and every pricing problem was proven: the LP is optimal
            return lp, bound, all(s <= 1e-6 * max(1.0, mu[t]) for t, s in slack.items())
        else:
            stalls += 1  # unproven (MILP) pricing found nothing: the caller gives it more time
    return lp, bound, False
