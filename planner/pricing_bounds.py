"""Upper bounds for the pricing search (planner.pricing): a cheap per-set relaxation, level bounds per (set, SM split),
and a certified upper bound on the estimator's LP of any row.

The estimator's LP (planner.estimator) for fixed options is V* = max over the stalled share P in [0, P_max] of V(P), a
fractional knapsack with capacity P on stall seconds q and caps c_j(P) = min(r_j, (UTIL_CAP - P)^+ / d_j). V is concave,
and Lipschitz with constant L = max_j w_j / q_j + sum_j w_j / d_j (the capacity moves the value by at most the best
ratio, each cap by at most w_j). After a golden-section search whose bracket [lo, hi] still holds a maximiser,
V* <= V(a) + L (hi - lo) for any a in the bracket: ``upper`` returns that bound after a few iterations (the rows it cannot
cut get the full search of planner.estimator.best_rates).
"""
from __future__ import annotations

import numpy as np

from planner.estimator import DRAIN_FACTOR, UTIL_CAP
from planner.pricing_tables import CAPS

CAP_INDEX = {c: k for k, c in enumerate(CAPS)}

GOLD = (np.sqrt(5) - 1) / 2


def upper(W, R, Q, D, pmax, iters: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(certified upper bound on V*, a feasible value V(a) <= V*) per row (module docstring); rows with pmax < 0 get
    0 for both (the estimator's value)."""
    order = np.argsort(-(W / Q), axis=1)
    W, R, Q, D = (np.take_along_axis(a, order, axis=1) for a in (W, R, Q, D))
    hi = np.clip(pmax, 0.0, UTIL_CAP)
    lo = np.zeros(len(W))

    def value(load):  # the greedy fill in ratio order: an item gets stall seconds only once those before it are full
        cap = np.minimum(R, np.maximum(0.0, UTIL_CAP - load)[:, None] / D)
        used = Q * cap
        left = load[:, None] - (np.cumsum(used, axis=1) - used)
        return (W * np.maximum(0.0, np.minimum(cap, left / Q))).sum(axis=1)

    a, b = hi - GOLD * (hi - lo), lo + GOLD * (hi - lo)
    fa, fb = value(a), value(b)
    for _ in range(iters):
        left = fa < fb
        lo, hi = np.where(left, a, lo), np.where(left, hi, b)
        a, b = hi - GOLD * (hi - lo), lo + GOLD * (hi - lo)
        fa, fb = value(a), value(b)
    lip = (W / Q).max(axis=1) + (W / D).sum(axis=1)
    bound = np.maximum(fa, fb) + lip * (hi - lo)
    bound = bound * (1 + 1e-9) + 1e-12
    return np.where(pmax < 0, 0.0, bound), np.where(pmax < 0, 0.0, np.maximum(fa, fb))


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
    val = upper(Wr, Rr, Q, D, pmax)[0].reshape(k, num, width)
    return np.where(feasible, val, -np.inf).transpose(1, 0, 2)
