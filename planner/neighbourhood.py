"""Large neighbourhood search on the integer plan: free two units, re-solve their GPUs exactly for what is left.

The integer master (planner.master) is optimal only over the generated columns, and those are what the
configuration LP needed: units priced at LP duals with rates capped at each model's whole demand. Whole units
combine better with units cut for the demand the others leave over. So, from the master's plan:

    for a pair (a, b) of units (a hosts a model served short of its demand, or any unit while a model is hosted nowhere):
        residual r'_i = r_i - (what the other units serve of model i), for every model with r'_i > 0
        re-solve r' on the GPUs a and b held (planner.exact.solve_exact: column generation + integer master, cold:
            a warm start with the freed units pins the master at them and it found nothing better)
        keep the result (its rates polished over the whole plan, planner.master.polish_rates) if the plan serves more

First improvement, then the pairs of the new plan; it stops at a plan no pair improves or when its budget
(planner.budget: counted work, so the same inputs stop at the same pair on any machine) is spent. Pairs come in a
fixed order: the unit hosting the largest shortfall first (units hosting none after, while some model is not hosted),
partners smallest mesh first (cheap re-solves, and the small models' units are where integer packing loses most).
The bound is untouched: every plan found is feasible for the master, so the configuration LP's bound still holds.
"""
from __future__ import annotations

from dataclasses import replace

from muxplan.files import InputError
from muxplan.schema import Cluster, NodeSpec
from planner.placement import UnitChoice, served_per_model

SUB_S = 0.2  # work (seconds of planner.budget) one re-solve may spend: less leaves its column generation unconverged,
# more buys fewer pairs (bench/RESULTS.md)
TOL = 1e-6


def plan_value(units: list[UnitChoice], demands) -> float:
    return sum(min(s, d.rate_rps) for s, d in zip(served_per_model(units, len(demands)), demands))


def pairs(units: list[UnitChoice], demands) -> list[tuple[int, int]]:
    """The neighbourhoods in search order (module docstring)."""
    served = served_per_model(units, len(demands))
    short = [max(0.0, d.rate_rps - s) for d, s in zip(demands, served)]
    shortfall = [sum(short[i] for i, _, _ in u.members) for u in units]
    firsts = sorted((k for k in range(len(units)) if shortfall[k] > TOL), key=lambda k: (-shortfall[k], units[k].mesh_size, k))
    partners = sorted(range(len(units)), key=lambda k: (units[k].mesh_size, k))
    hosted = {i for u in units for i, _, _ in u.members}
    if any(short[i] > TOL for i in range(len(demands)) if i not in hosted):  # any unit's GPUs could take it in
        firsts += [k for k in partners if k not in firsts]
    out, seen = [], set()
    for a in firsts:
        for b in partners:
            if b != a and frozenset((a, b)) not in seen:
                seen.add(frozenset((a, b)))
                out.append((a, b))
    return out


def freed_cluster(cluster: Cluster, gpus: dict, freed: list[UnitChoice]) -> Cluster:
    """The freed units' GPUs as a cluster: per type, nodes of that type's largest mesh and one with the rest (the
    master's own view of a type: a pool its power-of-two meshes pack into)."""
    count: dict[str, int] = {}
    for u in freed:
        count[u.gpu] = count.get(u.gpu, 0) + u.mesh_size
    nodes = []
    for t, g in sorted(count.items()):
        size = gpus[t][1]
        for n in [size] * (g // size) + ([g % size] if g % size else []):
            nodes.append(NodeSpec(name=f"freed{len(nodes)}", gpu=t, num_gpus=n))
    return Cluster(nodes=nodes, gpus=cluster.gpus)


def improve(units: list[UnitChoice], demands, cluster: Cluster, cost_model, budget) -> tuple[list[UnitChoice], float, int]:
    """(plan, its served rate, improvements made): the search of the module docstring from ``units``, within
    ``budget``. Throughput objective (every model weighs 1)."""
    from planner.exact import cluster_gpus, solve_exact
    from planner.master import polish_rates

    gpus, _ = cluster_gpus(cluster)
    value, found = plan_value(units, demands), 0
    improved = True
    while improved and not budget.exhausted():
        improved = False
        for a, b in pairs(units, demands):
            if budget.exhausted():
                break
            kept = [u for k, u in enumerate(units) if k not in (a, b)]
            served = served_per_model(kept, len(demands))
            left = [i for i, d in enumerate(demands) if d.rate_rps - served[i] > TOL]
            sub = [replace(demands[i], rate_rps=demands[i].rate_rps - served[i]) for i in left]
            try:
                sol = solve_exact(sub, freed_cluster(cluster, gpus, [units[a], units[b]]), cost_model, "throughput",
                                  budget.at_most(SUB_S), improve=False)
            except InputError:
                continue  # nothing left fits these GPUs
            new = [UnitChoice(u.mesh_size, u.gpu, tuple((left[i], o, r) for i, o, r in u.members)) for u in sol.units]
            candidate, _ = polish_rates(kept + new, demands, [1.0] * len(demands))
            v = plan_value(candidate, demands)
            if v > value + TOL * max(1.0, value):
                units, value, found, improved = candidate, v, found + 1, True
                break
    return units, value, found
