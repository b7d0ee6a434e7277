"""`muxplan workload`: synthesise, import and summarise multi-model workloads."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from muxplan.files import InputError

app = typer.Typer(help="Synthesise, import and summarise multi-model workloads.", no_args_is_help=True)


def _save(workload, out: Path) -> None:
    from muxplan.files import save_contract, save_trace
    from muxplan.schema import Trace

    if out.suffix.lower() in (".csv", ".jsonl"):
        save_trace(out, Trace(requests=workload.requests or [], source=workload.source))
    else:
        save_contract(out, workload)


@app.command("synth")
def synth(
    models: Annotated[str, typer.Option(help="Catalog models with counts, e.g. llama-7b:12,llama-13b:4.")],
    out: Annotated[Path, typer.Option(help="Output workload (.json/.yaml) or trace (.csv/.jsonl).")],
    alpha: Annotated[float, typer.Option(help="Power-law popularity exponent.")] = 0.9,
    top_rate: Annotated[Optional[float], typer.Option(help="Rate of the most popular model (req/s).")] = 40.0,
    total_rate: Annotated[Optional[float], typer.Option(help="Total rate over all models (overrides --top-rate).")] = None,
    rate_scale: Annotated[float, typer.Option(help="Multiply every rate by this.")] = 1.0,
    duration: Annotated[float, typer.Option(help="Seconds of arrivals.")] = 240.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    popularity_order: Annotated[str, typer.Option(help="size (largest least popular), shuffled, or explicit.")] = "size",
    order: Annotated[Optional[str], typer.Option(help="Served names hottest first, for --popularity-order explicit.")] = None,
    arrivals: Annotated[str, typer.Option(help="poisson or gamma.")] = "poisson",
    cv: Annotated[float, typer.Option(help="Coefficient of variation of gamma inter-arrival times.")] = 1.0,
    prompt_mean: Annotated[float, typer.Option(help="Mean prompt tokens (lognormal).")] = 161.0,
    output_mean: Annotated[float, typer.Option(help="Mean output tokens (lognormal).")] = 338.0,
    lengths_from: Annotated[Optional[Path], typer.Option(help="Resample lengths from an Azure-format trace CSV.")] = None,
    slo_scale: Annotated[float, typer.Option(help="SLO as a multiple of isolated latency.")] = 5.0,
) -> None:
    """Generate a multi-model workload with power-law popularity."""
    from muxplan.schema import Arrivals, LengthDist, Slo
    from muxplan.workload import parse_model_counts, read_azure_csv, synthesize

    if arrivals not in ("poisson", "gamma"):
        raise InputError(f"--arrivals: '{arrivals}' is not one of poisson, gamma")
    if alpha < 0 or rate_scale <= 0 or duration <= 0 or cv <= 0:
        raise InputError("--alpha must be >= 0; --rate-scale, --duration and --cv must be > 0")
    if lengths_from:
        rows = read_azure_csv(lengths_from)
        prompts, outputs = [r[1] for r in rows], [r[2] for r in rows]
        prompt = LengthDist(kind="empirical", mean=sum(prompts) / len(prompts), values=prompts, high=max(prompts))
        output = LengthDist(kind="empirical", mean=sum(outputs) / len(outputs), values=outputs, high=max(outputs))
    else:
        prompt, output = LengthDist(mean=prompt_mean), LengthDist(mean=output_mean)
    workload = synthesize(
        parse_model_counts(models), alpha, top_rate, total_rate, rate_scale, duration, seed, popularity_order,
        order.split(",") if order else None, Arrivals(process=arrivals, cv=cv), prompt, output, Slo(scale=slo_scale),
    )
    _save(workload, out)
    typer.echo(f"wrote {out}: {len(workload.models)} models, {len(workload.requests or [])} requests")


@app.command("import")
def import_trace(
    file: Annotated[Path, typer.Argument(help="Azure-format CSV (TIMESTAMP, ContextTokens, GeneratedTokens).")],
    models: Annotated[str, typer.Option(help="Catalog models with counts, e.g. llama-3.1-8b:2,qwen2.5-14b:1.")],
    out: Annotated[Path, typer.Option(help="Output workload (.json/.yaml) or trace (.csv/.jsonl).")],
    alpha: Annotated[float, typer.Option(help="Power-law popularity exponent.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    popularity_order: Annotated[str, typer.Option(help="size or shuffled.")] = "size",
) -> None:
    """Turn a single-model Azure trace into a multi-model trace by popularity."""
    from muxplan.workload import import_azure, parse_model_counts

    workload = import_azure(file, parse_model_counts(models), alpha, seed, popularity_order)
    _save(workload, out)
    typer.echo(f"wrote {out}: {len(workload.models)} models, {len(workload.requests or [])} requests")


@app.command("show")
def show(file: Annotated[Path, typer.Argument(help="Workload or trace file.")]) -> None:
    """Summarise a workload or trace per model: rate, lengths, arrival CV."""
    from muxplan.render import console, workload_table
    from muxplan.workload import load_workload, summarize

    workload = load_workload(file)
    console().print(workload_table(f"{file} ({workload.source or workload.name})", summarize(workload)))
