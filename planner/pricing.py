"""Exact pricing by branch and bound: the best unit of one mesh size for given duals, in milliseconds.

The pricing problem (planner.exact): choose distinct models i with options o_i and rates x_i maximising
sum_i w_i x_i subject to the estimator's unit constraints: decode SM shares sum to <= 120 (each >= 30,
so at most four models), memory sum <= usable, 0 <= x_i <= r_i and the LP of planner.estimator.
It is solved exactly, without a MILP, by a search that only evaluates units that could still win:

1. Sizes k = 1..4 in turn. A model at decode SM cap c serves at most u_i(c) = the most its options at cap c
   serve alone, so a unit of k models is worth at most sum_i a_i(k), a_i(k) = w_i min(r_i, u_i(c_k)), c_k the
   largest cap a k-model split allows (90, 90, 50, 30). Member sets are grown in decreasing a_i(k) and cut once
   their sum bound (members chosen + the best that could still join) is <= T, the threshold: the best value found
   so far or ``floor`` if higher (up to ``top`` - 1 runners-up found on the way are returned as further columns).
   Sets that cannot hold every member's lightest option in memory are cut too.
2. Interchangeable models (same option table) are ordered by (dual, rate capped at u_i(90)); j is dominated by i
   when w_i >= w_j and min(r_i, u) >= min(r_j, u). Swapping a hosted j for an absent i never loses (x_j <= min(r_j, u)
   <= r_i), so only member sets closed under dominators are kept (duals within TIE count as equal; what that may
   cost is added to the bound).
3. Per surviving set and maximal SM split ((90), (30,90), (50,70), (70,50), (90,30), (30,30,50), ..., (30,30,30,30)):
   the relaxation of planner.pricing_tables bounds every batch vector; pairs bounded by <= T are cut.
4. The rest, best bound first, in chunks: the dominant maximal batch vectors within memory (a higher SM share or a
   larger batch never hurts; planner.pricing_tables.Tables.dominant), each bounded by LP duality
   (planner.pricing_bounds.dual_bound) and, in decreasing bound while one could still win, rated by the estimator's LP (planner.estimator.best_rates: max over the stalled share P of
   a fractional knapsack, concave in P, golden-section search to ~1e-12), updating T; the search stops when the
   next pair's bound is <= T.

Every unit not rated has a bound <= T, so the best rated unit is the pricing optimum and max(value, floor) plus a
tolerance is its dual bound. Work is bounded by counts (MAX_PARTS partial sets, MAX_ROWS rated rows), never by
time, so the same duals give the same columns. Past a budget the result is marked not exact and its dual bound is
the largest bound of what was left unrated (still a valid bound, only looser).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.estimator import DRAIN_FACTOR, SM_BUDGET_PCT, UTIL_CAP, best_rates
from planner.pricing_bounds import dual_bound, levels, relaxed
from planner.pricing_tables import SM_SPLITS, tables_for
from planner.tables import DECODE_SM_PCTS
from profiler.memory import usable_bytes

TIE = 1e-9  # duals closer than this count as equal for dominance
MAX_PARTS = 300_000  # partial member sets per size beyond which the search is not exact (see module docstring)
MAX_ROWS = 400_000  # rated (members, options) rows per pricing problem, likewise
CHUNK = 64  # (set, split) pairs bounded and rated together
ROW_BATCH = 32  # option vectors given the full search together
LARGEST_CAP = {1: 90, 2: 90, 3: 50, 4: 30}
# The search's work in planner.budget units (~ms of the reference core), from what it counts: per call; per
# member-set row built; per bound call and row (relaxation + LP duality over pairs); per level-bound call and row;
# per rating call, per row bounded and per row searched. Fitted by bench/fit_work.py.
WORK_UNITS = np.array([0.69, 0.0032, 0.27, 0.00064, 0.27, 0.047, 0.0, 0.0045, 4.42, 0.0052])
CALL, SET_ROW, BOUND_CALL, BOUND_ROW, LEVEL_CALL, LEVEL_ROW, RATE_CALL, RATE_ROW, SEARCH_CALL, SEARCH_ROW = range(10)


@dataclass(frozen=True)
class Priced:
    """A priced unit: ``members`` are UnitChoice members, ``value`` their objective under the duals. ``exact``:
    ``dual_bound`` is the proven optimum (plus tolerance) over every unit of this mesh size; otherwise it is a looser
    bound (inf when none). ``more``: further good units, (value, members) pairs, best first."""
    dual_bound: float
    value: float
    members: tuple
    exact: bool
    more: tuple = ()
    counts: tuple = ()  # what the search evaluated (WORK_UNITS' entries)

    @property
    def work(self) -> float:
        """planner.budget units the search spent."""
        return float(np.dot(self.counts, WORK_UNITS)) if self.counts else 0.0


def _dominators(cand, group, w, reff):
    """For each candidate position j, the positions that dominate it (module docstring, 2), and the tie loss."""
    key = np.round(w / TIE)
    doms, loss = [], 0.0
    by_group: dict[int, list[int]] = {}
    for j, g in enumerate(group):
        by_group.setdefault(int(g), []).append(j)
    for j, g in enumerate(group):
        mine = [i for i in by_group[int(g)] if i != j and w[i] >= w[j] - TIE and reff[i] >= reff[j]
                and (key[i], reff[i], -cand[i]) > (key[j], reff[j], -cand[j])]
        doms.append(mine)
        worst = max((max(0.0, w[j] - w[i]) * reff[j] for i in mine), default=0.0)
        loss = max(loss, worst)
    # a unit sees at most (4 members) x (models) swaps, each losing at most the worst single swap
    return doms, 4 * len(cand) * loss


def _sets(a, light, usable, k, threshold, before=None):
    """Position tuples (sets x k, ascending) of size-k member sets whose sum bound beats the threshold, or None past
    MAX_PARTS. ``a`` is sorted descending; ``before[j, i]`` = 1 when i < j dominates j: j joins only sets holding
    every such i (the others are checked on the finished sets)."""
    m = len(a)
    if m < k:
        return np.zeros((0, k), dtype=np.intp)
    before = np.zeros((m, m), dtype=np.float32) if before is None else before
    cs = np.concatenate([[0.0], np.cumsum(a)])
    least = float(light.min())
    j = np.arange(m)
    need = k - 1
    ok = (j + need < m) & (a + cs[np.minimum(j + 1 + need, m)] - cs[np.minimum(j + 1, m)] > threshold) & (light + need * least <= usable)
    ok &= before.sum(axis=1) == 0
    parts, psum, pmem = j[ok][:, None], a[ok], light[ok]
    for level in range(1, k):
        need = k - level - 1
        last = parts[:, -1]
        nxt = j[None, :]
        tail = cs[np.minimum(j + 1 + need, m)] - cs[np.minimum(j + 1, m)]
        keep = ((nxt > last[:, None]) & (nxt + need < m) & (psum[:, None] + (a + tail)[None, :] > threshold)
                & (pmem[:, None] + (light + need * least)[None, :] <= usable))
        if before.any():
            absent = np.ones((len(parts), m), dtype=np.float32)
            np.put_along_axis(absent, parts, 0.0, axis=1)
            keep &= (absent @ before.T) == 0  # no dominator of the newcomer placed before it is missing
        rows, cols = np.nonzero(keep)
        if len(rows) > MAX_PARTS:
            return None
        parts = np.concatenate([parts[rows], cols[:, None]], axis=1)
        psum, pmem = psum[rows] + a[cols], pmem[rows] + light[cols]
    return parts


def price_enumerated(demands, gpu, n, cost_model, pi, tol: float = 1e-9, floor: float = 0.0, top: int = 1,
                     chunks: int | None = None) -> Priced | None:
    """The best unit of mesh size n for duals pi (module docstring); units worth <= ``floor`` need not be found.
    None when the SM shares are not those SM_SPLITS is written for (the caller then prices by MILP)."""
    if set(DECODE_SM_PCTS) - {100} != {30, 50, 70, 90} or SM_BUDGET_PCT != 120:
        return None
    tables = tables_for(demands, gpu, n, cost_model, usable_bytes(gpu))
    cand = np.array([i for i, d in enumerate(demands) if pi[i] > tol and d.rate_rps > 0 and tables.opts[tables.group_of[i], 90]],
                    dtype=np.intp)
    if not len(cand):
        return Priced(max(0.0, floor), 0.0, (), exact=True)
    group = np.array([tables.group_of[i] for i in cand], dtype=np.intp)
    w = np.array([float(pi[i]) for i in cand])
    r = np.array([float(demands[i].rate_rps) for i in cand])
    doms, tie_loss = _dominators(cand, group, w, np.minimum(r, tables.best_alone(90)[group]))
    found: dict[tuple, tuple[float, tuple]] = {}
    state = {"rows": 0, "exact": True, "left": -np.inf, "best": -np.inf, "chunks": chunks, "counts": np.zeros(len(WORK_UNITS))}
    state["counts"][CALL] = 1

    def threshold() -> float:
        return max(floor, state["best"])

    light = tables.lightest(90)[group]
    for k in (1, 2, 3, 4):
        a = w * np.minimum(r, tables.best_alone(LARGEST_CAP[k])[group])
        order = np.lexsort((cand, -a))
        rank = np.empty(len(order), dtype=np.intp)
        rank[order] = np.arange(len(order))
        before = np.zeros((len(order), len(order)), dtype=np.float32)
        for j, dj in enumerate(doms):
            for i in dj:
                if rank[i] < rank[j]:
                    before[rank[j], rank[i]] = 1.0
        parts = _sets(a[order], light[order], tables.usable, k, threshold(), before)
        state["counts"][SET_ROW] += MAX_PARTS if parts is None else len(parts)
        if parts is None:  # too many sets: bound them by the best k sum bounds
            state["exact"], state["left"] = False, max(state["left"], float(np.sort(a)[::-1][:k].sum()))
            continue
        sets = np.sort(order[parts], axis=1)
        if len(sets) and any(doms):  # keep sets closed under dominators
            member = np.zeros((len(sets), len(cand)), dtype=bool)
            np.put_along_axis(member, sets, True, axis=1)
            closed = np.ones(len(sets), dtype=bool)
            for j, dj in enumerate(doms):
                if dj:
                    closed &= ~member[:, j] | member[:, dj].all(axis=1)
            sets = sets[closed]
        if not len(sets):
            continue
        _search(tables, cand, group, w, r, sets, k, found, threshold, state)
    best = max(found.items(), key=lambda kv: (kv[1][0], [-c for c in kv[0]]), default=None)
    value, members = (best[1][0], best[1][1]) if best else (0.0, ())
    more = tuple(sorted((v for s, v in found.items() if s != best[0] and v[0] > floor), key=lambda v: -v[0]))[:max(0, top - 1)] if best else ()
    slack = 1e-9 * max(1.0, abs(value)) + tie_loss
    bound = max(value, floor, state["left"]) + slack
    return Priced(bound, value, members, exact=state["exact"], more=more, counts=tuple(state["counts"]))


def _search(tables, cand, group, w, r, sets, k, found, threshold, state):
    """Steps 3 and 4 of the module docstring for the member sets (positions) of size k: (set, split) pairs in
    decreasing relaxation bound, in chunks; each chunk gets its level bounds and then its exact rating."""
    G, W, R = group[sets], w[sets], r[sets]
    pairs = []
    counts = state["counts"]
    for split in SM_SPLITS[k]:
        cheap, (Rr, Q, D, pmax) = relaxed(tables, G, W, R, split)
        live = np.nonzero(cheap > threshold())[0]
        counts[BOUND_CALL] += 1
        counts[BOUND_ROW] += len(sets)
        if len(live):
            ub = dual_bound(W[live], Rr[live], Q[live], D[live], pmax[live])
            pairs += [(float(u), int(s), split) for u, s in zip(ub, live)]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    for start in range(0, len(pairs), CHUNK):
        chunk = [p for p in pairs[start:start + CHUNK] if p[0] > threshold()]
        if not chunk:
            return
        if state["rows"] > MAX_ROWS or start // CHUNK >= (state["chunks"] or len(pairs)):
            state["exact"], state["left"] = False, max(state["left"], chunk[0][0])
            return
        idx = np.array([p[1] for p in chunk])
        counts[LEVEL_CALL] += 1
        counts[LEVEL_ROW] += len(chunk)
        lv = levels(tables, G[idx], W[idx], R[idx], [p[2] for p in chunk])
        best = lv.reshape(len(chunk), -1).max(axis=1)
        leveled = [(float(u), p[1], p[2], lv[j]) for j, (u, p) in enumerate(zip(best, chunk)) if u > threshold()]
        leveled.sort(key=lambda p: (-p[0], p[1], p[2]))
        if leveled:
            _rate(tables, cand, group, w, r, sets, leveled, found, threshold, state)


def _rate(tables, cand, group, w, r, sets, chunk, found, threshold, state):
    """Rate the maximal batch vectors of the chunk's (set, split) pairs whose level bound beats the threshold exactly;
    record each set's best unit."""
    blocks = []
    t = threshold()
    for _, s, split, lv in chunk:
        sig = tuple((int(group[p]), cap) for p, cap in zip(sets[s], split))
        vecs = tables.candidates(sig)
        if len(vecs):
            ratio = np.stack([1.0 - tables.arr[g][4][vecs[:, c]] for c, g in enumerate(sig)], axis=1)
            star = np.argmax(ratio, axis=1)
            vecs = vecs[lv[star, vecs[np.arange(len(vecs)), star]] > t]
        if len(vecs):
            blocks.append((sets[s], sig, vecs))
    if not blocks:
        return
    state["rows"] += sum(len(v) for _, _, v in blocks)
    counts = state["counts"]
    counts[RATE_CALL] += 1
    counts[RATE_ROW] += sum(len(v) for _, _, v in blocks)

    def stack(field):
        return np.concatenate([np.stack([tables.arr[s][field][v[:, c]] for c, s in enumerate(sig)], axis=1) for _, sig, v in blocks])

    W = np.concatenate([np.tile(w[m], (len(v), 1)) for m, _, v in blocks])
    R = np.concatenate([np.tile(r[m], (len(v), 1)) for m, _, v in blocks])
    P, D, T, C = stack(0), stack(1), stack(3), stack(4)
    Q = P + DRAIN_FACTOR * T.max(axis=1, keepdims=True)
    pmax = np.minimum(UTIL_CAP, C.min(axis=1))
    # certified bounds first; then the full search on rows in decreasing bound, in batches, while a row could still
    # beat the threshold (quick rounds: every row that beats the floor, so each set's best unit is known)
    ub = dual_bound(W, R, Q, D, pmax)
    values, xs = np.full(len(W), -np.inf), np.zeros_like(W)
    order = np.argsort(-ub, kind="stable")
    order = order[ub[order] > threshold()]
    step = max(1, len(order)) if state["chunks"] is not None else ROW_BATCH
    for start in range(0, len(order), step):
        rows = order[start:start + step]
        rows = rows[ub[rows] > max(threshold(), values.max() if state["chunks"] is None else -np.inf)]
        if not len(rows):
            break
        counts[SEARCH_CALL] += 1
        counts[SEARCH_ROW] += len(rows)
        values[rows], xs[rows] = best_rates(W[rows], R[rows], Q[rows], D[rows], pmax[rows])
    offset = 0
    for m, sig, v in blocks:
        local = int(np.argmax(values[offset:offset + len(v)]))
        row, offset = offset + local, offset + len(v)
        if values[row] <= max(threshold(), 0.0):
            continue
        ids = tuple(int(cand[p]) for p in m)
        members = tuple((i, tables.opts[s][j], float(x)) for i, s, j, x in zip(ids, sig, v[local], xs[row]) if x > 1e-9)
        key = tuple(sorted(ids))
        if key not in found or values[row] > found[key][0]:
            found[key] = (float(values[row]), members)
            state["best"] = max(state["best"], float(values[row]))
