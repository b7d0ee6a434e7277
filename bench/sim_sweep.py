"""Side by side on the paper sweep: throughput and max rate at 99% SLO for spatial, temporal, greedy+ADBS, exact+ADBS.

Workloads: 19 LLaMA models (12x7B, 4x13B, 2x30B, 65B) on 4x8 A100-80GB, rate_k ~ (k+1)^-alpha with the
hottest at 40*s req/s, popularity in size order (65B coldest) or shuffled; Poisson arrivals, ShareGPT-like
lengths. Per instance: the paper's spatial layout under the spatial policy; the planner's temporal plan
(greedy placement judged by a one-job-at-a-time estimate) under the temporal policy (one job at a time,
FCFS); the greedy plan and the exact plan under ADBS. Throughput is measured at
rate x1; "max rate" is the highest rate scale at which 99% of requests meet SLO scale 5 (bisection).

Usage: python -m bench.sim_sweep [--alphas 0.7,0.9,1.3,1.7,2.1] [--scales 0.5,0.75,1.0,1.25]
       [--orders size,shuffled] [--duration 60] [--steps 5] [--time-limit 20]
Writes bench/results/sim_sweep.json and prints a rich table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.paper_plans import PAPER_COUNTS, add_grid_args, grid, paper_spatial_plan
from muxplan.cluster import load_cluster
from muxplan.workload import synthesize
from planner.sim.capacity import max_rate_scale
from planner.sim.engine import run_table
from planner.sim.metrics import summarize
from planner.sim.trace import build_request_table
from planner.solve import run_solver
from profiler.cost_model import load_cost_model

ROOT = Path(__file__).resolve().parents[1]

SLO_SCALE = 5.0


def planner_plans(workload, cluster, cost, time_limit_s: float) -> dict:
    """{"greedy": plan, "temporal": plan, "exact": plan} from the planner; a solver that fails is left out."""
    plans = {}
    for method in ("greedy", "temporal", "exact"):
        try:
            plans[method] = run_solver(method, workload, cluster, cost, time_limit_s=time_limit_s)
        except Exception as exc:  # a solver failing on one instance is reported, not fatal
            print(f"  {method} failed: {exc}", file=sys.stderr)
    return plans


def runs_for(workload, cluster, cost, time_limit_s):
    runs = [("spatial", paper_spatial_plan(workload, cluster), "spatial")]
    plans = planner_plans(workload, cluster, cost, time_limit_s)
    if "temporal" in plans:
        runs.append(("temporal", plans["temporal"], "temporal"))
    if "greedy" in plans:
        runs.append(("greedy+adbs", plans["greedy"], "adbs"))
    if "exact" in plans:
        runs.append(("exact+adbs", plans["exact"], "adbs"))
    return runs


def main() -> None:
    ap = argparse.ArgumentParser()
    add_grid_args(ap)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--time-limit", type=float, default=20.0)
    ap.add_argument("--out", default=str(ROOT / "bench/results/sim_sweep.json"))
    ap.add_argument("--append", action="store_true", help="Keep the instances already in --out and add these.")
    args = ap.parse_args()
    cluster = load_cluster("4x8xA100-80GB")
    cost = load_cost_model()
    rows = json.loads(Path(args.out).read_text())["rows"] if args.append and Path(args.out).exists() else []
    done = {(r["order"], r["alpha"], r["s"]) for r in rows}
    for order, alpha, s in grid(args):
        if (order, alpha, s) in done:
            continue
        t0 = time.perf_counter()
        wl = synthesize(PAPER_COUNTS, alpha, top_rate=40.0 * s, duration_s=args.duration, seed=1, order=order)
        table = build_request_table(wl)
        row = {"order": order, "alpha": alpha, "s": s, "num_requests": table.num_requests, "runs": {}}
        for label, plan, policy in runs_for(wl, cluster, cost, args.time_limit):
            summary = summarize(run_table(plan, wl, table, cost, policy), wl, SLO_SCALE)
            cap = max_rate_scale(plan, wl, table, cost, policy, SLO_SCALE, steps=args.steps)
            row["runs"][label] = {"throughput_rps": summary.overall.throughput_rps, "slo_attainment": summary.overall.slo_attainment,
                                  "max_rate_scale": cap.rate_scale, "max_rate_rps": cap.rate_rps,
                                  "num_gpus_used": plan.num_gpus_used}
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(f"{order} alpha={alpha} s={s}: " + ", ".join(f"{k} {v['throughput_rps']:.1f} req/s x{v['max_rate_scale']:.2f}"
                                                             for k, v in row["runs"].items()), file=sys.stderr)
    rows.sort(key=lambda r: (r["order"] != "size", r["order"], r["alpha"], r["s"]))
    labels = list(dict.fromkeys(k for r in rows for k in r["runs"]))
    table = Table(title=f"Paper sweep: throughput (req/s at x1) / max rate scale at 99% within SLO {SLO_SCALE:g}x")
    for col in ("order", "alpha", "s", "requests", *labels):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["order"], f"{r['alpha']:g}", f"{r['s']:g}", str(r["num_requests"]),
                      *[f"{r['runs'][k]['throughput_rps']:.1f} / {r['runs'][k]['max_rate_scale']:.2f}" if k in r["runs"] else "-" for k in labels])
    ratios = {}
    for base, best in [(b, x) for b in ("spatial", "temporal") for x in ("greedy+adbs", "exact+adbs")] + [("greedy+adbs", "exact+adbs")]:
        pairs = [(r["runs"][best], r["runs"][base]) for r in rows if best in r["runs"] and base in r["runs"]]
        if not pairs:
            continue
        tpt = [a["throughput_rps"] / b["throughput_rps"] for a, b in pairs if b["throughput_rps"] > 0]
        rate = [a["max_rate_scale"] / b["max_rate_scale"] for a, b in pairs if b["max_rate_scale"] > 0]  # base 0: ratio undefined
        ratios[f"{best} vs {base}"] = {"throughput_max": max(tpt, default=None), "throughput_median": float(np.median(tpt)) if tpt else None,
                                       "rate99_max": max(rate, default=None), "rate99_median": float(np.median(rate)) if rate else None,
                                       "rate99_base_zero": sum(1 for _, b in pairs if b["max_rate_scale"] == 0)}
    Console().print(table)
    ratio_table = Table(title="Ratios (paper: up to 1.8x throughput, 2.9x rate at 99% SLO)")
    for col in ("comparison", "throughput max", "median", "rate@99% max", "median", "base never 99%"):
        ratio_table.add_column(col, justify="right")
    for k, v in ratios.items():
        ratio_table.add_row(k, *[f"{x:.2f}" if isinstance(x, float) else str(x if x is not None else "-") for x in v.values()])
    Console().print(ratio_table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows, "ratios": ratios}, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
