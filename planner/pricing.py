"""Exact pricing by enumeration: the best unit of one mesh size for given duals, in milliseconds.

The pricing problem (planner.exact): choose distinct models i with options o_i and rates x_i maximising
sum_i w_i x_i subject to the estimator's unit constraints: decode SM shares sum to <= 120 (each >= 30,
so at most four models), memory sum <= usable, 0 <= x_i <= r_i and d_i x_i + sum_j p_j x_j <= 1.
Instead of a MILP it enumerates only what can be optimal:

1. Interchangeable models (same option table) are ordered by (dual, rate); j is dominated by i when
   w_i >= w_j and r_i >= r_j. Swapping a hosted j for an absent i never loses, so only unit member sets
   closed under dominators are enumerated (with tied duals these are a few prefixes of chains).
2. A higher decode SM share never hurts (same memory and prefill, less decode time), and neither does a
   larger batch (less decode and prefill time per request, more memory): per member set only the maximal
   SM splits ((90), (30,90), (50,70), (70,50), (90,30), (30,30,50)..., (30,30,30,30)) and the batch vectors
   that cannot grow within memory are kept, from per-model Pareto option lists.
3. For fixed options the rate LP is the estimator's (planner.estimator.best_rates): max over the stalled
   share P in [0, P_max] of a fractional knapsack, concave in P, solved by a golden-section search over P
   vectorised over all candidates to ~1e-12. The stall cost per request q_j = p_j + drain depends on the
   row's longest decode step, and P_max on every member's TPOT limit: both are per-row constants.

The result is the pricing optimum (not a heuristic), so the dual bound it returns is the value itself plus
a tolerance. When the enumeration would be too large (many models with distinct duals), it enumerates the most
valuable models only and marks the result as not exact (dual bound inf); the caller then falls back to the MILP.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from planner.estimator import DRAIN_FACTOR, SM_BUDGET_PCT, UTIL_CAP, best_rates
from planner.tables import DECODE_SM_PCTS, model_options
from profiler.memory import usable_bytes

SM_SPLITS = {  # maximal decode SM caps per number of models (percent, multiples of 10, >= 30, sum <= 120)
    1: [(90,)],
    2: [(30, 90), (50, 70), (70, 50), (90, 30)],
    3: [(30, 30, 50), (30, 50, 30), (50, 30, 30)],
    4: [(30, 30, 30, 30)],
}
MAX_ROWS = 200_000  # candidate (members, options) rows beyond which enumeration is not exact (see below)


@dataclass(frozen=True)
class Priced:
    """A priced unit: ``members`` are UnitChoice members, ``value`` their objective under the duals. ``exact``:
    ``dual_bound`` bounds every unit of this mesh size (else it is inf and the members a heuristic column)."""
    dual_bound: float
    value: float
    members: tuple
    exact: bool


class _TooLarge(Exception):
    """The enumeration would exceed MAX_SETS member sets or MAX_ROWS rows."""
MAX_SETS = 20_000  # member sets beyond which likewise
TIE = 1e-9  # duals closer than this count as equal for dominance (costs at most 4 * TIE * max rate)


_TABLES: dict[tuple, "_Tables"] = {}


def _pareto(opts):
    """Options sorted by memory, keeping only those no smaller option beats in both decode and prefill time."""
    out = []
    for o in sorted(opts, key=lambda o: (o.mem_bytes, o.decode_s_per_req, o.prefill_s_per_req)):
        if not any(q.decode_s_per_req <= o.decode_s_per_req and q.prefill_s_per_req <= o.prefill_s_per_req
                   and q.decode_step_s <= o.decode_step_s for q in out):
            out.append(o)
    return out


class _Tables:
    """Per interchangeable group and SM cap: Pareto options (sorted by memory) as arrays."""

    def __init__(self, demands, gpu, n, cost_model, usable):
        self.usable = usable
        self.group_of, self.opts, self.arr = {}, {}, {}
        keys: dict[tuple, int] = {}
        for i, d in enumerate(demands):
            g = keys.setdefault(d.table_key, len(keys))
            self.group_of[i] = g
            if (g, 90) in self.opts:
                continue
            allowed = [o for o in model_options(d, gpu, n, cost_model) if o.decode_sm_pct < 100 and o.mem_bytes <= usable]
            for cap in (30, 50, 70, 90):
                ps = _pareto([o for o in allowed if o.decode_sm_pct <= cap])
                self.opts[g, cap] = ps
                self.arr[g, cap] = (np.array([o.prefill_s_per_req for o in ps]), np.array([o.decode_s_per_req for o in ps]),
                                    np.array([float(o.mem_bytes) for o in ps]), np.array([o.decode_step_s for o in ps]),
                                    np.array([o.prefill_cap for o in ps]))
        self._vectors: dict[tuple, np.ndarray] = {}

    def batch_vectors(self, sig: tuple[tuple[int, int], ...]) -> np.ndarray:
        """Indices (rows x members) of the maximal option vectors within memory for members (group, cap)."""
        if sig not in self._vectors:
            mems = [self.arr[s][2] for s in sig]
            if any(len(m) == 0 for m in mems):
                self._vectors[sig] = np.zeros((0, len(sig)), dtype=np.intp)
                return self._vectors[sig]
            grid = np.array(list(itertools.product(*[range(len(m)) for m in mems])), dtype=np.intp).reshape(-1, len(sig))
            used = sum(m[grid[:, k]] for k, m in enumerate(mems))
            keep = used <= self.usable
            for k, (s, m) in enumerate(zip(sig, mems)):  # maximal: no member can take a larger option that is
                p, d, _, t, _ = self.arr[s]                # no slower in decode, step and prefill, within memory
                better = np.append((p[1:] <= p[:-1]) & (d[1:] <= d[:-1]) & (t[1:] <= t[:-1]), False)
                nxt = np.minimum(grid[:, k] + 1, len(m) - 1)
                grows = better[grid[:, k]] & (used - m[grid[:, k]] + m[nxt] <= self.usable)
                keep &= ~grows
            self._vectors[sig] = grid[keep]
        return self._vectors[sig]


def _closed_sets(groups: dict[int, list[int]], w, r, most: int):
    """Member sets of size 1..most closed under dominators within each group (see module docstring), and
    what treating duals within TIE as equal may cost at most."""
    per_group, loss = [], 0.0
    for members in groups.values():
        order = sorted(members, key=lambda i: (-round(w[i] / TIE), -r[i], i))
        doms = {j: [i for i in order if i != j and w[i] >= w[j] - TIE and r[i] >= r[j]
                    and (round(w[i] / TIE), r[i], -i) > (round(w[j] / TIE), r[j], -j)] for j in order}
        # a swap j -> i loses at most (w_j - w_i)^+ r_j; a unit sees at most most x len(order) swaps per group
        worst = max((max(0.0, w[j] - w[i]) * r[j] for j in order for i in doms[j]), default=0.0)
        loss += most * len(order) * worst
        found = [()]

        def grow(chosen, start):
            for pos in range(start, len(order)):
                j = order[pos]
                if len(found) > MAX_SETS:
                    return
                if len(chosen) < most and all(i in chosen for i in doms[j]):
                    new = chosen + (j,)
                    found.append(new)
                    grow(new, pos + 1)
        grow((), 0)
        if len(found) > MAX_SETS:
            return None, loss
        per_group.append(found)
    sizes = [1] + [0] * most  # number of combined sets by size, before building them
    for found in per_group:
        per_size = [sum(1 for f in found if len(f) == k) for k in range(most + 1)]
        sizes = [sum(sizes[a] * per_size[k - a] for a in range(k + 1)) for k in range(most + 1)]
    if sum(sizes) > MAX_SETS:
        return None, loss
    out = [()]
    for found in per_group:
        out = [a + b for a in out for b in found if len(a) + len(b) <= most]
    return [s for s in out if s], loss


def price_enumerated(demands, gpu, n, cost_model, pi, tol: float = 1e-9) -> Priced | None:
    """The best unit like exact._price, exactly. When that is too large to enumerate (many models with distinct
    duals), the same enumeration over the most valuable models only: a heuristic column (not exact, dual bound
    inf). None when nothing fits or even the smallest restricted enumeration is too large."""
    for limit in (None, 32, 16, 8, 4, 2):
        try:
            return _enumerate(demands, gpu, n, cost_model, pi, tol, limit)
        except _TooLarge:
            pass
    return None


def _enumerate(demands, gpu, n, cost_model, pi, tol, limit) -> Priced | None:
    """Enumeration over the candidates (the ``limit`` worth most alone when given); raises _TooLarge."""
    if set(DECODE_SM_PCTS) - {100} != {30, 50, 70, 90} or SM_BUDGET_PCT != 120:
        return None  # SM_SPLITS is written for these shares
    usable = usable_bytes(gpu)
    cand = [i for i, d in enumerate(demands) if pi[i] > tol and d.rate_rps > 0]
    key = (id(cost_model), gpu.name, usable, n, tuple(d.table_key for d in demands))
    if key not in _TABLES:
        _TABLES[key] = _Tables(demands, gpu, n, cost_model, usable)
    tables = _TABLES[key]
    cand = [i for i in cand if tables.opts[tables.group_of[i], 90]]
    if not cand:
        return None
    if limit is not None and len(cand) > limit:  # heuristic: the models worth most alone on the unit
        alone = {i: pi[i] * min(demands[i].rate_rps, tables.opts[tables.group_of[i], 90][-1].max_rps) for i in cand}
        cand = sorted(sorted(cand, key=lambda i: (-alone[i], i))[:limit])
    most = SM_BUDGET_PCT // 30
    groups: dict[int, list[int]] = {}
    for i in cand:
        groups.setdefault(tables.group_of[i], []).append(i)
    w = {i: float(pi[i]) for i in cand}
    r = {i: float(demands[i].rate_rps) for i in cand}
    sets, tie_loss = _closed_sets(groups, w, r, most)
    if sets is None:
        raise _TooLarge
    lightest = {g: float(tables.arr[g, 30][2][0]) if len(tables.arr[g, 30][2]) else np.inf for g in groups}
    blocks, rows = [], 0
    for members in sets:
        if sum(lightest[tables.group_of[i]] for i in members) > usable:
            continue
        for split in SM_SPLITS[len(members)]:
            sig = tuple((tables.group_of[i], cap) for i, cap in zip(members, split))
            vecs = tables.batch_vectors(sig)
            if len(vecs):
                blocks.append((members, split, sig, vecs))
                rows += len(vecs)
        if rows > MAX_ROWS:
            raise _TooLarge
    if not blocks:
        return None
    best = (-np.inf, None)
    by_size: dict[int, list] = {}
    for blk in blocks:
        by_size.setdefault(len(blk[0]), []).append(blk)
    for k, blks in by_size.items():
        W = np.concatenate([np.tile([w[i] for i in m], (len(v), 1)) for m, _, _, v in blks])
        R = np.concatenate([np.tile([r[i] for i in m], (len(v), 1)) for m, _, _, v in blks])
        P = np.concatenate([np.stack([tables.arr[s][0][v[:, c]] for c, s in enumerate(sig)], axis=1) for _, _, sig, v in blks])
        D = np.concatenate([np.stack([tables.arr[s][1][v[:, c]] for c, s in enumerate(sig)], axis=1) for _, _, sig, v in blks])
        T = np.concatenate([np.stack([tables.arr[s][3][v[:, c]] for c, s in enumerate(sig)], axis=1) for _, _, sig, v in blks])
        C = np.concatenate([np.stack([tables.arr[s][4][v[:, c]] for c, s in enumerate(sig)], axis=1) for _, _, sig, v in blks])
        Q = P + DRAIN_FACTOR * T.max(axis=1, keepdims=True)
        pmax = np.minimum(UTIL_CAP, C.min(axis=1))
        # x_i (q_i + d_i) <= UTIL_CAP bounds every row; a coarse search gives feasible values (lower bounds):
        # only rows that could beat the best of them get the full search
        upper = np.where(pmax < 0, 0.0, (W * np.minimum(R, UTIL_CAP / (Q + D))).sum(axis=1))
        coarse = best_rates(W, R, Q, D, pmax, iters=12)[0]
        live = upper >= max(coarse.max(), best[0]) - 1e-12
        values = np.full(len(W), -np.inf)
        xs = np.zeros_like(W)
        values[live], xs[live] = best_rates(W[live], R[live], Q[live], D[live], pmax[live])
        top = int(np.argmax(values))
        if values[top] > best[0]:
            row, found = top, None
            for m, split, sig, v in blks:  # locate the row's block
                if row < len(v):
                    found = (m, sig, v[row])
                    break
                row -= len(v)
            m, sig, vec = found
            members = tuple((i, tables.opts[s][j], float(x)) for i, s, j, x in zip(m, sig, vec, xs[top]) if x > tol)
            best = (float(values[top]), members)
    value, members = best
    if limit is not None:
        return Priced(float("inf"), value, members, exact=False)
    # the dual bound: the golden-section error (interval ~1e-13 of P) is far below 1e-9 relative; ties within
    # TIE may lose tie_loss at most
    slack = 1e-9 * max(1.0, abs(value)) + tie_loss
    return Priced(value + slack, value, members, exact=True)
