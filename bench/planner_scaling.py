"""Planner scaling: solve time and proven gap for growing model counts and clusters (A100-80GB, 8-GPU nodes).

Usage: python -m bench.planner_scaling [--sizes 10:8,25:32,50:128,100:512,200:1024] [--time-limit 60]
       [--rate-per-gpu 6] [--out bench/results/planner_scaling.json]
Models cycle through a mix of catalog sizes (3B..70B); popularity alpha 0.9, shuffled; total demand is
``rate-per-gpu`` x GPUs so the cluster is loaded.
"""
from __future__ import annotations

import argparse
import json
import time

from rich.console import Console
from rich.table import Table

from muxplan.cluster import parse_cluster_shorthand
from muxplan.files import write_text_atomic
from muxplan.workload import synthesize
from planner.solve import run_solver
from profiler.cost_model import load_cost_model

MIX = ["llama-3.1-8b", "mistral-7b", "qwen2.5-7b", "llama-3.2-3b", "qwen2.5-14b", "llama-2-13b", "qwen2.5-32b", "llama-3.1-70b"]


def counts_for(num_models: int) -> list[tuple[str, int]]:
    counts = {m: 0 for m in MIX}
    for k in range(num_models):
        counts[MIX[k % len(MIX)]] += 1
    return [(m, c) for m, c in counts.items() if c]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10:8,25:32,50:128,100:512,200:1024")
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--rate-per-gpu", type=float, default=6.0)
    ap.add_argument("--out", default="bench/results/planner_scaling.json")
    args = ap.parse_args()
    cm = load_cost_model()
    table = Table(title="Planner scaling (A100-80GB nodes of 8, alpha 0.9 shuffled)")
    for col in ("models", "GPUs", "demand", "greedy req/s", "greedy s", "exact req/s", "bound", "gap", "exact s", "status"):
        table.add_column(col, justify="right")
    rows = []
    for pair in args.sizes.split(","):
        num_models, num_gpus = map(int, pair.split(":"))
        cluster = parse_cluster_shorthand(f"{max(1, num_gpus // 8)}x{min(8, num_gpus)}xA100-80GB")
        w = synthesize(counts_for(num_models), 0.9, None, args.rate_per_gpu * num_gpus, duration_s=60, seed=1, order="shuffled", materialise=False)
        t = time.perf_counter()
        greedy = run_solver("greedy", w, cluster, cm, time_limit_s=args.time_limit / 3)
        greedy_s = time.perf_counter() - t
        t = time.perf_counter()
        exact = run_solver("exact", w, cluster, cm, time_limit_s=args.time_limit)
        exact_s = time.perf_counter() - t  # wall time including the greedy warm start
        s = exact.solver
        row = {"models": num_models, "gpus": num_gpus, "demand_rps": w and sum(m.rate_rps for m in w.models),
               "greedy_rps": greedy.served_rps, "greedy_s": greedy_s, "exact_rps": exact.served_rps, "bound": s.bound,
               "gap": s.gap, "exact_s": exact_s, "status": s.status}
        rows.append(row)
        print(json.dumps(row), flush=True)
        table.add_row(str(num_models), str(num_gpus), f"{row['demand_rps']:.0f}", f"{greedy.served_rps:.1f}", f"{greedy_s:.1f}",
                      f"{exact.served_rps:.1f}", f"{s.bound:.1f}" if s.bound is not None else "-",
                      f"{s.gap * 100:.2f}%" if s.gap is not None else "-", f"{exact_s:.1f}", s.status)
    Console(width=180).print(table)
    write_text_atomic(args.out, json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
