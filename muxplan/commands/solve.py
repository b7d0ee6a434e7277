"""`muxplan solve`: compute a placement plan."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def solve(
    workload: Annotated[Path, typer.Option(help="Workload file or request trace.")],
    cluster: Annotated[str, typer.Option(help="Cluster file or shorthand like 4x8xA100-80GB.")],
    solver: Annotated[str, typer.Option(help="exact, greedy, spatial or temporal.")] = "exact",
    objective: Annotated[str, typer.Option(help="goodput (req/s within SLO, then headroom), headroom, min-gpus, throughput, weighted or fairness.")] = "goodput",
    profile: Annotated[Optional[Path], typer.Option(help="Measured profile file or directory (else the analytic model).")] = None,
    params: Annotated[Optional[Path], typer.Option(help="Fitted roofline parameters (JSON).")] = None,
    time_limit: Annotated[float, typer.Option(help="Solver budget in seconds of counted work (about wall seconds on the reference machine; the same plan on a busy one).")] = 30.0,
    seed: Annotated[int, typer.Option(help="Random seed (solvers are deterministic given it).")] = 0,
    backend: Annotated[str, typer.Option(help="Integer master back-end: highs, cbc or cpsat.")] = "highs",
    compare: Annotated[bool, typer.Option(help="Also run the other solvers for the 'considered' table.")] = True,
    out: Annotated[Optional[Path], typer.Option(help="Where to write plan.json.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
    evaluate: Annotated[str, typer.Option(help="Pick the plan by: none (the --solver's) or sim (every solver, best simulated SLO attainment then throughput).")] = "none",
    slo_scale: Annotated[Optional[float], typer.Option(help="SLO scale for --evaluate sim (default: the workload's).")] = None,
    verify: Annotated[bool, typer.Option(help="Simulate the plan, correct the unit model where it disagrees and re-solve (closed loop).")] = True,
) -> None:
    """Compute a placement plan for a workload on a cluster."""
    from muxplan.cluster import load_cluster
    from muxplan.commands.options import check_numbers
    from muxplan.files import InputError, save_contract
    from muxplan.render import console, progress_bar
    from muxplan.workload import load_workload
    from profiler.plan_check import check_plan
    from planner.report import headline, plan_tables
    from planner.solve import SOLVERS, solve_and_compare, solve_by_simulation
    from profiler.cost_model import load_cost_model

    check_numbers(time_limit=(time_limit, 0, True), seed=(seed, 0, False), slo_scale=(slo_scale, 0, True))
    w, c = load_workload(workload), load_cluster(cluster)
    cost_model = load_cost_model(profile, params)
    label = str(profile) if profile else (f"roofline:{params}" if params else "roofline:shipped")
    if evaluate not in ("none", "sim"):
        raise InputError(f"--evaluate: '{evaluate}' is not none or sim")
    verdicts = None
    with progress_bar() as bar:
        task = bar.add_task(f"solving ({solver})", total=None, note=f"time limit {time_limit:g} s" if solver == "exact" else "")
        if evaluate == "sim":
            def progress(description: str, done: int) -> None:
                bar.update(task, description=description, total=len(SOLVERS) + 1, completed=done)

            solver, plan, verdicts = solve_by_simulation(w, c, cost_model, label, objective, time_limit, seed, backend, slo_scale,
                                                         progress)
        else:
            plan = solve_and_compare(solver, w, c, cost_model, label, objective, time_limit, seed, backend, compare, verify)
    problems = check_plan(plan, w)
    if problems:
        raise RuntimeError("internal error: the plan violates constraints: " + "; ".join(problems))
    if out:
        save_contract(out, plan)
    if as_json:
        typer.echo(json.dumps(json_summary(plan, verdicts), indent=1))
        return
    con = console()
    for table in plan_tables(plan):
        con.print(table)
    if verdicts:
        from planner.sim.render import evaluation_table

        con.print(evaluation_table(verdicts, solver))
    con.print(headline(plan))
    if out:
        con.print(f"wrote {out}")


def json_summary(plan, verdicts) -> dict:
    """What ``solve --json`` prints: the solver record, totals, per-model rates, considered and simulated plans."""
    s = plan.solver
    per_model: dict[str, float] = {}
    for u in plan.units:
        for m in u.models:
            per_model[m.name] = per_model.get(m.name, 0.0) + m.predicted_rps
    return {"solver": s.method, "objective": s.objective, "value": s.value, "bound": s.bound, "gap": s.gap,
            "status": s.status, "seconds": s.seconds, "num_gpus_used": plan.num_gpus_used,
            "served_rps": plan.served_rps, "demand_rps": plan.demand_rps, "served_rps_per_model": per_model,
            "considered": [x.model_dump() for x in plan.considered],
            "simulated": [{"solver": m, "policy": p, "throughput_rps": v.overall.throughput_rps,
                           "slo_attainment": v.overall.slo_attainment} for m, p, v in verdicts or []]}
