"""Fit the unit model's free constants against the simulator, then report the error on instances never used.

Constants: DRAIN_FACTOR (planner.estimator: share of the longest decode step a prefill waits for) and
TPOT_MARGIN (planner.tables: share of the SLO's TPOT a plan may use at full batch). For each grid point
the exact solver (goodput, closed loop off, so the fit sees the raw model) plans every training instance;
each plan's predicted served rate and SLO attainment are compared with the simulator's. The score of a
point is the worst served-rate error (%) plus the worst attainment error (points), minus a small reward
for simulated goodput (so among equally accurate points the one that plans more is kept). The chosen
point is then evaluated on the held-out instances.

Usage: python -m bench.fit_unit_model [--drain 0.3,0.5,0.7] [--margin 0.65,0.75,0.85] [--duration 60]
Writes bench/results/fit_unit_model.json and prints the tables.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import planner.estimator as estimator
import planner.exact as exact
import planner.pricing as pricing
import planner.tables as tables
from bench.slo_sweep import COUNTS, held_out
from muxplan.cluster import load_cluster
from muxplan.workload import synthesize
from planner.solve import solve_and_compare
from planner.verify import simulated_check
from profiler.cost_model import load_cost_model

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [(0.7, 0.5), (0.9, 1.0), (1.3, 0.75), (2.1, 1.25)]  # (alpha, s), size-ordered popularity


def set_constants(drain: float, margin: float) -> None:
    for mod in (tables, estimator, exact, pricing):
        if hasattr(mod, "DRAIN_FACTOR"):
            mod.DRAIN_FACTOR = drain
    tables.TPOT_MARGIN = margin
    tables._CACHE.clear()
    pricing._TABLES.clear()


def errors(instances, cost, time_limit_s: float) -> dict:
    rows = []
    for label, wl, cluster in instances:
        plan = solve_and_compare("exact", wl, cluster, cost, time_limit_s=time_limit_s, compare=False, verify=False)
        check, _ = simulated_check(plan, wl, cost)
        rows.append({"instance": label, "predicted_rps": plan.served_rps, "simulated_rps": check.simulated_rps,
                     "predicted_slo": plan.predicted_slo_attainment, "simulated_slo": check.simulated_slo_attainment,
                     "goodput_rps": check.simulated_goodput_rps})
    rps = [abs(r["predicted_rps"] - r["simulated_rps"]) / max(1e-9, r["simulated_rps"]) for r in rows]
    slo = [abs((r["predicted_slo"] or 0) - r["simulated_slo"]) for r in rows]
    return {"rows": rows, "worst_rps_pct": 100 * max(rps), "worst_slo_points": 100 * max(slo),
            "goodput_rps": sum(r["goodput_rps"] for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--drain", default="0.3,0.5,0.7")
    ap.add_argument("--margin", default="0.65,0.75,0.85")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--out", default=str(ROOT / "bench/results/fit_unit_model.json"))
    args = ap.parse_args()
    cost, cluster = load_cost_model(), load_cluster("4x8xA100-80GB")
    train = [(f"paper-size-a{a:g}-s{s:g}", synthesize(COUNTS, a, top_rate=40.0 * s, duration_s=args.duration, seed=1, order="size"), cluster)
             for a, s in TRAIN]
    test = [(f"paper-shuffled-a{a:g}-s{s:g}", synthesize(COUNTS, a, top_rate=40.0 * s, duration_s=args.duration, seed=1, order="shuffled"), cluster)
            for a, s in ((0.7, 0.75), (1.7, 1.0))] + held_out(args.duration)
    shipped = (estimator.DRAIN_FACTOR, tables.TPOT_MARGIN)
    grid = []
    for drain in map(float, args.drain.split(",")):
        for margin in map(float, args.margin.split(",")):
            t0 = time.perf_counter()
            set_constants(drain, margin)
            e = errors(train, cost, args.time_limit)
            score = e["worst_rps_pct"] + e["worst_slo_points"] - 1e-3 * e["goodput_rps"]
            grid.append({"drain": drain, "margin": margin, "score": score, **{k: v for k, v in e.items() if k != "rows"},
                         "seconds": time.perf_counter() - t0})
            print(f"drain {drain} margin {margin}: worst served error {e['worst_rps_pct']:.2f}%, worst SLO error "
                  f"{e['worst_slo_points']:.2f} points, goodput {e['goodput_rps']:.1f}", flush=True)
    best = min(grid, key=lambda g: g["score"])
    set_constants(best["drain"], best["margin"])
    held = errors(test, cost, args.time_limit)
    set_constants(*shipped)
    table = Table(title="Unit model fit on training instances (worst over them)")
    for col in ("DRAIN_FACTOR", "TPOT_MARGIN", "served error %", "SLO error points", "goodput req/s"):
        table.add_column(col, justify="right")
    for g in grid:
        table.add_row(f"{g['drain']:g}", f"{g['margin']:g}", f"{g['worst_rps_pct']:.2f}", f"{g['worst_slo_points']:.2f}", f"{g['goodput_rps']:.1f}",
                      style="bold" if g is best else None)
    Console(width=160).print(table)
    Console().print(f"chosen drain {best['drain']:g}, margin {best['margin']:g}; held-out: worst served error "
                    f"{held['worst_rps_pct']:.2f}%, worst SLO error {held['worst_slo_points']:.2f} points")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "grid": grid, "best": best, "held_out": held}, indent=1) + "\n")


if __name__ == "__main__":
    main()
