"""`muxplan workload`: synthesise, import and summarise multi-model workloads."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from muxplan.commands.options import check_numbers
from muxplan.files import InputError

app = typer.Typer(help="Synthesise, import and summarise multi-model workloads.", no_args_is_help=True)


def _save(workload, out: Path) -> None:
    """A Workload (.json/.yaml/.yml) or, for .csv/.jsonl, a plain trace of its requests."""
    from muxplan.files import save_contract, save_trace
    from muxplan.schema import Trace

    if out.suffix.lower() in (".csv", ".jsonl"):
        if workload.requests is None:
            raise InputError(f"--out {out}: a .csv/.jsonl trace needs requests; drop --spec-only or write .json/.yaml")
        save_trace(out, Trace(requests=workload.requests, source=workload.source))
    else:
        save_contract(out, workload)


def _check_out(out: Path) -> None:
    if out.suffix.lower() not in (".json", ".yaml", ".yml", ".csv", ".jsonl"):
        raise InputError(f"--out {out}: suffix must be .json, .yaml, .yml (workload) or .csv, .jsonl (trace)")


@app.command("synth")
def synth(
    models: Annotated[str, typer.Option(help="Catalog models with counts, e.g. llama-7b:12,llama-13b:4.")],
    out: Annotated[Path, typer.Option(help="Output workload (.json/.yaml) or trace (.csv/.jsonl).")],
    alpha: Annotated[float, typer.Option(help="Power-law popularity exponent: rate of rank k ∝ (k+1)^-alpha.")] = 0.9,
    top_rate: Annotated[Optional[float], typer.Option(help="Rate of the most popular model, req/s (default 40).")] = None,
    total_rate: Annotated[Optional[float], typer.Option(help="Total rate over all models, req/s (instead of --top-rate).")] = None,
    rate_scale: Annotated[float, typer.Option(help="Multiply every rate by this (the paper's s).")] = 1.0,
    duration: Annotated[float, typer.Option(help="Seconds of arrivals.")] = 240.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    popularity_order: Annotated[str, typer.Option(help="size (largest least popular), shuffled, or explicit.")] = "size",
    order: Annotated[Optional[str], typer.Option(help="Served names hottest first, for --popularity-order explicit.")] = None,
    arrivals: Annotated[str, typer.Option(help="Arrival process: poisson or gamma.")] = "poisson",
    cv: Annotated[float, typer.Option(help="Coefficient of variation of gamma inter-arrival times.")] = 1.0,
    prompt_mean: Annotated[float, typer.Option(help="Mean prompt tokens (lognormal).")] = 161.0,
    output_mean: Annotated[float, typer.Option(help="Mean output tokens (lognormal).")] = 338.0,
    length_sigma: Annotated[float, typer.Option(help="Lognormal shape of both length distributions.")] = 0.8,
    lengths_from: Annotated[Optional[Path], typer.Option(help="Resample lengths from an Azure CSV or a trace file.")] = None,
    slo_scale: Annotated[float, typer.Option(help="SLO as a multiple of isolated latency.")] = 5.0,
    name: Annotated[str, typer.Option(help="Workload name.")] = "synthetic",
    spec_only: Annotated[bool, typer.Option("--spec-only", help="Write the spec without materialised requests.")] = False,
) -> None:
    """Generate a multi-model workload with power-law popularity."""
    from muxplan.schema import Arrivals, LengthDist, Slo
    from muxplan.workload import parse_model_counts, synthesize

    _check_out(out)
    if arrivals not in ("poisson", "gamma"):
        raise InputError(f"--arrivals: '{arrivals}' is not one of poisson, gamma")
    if top_rate is not None and total_rate is not None:
        raise InputError("--top-rate and --total-rate: give one, not both")
    check_numbers(seed=(seed, 0, False), alpha=(alpha, 0, False), top_rate=(top_rate, 0, False), total_rate=(total_rate, 0, False),
                   rate_scale=(rate_scale, 0, True), duration=(duration, 0, True), cv=(cv, 0, True),
                   prompt_mean=(prompt_mean, 0, True), output_mean=(output_mean, 0, True),
                   length_sigma=(length_sigma, 0, False), slo_scale=(slo_scale, 0, True))
    if lengths_from:
        from muxplan.azure import lengths_from as read_lengths

        prompt, output = read_lengths(lengths_from)
    else:
        prompt, output = LengthDist(mean=prompt_mean, sigma=length_sigma), LengthDist(mean=output_mean, sigma=length_sigma)
    workload = synthesize(
        parse_model_counts(models), alpha, 40.0 if top_rate is None and total_rate is None else top_rate, total_rate,
        rate_scale, duration, seed, popularity_order, order.split(",") if order else None,
        Arrivals(process=arrivals, cv=cv), prompt, output, Slo(scale=slo_scale), materialise=not spec_only, name=name,
    )
    _save(workload, out)
    typer.echo(f"wrote {out}: {len(workload.models)} models, "
               + ("spec only" if spec_only else f"{len(workload.requests or [])} requests over {duration:g} s"))


@app.command("import")
def import_trace(
    file: Annotated[Path, typer.Argument(help="Azure-format CSV (TIMESTAMP, ContextTokens, GeneratedTokens).")],
    models: Annotated[str, typer.Option(help="Catalog models with counts, e.g. llama-3.1-8b:2,qwen2.5-14b:1.")],
    out: Annotated[Path, typer.Option(help="Output workload (.json/.yaml) or plain trace (.csv/.jsonl).")],
    alpha: Annotated[float, typer.Option(help="Power-law popularity exponent.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed of the request-to-model assignment.")] = 0,
    popularity_order: Annotated[str, typer.Option(help="size, shuffled, or explicit.")] = "size",
    order: Annotated[Optional[str], typer.Option(help="Served names hottest first, for --popularity-order explicit.")] = None,
    slo_scale: Annotated[float, typer.Option(help="SLO as a multiple of isolated latency.")] = 5.0,
) -> None:
    """Turn a single-model Azure trace into a multi-model trace by popularity."""
    from muxplan.azure import import_azure
    from muxplan.schema import Slo
    from muxplan.workload import parse_model_counts

    _check_out(out)
    check_numbers(seed=(seed, 0, False), alpha=(alpha, 0, False), slo_scale=(slo_scale, 0, True))
    counts = parse_model_counts(models)
    workload = import_azure(file, counts, alpha, seed, popularity_order, order.split(",") if order else None, Slo(scale=slo_scale))
    _save(workload, out)
    typer.echo(f"wrote {out}: {len(workload.models)} models, {len(workload.requests or [])} requests "
               f"over {workload.duration_s:.1f} s")


@app.command("show")
def show(file: Annotated[Path, typer.Argument(help="Workload (.json/.yaml) or trace (.csv/.jsonl/.json/.yaml).")]) -> None:
    """Summarise a workload or trace per model: rate, lengths, arrival CV."""
    from muxplan.render import console, workload_table
    from muxplan.summary import summarize
    from muxplan.workload import load_workload

    workload = load_workload(file)
    summary = summarize(workload)
    drawn = f"; requests drawn from the spec with seed {workload.seed}" if summary.materialised else ""
    title = f"{file}: {workload.name}, {workload.duration_s:g} s, {workload.arrivals.process} arrivals{drawn}"
    console().print(workload_table(title, summary))
    if workload.source:
        console().print(f"source: {workload.source}")
