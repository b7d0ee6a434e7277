"""Linear programs over the generated columns, solved with HiGHS through scipy; their duals drive pricing.

Configuration LP (relaxed master):  max sum_i w_i s_i  s.t.  s_i - sum_c a_{c,i} lambda_c <= 0 [pi_i],
sum_{c of type t} n_c lambda_c <= G_t [mu_t], 0 <= s_i <= r_i, lambda >= 0.
Fewest-GPUs LP:  min sum_c n_c lambda_c  s.t.  sum_c a_{c,i} lambda_c >= r_i, sum_{c of type t} n_c lambda_c <= G_t.
"""
from __future__ import annotations

LP_UNITS = (1.77, 0.0028)  # planner.budget units of one LP solve: per solve, per nonzero (bench/fit_work.py)


def lp_work(cols) -> float:
    """planner.budget units charged for an LP over these columns: a count, so the same columns cost the same anywhere."""
    return LP_UNITS[0] + LP_UNITS[1] * sum(len(c.members) + 1 for c in cols)


def _column_rows(cols, num_models: int, types: list[str]):
    """Sparse entries of -a_{c,i} (served rows) and n_c (GPU rows of the column's type), column by column."""
    rows, cidx, vals = [], [], []
    for k, col in enumerate(cols):
        for i, _, r in col.members:
            rows.append(i)
            cidx.append(k)
            vals.append(-r)
        rows.append(num_models + types.index(col.gpu))
        cidx.append(k)
        vals.append(float(col.mesh_size))
    return rows, cidx, vals


def _interior(cost, a_ub, b_ub, bounds):
    """min cost.x s.t. a_ub x <= b_ub, bounds, by HiGHS's interior point method without crossover: (value, row duals
    as scipy reports them). Its duals lie near the centre of the optimal dual face, not at a vertex of it, which makes
    column generation take far fewer rounds (the vertex duals of the simplex jump between extremes)."""
    import highspy
    import numpy as np

    from planner.exact import _highs

    a = a_ub.tocsc()
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = a.shape[1], a.shape[0]
    lp.col_cost_ = np.asarray(cost, dtype=float)
    lp.col_lower_ = np.array([lo for lo, _ in bounds], dtype=float)
    lp.col_upper_ = np.array([highspy.kHighsInf if hi is None else hi for _, hi in bounds], dtype=float)
    lp.row_lower_ = np.full(a.shape[0], -highspy.kHighsInf)
    lp.row_upper_ = np.asarray(b_ub, dtype=float)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = a.indptr, a.indices, a.data
    h = _highs()
    h.setOptionValue("solver", "ipm")
    h.setOptionValue("run_crossover", "off")
    h.passModel(lp)
    h.run()
    return h.getInfo().objective_function_value, list(h.getSolution().row_dual)


def master_lp(cols, demands, w, gpu_counts, interior: bool = False):
    """Value, duals pi (per model) and mu (per GPU type) of the configuration LP (``interior``: central duals)."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    m, c = len(demands), len(cols)
    types = list(gpu_counts)
    rows, cidx, vals = _column_rows(cols, m, types)
    rows += list(range(m))  # + s_i
    cidx += [c + i for i in range(m)]
    vals += [1.0] * m
    a_ub = coo_matrix((vals, (rows, cidx)), shape=(m + len(types), c + m)).tocsr()
    b_ub = [0.0] * m + [float(gpu_counts[t]) for t in types]
    bounds = [(0, None)] * c + [(0, d.rate_rps) for d in demands]
    if interior:
        value, marginals = _interior([0.0] * c + [-wi for wi in w], a_ub, b_ub, bounds)
        duals = [max(0.0, -v) for v in marginals]
        return -value, duals[:m], dict(zip(types, duals[m:]))
    res = linprog([0.0] * c + [-wi for wi in w], A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    duals = [-v for v in res.ineqlin.marginals]
    return -res.fun, duals[:m], dict(zip(types, duals[m:]))


def min_gpu_lp(cols, demands, gpu_counts):
    """Duals of the fewest-GPUs LP as pricing inputs: pi_i >= 0 (GPUs per req/s of model i) and a per-GPU
    price 1 + (capacity dual); None when the LP fails."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    m = len(demands)
    types = list(gpu_counts)
    rows, cidx, vals = _column_rows(cols, m, types)
    a_ub = coo_matrix((vals, (rows, cidx)), shape=(m + len(types), len(cols))).tocsr()
    b_ub = [-d.rate_rps for d in demands] + [float(gpu_counts[t]) for t in types]
    res = linprog([float(col.mesh_size) for col in cols], A_ub=a_ub, b_ub=b_ub, bounds=(0, None), method="highs")
    if res.status != 0:
        return None
    duals = [-v for v in res.ineqlin.marginals]
    return duals[:m], {t: 1.0 + duals[m + k] for k, t in enumerate(types)}


def headroom_lp(cols, demands, gpu_counts):
    """Value z, duals pi (per model, sum pi_i r_i = 1) and mu (per GPU type) of the common-scale LP
    max z  s.t.  z r_i - sum_c a_{c,i} lambda_c <= 0 [pi_i],  sum_{c of type t} n_c lambda_c <= G_t [mu_t]."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    m, c = len(demands), len(cols)
    types = list(gpu_counts)
    rows, cidx, vals = _column_rows(cols, m, types)
    rows += list(range(m))  # + z r_i
    cidx += [c] * m
    vals += [d.rate_rps for d in demands]
    a_ub = coo_matrix((vals, (rows, cidx)), shape=(m + len(types), c + 1)).tocsr()
    b_ub = [0.0] * m + [float(gpu_counts[t]) for t in types]
    res = linprog([0.0] * c + [-1.0], A_ub=a_ub, b_ub=b_ub, bounds=[(0, None)] * (c + 1), method="highs")
    duals = [-v for v in res.ineqlin.marginals]
    return -res.fun, duals[:m], dict(zip(types, duals[m:]))
