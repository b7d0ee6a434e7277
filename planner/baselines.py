"""Spatial partitioning baseline: every model on dedicated GPUs, replicas of hot models while GPUs remain.

Each model gets its own mesh of the smallest power-of-two size its weights fit (the paper's spatial
partitioning), hottest first; leftover meshes go to replicas of the model with the most unserved
demand. The temporal baseline is the greedy colocation run with ``temporal=True`` (one job at a time
per unit, see planner.estimator).
"""
from __future__ import annotations

from muxplan.schema import Cluster
from planner.estimator import estimate_unit
from planner.exact import cluster_gpus
from planner.placement import UnitChoice
from planner.tables import Demand, model_options
from profiler.memory import usable_bytes


def _best_alone(demand: Demand, gpu, n: int, cost_model, rate: float):
    fits = [o for o in model_options(demand, gpu, n, cost_model) if o.mem_bytes <= usable_bytes(gpu)]
    if not fits:
        return None
    option = max(fits, key=lambda o: (min(o.max_rps, rate), -o.decode_sm_pct))
    served = estimate_unit(gpu, [(demand, option, rate)]).total_rps
    return option, served


def place_spatial(demands: list[Demand], cluster: Cluster, cost_model) -> list[UnitChoice]:
    gpus, counts = cluster_gpus(cluster)
    free = dict(counts)
    units: list[UnitChoice] = []
    served = [0.0] * len(demands)

    def add(i: int) -> bool:
        left = demands[i].rate_rps - served[i]
        for t, (gpu, max_n) in gpus.items():
            n = 1
            while n <= min(max_n, free[t]):
                best = _best_alone(demands[i], gpu, n, cost_model, left)
                if best:
                    option, got = best
                    units.append(UnitChoice(n, t, ((i, option, got),)))
                    served[i] += got
                    free[t] -= n
                    return True
                n *= 2
        return False

    for i in sorted(range(len(demands)), key=lambda i: -demands[i].rate_rps):
        add(i)
    while any(free.values()):
        hungry = sorted((i for i in range(len(demands)) if demands[i].rate_rps - served[i] > 1e-6), key=lambda i: served[i] - demands[i].rate_rps)
        if not any(add(i) for i in hungry[:1]) and not any(add(i) for i in hungry[1:]):
            break
    return units
