"""Simulator speed on the paper19 workload (alpha 0.9, s 1.0, 240 s of arrivals, 32 A100s), one core.

Usage: python -m bench.sim_speed [--repeats 3]  (pin to one core with `taskset -c 0` for the record)
Writes bench/results/sim_speed.json and prints a rich table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.paper_plans import paper_spatial_plan
from muxplan.cluster import load_cluster
from muxplan.workload import load_workload
from planner.sim.engine import run_table
from planner.sim.metrics import summarize
from planner.sim.trace import build_request_table
from planner.solve import run_solver
from profiler.cost_model import load_cost_model

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    workload = load_workload(ROOT / "examples/paper19/workload.yaml")
    cluster = load_cluster(ROOT / "examples/paper19/cluster.yaml")
    cost = load_cost_model()
    t0 = time.perf_counter()
    table = build_request_table(workload)
    table_s = time.perf_counter() - t0
    plans = {"spatial (paper layout)": (paper_spatial_plan(workload, cluster), ["spatial"])}
    plans["greedy"] = (run_solver("greedy", workload, cluster, cost), ["adbs", "temporal"])
    rows = []
    for label, (plan, policies) in plans.items():
        for policy in policies:
            best = None
            for _ in range(args.repeats):
                t = time.perf_counter()
                result = run_table(plan, workload, table, cost, policy)
                wall = time.perf_counter() - t
                best = (wall, result) if best is None or wall < best[0] else best
            wall, result = best
            s = summarize(result, workload)
            rows.append({"plan": label, "policy": policy, "num_requests": table.num_requests, "wall_s": wall,
                         "requests_per_s": table.num_requests / wall, "decode_steps": result.num_decode_steps,
                         "decode_steps_per_s": result.num_decode_steps / wall, "prefill_batches": result.num_prefill_batches,
                         "simulated_s": result.sim_end_s, "throughput_rps": s.overall.throughput_rps,
                         "slo_attainment": s.overall.slo_attainment})
    out = Table(title=f"Simulator speed: paper19 alpha 0.9 s 1.0, {table.num_requests} requests (table build {table_s:.2f} s)")
    for col in ("plan", "policy", "wall s", "requests/s", "decode steps", "decode steps/s", "simulated s", "sim req/s", "SLO@5 %"):
        out.add_column(col, justify="left" if col in ("plan", "policy") else "right")
    for r in rows:
        out.add_row(r["plan"], r["policy"], f"{r['wall_s']:.2f}", f"{r['requests_per_s']:,.0f}", f"{r['decode_steps']:,}",
                    f"{r['decode_steps_per_s']:,.0f}", f"{r['simulated_s']:.0f}", f"{r['throughput_rps']:.1f}", f"{100 * r['slo_attainment']:.1f}")
    Console().print(out)
    (ROOT / "bench/results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench/results/sim_speed.json").write_text(json.dumps({"table_build_s": table_s, "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
