"""The `muxplan` command: thin typer commands; each group lives in muxplan/commands/, heavy imports are lazy."""
from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from muxplan.commands import deploy, models, plan, profile, replan, simulate, solve, workload
from muxplan.files import InputError

app = typer.Typer(
    help="Plan, simulate and deploy many LLMs on shared GPUs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(models.app, name="models")
app.add_typer(workload.app, name="workload")
app.add_typer(profile.app, name="profile")
app.add_typer(plan.app, name="plan")
app.command("solve")(solve.solve)
app.command("simulate")(simulate.simulate)
app.command("replan")(replan.replan)
app.command("deploy")(deploy.deploy)
app.command("status")(deploy.status)


@app.command("schema")
def schema(
    name: Annotated[Optional[str], typer.Argument(help="File type (without it: the list of file types).")] = None,
) -> None:
    """Print the JSON Schema of one file type, or list the file types."""
    import json

    from muxplan.schema import CONTRACTS

    if name is None:
        for known, cls in CONTRACTS.items():
            typer.echo(f"{known:14} {(cls.__doc__ or '').strip()}".rstrip())
        return
    if name not in CONTRACTS:
        raise InputError(f"unknown schema '{name}'; known: {', '.join(CONTRACTS)}")
    typer.echo(json.dumps(CONTRACTS[name].model_json_schema(), indent=1))


def main() -> None:
    try:
        app()
    except InputError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
