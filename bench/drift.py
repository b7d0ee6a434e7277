"""Popularity drift: static plan vs full re-solve per window vs budgeted replan, by simulated SLO attainment and restarts.

A paper19-like workload (12 x 7B, 4 x 13B, 2 x 30B, 1 x 65B on 4 x 8 A100-80GB, rate_k ~ (k+1)^-alpha) whose
popularity ranking rotates by --shift positions every window (one window = one hour of the day; each is simulated on
--duration seconds of its Poisson traffic). At the start of each window every strategy plans for that window's traffic
(as recorded by `deploy --record`, then re-planned at once):
  static    the window-0 plan, never changed
  full      `muxplan solve` from scratch (exact, goodput) per window: whatever it moves
  budgeted  `muxplan replan --max-moves K` from the plan in force
and the plan in force is simulated (ADBS) on the window's requests. Restarts = running processes stopped, moves =
processes started (planner.migration), per window.

Usage: python -m bench.drift [--windows 6] [--shift 2] [--max-moves 4] [--duration 30] [--time-limit 8] [--scale 0.75]
Writes bench/results/drift.json and bench/results/drift.png and prints the table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.paper_plans import PAPER_COUNTS
from muxplan.cluster import load_cluster
from muxplan.files import atomic_path, write_text_atomic
from muxplan.workload import served_names, synthesize
from planner.migration import migration
from planner.replanning import replan
from planner.sim.engine import simulate_plan
from planner.sim.metrics import summarize
from planner.solve import run_solver
from profiler.cost_model import load_cost_model

STRATEGIES = ("static", "full", "budgeted")


def window_workload(w: int, shift: int, alpha: float, scale: float, duration_s: float):
    names = [served for served, _ in served_names(PAPER_COUNTS)]
    k = (w * shift) % len(names)
    order = names[k:] + names[:k]  # hottest first: the ranking rotates, so large models become popular in turn
    return synthesize(PAPER_COUNTS, alpha, 40.0, rate_scale=scale, duration_s=duration_s, seed=w, order="explicit",
                      explicit_order=order, name=f"drift-w{w}")


def simulate(plan, workload, cost) -> dict:
    s = summarize(simulate_plan(plan, workload, cost, "adbs"), workload)
    return {"slo_attainment": s.overall.slo_attainment, "throughput_rps": s.overall.throughput_rps,
            "num_requests": s.overall.num_requests}


def run(args) -> dict:
    cost = load_cost_model(None, None)
    cluster = load_cluster(args.cluster)
    rows, plans = [], {}
    for w in range(args.windows):
        wl = window_workload(w, args.shift, args.alpha, args.scale, args.duration)
        t0 = time.perf_counter()
        scratch = run_solver("exact", wl, cluster, cost, "roofline:shipped", "goodput", args.time_limit)
        full_s = time.perf_counter() - t0
        new = {"full": scratch}
        budget_s = 0.0
        if w == 0:
            new.update(static=scratch, budgeted=scratch)
        else:
            new["static"] = plans["static"]
            t0 = time.perf_counter()
            new["budgeted"] = replan(plans["budgeted"], wl, cost, "roofline:shipped", "goodput", args.max_moves,
                                     time_limit_s=args.time_limit, curve=False, scratch=scratch).plan
            budget_s = time.perf_counter() - t0
        row = {"window": w, "demand_rps": scratch.demand_rps, "full_solve_s": full_s, "replan_s": budget_s}
        for name in STRATEGIES:
            moved = migration(plans[name], new[name]) if w else None
            row[name] = {**simulate(new[name], wl, cost), "predicted_rps": new[name].served_rps,
                         "moves": moved.moves if moved else 0, "restarts": moved.restarts if moved else 0}
        plans = new
        rows.append(row)
        print(f"window {w}: " + ", ".join(f"{n} {100 * row[n]['slo_attainment']:.1f}% ({row[n]['restarts']} restarts)" for n in STRATEGIES), flush=True)
    totals = {n: {"mean_slo_attainment": sum(r[n]["slo_attainment"] for r in rows) / len(rows),
                  "restarts": sum(r[n]["restarts"] for r in rows), "moves": sum(r[n]["moves"] for r in rows)} for n in STRATEGIES}
    return {"args": vars(args), "windows": rows, "totals": totals,
            "machine": "2-core CPU sandbox shared with other jobs; analytic A100 cost model, simulated"}


def table(result: dict) -> Table:
    t = Table(title="Drift: SLO attainment % (restarts) per window")
    t.add_column("window", justify="right")
    t.add_column("demand req/s", justify="right")
    for n in STRATEGIES:
        t.add_column(n, justify="right")
    for r in result["windows"]:
        t.add_row(str(r["window"]), f"{r['demand_rps']:.1f}", *[f"{100 * r[n]['slo_attainment']:.1f} ({r[n]['restarts']})" for n in STRATEGIES])
    tot = result["totals"]
    t.add_row("mean / total", "", *[f"{100 * tot[n]['mean_slo_attainment']:.1f} ({tot[n]['restarts']})" for n in STRATEGIES])
    return t


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    windows = [r["window"] for r in result["windows"]]
    for n in STRATEGIES:
        a.plot(windows, [100 * r[n]["slo_attainment"] for r in result["windows"]], marker="o", label=n)
    a.set_xlabel("window (hour)"), a.set_ylabel("simulated SLO attainment %"), a.legend(), a.grid(alpha=0.3)
    width = 0.27
    for k, n in enumerate(STRATEGIES):
        b.bar([w + (k - 1) * width for w in windows], [r[n]["restarts"] for r in result["windows"]], width, label=n)
    b.set_xlabel("window (hour)"), b.set_ylabel("processes restarted"), b.legend()
    fig.suptitle(f"popularity rotating by {result['args']['shift']} ranks per window, replan budget {result['args']['max_moves']} moves")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--windows", type=int, default=6)
    p.add_argument("--shift", type=int, default=2)
    p.add_argument("--max-moves", type=int, default=4)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--time-limit", type=float, default=8.0)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--scale", type=float, default=0.75)
    p.add_argument("--cluster", default="4x8xA100-80GB")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    args = p.parse_args()
    result = run(args)
    args_out = args.out
    result["args"]["out"] = str(args_out)
    write_text_atomic(args_out / "drift.json", json.dumps(result, indent=1) + "\n")
    plot(result, args_out / "drift.png")
    Console().print(table(result))


if __name__ == "__main__":
    main()
