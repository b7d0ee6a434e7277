"""Option tables behind the exact pricing (planner.pricing): per model group and decode SM cap, the Pareto options
of one mesh size, their maximal batch vectors, and the relaxation data the branch and bound prunes with.

Relaxation (a valid upper bound on every unit with the same members and SM caps): every option of model i at cap
c with memory at most m has prefill p >= pmin(m), decode seconds per request d >= dmin(m), decode step t >= tmin(m)
and prefill share limit 1 - t / tau <= capmax(m) (prefix minima / maxima over the options sorted by memory), and
alone it serves at most umax(m) = max max_rps. A member's memory is at most m_i = usable - sum_{j != i} lightest_j.
The estimator's LP (planner.estimator) only loosens as d, q = p + DRAIN_FACTOR max_j t_j fall and P_max rises, so
its value at (pmin, dmin, max_j tmin_j, min_j capmax_j) bounds the value of every batch vector of the members.
"""
from __future__ import annotations

import numpy as np

from planner.tables import model_options

SM_SPLITS = {  # maximal decode SM caps per number of models (percent, multiples of 10, >= 30, sum <= 120)
    1: [(90,)],
    2: [(30, 90), (50, 70), (70, 50), (90, 30)],
    3: [(30, 30, 50), (30, 50, 30), (50, 30, 30)],
    4: [(30, 30, 30, 30)],
}
CAPS = (30, 50, 70, 90)
_TABLES: dict[tuple, "Tables"] = {}
_VECTORS: dict[tuple, np.ndarray] = {}  # candidate option vectors per (mesh, members' option tables and caps)
MAX_CACHED = 50_000  # entries (a few rows each) before the cache starts afresh


def tables_for(demands, gpu, n, cost_model, usable) -> "Tables":
    """The (memoised) tables of one mesh size for these demands' option tables."""
    key = (id(cost_model), gpu.name, usable, n, tuple(d.table_key for d in demands))
    if key not in _TABLES:
        _TABLES[key] = Tables(demands, gpu, n, cost_model, usable)
    return _TABLES[key]


def pareto(opts):
    """Options sorted by memory, keeping only those no smaller option beats in both decode and prefill time."""
    out = []
    for o in sorted(opts, key=lambda o: (o.mem_bytes, o.decode_s_per_req, o.prefill_s_per_req)):
        if not any(q.decode_s_per_req <= o.decode_s_per_req and q.prefill_s_per_req <= o.prefill_s_per_req
                   and q.decode_step_s <= o.decode_step_s for q in out):
            out.append(o)
    return out


