"""Upper bounds for the pricing search (planner.pricing): a cheap per-set relaxation, level bounds per (set, SM split),
and a certified upper bound on the estimator's LP of any row, by LP duality.

The estimator's LP (planner.estimator) for fixed options: max sum_j w_j x_j s.t. 0 <= x_j <= r_j [alpha_j],
d_i x_i + sum_j q_j x_j <= U [beta_i] for every i, sum_j q_j x_j <= P_max [gamma] (U = UTIL_CAP). Its dual: min
sum r alpha + U sum beta + P_max gamma s.t. alpha_j + d_j beta_j + q_j sigma >= w_j, sigma = sum beta + gamma, all >= 0.
For a fixed sigma >= 0 the best dual point is explicit: e_j = (w_j - q_j sigma)^+ must be covered by alpha_j (cost r_j
each) or by d_j beta_j (cost (U - P_max) / d_j each, as gamma = sigma - sum beta falls), with sum beta <= sigma: a
fractional knapsack of capacity sigma on the savings r_j d_j - (U - P_max) per unit of beta, so
    g(sigma) = P_max sigma + sum_j r_j e_j - max { sum_j (r_j d_j - U + P_max) beta_j : 0 <= beta_j <= e_j / d_j,
                                                   sum beta <= sigma }
is an upper bound on the LP value for every sigma (weak duality), and min_sigma g = the LP value (strong duality).
g is convex in sigma, so a short golden-section search over [0, max_j w_j / q_j] gets close to the minimum, and every
point it evaluates is a valid bound: ``dual_bound`` returns the smallest. No tolerance is needed for validity.
"""
from __future__ import annotations

import numpy as np

from planner.estimator import DRAIN_FACTOR, UTIL_CAP
from planner.pricing_tables import CAPS

CAP_INDEX = {c: k for k, c in enumerate(CAPS)}
GOLD = (np.sqrt(5) - 1) / 2


def dual_bound(W, R, Q, D, pmax, iters: int = 16) -> np.ndarray:
    """min over the evaluated sigma of g(sigma) per row (module docstring); 0 where pmax < 0 (the estimator's value)."""
    P = np.clip(pmax, 0.0, UTIL_CAP)[:, None]
    save = R * D - (UTIL_CAP - P)
    order = np.argsort(-save, axis=1)  # the knapsack's order does not depend on sigma
    W, R, Q, D, save = (np.take_along_axis(a, order, axis=1) for a in (W, R, Q, D, save))
    useful = save > 0
    P = P[:, 0]

    def g(sigma):
        e = np.maximum(0.0, W - Q * sigma[:, None])
        cap = np.where(useful, e / D, 0.0)
        before = np.cumsum(cap, axis=1) - cap
        beta = np.maximum(0.0, np.minimum(cap, sigma[:, None] - before))
        return P * sigma + (R * e).sum(axis=1) - (save * beta).sum(axis=1)

    lo, hi = np.zeros(len(W)), (W / Q).max(axis=1)
    best = np.minimum(g(lo), g(hi))
    a, b = hi - GOLD * (hi - lo), lo + GOLD * (hi - lo)
    fa, fb = g(a), g(b)
    for _ in range(iters):  # one new point per iteration: the other interior point is kept
        best = np.minimum(best, np.minimum(fa, fb))
        right = fa > fb  # convex: a minimiser lies in [a, hi] when g(a) > g(b)
        lo, hi = np.where(right, a, lo), np.where(right, hi, b)
        new = np.where(right, lo + GOLD * (hi - lo), hi - GOLD * (hi - lo))
        fn = g(new)
        a, fa, b, fb = np.where(right, b, new), np.where(right, fb, fn), np.where(right, new, a), np.where(right, fn, fa)
    best = np.minimum(best, np.minimum(fa, fb))
    return np.where(pmax < 0, 0.0, best * (1 + 1e-12) + 1e-12)  # the last term: rounding in the sums


