"""Integer master over generated unit configurations: HiGHS MILP, CBC (PuLP) or CP-SAT, each stopped by counted
work (HiGHS and CBC: a node limit; CP-SAT: its deterministic time) from a planner.budget.Budget.

Variables lambda_c in Z+ (copies of column c, at most G_t / n_c) and served s_i in [0, r_i] with
s_i <= sum_c a_{c,i} lambda_c and sum_c n_c lambda_c <= G_t. Objectives: max sum w_i s_i
(throughput, weighted); max z with s_i >= z r_i, then max sum s_i at that z (fairness); min
sum n_c lambda_c with s_i = r_i (min-gpus). CP-SAT works on rates in milli-req/s (integers).
"""
from __future__ import annotations

from muxplan.files import InputError
from planner.placement import UnitChoice, served_per_model

SCALE = 1000  # CP-SAT: rates in milli-requests per second
# planner.budget units of a master solve (bench/fit_work.py): per solve, per nonzero, per simplex iteration and
# thousand nonzeros, per node, per thousand simplex iterations; NODE_ITERS simplex iterations a node takes, for the
# node limit; MIN_NODES always allowed
MIP_UNITS = (0.0, 0.308, 0.0, 0.0, 121.3)
NODE_ITERS = 20
MIN_NODES = 50


def _cap(col: UnitChoice, counts) -> int:
    return counts[col.gpu] // col.mesh_size


def _hosts(cols, num_models: int) -> list[list[tuple[int, float]]]:
    """Per model, (column index, rate) of the columns hosting it."""
    hosts: list[list[tuple[int, float]]] = [[] for _ in range(num_models)]
    for c, col in enumerate(cols):
        for i, _, r in col.members:
            hosts[i].append((c, r))
    return hosts


def _solve_highs(cols, demands, w, counts, objective, budget, stage_z=None):
    """The master by HiGHS, stopped by a node limit derived from ``budget`` (planner.budget), not by the clock."""
    import highspy
    import numpy as np
    from scipy.sparse import coo_matrix

    from planner.exact import _highs

    c, m = len(cols), len(demands)
    fair_stage1 = objective == "fairness" and stage_z is None
    num_col = c + m + (1 if fair_stage1 else 0)
    types = list(counts)
    rows, idx, vals = [], [], []
    for k, col in enumerate(cols):
        for i, _, r in col.members:
            rows.append(i), idx.append(k), vals.append(-r)
        rows.append(m + types.index(col.gpu)), idx.append(k), vals.append(float(col.mesh_size))
    for i, d in enumerate(demands):  # s_i - sum a lambda <= 0, and for fairness s_i - z r_i >= 0
        rows.append(i), idx.append(c + i), vals.append(1.0)
        if fair_stage1:
            rows.append(m + len(types) + i), idx.append(c + m), vals.append(-d.rate_rps)
            rows.append(m + len(types) + i), idx.append(c + i), vals.append(1.0)
    num_row = m + len(types) + (m if fair_stage1 else 0)
    a = coo_matrix((vals, (rows, idx)), shape=(num_row, num_col)).tocsc()
    inf = highspy.kHighsInf
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = num_col, num_row
    lower = [0.0] * c + [d.rate_rps * (1 - 1e-9) if objective == "min-gpus" else
                         (stage_z * d.rate_rps if stage_z is not None else 0.0) for d in demands] + [0.0] * fair_stage1
    upper = [float(_cap(col, counts)) for col in cols] + [d.rate_rps for d in demands] + [1.0] * fair_stage1
    if objective == "min-gpus":
        cost = [float(col.mesh_size) for col in cols] + [0.0] * m
    elif fair_stage1:
        cost = [0.0] * (c + m) + [1.0]
    else:
        cost = [0.0] * c + list(map(float, w))
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = (np.array(v, dtype=float) for v in (cost, lower, upper))
    lp.row_lower_ = np.array([-inf] * (m + len(types)) + [0.0] * (num_row - m - len(types)))
    lp.row_upper_ = np.array([0.0] * m + [float(counts[t]) for t in types] + [inf] * (num_row - m - len(types)))
    lp.sense_ = highspy.ObjSense.kMinimize if objective == "min-gpus" else highspy.ObjSense.kMaximize
    lp.integrality_ = [highspy.HighsVarType.kInteger] * c + [highspy.HighsVarType.kContinuous] * (num_col - c)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = a.indptr, a.indices, a.data
    h = _highs()
    h.setOptionValue("mip_max_nodes", node_limit(budget, a.nnz))
    h.setOptionValue("time_limit", max(0.5, budget.wall_left_s))  # the safety stop only
    h.setOptionValue("mip_rel_gap", 1e-6)
    h.passModel(lp)
    h.run()
    info = h.getInfo()
    budget.charge(mip_work(a.nnz, info.mip_node_count, info.simplex_iteration_count))
    if h.getModelStatus() == highspy.HighsModelStatus.kTimeLimit:
        budget.exhausted()  # records the wall-clock stop
    if info.primal_solution_status != 2:
        return None, "infeasible" if h.getModelStatus() == highspy.HighsModelStatus.kInfeasible else "not solved"
    x = list(h.getSolution().col_value)
    status = "optimal" if h.getModelStatus() == highspy.HighsModelStatus.kOptimal else "feasible"
    value = x[c + m] if fair_stage1 else info.objective_function_value
    return ([round(v) for v in x[:c]], [max(0.0, v) for v in x[c:c + m]], value), status