class Tables:
    """Per interchangeable group g and SM cap c: Pareto options (sorted by memory) as arrays ``arr[g, c]`` =
    (p, d, mem, t, prefill cap), and padded relaxation arrays ``relax[c]`` (groups x options) of the module docstring."""

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
            for cap in CAPS:
                ps = pareto([o for o in allowed if o.decode_sm_pct <= cap])
                self.opts[g, cap] = ps
                self.arr[g, cap] = (np.array([o.prefill_s_per_req for o in ps]), np.array([o.decode_s_per_req for o in ps]),
                                    np.array([float(o.mem_bytes) for o in ps]), np.array([o.decode_step_s for o in ps]),
                                    np.array([o.prefill_cap for o in ps]))
        self.num_groups = len(keys)
        self.tau = {g: (self.opts[g, 90][0].tpot_limit_s if self.opts[g, 90] else np.inf) for g in range(self.num_groups)}
        width = max([len(v) for v in self.opts.values()] + [1])
        self.relax, self.padded = {}, {}
        for cap in CAPS:
            mem, pmin, dmin, tmin, capmax, umax = (np.full((self.num_groups, width), fill) for fill in
                                                   (np.inf, np.inf, np.inf, np.inf, -np.inf, 0.0))
            for g in range(self.num_groups):
                ps = self.opts[g, cap]
                if not ps:
                    continue
                k = len(ps)
                p, d, m, t, c = self.arr[g, cap]
                mem[g, :k], pmin[g, :k], dmin[g, :k] = m, np.minimum.accumulate(p), np.minimum.accumulate(d)
                tmin[g, :k], capmax[g, :k] = np.minimum.accumulate(t), np.maximum.accumulate(c)
                umax[g, :k] = np.maximum.accumulate([o.max_rps for o in ps])
                for a in (pmin, dmin, tmin, capmax, umax):  # padding repeats the last entry (memory inf: never chosen)
                    a[g, k:] = a[g, k - 1]
            self.relax[cap] = (mem, pmin, dmin, tmin, capmax, umax)
            raw = [np.full((self.num_groups, width), fill) for fill in (np.inf, np.inf, np.inf, np.inf, -np.inf)]
            for g in range(self.num_groups):
                for field, a in enumerate(self.arr[g, cap]):
                    raw[field][g, :len(a)] = a
            self.padded[cap] = tuple(raw)  # (p, d, mem, t, prefill cap) per group, padded with mem inf
        self.stacked = [np.stack([self.padded[c][f] for c in CAPS]) for f in range(5)]  # caps x groups x options
        self.key = (id(cost_model), gpu.name, usable, n)  # with the groups' table keys, names option vectors (_VECTORS)
        self.group_keys = [None] * self.num_groups
        for d in demands:
            self.group_keys[keys[d.table_key]] = d.table_key

    def lightest(self, cap: int) -> np.ndarray:
        """Per group, the memory of its lightest option at this cap (inf when none)."""
        return self.relax[cap][0][:, 0]

    def best_alone(self, cap: int) -> np.ndarray:
        """Per group, the most any option at this cap serves alone on the unit (0 when none)."""
        return self.relax[cap][5][:, -1]

    def candidates(self, sig: tuple[tuple[int, int], ...]) -> np.ndarray:
        """The option vectors worth rating for members (group, cap): the dominant ones among the maximal vectors."""
        key = (self.key, tuple((self.group_keys[g], cap) for g, cap in sig))
        if key not in _VECTORS:
            if len(_VECTORS) > MAX_CACHED:
                _VECTORS.clear()
            vecs = self.batch_vectors(sig)
            _VECTORS[key] = self.dominant(sig, vecs) if len(vecs) > 1 else vecs
        return _VECTORS[key]

    def dominant(self, sig: tuple[tuple[int, int], ...], vecs: np.ndarray) -> np.ndarray:
        """Distinct option vectors that together dominate ``vecs`` (rows of option indices for members (group, cap)).

        A unit's LP (planner.estimator) depends on its options only through d_j and p_j per member, the longest step
        max_j t_j (the drain) and the largest TPOT ratio max_j t_j / tau_j (the stalled share limit); it never falls
        when a d_j or p_j falls while neither maximum grows. So row u is no better than v(u): every member at its
        option of least d among those with p no larger and t_j <= min(max t(u), tau_j max ratio(u)) (u's own option
        qualifies), whenever v(u) fits in memory; otherwise u is kept."""
        p, d, mem, t = ([self.arr[s][f] for s in sig] for f in (0, 1, 2, 3))
        tau = np.array([self.tau[s[0]] for s in sig])
        cols = np.arange(len(sig))
        step = np.stack([t[c][vecs[:, c]] for c in cols], axis=1)
        longest, ratio = step.max(axis=1), (step / tau).max(axis=1)
        out = vecs.copy()
        for c in cols:
            bound = np.minimum(longest, ratio * tau[c]) * (1 + 1e-12)
            ok = (t[c][None, :] <= bound[:, None]) & (p[c][None, :] <= p[c][vecs[:, c]][:, None])
            out[:, c] = np.argmin(np.where(ok, d[c][None, :], np.inf), axis=1)
        fits = sum(mem[c][out[:, c]] for c in cols) <= self.usable
        out = np.where(fits[:, None], out, vecs)
        base = max(len(x) for x in d)
        codes = (out * base ** cols[::-1]).sum(axis=1)  # one integer per row: distinct rows, in a fixed order
        return out[np.unique(codes, return_index=True)[1]]

    def batch_vectors(self, sig: tuple[tuple[int, int], ...]) -> np.ndarray:
        """Indices (rows x members) of the maximal option vectors within memory for members (group, cap)."""
        mems = [self.arr[s][2] for s in sig]
        if any(len(m) == 0 for m in mems):
            return np.zeros((0, len(sig)), dtype=np.intp)
        grid = np.indices([len(m) for m in mems]).reshape(len(sig), -1).T.astype(np.intp)
        used = sum(m[grid[:, k]] for k, m in enumerate(mems))
        keep = used <= self.usable
        for k, (s, m) in enumerate(zip(sig, mems)):  # maximal: no member can take a larger option that is
            p, d, _, t, _ = self.arr[s]                # no slower in decode, step and prefill, within memory
            better = np.append((p[1:] <= p[:-1]) & (d[1:] <= d[:-1]) & (t[1:] <= t[:-1]), False)
            nxt = np.minimum(grid[:, k] + 1, len(m) - 1)
            grows = better[grid[:, k]] & (used - m[grid[:, k]] + m[nxt] <= self.usable)
            keep &= ~grows
        return grid[keep]
