"""`muxplan plan`: show and compare plan files."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="Show and compare plan files.", no_args_is_help=True)


@app.command("show")
def show(
    file: Annotated[Path, typer.Argument(help="plan.json")],
    workload: Annotated[Optional[Path], typer.Option(help="Workload to check model names against.")] = None,
) -> None:
    """Re-render a plan and check its constraints."""
    from muxplan.render import console
    from muxplan.workload import load_workload
    from profiler.plan_check import load_plan
    from planner.report import headline, plan_tables

    plan = load_plan(file, load_workload(workload) if workload else None)
    con = console()
    for table in plan_tables(plan):
        con.print(table)
    con.print(headline(plan))
    con.print("constraints: all satisfied")


@app.command("diff")
def diff(a: Annotated[Path, typer.Argument(help="First plan.")], b: Annotated[Path, typer.Argument(help="Second plan.")]) -> None:
    """Show moved models and changed shares between two plans."""
    from muxplan.render import console
    from profiler.plan_check import load_plan
    from planner.report import diff_table, headline

    pa, pb = load_plan(a), load_plan(b)
    con = console()
    con.print(f"a: {headline(pa)}")
    con.print(f"b: {headline(pb)}")
    con.print(diff_table(pa, pb))
