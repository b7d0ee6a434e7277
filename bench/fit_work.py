"""Fit planner.budget's work coefficients: what each counted step costs, in ms of this machine's CPU.

The planners stop on counted work (planner.budget), so a plan does not depend on how busy the machine is; this bench
times the counted steps (process CPU time, so other jobs on the cores matter little) on a few sweep instances and
fits, by non-negative least squares, the coefficients that turn counts into milliseconds:

- pricing (planner.pricing.WORK_UNITS): per call, member-set row, bound call / row, level call / row, rating call /
  row bounded, search call / row searched;
- LPs (planner.master_lp.LP_UNITS): per solve, per nonzero;
- integer masters and MILP pricing (planner.master.MIP_UNITS): per solve, nonzero, simplex iteration x thousand
  nonzeros, node, thousand simplex iterations;
- greedy (planner.greedy.UNIT_WORK): per unit evaluated;
- the closed loop's simulation (planner.verify.SIM_UNITS): per request replayed, decode step, prefill batch;
- a plan's report (planner.solve.REPORT_UNITS: its predictions and predicted max rate): per plan, per placed model.

It prints the fitted coefficients next to the ones in the code and, per solve, counted work against CPU ms.
Usage: python -m bench.fit_work [--time-limit 10] [--out bench/results/work_fit.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

import planner.exact as exact
import planner.greedy as greedy
import planner.headroom as headroom
import planner.master as master
import planner.solve as solve
import planner.verify as verify
from bench.paper_plans import PAPER_COUNTS
from muxplan.cluster import load_cluster
from muxplan.workload import synthesize
from planner.budget import Budget
from planner.master_lp import LP_UNITS
from planner.pricing import WORK_UNITS
from planner.solve import solve_and_compare
from planner.tables import demands_from_workload
from profiler.cost_model import load_cost_model

ROOT = Path(__file__).resolve().parents[1]
INSTANCES = [("shuffled", 0.9, 1.0), ("shuffled", 0.7, 0.75), ("size", 0.7, 1.25), ("size", 1.3, 0.5), ("shuffled", 1.7, 1.0), ("size", 2.1, 1.25),
             ("shuffled", 1.7, 1.25), ("shuffled", 1.3, 0.5), ("size", 0.9, 0.5)]


class Recorder:
    """Per component, rows of (features, CPU ms)."""

    def __init__(self):
        self.rows: dict[str, list[tuple[list[float], float]]] = {}
        self.mip: list[list[float]] = []

    def add(self, name, features, ms):
        self.rows.setdefault(name, []).append((list(map(float, features)), ms))

    def timed(self, name, fn, features):
        def wrapper(*args, **kw):
            t = time.process_time()
            out = fn(*args, **kw)
            self.add(name, features(args, kw, out), (time.process_time() - t) * 1000)
            return out
        return wrapper


def _nnz(cols) -> int:
    return sum(len(c.members) + 1 for c in cols)


def install(rec: Recorder) -> None:
    """Wrap the counted steps so that each call is timed with its counts."""
    exact.price_enumerated = rec.timed("pricing", exact.price_enumerated,
                                       lambda a, k, out: out.counts if out is not None and out.counts else [1] + [0] * 9)
    exact.master_lp = rec.timed("lp", exact.master_lp, lambda a, k, out: [1, _nnz(a[0])])
    exact.min_gpu_lp = rec.timed("lp", exact.min_gpu_lp, lambda a, k, out: [1, _nnz(a[0])])
    headroom.headroom_lp = rec.timed("lp", headroom.headroom_lp, lambda a, k, out: [1, _nnz(a[0])])
    mip_work = master.mip_work

    def recorded_mip_work(nnz, nodes, iterations):
        rec.mip.append([1, nnz, max(0, iterations) * max(1, nnz) / 1000, max(0, nodes), max(0, iterations) / 1000])
        return mip_work(nnz, nodes, iterations)
    master.mip_work = recorded_mip_work
    for module, name in ((master, "_solve_highs"), (exact, "_price")):
        fn = getattr(module, name)

        def timed_mip(*args, _fn=fn, **kw):
            t = time.process_time()
            out = _fn(*args, **kw)
            if rec.mip:
                rec.add("mip", rec.mip.pop(), (time.process_time() - t) * 1000)
            return out
        setattr(module, name, timed_mip)
    place = greedy.place_greedy

    def timed_greedy(demands, cluster, cost_model, budget=60.0, temporal=False):
        t = time.process_time()
        b = budget if isinstance(budget, Budget) else Budget(budget)
        before = b.used_units
        out = place(demands, cluster, cost_model, b, temporal)
        rec.add("greedy", [(b.used_units - before) / greedy.UNIT_WORK], (time.process_time() - t) * 1000)
        return out
    greedy.place_greedy = timed_greedy
    solve.place_greedy = timed_greedy
    verify.run_table = rec.timed("sim", verify.run_table, lambda a, k, out: [len(out.records["request"]), out.num_decode_steps,
                                                                          out.num_prefill_batches])
    solve._report = rec.timed("report", solve._report, lambda a, k, out: [1, sum(len(u.models) for u in out.units)])


def fit(rows) -> tuple[np.ndarray, float]:
    a = np.array([f for f, _ in rows])
    b = np.array([ms for _, ms in rows])
    coef, _ = nnls(a, b)
    return coef, float(np.abs(a @ coef - b).sum() / max(1e-9, b.sum()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--out", default=str(ROOT / "bench/results/work_fit.json"))
    args = ap.parse_args()
    rec = Recorder()
    install(rec)
    cost, cluster = load_cost_model(), load_cluster("4x8xA100-80GB")
    solves = []
    for order, alpha, s in INSTANCES:
        wl = synthesize(PAPER_COUNTS, alpha, top_rate=40.0 * s, duration_s=60, seed=1, order=order)
        t, w = time.process_time(), time.perf_counter()
        plan = solve_and_compare("exact", wl, cluster, cost, objective="goodput", time_limit_s=args.time_limit, compare=False)
        solves.append({"instance": f"{order}-a{alpha:g}-s{s:g}", "cpu_s": time.process_time() - t, "wall_s": time.perf_counter() - w,
                       "gap": plan.solver.gap, "status": plan.solver.status})
        print(solves[-1], flush=True)
        greedy.place_greedy(demands_from_workload(wl), cluster, cost, Budget(args.time_limit / 3))
    current = {"pricing": WORK_UNITS, "lp": np.array(LP_UNITS), "mip": np.array(master.MIP_UNITS),
               "greedy": np.array([greedy.UNIT_WORK]), "sim": np.array(verify.SIM_UNITS), "report": np.array(solve.REPORT_UNITS)}
    out = {"time_limit_s": args.time_limit, "solves": solves, "fits": {}}
    for name, rows in rec.rows.items():
        coef, err = fit(rows)
        counted = sum(float(np.dot(f, current[name])) for f, _ in rows)
        measured = sum(ms for _, ms in rows)
        out["fits"][name] = {"calls": len(rows), "fitted": coef.tolist(), "in_code": current[name].tolist(), "rel_abs_err": err,
                             "measured_ms": measured, "counted_units_in_code": counted,
                             "rows": rows if name == "mip" else None}  # the MIP's rows: its per-call error is the largest
        print(f"{name}: {len(rows)} calls, {measured:.0f} ms measured, {counted:.0f} units counted by the code's coefficients; "
              f"fitted {np.round(coef, 6).tolist()} (mean abs err {err:.1%}); in code {current[name].tolist()}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
