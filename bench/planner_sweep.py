"""The paper's synthetic sweep: 19 LLaMA models on 4x8 A100-80GB, every solver on the same estimator.

Usage: python -m bench.planner_sweep [--alphas 0.7,0.9,1.3,1.7,2.1] [--scales 0.5,0.75,1.0,1.25]
       [--orders size,shuffled] [--time-limit 20] [--out bench/results/planner_sweep.json]
"""
from __future__ import annotations

import argparse
import json
import platform

from rich.console import Console
from rich.table import Table

from bench.paper_plans import PAPER_COUNTS, add_grid_args, grid
from muxplan.cluster import load_cluster
from muxplan.files import write_text_atomic
from muxplan.workload import synthesize
from planner.solve import solve_and_compare
from profiler.cost_model import load_cost_model


def main() -> None:
    ap = argparse.ArgumentParser()
    add_grid_args(ap)
    ap.add_argument("--time-limit", type=float, default=20.0)
    ap.add_argument("--out", default="bench/results/planner_sweep.json")
    args = ap.parse_args()
    cluster, cm = load_cluster("4x8xA100-80GB"), load_cost_model()
    rows = []
    table = Table(title="Paper sweep: served req/s by solver (roofline calibrated on A100)")
    for col in ("alpha", "s", "order", "demand", "spatial", "temporal", "greedy", "exact", "exact/greedy", "gap", "GPUs exact/greedy", "exact s", "greedy s", "exact wall s"):
        table.add_column(col, justify="right")
    for order, alpha, s in grid(args):
        w = synthesize(PAPER_COUNTS, alpha, 40.0 * s, seed=1, order=order, materialise=False)
        plan = solve_and_compare("exact", w, cluster, cm, "roofline:shipped", time_limit_s=args.time_limit)
        by = {c.method: c for c in plan.considered}
        row = {"alpha": alpha, "s": s, "order": order, "demand_rps": plan.demand_rps,
               **{m: {"served_rps": c.served_rps, "gpus": c.num_gpus_used, "seconds": c.seconds, "gap": c.gap} for m, c in by.items()}}
        ex, gr = by["exact"], by["greedy"]
        row["exact_wall_s"] = ex.seconds + gr.seconds  # --solver exact: the greedy warm start, then exact
        rows.append(row)
        table.add_row(f"{alpha}", f"{s}", order, f"{plan.demand_rps:.1f}", *(f"{by[m].served_rps:.1f}" for m in ("spatial", "temporal", "greedy", "exact")),
                      f"{ex.served_rps / gr.served_rps:.3f}", f"{(ex.gap or 0) * 100:.2f}%", f"{ex.num_gpus_used}/{gr.num_gpus_used}",
                      f"{ex.seconds:.1f}", f"{gr.seconds:.1f}", f"{row['exact_wall_s']:.1f}")
        print(json.dumps(rows[-1]), flush=True)
    Console(width=180).print(table)
    write_text_atomic(args.out, json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
