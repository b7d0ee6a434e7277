"""`muxplan profile`: measure, calibrate, check and show latency profiles."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from muxplan.files import InputError

app = typer.Typer(help="Measure, calibrate, check and show latency profiles.", invoke_without_command=True)

BACKENDS = {"engine": "executor.engine.probe", "vllm": "executor.vllm_probe"}


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{option}: '{text}' is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise InputError(f"{option}: values must be positive integers")
    return values


@app.callback()
def measure(
    ctx: typer.Context,
    backend: Annotated[Optional[str], typer.Option(help="engine or vllm.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Catalog model or local Hugging Face model folder.")] = None,
    gpu: Annotated[str, typer.Option(help="GPU name recorded in the profile (e.g. H100-SXM, or cpu).")] = "cpu",
    sm: Annotated[str, typer.Option(help="SM percentages to measure.")] = "100",
    tp: Annotated[int, typer.Option(help="Tensor-parallel degree.")] = 1,
    batches: Annotated[str, typer.Option(help="Batch sizes.")] = "1,2,4,8,16,32,64,128,256",
    tokens: Annotated[str, typer.Option(help="Prompt/context token counts.")] = "128,256,512,1024,2048",
    repeats: Annotated[int, typer.Option(help="Timed repeats per point (median is kept).")] = 5,
    out: Annotated[Optional[Path], typer.Option(help="Profile file to write (resumed if it exists).")] = None,
) -> None:
    """Measure prefill and decode latencies through a serving backend (resumable)."""
    if ctx.invoked_subcommand is not None:
        return
    if backend is None or model is None or out is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0 if backend is None and model is None else 2)
    if backend not in BACKENDS:
        raise InputError(f"--backend: '{backend}' is not one of {', '.join(BACKENDS)}")
    import importlib

    from rich.progress import Progress

    from profiler.measure import ProfileRequest, run_profile

    req = ProfileRequest(model=model, gpu=gpu, tp=tp, sm_pcts=_ints(sm, "--sm"), batches=_ints(batches, "--batches"),
                         prefill_tokens=_ints(tokens, "--tokens"), context_tokens=_ints(tokens, "--tokens"), repeats=repeats)
    try:
        probe = importlib.import_module(BACKENDS[backend]).make_probe(req)
    except ModuleNotFoundError as exc:
        raise InputError(f"--backend {backend}: not available in this installation ({exc.name})") from None
    with Progress() as progress:
        task = progress.add_task(f"profiling {model}", total=None)
        run_profile(req, probe, out, on_point=lambda i, n: progress.update(task, completed=i, total=n))
    typer.echo(f"wrote {out}")


@app.command("calibrate")
def calibrate(
    reference: Annotated[Path, typer.Option(help="Measured profile (ours or the MuxServe reference format).")],
    out: Annotated[Path, typer.Option(help="Where to write the fitted parameters (JSON).")],
    gpu: Annotated[str, typer.Option(help="GPU type the measurements come from.")] = "A100-80GB",
    max_batch: Annotated[int, typer.Option(help="Fit and report points with batch <= this.")] = 256,
) -> None:
    """Fit the analytic roofline to measurements and report MAPE per phase, TP and SM%."""
    from muxplan.catalog import get_gpu
    from muxplan.files import save_contract
    from muxplan.render import console
    from profiler.calibrate import error_table, fit
    from profiler.render import error_table as render_errors
    from profiler.table import load_profiles

    get_gpu(gpu)
    profiles = _check_gpu(load_profiles(reference, gpu), gpu, reference)
    params = fit(profiles, gpu, max_batch)
    save_contract(out, params)
    console().print(render_errors(f"calibrated roofline vs {reference.name} (batch <= {max_batch})", error_table(params, profiles, max_batch)))
    typer.echo(f"wrote {out}")


def _check_gpu(profiles, gpu: str, path: Path):
    for i, prof in enumerate(profiles):
        if prof.gpu != gpu:
            raise InputError(f"{path}: gpu: profile is for '{prof.gpu}', not '{gpu}'")
    return profiles


@app.command("check")
def check(
    reference: Annotated[Path, typer.Option(help="Measured profile to compare against.")],
    params: Annotated[Optional[Path], typer.Option(help="Fitted parameters (default: shipped ones for the GPU).")] = None,
    gpu: Annotated[str, typer.Option(help="GPU type of the reference.")] = "A100-80GB",
    max_batch: Annotated[int, typer.Option(help="Report points with batch <= this.")] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
) -> None:
    """Report the analytic model's error against a measured profile without fitting."""
    from muxplan.files import load_contract
    from muxplan.render import console
    from profiler.calibrate import error_table
    from profiler.render import error_table as render_errors
    from profiler.roofline import RooflineParams, shipped_params
    from profiler.table import load_profiles

    fitted = load_contract(params, RooflineParams) if params else shipped_params(gpu)
    rows = error_table(fitted, _check_gpu(load_profiles(reference, gpu), gpu, reference), max_batch)
    if as_json:
        summary = {"gpu": gpu, "params": str(params or f"shipped:{gpu}"), "max_batch": max_batch,
                   "mape_pct": {r.group: round(r.mape_pct, 3) for r in rows},
                   "num_points": {r.group: r.num_points for r in rows}}
        typer.echo(json.dumps(summary, indent=1))
    else:
        console().print(render_errors(f"roofline vs {reference.name} (batch <= {max_batch})", rows))


@app.command("show")
def show(
    file: Annotated[Path, typer.Argument(help="Profile file or folder (ours or the reference format).")],
    plot: Annotated[Optional[Path], typer.Option(help="Write latency-vs-batch plots to this one PNG (a row per model).")] = None,
) -> None:
    """Render a profile as tables (and optionally a plot)."""
    from muxplan.render import console
    from profiler.render import plot_profiles, profile_tables
    from profiler.table import load_profiles

    if plot is not None and plot.suffix.lower() != ".png":
        raise InputError(f"--plot {plot}: must end in .png")
    profiles = load_profiles(file)
    con = console()
    for prof in profiles:
        for table in profile_tables(prof):
            con.print(table)
    if plot is not None:
        plot_profiles(profiles, plot)
        typer.echo(f"wrote {plot}")