def relaxed(tables, groups, W, R, split):
    """Relaxation bounds (planner.pricing_tables) of member sets (groups, W, R: sets x k) at one SM split; -inf
    where the members' lightest options do not fit."""
    k = len(split)
    cols = [tables.relax[c] for c in split]
    light = np.stack([cols[s][0][groups[:, s], 0] for s in range(k)], axis=1)
    total = light.sum(axis=1)
    fits = total <= tables.usable
    P, D, T, C, U = (np.empty_like(light) for _ in range(5))
    for s in range(k):
        mem, pmin, dmin, tmin, capmax, umax = cols[s]
        avail = tables.usable - (total - light[:, s])
        idx = np.maximum(0, (mem[groups[:, s]] <= avail[:, None]).sum(axis=1) - 1)
        g = groups[:, s]
        P[:, s], D[:, s], T[:, s], C[:, s], U[:, s] = pmin[g, idx], dmin[g, idx], tmin[g, idx], capmax[g, idx], umax[g, idx]
    fits &= np.isfinite(D).all(axis=1)
    Q = np.where(fits[:, None], P + DRAIN_FACTOR * T.max(axis=1, keepdims=True), 1.0)
    D = np.where(fits[:, None], D, 1.0)
    pmax = np.where(fits, np.minimum(UTIL_CAP, C.min(axis=1)), -1.0)
    cheap = np.where(pmax < 0, 0.0, (W * np.minimum(np.minimum(R, U), UTIL_CAP / (Q + D))).sum(axis=1))
    return np.where(fits, cheap, -np.inf), (np.minimum(R, U), Q, D, pmax)


def levels(tables, G, W, R, splits):
    """Level bounds (pairs x k x options) of member sets G (groups, pairs x k) at SM splits (one tuple per pair): entry
    (s, o) bounds every batch vector whose largest TPOT ratio t / tau is slot s's option o (ties to the first slot).
    That member is at o exactly; the others at any option with a ratio no larger and memory within what o and the
    others' lightest options leave, relaxed as in planner.pricing_tables; the stalled share limit is exactly 1 - o's
    ratio and the drain at least DRAIN_FACTOR t_o. -inf where nothing fits. One certified search over all rows."""
    k = G.shape[1]
    caps = np.array([[CAP_INDEX[c] for c in split] for split in splits], dtype=np.intp)
    Pp, Dd, Mm, Tt, Cc = (tables.stacked[f][caps, G] for f in range(5))  # pairs x k x options
    valid = np.isfinite(Mm)
    rho = 1.0 - Cc
    light = Mm[:, :, 0]
    num, _, width = Mm.shape
    D, T, P = (np.empty((k, num, width, k)) for _ in range(3))
    feasible = np.empty((k, num, width), dtype=bool)
    pmax = np.empty((k, num, width))
    for star in range(k):
        ms, rs = Mm[:, star, :], rho[:, star, :]
        rest = light.sum(axis=1) - light[:, star]
        feasible[star] = valid[:, star, :] & (ms + rest[:, None] <= tables.usable)
        for s in range(k):
            if s == star:
                D[star, :, :, s], T[star, :, :, s], P[star, :, :, s] = Dd[:, s, :], Tt[:, s, :], Pp[:, s, :]
                continue
            avail = tables.usable - ms - (rest - light[:, s])[:, None]
            ok = valid[:, s, None, :] & (rho[:, s, None, :] <= rs[:, :, None]) & (Mm[:, s, None, :] <= avail[:, :, None])
            for arr, src in ((D, Dd), (T, Tt), (P, Pp)):
                arr[star, :, :, s] = np.where(ok, src[:, s, None, :], np.inf).min(axis=2)
        pmax[star] = np.minimum(UTIL_CAP, 1.0 - rs)
    feasible &= np.isfinite(D).all(axis=3)
    D, T, P = (np.where(feasible[..., None], a, 1.0).reshape(-1, k) for a in (D, T, P))
    Q = P + DRAIN_FACTOR * T.max(axis=1, keepdims=True)
    pmax = np.where(feasible, pmax, -1.0).ravel()
    Wr, Rr = (np.broadcast_to(a[None, :, None, :], (k, num, width, k)).reshape(-1, k) for a in (W, R))
    val = dual_bound(Wr, Rr, Q, D, pmax).reshape(k, num, width)
    return np.where(feasible, val, -np.inf).transpose(1, 0, 2)
