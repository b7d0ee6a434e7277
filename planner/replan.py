"""Replanning with a migration budget: the best plan for a new workload reachable from the running plan within
K moves and K' restarts (planner.migration defines both).

Locations u are the current plan's units (fixed GPUs). A configuration c = (GPU type, mesh size n_c, members i with
options o_i). Each location may keep one configuration of its own mesh (binary z_{u,c}; none = vacated, its GPUs
free); new units take configurations c of the pool in integer numbers lambda_c on free GPUs. Rates are variables
(routing shares re-tune freely): x_{k,i} for member i of chosen column k, and every column carries the unit model's
rows (planner.estimator), scaled by its z or lambda so an unchosen column serves nothing:

    max  sum_i w_i s_i - eps (M + R)
    s.t. s_i <= r_i,   s_i <= sum_k x_{k,i}                                  (served where placed)
         x_{k,i} <= min(r_i, maxrps_i) y_k,   d_i x_{k,i} + sum_j q_j x_{k,j} <= UTIL_CAP y_k,
         sum_j q_j x_{k,j} <= P_max(c) y_k                                   (y_k = z_{u,c} or lambda_c; temporal:
                                                                              sum_j (p_j + d_j) x_{k,j} <= UTIL_CAP y_k)
         sum_c z_{u,c} <= 1 = 1 - v_u                                        (v_u: location vacated)
         per node, per aligned s-block b: f_b <= v_u for every location u meeting b, 0 <= f_b <= 1
         per node, per size s: sum_{n >= s} (n / s) k_{node,n} <= sum_b f_b   (the new meshes pack: aligned blocks nest)
         sum_{c of (t, n)} lambda_c = sum_{node of type t} k_{node,n}
         M = sum z_{u,c} |c \\ old_u| + sum lambda_c |c| <= K                 (moves: processes started)
         R = sum z_{u,c} |old_u \\ c| + sum v_u |old_u| <= K'                (restarts: processes stopped)

q_j = p_j + DRAIN_FACTOR max_i t_i, d_i, P_max as in planner.estimator; a kept member is identical to the running one
(same location, SM%, quota, KV bytes). With every configuration of the instance in the pool (``complete``: small
instances) this is the exact budgeted optimum (HiGHS proves the gap). Otherwise the pool is the running units and
their one-step neighbours (one model added, one dropped), the from-scratch optimum's and the greedy plan's units and
every model alone; the bound reported is then the from-scratch bound (the budget only removes plans), so the gap
also shows what the pool may miss. K = 0 with K' = 0 keeps every process: only routing shares (and, as they follow
the routed rates, admission quotas) change.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from muxplan.catalog import get_gpu
from planner.budget import Budget, as_budget
from planner.estimator import SM_BUDGET_PCT, UTIL_CAP, prefill_limit, stall_costs, unit_problems
from planner.migration import Location, aligned_blocks
from planner.tables import Demand, Option, model_options

EPS_MOVE = 1e-6  # per move/restart, times total demand: among equal plans, prefer the fewer changes


@dataclass(frozen=True)
class Config:
    gpu: str
    mesh_size: int
    members: tuple[tuple[int, Option], ...]


@dataclass(frozen=True)
class Chosen:
    """One unit of the answer: where (a location index, or None for a new unit) and its members with rates."""

    location: int | None
    gpu: str
    mesh_size: int
    members: tuple[tuple[int, Option, float], ...]


@dataclass(frozen=True)
class Budgeted:
    units: tuple[Chosen, ...]
    value: float
    dual_bound: float
    moves: int
    restarts: int
    status: str
    seconds: float


def candidate_options(demand: Demand, gpu, n: int, cost_model, limit: int | None) -> tuple[Option, ...]:
    """The option table (planner.tables), cut to the ``limit`` fastest and ``limit`` smallest options when given."""
    opts = model_options(demand, gpu, n, cost_model)
    if limit is None or len(opts) <= 2 * limit:
        return opts
    fast = sorted(opts, key=lambda o: -o.max_rps)[:limit]
    small = sorted(opts, key=lambda o: (o.mem_bytes, o.decode_sm_pct))[:limit]
    return tuple(dict.fromkeys(fast + small))


def feasible(gpu, options, temporal: bool) -> bool:
    return not unit_problems(gpu, list(options), temporal)


def enumerate_configs(demands, gpu_name, gpu, n, cost_model, limit, temporal) -> list[Config]:
    """Every configuration of a mesh of n GPUs: subsets of at most 4 models (decode SM >= 30% within 120%)."""
    tables = [(i, candidate_options(d, gpu, n, cost_model, limit)) for i, d in enumerate(demands) if d.rate_rps > 0]
    most = len(tables) if temporal else SM_BUDGET_PCT // 30
    out = []
    for size in range(1, min(most, len(tables)) + 1):
        for group in itertools.combinations(tables, size):
            for opts in itertools.product(*[t for _, t in group]):
                if feasible(gpu, opts, temporal):
                    out.append(Config(gpu_name, n, tuple((i, o) for (i, _), o in zip(group, opts))))
    return out


NEIGHBOUR_OPTIONS = 2  # options per added model in a neighbour (fastest and smallest): keeps the MILP to ~100 columns/location


def neighbours(loc: Location, demands, gpu, cost_model, limit, temporal, focus=None) -> list[Config]:
    """The running configuration, it with one member dropped, with one model added (any option that fits), and with
    one member swapped for another model or option."""
    own = Config(loc.gpu, loc.mesh_size, loc.members)
    bases = [loc.members] + [loc.members[:k] + loc.members[k + 1:] for k in range(len(loc.members))]
    out = [Config(loc.gpu, loc.mesh_size, b) for b in bases]
    for base in bases:
        inside = {i for i, _ in base}
        for i, d in enumerate(demands):
            if i in inside or d.rate_rps <= 0 or (focus is not None and i not in focus):
                continue
            for o in candidate_options(d, gpu, loc.mesh_size, cost_model, limit or NEIGHBOUR_OPTIONS):
                members = base + ((i, o),)
                if (i, o) not in loc.members and feasible(gpu, [m for _, m in members], temporal):
                    out.append(Config(loc.gpu, loc.mesh_size, members))
    return list(dict.fromkeys(c for c in out if c.members)) or [own]


def location_space(loc: Location, demands, gpu, cost_model, limit, temporal) -> list[Config]:
    """Every configuration of a location: each model either keeps its running process there or takes an option of its
    (cut) table, at most one per model (the complete pool's space; tests/test_replan.py enumerates the same by brute force)."""
    running = dict(loc.members)
    choices = []
    for i, d in enumerate(demands):
        opts = tuple(candidate_options(d, gpu, loc.mesh_size, cost_model, limit)) if d.rate_rps > 0 else ()
        opts = tuple(dict.fromkeys(((running[i],) if i in running else ()) + opts))
        if opts:
            choices.append((i, opts))
    most = len(choices) if temporal else SM_BUDGET_PCT // 30
    out = []
    for size in range(1, min(most, len(choices)) + 1):
        for group in itertools.combinations(choices, size):
            for opts in itertools.product(*[t for _, t in group]):
                if feasible(gpu, opts, temporal) or tuple(zip([i for i, _ in group], opts)) == loc.members:
                    out.append(Config(loc.gpu, loc.mesh_size, tuple((i, o) for (i, _), o in zip(group, opts))))
    return out


def _unit_rows(h, demands, gpu, cfg: Config, y, temporal: bool, demand_scale: float = 1.0):
    """Rate variables of one column and the unit model's rows scaled by its choice variable y (planner.estimator);
    ``demand_scale`` > 1 lets the rates exceed the demand (the headroom stage)."""
    opts = [o for _, o in cfg.members]
    xs = [h.addVariable(lb=0, ub=demand_scale * demands[i].rate_rps) for i, _ in cfg.members]
    if temporal:
        h.addConstr(sum((o.prefill_s_per_req + o.decode_s_per_req) * x for o, x in zip(opts, xs)) - UTIL_CAP * y <= 0)
        for (i, o), x in zip(cfg.members, xs):
            h.addConstr(x - demand_scale * demands[i].rate_rps * y <= 0)
        return xs
    q, pmax = stall_costs(opts), prefill_limit(opts)
    if pmax < 0:  # a member's decode step alone breaks its TPOT limit: the estimator serves nothing on this unit
        for x in xs:
            h.addConstr(x <= 0)
        return xs
    stall = sum(qj * x for qj, x in zip(q, xs))
    h.addConstr(stall - pmax * y <= 0)
    for (i, o), x in zip(cfg.members, xs):
        h.addConstr(x - min(demand_scale * demands[i].rate_rps, o.max_rps) * y <= 0)
        h.addConstr(o.decode_s_per_req * x + stall - UTIL_CAP * y <= 0)
    return xs


def solve_budgeted(demands: list[Demand], cluster, locs: list[Location], pool: list[Config], cost_model, objective: str,
                   max_moves: int, max_restarts: int, budget, temporal: bool = False,
                   location_configs: dict[int, list[Config]] | None = None, focus: set[int] | None = None) -> Budgeted:
    """The MILP of the module docstring over ``pool`` (new units) and, per location, its neighbours plus the pool's
    configurations of its GPU type and mesh size (``location_configs`` overrides the neighbours), within ``budget``
    (planner.budget: a node limit, so the answer does not depend on the machine's load; or seconds of it)."""
    from planner.exact import _highs

    start = time.perf_counter()
    budget = as_budget(budget)
    h = _highs()
    h.setOptionValue("time_limit", max(3.0, budget.wall_left_s))  # the safety stop only
    h.setOptionValue("mip_rel_gap", 1e-6)
    total = sum(d.rate_rps for d in demands) or 1.0
    w = [d.rate_rps / total if objective == "weighted" else 1.0 for d in demands]
    gpus = {node.gpu: get_gpu(node.gpu, cluster.gpus) for node in cluster.nodes}
    served = {i: [] for i in range(len(demands))}
    columns = []  # (location or None, config, choice variable, rate variables)
    moves_expr, restarts_expr, restart_const = [], [], 0
    vacated = {}
    for u, loc in enumerate(locs):
        old = set(loc.members)
        configs = (location_configs or {}).get(u) or neighbours(loc, demands, gpus[loc.gpu], cost_model, None, temporal, focus)
        configs = list(dict.fromkeys(configs + [c for c in pool if c.gpu == loc.gpu and c.mesh_size == loc.mesh_size]))
        zs = []
        if loc.members and loc.members in [c.members for c in configs]:  # the running configuration first: the warm start
            configs.remove(Config(loc.gpu, loc.mesh_size, loc.members))
            configs.insert(0, Config(loc.gpu, loc.mesh_size, loc.members))
        for cfg in configs:
            z = h.addBinary()
            zs.append(z)
            columns.append((u, cfg, z, _unit_rows(h, demands, gpus[loc.gpu], cfg, z, temporal)))
            moves_expr.append(len(set(cfg.members) - old) * z)
            restarts_expr.append((len(old - set(cfg.members)) - len(old)) * z)
        restart_const += len(old)
        if zs:
            h.addConstr(sum(zs) <= 1)
        vacated[u] = zs
    lams = {}
    for cfg in pool:
        lam = h.addIntegral(lb=0, ub=cluster.num_gpus // cfg.mesh_size)
        lams.setdefault((cfg.gpu, cfg.mesh_size), []).append(lam)
        columns.append((None, cfg, lam, _unit_rows(h, demands, gpus[cfg.gpu], cfg, lam, temporal)))
        moves_expr.append(len(cfg.members) * lam)
    _gpu_rows(h, cluster, locs, vacated, lams)
    for _, cfg, _, xs in columns:
        for (i, _), x in zip(cfg.members, xs):
            served[i].append(x)
    s = [h.addVariable(lb=0, ub=d.rate_rps) for d in demands]
    for i, xs in served.items():
        h.addConstr(s[i] - sum(xs) == 0 if xs else s[i] <= 0)  # replicas never route more than the demand
    moves, restarts = sum(moves_expr), sum(restarts_expr)
    if moves_expr:
        h.addConstr(moves <= max_moves)
        h.addConstr(restarts <= max_restarts - restart_const)
    penalty = EPS_MOVE * total * (moves + restarts)
    if objective == "fairness":
        t = h.addVariable(lb=0, ub=1)
        for i, d in enumerate(demands):
            if d.rate_rps > 0:
                h.addConstr(s[i] - d.rate_rps * t >= 0)
        goal = t + 1e-3 * sum(s) / total - penalty / total
    else:
        goal = sum(wi * si for wi, si in zip(w, s)) - penalty
    _warm_start(h, [zs[0] for zs in vacated.values() if zs])
    from planner.master import mip_work, node_limit

    h.setOptionValue("mip_max_nodes", node_limit(budget, h.getNumNz()))
    h.maximize(goal)
    info = h.getInfo()
    budget.charge(mip_work(h.getNumNz(), info.mip_node_count, info.simplex_iteration_count))
    if info.primal_solution_status != 2:
        if max_moves == 0 and max_restarts == 0:
            raise RuntimeError("replan: no feasible solution within the time limit (keeping the current plan is always feasible)")
        # nothing found in time: the current plan re-tuned is the answer HiGHS always finds (few free binaries)
        kept = solve_budgeted(demands, cluster, locs, [], cost_model, objective, 0, 0, Budget(3.0, budget), temporal, location_configs, focus)
        return Budgeted(kept.units, kept.value, info.mip_dual_bound, 0, 0, "no better plan found within the work budget",
                        time.perf_counter() - start)
    chosen = []
    for u, cfg, y, xs in columns:
        count = round(h.val(y))
        for _ in range(count):
            members = tuple((i, o, h.val(x) / count) for (i, o), x in zip(cfg.members, xs))
            chosen.append(Chosen(u, cfg.gpu, cfg.mesh_size, members))
    old_sets = {u: set(loc.members) for u, loc in enumerate(locs)}
    kept = {c.location: {(i, o) for i, o, _ in c.members} for c in chosen if c.location is not None}
    n_moves = sum(len({(i, o) for i, o, _ in c.members} - (old_sets[c.location] if c.location is not None else set())) for c in chosen)
    n_restarts = sum(len(old - kept.get(u, set())) for u, old in old_sets.items())
    value = h.val(t) if objective == "fairness" else sum(wi * h.val(si) for wi, si in zip(w, s))
    bound = info.mip_dual_bound + (EPS_MOVE * total * (max_moves + max_restarts) if objective != "fairness" else 1e-3)
    status = "optimal" if info.mip_gap <= 1e-6 else f"MILP gap {info.mip_gap:.2%} at the work budget"
    return Budgeted(tuple(chosen), value, bound, n_moves, n_restarts, status, time.perf_counter() - start)


def balance(chosen: tuple[Chosen, ...], demands, cluster, temporal: bool) -> tuple[tuple[Chosen, ...], float]:
    """Routing over fixed units with the most headroom: max alpha s.t. the replicas of every model can serve alpha r_i
    (the unit rows, homogeneous in the rates); routed rates are then alpha's split scaled back to the demand. Only when
    the units serve all demand (alpha >= 1); otherwise the served-rate routing stays. Returns (units, alpha)."""
    from planner.exact import _highs

    h = _highs()
    gpus = {node.gpu: get_gpu(node.gpu, cluster.gpus) for node in cluster.nodes}
    alpha = h.addVariable(lb=0, ub=100.0)
    per_model: dict[int, list] = {}
    rates = []
    for c in chosen:
        xs = _unit_rows(h, demands, gpus[c.gpu], Config(c.gpu, c.mesh_size, tuple((i, o) for i, o, _ in c.members)), 1.0, temporal, 100.0)
        rates.append(xs)
        for (i, _, _), x in zip(c.members, xs):
            per_model.setdefault(i, []).append(x)
    for i, d in enumerate(demands):
        if d.rate_rps > 0:
            h.addConstr(sum(per_model.get(i, [])) - d.rate_rps * alpha == 0 if i in per_model else alpha <= 0)
    h.maximize(alpha)
    a = h.val(alpha) if h.getInfo().primal_solution_status == 2 else 0.0
    if a < 1.0:
        return chosen, a
    out = tuple(Chosen(c.location, c.gpu, c.mesh_size, tuple((i, o, h.val(x) / a) for (i, o, _), x in zip(c.members, xs)))
                for c, xs in zip(chosen, rates))
    return out, a


def _warm_start(h, keep) -> None:
    """The running plan, every location kept and nothing routed, is always feasible: HiGHS starts from it."""
    import highspy

    values = [0.0] * h.getNumCol()
    for z in keep:
        values[z.index] = 1.0
    sol = highspy.HighsSolution()
    sol.col_value = values
    sol.value_valid = True
    h.setSolution(sol)


def _gpu_rows(h, cluster, locs, vacated, lams) -> None:
    """The packing rows of the docstring: new meshes of each size fit into the aligned blocks left free."""
    ks: dict[tuple[str, int], list] = {}
    for node_id, node in enumerate(cluster.nodes):
        blocks = aligned_blocks(node.num_gpus)
        here = [(u, set(loc.gpu_ids)) for u, loc in enumerate(locs) if loc.node == node_id]
        k = {s: h.addIntegral(lb=0, ub=node.num_gpus // s) for s in blocks}
        for s, var in k.items():
            ks.setdefault((node.gpu, s), []).append(var)
        for s, level in blocks.items():
            free = []
            for b in level:
                meets = [u for u, ids in here if ids & set(b)]
                if not meets:
                    free.append(1.0)
                    continue
                f = h.addVariable(lb=0, ub=1)
                for u in meets:  # f_b <= v_u = 1 - sum z_u
                    h.addConstr(f + sum(vacated[u]) <= 1)
                free.append(f)
            need = sum((n // s) * k[n] for n in blocks if n >= s)
            h.addConstr(need - sum(x for x in free if not isinstance(x, float)) <= sum(x for x in free if isinstance(x, float)))
    for key in set(ks) | set(lams):
        h.addConstr(sum(lams.get(key, [])) - sum(ks.get(key, [])) == 0)