def node_limit(budget, nnz: int) -> int:
    """Branch-and-bound nodes the master may explore within ``budget``: a count, so the same master stops at the same
    node on any machine."""
    per_node = MIP_UNITS[3] + MIP_UNITS[2] * NODE_ITERS * max(1, nnz) / 1000 + MIP_UNITS[4] * NODE_ITERS / 1000
    return int(max(MIN_NODES, (budget.left_s * 1000.0 - MIP_UNITS[0] - MIP_UNITS[1] * nnz) / per_node))


def mip_work(nnz: int, nodes: int, iterations: int) -> float:
    """planner.budget units of a master solve: per solve, per nonzero, per simplex iteration (per thousand nonzeros),
    per node, per thousand simplex iterations."""
    its = max(0, iterations)
    return (MIP_UNITS[0] + MIP_UNITS[1] * nnz + MIP_UNITS[2] * its * max(1, nnz) / 1000 + MIP_UNITS[3] * max(0, nodes)
            + MIP_UNITS[4] * its / 1000)


def _solve_cbc(cols, demands, w, counts, objective, budget, stage_z=None):
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
    nnz = sum(len(col.members) + 1 for col in cols)
    nodes = node_limit(budget, nnz)  # CBC through PuLP reports no node count: charged at its limit
    solver = pulp.PULP_CBC_CMD(msg=False, maxNodes=nodes, timeLimit=max(1, int(budget.wall_left_s)), threads=1)
    from planner.exact import quiet_stdout

    with quiet_stdout():
        prob.solve(solver)
    budget.charge(mip_work(nnz, nodes, 0))
    status = pulp.LpStatus[prob.status].lower()
    if status not in ("optimal", "not solved") or lam[0].value() is None:
        return None, status
    return ([round(v.value() or 0) for v in lam], [max(0.0, v.value() or 0.0) for v in s], pulp.value(prob.objective)), status


def _solve_cpsat(cols, demands, w, counts, objective, budget, seed, stage_z=None):
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
    solver.parameters.max_deterministic_time = max(0.05, budget.left_s)  # CP-SAT's own work count: reproducible
    solver.parameters.max_time_in_seconds = max(0.5, budget.wall_left_s)  # the safety stop only
    solver.parameters.random_seed = seed
    solver.parameters.num_workers = 1  # deterministic under a seed
    code = solver.Solve(m)
    budget.charge(solver.deterministic_time * 1000.0)
    status = {cp_model.OPTIMAL: "optimal", cp_model.FEASIBLE: "feasible", cp_model.INFEASIBLE: "infeasible"}.get(code, "unknown")
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None, status
    if objective == "fairness" and stage_z is None:
        value = solver.Value(z) / SCALE
    else:
        value = solver.ObjectiveValue() / (1 if objective == "min-gpus" else SCALE * SCALE)
    return ([solver.Value(v) for v in lam], [solver.Value(v) / SCALE for v in s], value), status


def _solve(cols, demands, w, counts, objective, backend, budget, seed, stage_z=None):
    if backend == "cpsat":
        return _solve_cpsat(cols, demands, w, counts, objective, budget, seed, stage_z)
    if backend == "highs":
        return _solve_highs(cols, demands, w, counts, objective, budget, stage_z)
    if backend == "cbc":
        return _solve_cbc(cols, demands, w, counts, objective, budget, stage_z)
    raise InputError(f"--backend: '{backend}' is not one of highs, cbc, cpsat")


