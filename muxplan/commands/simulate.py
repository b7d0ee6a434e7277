"""`muxplan simulate`: replay a plan on a workload or trace and report throughput, latency and SLO attainment."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def simulate(
    plan: Annotated[Path, typer.Argument(help="Plan file (JSON or YAML) from `muxplan solve`.")],
    workload: Annotated[Path, typer.Option("--workload", "-w", help="Workload file or request trace (CSV/JSONL/JSON).")],
    policy: Annotated[str, typer.Option(help="Unit scheduling policy: adbs, fcfs, round-robin, temporal, spatial.")] = "adbs",
    compare: Annotated[str, typer.Option(help="Comma-separated policies, plan files, or baselines (spatial, greedy) to run side by side.")] = "",
    slo_scale: Annotated[Optional[float], typer.Option(help="SLO scale k (latency <= k x isolated latency); default: the workload's.")] = None,
    rate_scale: Annotated[float, typer.Option(help="Replay arrivals this many times faster.")] = 1.0,
    max_rate: Annotated[bool, typer.Option("--max-rate", help="Also search the highest rate scale with 99% of requests within SLO.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the routing draws between replicas.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Folder for per-request records (CSV) and summary.json.")] = None,
    records_format: Annotated[str, typer.Option("--records-format", help="Records file format: csv or parquet.")] = "csv",
    plot: Annotated[Optional[Path], typer.Option(help="Folder for PNG plots.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of tables.")] = False,
    profile: Annotated[Optional[Path], typer.Option(help="Profile file or folder for the cost model.")] = None,
    params: Annotated[Optional[Path], typer.Option(help="Fitted roofline parameters JSON for the cost model.")] = None,
) -> None:
    """Replay a plan on a trace and report SLO attainment and throughput."""
    from muxplan.commands.options import check_numbers
    from muxplan.files import InputError, atomic_path
    from muxplan.render import console
    from muxplan.workload import load_workload
    from profiler.plan_check import load_plan
    from planner.sim import comparison, records, render
    from unitsched.policy import get_policy
    from planner.sim.trace import build_request_table
    from profiler.cost_model import load_cost_model

    if records_format not in ("csv", "parquet"):
        raise InputError(f"--records-format: '{records_format}' is not csv or parquet")
    check_numbers(rate_scale=(rate_scale, 0, True), slo_scale=(slo_scale, 0, True), seed=(seed, 0, False))
    get_policy(policy)  # options before files
    the_workload = load_workload(workload)
    the_plan = load_plan(plan, the_workload)
    cost = load_cost_model(profile, params)
    entries = [c.strip() for c in compare.split(",") if c.strip()]
    for entry in entries:  # plan files given to --compare pass the same checker
        if Path(entry).suffix.lower() in (".json", ".yaml", ".yml") or Path(entry).exists():
            load_plan(entry, the_workload)
    k = slo_scale if slo_scale is not None else the_workload.models[0].slo.scale
    with render.progress_bar(console(stderr=True)) as bar:
        task = bar.add_task("preparing", total=None, note="baseline plans and requests")
        runs = comparison.resolve_runs(the_plan, plan.stem, policy, entries, the_workload, cost)
        table = build_request_table(the_workload)
        bar.update(task, description="simulating", total=1.0, completed=0.0, note="")

        def on_step(label: str, note: str) -> None:
            bar.update(task, description=label, note=note)

        def on_progress(now: float, horizon: float) -> None:
            bar.update(task, completed=min(now / horizon, 1.0))

        outcomes = comparison.run_all(runs, the_workload, table, cost, k, rate_scale, max_rate, seed, on_step, on_progress)
        probes = {}
        for i, o in enumerate(outcomes if plot is not None else []):
            bar.update(task, description=o.run.label, note="throughput vs rate for --plot", completed=i / len(outcomes))
            probes[o.run.label] = comparison.rate_probes(o, the_workload, table, cost, seed)
    data = {"plan": str(plan), "workload": str(workload), "num_requests": table.num_requests,
            "runs": [comparison.outcome_dict(o) for o in outcomes]}
    if out is not None:
        for o in outcomes:
            records.save_records(o.result, out / f"{o.run.label}.records.{records_format}")
        records.save_json(out / "summary.json", data)
    if plot is not None:
        from planner.sim import plots

        with atomic_path(plot / "slo_attainment.png") as tmp:
            plots.plot_attainment({o.run.label: o.curve for o in outcomes}, tmp)
        with atomic_path(plot / "throughput_vs_rate.png") as tmp:
            plots.plot_throughput_vs_rate(probes, tmp)
        with atomic_path(plot / "attainment_vs_rate.png") as tmp:
            plots.plot_attainment_vs_rate(probes, tmp)
        for o in outcomes:
            with atomic_path(plot / f"usage_{o.run.label}.png") as tmp:
                plots.plot_usage(o.result, tmp)
    if json_output:
        typer.echo(records.summary_json(data))
        return
    con = console()
    for o in outcomes:
        con.print(render.summary_table(o.summary, f"{o.run.label}: rate x{rate_scale:g}, SLO scale {k:g}"))
    con.print(render.attainment_table({o.run.label: o.curve for o in outcomes}))
    if len(outcomes) > 1 or max_rate:
        con.print(render.compare_table([(o.run.label, o.summary, o.capacity) for o in outcomes]))
