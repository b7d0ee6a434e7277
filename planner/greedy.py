"""The paper's greedy placement (MuxServe Algorithm 1), reproduced with its known defects fixed.

For every way to cut the nodes into power-of-two meshes (multisets of per-node partitions; identical
nodes are interchangeable), models are taken in decreasing computation requirement (rate x FLOPs per
request) and each goes to the mesh whose unit throughput rises most, memory and SM limits respected.
The best candidate wins. Inside a unit, KV memory is split in proportion to rate x KV bytes/token,
each model takes the largest batch whose KV fits its share, and the smallest decode SM% that meets its
rate (all of them if none does).

Fixes against the original:
1. No idle meshes while demand is unserved: an empty mesh gets a replica of the model with the most
   unserved demand that fits it (the original leaves 3-4 of 32 GPUs idle in published configurations).
2. Latencies come from the interpolating cost model, not the next profiled power of two.
3. Decode SM% is always below prefill SM% (prefill runs on the whole mesh; decode options stop at 90%
   when a model shares its unit).
4. Unit evaluations are memoised, so 19 models on 32 GPUs take seconds instead of ~18 s.
"""
from __future__ import annotations

import itertools
import math

from muxplan.catalog import get_gpu
from muxplan.schema import Cluster
from planner.budget import Budget, as_budget
from planner.estimator import SM_BUDGET_PCT, estimate_unit
from planner.placement import UnitChoice, partitions
from planner.tables import Demand, Option, model_options
from profiler.memory import usable_bytes


class UnitConfigurator:
    """Chooses options for a set of (model, routed rate) on a mesh and scores the unit; memoised."""

    def __init__(self, demands: list[Demand], cluster: Cluster, cost_model, temporal: bool = False):
        self.demands, self.cluster, self.cost_model, self.temporal = demands, cluster, cost_model, temporal
        self.cache: dict[tuple, tuple[float, tuple[tuple[int, Option, float], ...]] | None] = {}
        self.charged = 0  # cache entries already charged to a budget (each is one unit evaluated)

    def charge(self, budget: Budget) -> None:
        """Charge ``budget`` for the units evaluated since the last charge."""
        budget.charge(UNIT_WORK * (len(self.cache) - self.charged))
        self.charged = len(self.cache)

    def configure(self, gpu_name: str, n: int, members: tuple[tuple[int, float], ...]):
        """(served rps, members with options) for the unit, or None when it cannot host them."""
        key = (gpu_name, n, members)
        if key not in self.cache:
            self.cache[key] = self._configure(gpu_name, n, members)
        return self.cache[key]

    def _configure(self, gpu_name: str, n: int, members: tuple[tuple[int, float], ...]):
        gpu = get_gpu(gpu_name, self.cluster.gpus)
        alone = len(members) == 1
        per_model = []
        for i, _ in members:
            opts = [o for o in model_options(self.demands[i], gpu, n, self.cost_model) if alone or o.decode_sm_pct < 100]
            if self.temporal:
                opts = [o for o in opts if o.decode_sm_pct == 100] or opts
            if not opts:
                return None
            per_model.append(opts)
        fixed = sum(min(o.weight_bytes_per_gpu + o.reserve_bytes for o in opts) for opts in per_model)
        kv_free = usable_bytes(gpu) - fixed
        if kv_free <= 0:
            return None
        weights = [max(r, 1e-9) * opts[0].kv_bytes_per_gpu / opts[0].batch for (i, r), opts in zip(members, per_model)]
        chosen = []
        for (i, r), opts, w in zip(members, per_model, weights):
            share = kv_free * w / sum(weights)
            fits = [o for o in opts if o.kv_bytes_per_gpu + o.reserve_bytes - min(q.reserve_bytes for q in opts) <= share]
            if not fits:
                return None
            top_batch = max(o.batch for o in fits)
            chosen.append(sorted((o for o in fits if o.batch == top_batch), key=lambda o: o.decode_sm_pct))
        prefill_load = sum(opts[0].prefill_s_per_req * r for (i, r), opts in zip(members, chosen))
        picked = []
        for (i, r), opts in zip(members, chosen):
            meets = [o for o in opts if o.decode_s_per_req * r + prefill_load <= 1]
            picked.append(meets[0] if meets else min(opts, key=lambda o: o.decode_s_per_req))
        if not self.temporal:
            while sum(o.decode_sm_pct for o in picked) > SM_BUDGET_PCT:  # shrink the widest decode share
                k = max(range(len(picked)), key=lambda k: picked[k].decode_sm_pct)
                lower = [o for o in chosen[k] if o.decode_sm_pct < picked[k].decode_sm_pct]
                if not lower:
                    return None
                picked[k] = lower[-1]
        full = tuple((i, o, r) for (i, r), o in zip(members, picked))
        est = estimate_unit(gpu, [(self.demands[i], o, r) for i, o, r in full], self.temporal)
        return (est.total_rps, full) if est.feasible else None


