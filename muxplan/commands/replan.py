"""`muxplan replan`: re-place a running plan for a new workload within a migration budget."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def replan(
    plan: Annotated[Path, typer.Option(help="The current plan (the one deployed).")],
    workload: Annotated[Path, typer.Option(help="The new workload or trace (e.g. recorded by `deploy --record`).")],
    max_moves: Annotated[int, typer.Option(help="Processes that may be started (a model moved, replicated, re-sliced or re-configured); 0: re-tune routing shares only.")] = 0,
    max_restarts: Annotated[Optional[int], typer.Option(help="Running processes that may be stopped (default: --max-moves).")] = None,
    objective: Annotated[str, typer.Option(help="goodput, throughput, weighted or fairness.")] = "goodput",
    profile: Annotated[Optional[Path], typer.Option(help="Measured profile file or directory (else the analytic model).")] = None,
    params: Annotated[Optional[Path], typer.Option(help="Fitted roofline parameters (JSON).")] = None,
    time_limit: Annotated[float, typer.Option(help="Budget in seconds of counted work for the from-scratch solve and the budgeted MILP together.")] = 30.0,
    options_per_model: Annotated[Optional[int], typer.Option(help="Cut each option table to this many fastest + smallest options; small instances then get every configuration (a proven budgeted optimum).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Where to write the new plan.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
) -> None:
    """Re-plan for a new workload: the best plan within --max-moves/--max-restarts, beside the from-scratch optimum."""
    from muxplan.commands.options import check_numbers
    from muxplan.files import save_contract
    from muxplan.render import console
    from muxplan.workload import load_workload
    from planner.replan_render import comparison_table, curve_table, moves_table
    from planner.replanning import replan as run
    from planner.report import headline, units_table
    from profiler.cost_model import load_cost_model
    from profiler.plan_check import check_plan, load_plan

    check_numbers(max_moves=(max_moves, 0, False), max_restarts=(max_restarts, 0, False), time_limit=(time_limit, 0, True),
                  options_per_model=(options_per_model, 1, False), seed=(seed, 0, False))
    w = load_workload(workload)
    current = load_plan(plan)
    cost = load_cost_model(profile, params)
    label = str(profile) if profile else (f"roofline:{params}" if params else "roofline:shipped")
    result = run(current, w, cost, label, objective, max_moves, max_restarts, time_limit, seed, option_limit=options_per_model,
                 where=str(workload))
    problems = check_plan(result.plan, w)
    if problems:
        raise RuntimeError("internal error: the new plan violates constraints: " + "; ".join(problems))
    if out:
        save_contract(out, result.plan)
    s = result.plan.solver
    if as_json:
        typer.echo(json.dumps({"value": s.value, "bound": s.bound, "gap": s.gap, "status": s.status, "moves": result.migration.moves,
                               "restarts": result.migration.restarts, "from_scratch_value": result.from_scratch.solver.value,
                               "from_scratch_moves": result.scratch_migration.moves,
                               "from_scratch_restarts": result.scratch_migration.restarts,
                               "curve": [list(p) for p in result.curve]}, indent=1))
        return
    con = console()
    con.print(units_table(result.plan))
    con.print(moves_table(current, result.plan, result.migration))
    if len(result.curve) > 1:
        con.print(curve_table(result.curve))
    con.print(comparison_table(current, result.plan, result.from_scratch, result.migration, result.scratch_migration))
    con.print(headline(result.plan))
    if out:
        con.print(f"wrote {out}")
