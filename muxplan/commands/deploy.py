"""`muxplan deploy` and `muxplan status`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from muxplan.files import InputError


def deploy(
    plan: Annotated[Optional[Path], typer.Argument(help="plan.json from `muxplan solve` (not with --update).")] = None,
    backend: Annotated[str, typer.Option(help="vllm or engine.")] = "vllm",
    dry_run: Annotated[bool, typer.Option(help="Print every process's environment and command, start nothing.")] = False,
    host: Annotated[str, typer.Option(help="Address the front door and backends bind to.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Front-door port; backends take the ports after it.")] = 8000,
    state_dir: Annotated[Path, typer.Option(help="Logs, MPS pipes and the deployment state file.")] = Path(".muxplan"),
    gpu: Annotated[bool, typer.Option(help="Target GPU hosts (MPS, device UUIDs) even when planning on a CPU machine.")] = False,
    api_key: Annotated[Optional[str], typer.Option(envvar="MUXPLAN_API_KEY", help="Require this bearer key on /v1 routes.")] = None,
    ray: Annotated[Optional[str], typer.Option(help="Place units through Ray: 'local' or a cluster address.")] = None,
    record: Annotated[Optional[Path], typer.Option(help="Write the served requests (no text) as trace segments DIR/trace-NNNN.json.")] = None,
    update: Annotated[Optional[Path], typer.Option(help="Roll the deployment in --state-dir over to this plan (new processes first, then routing, then the old stop).")] = None,
    allow_gap: Annotated[bool, typer.Option(help="With --update: accept a model without a replica while memory forces old processes to stop first.")] = False,
    max_connections: Annotated[int, typer.Option(min=1, max=1_000_000, help="Open client connections the front door holds (idle ones are closed "
                                                 "to admit new ones; past it: 503 with Retry-After).")] = 1024,
) -> None:
    """Start the serving processes of a plan behind one OpenAI-compatible endpoint (or --update a running one)."""
    import shutil

    if update is not None:
        return _update(update, state_dir, allow_gap)
    if plan is None:
        raise InputError("deploy: give a plan file (or --update PLAN for a running deployment)")

    from executor.launcher import build_processes, shell_script
    from profiler.plan_check import load_plan

    # the schema and every constraint, as every command that reads a plan checks them; a model may be a hub id or a
    # local folder not built yet (vLLM resolves it when it starts; --dry-run needs no model files)
    loaded = load_plan(plan, model_files_optional=True)
    on_gpu = gpu or shutil.which("nvidia-smi") is not None
    uuids = {}
    if on_gpu and not ray:  # one host serves every unit: address its GPUs by UUID, as MPS wants
        from executor.mps import local_gpu_uuids

        found = local_gpu_uuids()
        uuids = {(u.node, g): found[g] for u in loaded.units for g in u.gpu_ids if g < len(found)}
    procs = build_processes(loaded, backend, plan, state_dir, base_port=port + 1, on_gpu=on_gpu, uuids=uuids)  # backends on loopback
    if not dry_run:
        from executor.deployment import check_loadable, serve

        check_loadable(loaded, plan, backend)
        serve(loaded, procs, state_dir, host, port, api_key, ray, backend, progress=lambda line: typer.echo(f"muxplan deploy: {line}"),
              record=record, max_connections=max_connections)
        return
    from muxplan.render import console
    from executor.render import processes_table

    con = console()
    con.print(processes_table(procs))
    typer.echo(shell_script(procs, state_dir, on_gpu))


def _update(new_plan: Path, state_dir: Path, allow_gap: bool) -> None:
    import json

    from executor.supervisor import STATE_FILE, supervisor_alive
    from executor.update import follow, request_update
    from profiler.plan_check import load_plan

    load_plan(new_plan, model_files_optional=True)  # every constraint, before the deployment sees it
    path = state_dir / STATE_FILE
    try:
        alive = supervisor_alive(json.loads(path.read_text()))
    except (OSError, ValueError):
        alive = False
    if not alive:
        raise InputError(f"{path}: no running deployment to update")
    result = follow(state_dir, request_update(state_dir, new_plan, allow_gap), lambda line: typer.echo(f"muxplan deploy --update: {line}"))
    if result["status"] == "refused":
        raise InputError(result.get("message", "refused"))
    if result["status"] != "done":
        typer.echo(f"error: update {result['status']}: {result.get('message', '')}", err=True)
        raise typer.Exit(1)
    typer.echo(f"muxplan deploy --update: done; steps recorded in {state_dir / 'update.json'}")


def status(
    state_dir: Annotated[Path, typer.Option(help="State directory of the deployment.")] = Path(".muxplan"),
) -> None:
    """Show the processes of a running deployment (exit 1 when its supervisor is gone)."""
    import json

    from muxplan.render import console
    from executor.render import status_table
    from executor.supervisor import STATE_FILE, supervisor_alive

    path = state_dir / STATE_FILE
    if not path.is_file():
        raise InputError(f"{path}: no running deployment")
    try:
        state = json.loads(path.read_text())
        rows = state["processes"]
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{path}: not a deployment state file") from None
    if not supervisor_alive(state):
        for r in rows:
            r["healthy"], r["problem"] = False, "supervisor dead"
        console().print(status_table(rows))
        typer.echo(f"error: the supervisor (pid {state.get('supervisor_pid')}) is not running: the deployment is down "
                   f"and {path} is stale", err=True)
        raise typer.Exit(1)
    console().print(status_table(rows))