MAX_COMBOS_PER_GROUP = 5000
UNIT_WORK = 0.29  # planner.budget units per unit evaluated (bench/fit_work.py)


def _group_combos(size: int, count: int):
    """Multisets of per-node partitions for ``count`` identical nodes; for big groups (more multisets
    than MAX_COMBOS_PER_GROUP) only homogeneous ones and mixes of two partitions at a few ratios."""
    parts = partitions(size)
    if math.comb(len(parts) + count - 1, count) <= MAX_COMBOS_PER_GROUP:
        yield from itertools.combinations_with_replacement(parts, count)
        return
    for part in parts:
        yield (part,) * count
    for a, b in itertools.combinations(parts, 2):
        for k in sorted({count // 4, count // 2, 3 * count // 4} - {0, count}):
            yield (a,) * k + (b,) * (count - k)


def mesh_candidates(cluster: Cluster):
    """Multisets of (GPU type, mesh size) from per-node partitions; identical nodes are interchangeable."""
    groups: dict[tuple[str, int], int] = {}
    for node in cluster.nodes:
        groups[(node.gpu, node.num_gpus)] = groups.get((node.gpu, node.num_gpus), 0) + 1
    per_group = [[tuple((gpu, n) for part in combo for n in part) for combo in _group_combos(size, count)]
                 for (gpu, size), count in groups.items()]
    for pick in itertools.product(*per_group):
        yield tuple(sorted(itertools.chain(*pick), key=lambda m: -m[1]))


def place_greedy(demands: list[Demand], cluster: Cluster, cost_model, budget: Budget | float = 60.0, temporal: bool = False) -> list[UnitChoice]:
    """Best candidate's units (see module docstring) found within ``budget`` (planner.budget: units evaluated, so the
    same inputs give the same plan on any machine; a number is seconds of it)."""
    budget = as_budget(budget)
    conf = UnitConfigurator(demands, cluster, cost_model, temporal)
    order = sorted(range(len(demands)), key=lambda i: -demands[i].compute_per_s)
    best: tuple[float, list[UnitChoice]] = (-1.0, [])
    for meshes in mesh_candidates(cluster):
        if budget.exhausted() and best[1]:
            break
        value, units = _fill(meshes, order, demands, conf, budget)
        if value > best[0] + 1e-9:
            best = (value, units)
    conf.charge(budget)
    return best[1]


def _fill(meshes, order, demands, conf, budget: Budget) -> tuple[float, list[UnitChoice]]:
    hosted: list[tuple[tuple[int, float], ...]] = [() for _ in meshes]
    scores = [0.0] * len(meshes)
    for i in order:
        conf.charge(budget)
        if budget.exhausted():  # out of budget: the remaining (colder) models stay unplaced
            break
        best_gain, best_k, best_score = 0.0, None, 0.0
        for k, (gpu, n) in enumerate(meshes):
            trial = conf.configure(gpu, n, hosted[k] + ((i, demands[i].rate_rps),))
            if trial and trial[0] - scores[k] > best_gain + 1e-12:
                best_gain, best_k, best_score = trial[0] - scores[k], k, trial[0]
        if best_k is not None:
            hosted[best_k] += ((i, demands[i].rate_rps),)
            scores[best_k] = best_score
    served = {i: 0.0 for i in range(len(demands))}
    for k, (gpu, n) in enumerate(meshes):
        if hosted[k]:
            for i, _, got in _served(conf, gpu, n, hosted[k]):
                served[i] += got
    for k, (gpu, n) in enumerate(meshes):  # fix 1: no idle mesh while demand is unserved
        if hosted[k]:
            continue
        for i in sorted(served, key=lambda i: -(demands[i].rate_rps - served[i])):
            left = demands[i].rate_rps - served[i]
            trial = conf.configure(gpu, n, ((i, left),)) if left > 1e-9 else None
            if trial:
                hosted[k], scores[k] = ((i, left),), trial[0]
                served[i] += trial[0]
                break
    # route to each unit what it serves, so replicas' routing shares add up to at most 1
    units = [UnitChoice(n, gpu, tuple(_served(conf, gpu, n, hosted[k]))) for k, (gpu, n) in enumerate(meshes) if hosted[k]]
    return sum(scores), units


def _served(conf, gpu, n, members):
    key = ("served", gpu, n, members)
    if key not in conf.cache:
        conf.cache[key] = _estimate_served(conf, gpu, n, members)
    return conf.cache[key]


def _estimate_served(conf, gpu, n, members):
    g = get_gpu(gpu, conf.cluster.gpus)
    full = conf.configure(gpu, n, members)[1]
    est = estimate_unit(g, [(conf.demands[i], o, r) for i, o, r in full], conf.temporal)
    return [(i, o, s) for (i, o, _), s in zip(full, est.served_rps)]
