"""Integer master over generated unit configurations: HiGHS MILP, CBC (PuLP) or CP-SAT.

Variables lambda_c in Z+ (copies of column c, at most G_t / n_c) and served s_i in [0, r_i] with
s_i <= sum_c a_{c,i} lambda_c and sum_c n_c lambda_c <= G_t. Objectives: max sum w_i s_i
(throughput, weighted); max z with s_i >= z r_i, then max sum s_i at that z (fairness); min
sum n_c lambda_c with s_i = r_i (min-gpus). CP-SAT works on rates in milli-req/s (integers).
"""
from __future__ import annotations

from muxplan.files import InputError
from planner.placement import UnitChoice

SCALE = 1000  # CP-SAT: rates in milli-requests per second


def _cap(col: UnitChoice, counts) -> int:
    return counts[col.gpu] // col.mesh_size


def _hosts(cols, num_models: int) -> list[list[tuple[int, float]]]:
    """Per model, (column index, rate) of the columns hosting it."""
    hosts: list[list[tuple[int, float]]] = [[] for _ in range(num_models)]
    for c, col in enumerate(cols):
        for i, _, r in col.members:
            hosts[i].append((c, r))
    return hosts


def _solve_milp(cols, demands, w, counts, objective, time_limit_s, stage_z=None, backend="highs"):
    import pulp

    prob = pulp.LpProblem("master", pulp.LpMinimize if objective == "min-gpus" else pulp.LpMaximize)
    lam = [pulp.LpVariable(f"l{c}", 0, _cap(col, counts), cat="Integer") for c, col in enumerate(cols)]
    s = [pulp.LpVariable(f"s{i}", 0, d.rate_rps) for i, d in enumerate(demands)]
    hosts = _hosts(cols, len(demands))
    for i in range(len(demands)):
        prob += s[i] <= pulp.lpSum(r * lam[c] for c, r in hosts[i])
    for t, g in counts.items():
        prob += pulp.lpSum(col.mesh_size * lam[c] for c, col in enumerate(cols) if col.gpu == t) <= g
    if objective == "min-gpus":
        for i, d in enumerate(demands):
            prob += s[i] >= d.rate_rps * (1 - 1e-9)
        prob += pulp.lpSum(col.mesh_size * lam[c] for c, col in enumerate(cols))
    elif objective == "fairness" and stage_z is None:
        z = pulp.LpVariable("z", 0, 1)
        for i, d in enumerate(demands):
            prob += s[i] >= z * d.rate_rps
        prob += z
    else:
        if stage_z is not None:
            for i, d in enumerate(demands):
                prob += s[i] >= stage_z * d.rate_rps
        prob += pulp.lpSum(wi * si for wi, si in zip(w, s))
    solver = pulp.HiGHS(msg=False, timeLimit=time_limit_s) if backend == "highs" else pulp.PULP_CBC_CMD(msg=False, timeLimit=max(1, int(time_limit_s)))
    from planner.exact import quiet_stdout

    with quiet_stdout():
        prob.solve(solver)
    status = pulp.LpStatus[prob.status].lower()
    if status not in ("optimal", "not solved") or lam[0].value() is None:
        return None, status
    return ([round(v.value() or 0) for v in lam], [max(0.0, v.value() or 0.0) for v in s], pulp.value(prob.objective)), status


def _solve_cpsat(cols, demands, w, counts, objective, time_limit_s, seed, stage_z=None):
    from ortools.sat.python import cp_model

    m = cp_model.CpModel()
    lam = [m.NewIntVar(0, _cap(col, counts), f"l{c}") for c, col in enumerate(cols)]
    rates = [int(d.rate_rps * SCALE) for d in demands]
    s = [m.NewIntVar(0, r, f"s{i}") for i, r in enumerate(rates)]
    hosts = _hosts(cols, len(demands))
    for i in range(len(demands)):
        m.Add(s[i] <= sum(int(r * SCALE) * lam[c] for c, r in hosts[i]))
    for t, g in counts.items():
        m.Add(sum(col.mesh_size * lam[c] for c, col in enumerate(cols) if col.gpu == t) <= g)
    if objective == "min-gpus":
        for i, r in enumerate(rates):
            m.Add(s[i] >= r)
        m.Minimize(sum(col.mesh_size * lam[c] for c, col in enumerate(cols)))
    elif objective == "fairness" and stage_z is None:
        z = m.NewIntVar(0, SCALE, "z")
        for i, r in enumerate(rates):
            m.Add(s[i] * SCALE >= z * r)
        m.Maximize(z)
    else:
        if stage_z is not None:
            for i, r in enumerate(rates):
                m.Add(s[i] * SCALE >= int(stage_z * SCALE) * r)
        m.Maximize(sum(int(wi * SCALE) * si for wi, si in zip(w, s)))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.random_seed = seed
    solver.parameters.num_workers = 1  # deterministic under a seed
    code = solver.Solve(m)
    status = {cp_model.OPTIMAL: "optimal", cp_model.FEASIBLE: "feasible", cp_model.INFEASIBLE: "infeasible"}.get(code, "unknown")
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None, status
    if objective == "fairness" and stage_z is None:
        value = solver.Value(z) / SCALE
    else:
        value = solver.ObjectiveValue() / (1 if objective == "min-gpus" else SCALE * SCALE)
    return ([solver.Value(v) for v in lam], [solver.Value(v) / SCALE for v in s], value), status


def _solve(cols, demands, w, counts, objective, backend, time_limit_s, seed, stage_z=None):
    if backend == "cpsat":
        return _solve_cpsat(cols, demands, w, counts, objective, time_limit_s, seed, stage_z)
    if backend in ("highs", "cbc"):
        return _solve_milp(cols, demands, w, counts, objective, time_limit_s, stage_z, backend)
    raise InputError(f"--backend: '{backend}' is not one of highs, cbc, cpsat")


def solve_master(cols, demands, w, counts, objective, backend, time_limit_s, seed):
    """(objective value, units with routed rates, status) of the best integer master found."""
    found, status = _solve(cols, demands, w, counts, objective, backend, time_limit_s, seed)
    if found is None and objective == "min-gpus":
        most = sum(d.rate_rps for d in demands)
        raise InputError(f"min-gpus: impossible to serve all {most:.2f} req/s on this cluster with any plan found")
    if found is None:
        raise InputError(f"the integer master found no plan (status {status})")
    if objective == "fairness":
        z = found[2]
        found, status = _solve(cols, demands, [1.0] * len(demands), counts, "fairness", backend, time_limit_s, seed, stage_z=max(0.0, z - 1e-6))
    lam, served, value = found
    if objective == "fairness":
        value = z
    units = []
    placed = [0.0] * len(demands)
    for c, col in enumerate(cols):
        for i, _, r in col.members:
            placed[i] += r * lam[c]
    scale = [min(1.0, served[i] / placed[i]) if placed[i] > 0 else 0.0 for i in range(len(demands))]
    for c, col in enumerate(cols):
        members = tuple((i, o, r * scale[i]) for i, o, r in col.members if r * scale[i] > 1e-9)
        units += [UnitChoice(col.mesh_size, col.gpu, members)] * lam[c] if members else []
    if objective in ("throughput", "weighted"):
        value = sum(wi * si for wi, si in zip(w, served))
    return value, units, status