def solve_master(cols, demands, w, counts, objective, backend, budget, seed):
    """(objective value, units with routed rates, status) of the best integer master found within ``budget``
    (planner.budget.Budget, or seconds of it)."""
    from planner.budget import as_budget

    budget = as_budget(budget)
    found, status = _solve(cols, demands, w, counts, objective, backend, budget.share(0.5 if objective == "fairness" else 1.0), seed)
    if found is None and objective == "min-gpus":
        most = sum(d.rate_rps for d in demands)
        raise InputError(f"min-gpus: impossible to serve all {most:.2f} req/s on this cluster with any plan found")
    if found is None:
        raise InputError(f"the integer master found no plan (status {status})")
    if objective == "fairness":
        z = found[2]
        found, status = _solve(cols, demands, [1.0] * len(demands), counts, "fairness", backend, budget, seed, stage_z=max(0.0, z - 1e-6))
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
        units, served = polish_rates(units, demands, w)
        value = sum(wi * si for wi, si in zip(w, served))
    return value, units, status


def polish_rates(units: list[UnitChoice], demands, w) -> tuple[list[UnitChoice], list[float]]:
    """The chosen units with the best rates their configurations allow: max sum_i w_i s_i over s_i <= r_i,
    s_i <= sum_u x_{u,i} and each unit's x in its rate polytope (planner.estimator: d_i x_i + q.x <= UTIL_CAP,
    q.x <= P_max), an LP with the units fixed. The columns carry only the rate vectors the configuration LP needed
    (its extreme points); whole units combine better at points between them. Never worse: the master's rates are
    feasible here."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    from planner.estimator import UTIL_CAP, prefill_limit, served_rates, stall_costs

    m = len(demands)
    offsets, rows, cols, vals, b = [], [], [], [], []
    num_x = 0
    for u in units:
        offsets.append(num_x)
        num_x += len(u.members)
    row = m
    for u, x0 in zip(units, offsets):
        options = [o for _, o, _ in u.members]
        q, pmax = stall_costs(options), prefill_limit(options)
        for j, (i, _, _) in enumerate(u.members):  # s_i - sum x_{u,i} <= 0
            rows.append(i), cols.append(x0 + j), vals.append(-1.0)
        limits = [([qj + (o.decode_s_per_req if j == k else 0.0) for j, qj in enumerate(q)], UTIL_CAP) for k, o in enumerate(options)]
        for coef, cap in limits + [(q, max(0.0, pmax))]:
            for j, a in enumerate(coef):
                rows.append(row), cols.append(x0 + j), vals.append(a)
            b.append(cap)
            row += 1
    for i in range(m):
        rows.append(i), cols.append(num_x + i), vals.append(1.0)
    a_ub = coo_matrix((vals, (rows, cols)), shape=(row, num_x + m)).tocsr()
    current = served_per_model(units, m)
    res = linprog([0.0] * num_x + [-wi for wi in w], A_ub=a_ub, b_ub=[0.0] * m + b,
                  bounds=[(0, None)] * num_x + [(0, d.rate_rps) for d in demands], method="highs")
    before = sum(wi * min(c, d.rate_rps) for wi, c, d in zip(w, current, demands))
    if res.status != 0 or -res.fun <= before + 1e-9:
        return units, [min(c, d.rate_rps) for c, d in zip(current, demands)]
    x, served = res.x, [float(v) for v in res.x[num_x:]]
    placed = [0.0] * m
    for u, x0 in zip(units, offsets):
        for j, (i, _, _) in enumerate(u.members):
            placed[i] += x[x0 + j]
    scale = [min(1.0, served[i] / placed[i]) if placed[i] > 0 else 0.0 for i in range(m)]  # route exactly what is served
    out, served = [], [0.0] * m
    for u, x0 in zip(units, offsets):
        options = [o for _, o, _ in u.members]
        # what the estimator serves at these routed rates: the LP's tolerance never makes a unit promise more
        rates = served_rates(options, [max(0.0, float(x[x0 + j])) * scale[i] for j, (i, _, _) in enumerate(u.members)])
        members = tuple((i, o, r) for (i, o, _), r in zip(u.members, rates) if r > 1e-9)
        for i, _, r in members:
            served[i] += r
        if members:
            out.append(UnitChoice(u.mesh_size, u.gpu, members))
    served = [min(v, d.rate_rps) for v, d in zip(served, demands)]
    if sum(wi * v for wi, v in zip(w, served)) <= before:
        return units, [min(c, d.rate_rps) for c, d in zip(current, demands)]
    return out, served
