"""Rich rendering of simulation results: per-model summaries, side-by-side comparisons, progress bars."""
from __future__ import annotations

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from planner.sim.capacity import Capacity
from planner.sim.metrics import Stats, Summary


def _ms(values: tuple[float, float, float]) -> list[str]:
    return ["-" if v != v else f"{v:.0f}" for v in values]


def summary_table(summary: Summary, title: str = "") -> Table:
    table = Table(title=title or f"Simulation: policy {summary.policy}, rate x{summary.rate_scale:g}, SLO scale {summary.slo_scale:g}")
    for col in ("model", "requests", "finished", "dropped", "preempt", "req/s", "TTFT p50", "p90", "p99", "TPOT p50", "p90", "p99", "SLO %"):
        table.add_column(col, justify="left" if col == "model" else "right")

    def row(s: Stats, style: str = "") -> None:
        table.add_row(s.name, str(s.num_requests), str(s.num_finished), str(s.num_dropped), str(s.num_preemptions),
                      f"{s.throughput_rps:.2f}", *_ms(s.ttft_ms), *_ms(s.tpot_ms), f"{100 * s.slo_attainment:.1f}", style=style)

    for s in summary.models:
        row(s)
    row(summary.overall, "bold")
    table.caption = "latencies in ms; " + (", ".join(f"{k}: {v}" for k, v in summary.drop_reasons.items()) or "nothing dropped")
    return table


def compare_table(rows: list[tuple[str, Summary, Capacity | None]]) -> Table:
    """One row per (label, summary at the base rate, optional max-rate search)."""
    table = Table(title="Side by side")
    for col in ("run", "policy", "req/s", "SLO %", "TTFT p99 ms", "TPOT p99 ms", "dropped", "max rate x (99% SLO)", "max req/s"):
        table.add_column(col, justify="left" if col in ("run", "policy") else "right")
    for label, s, cap in rows:
        table.add_row(label, s.policy, f"{s.overall.throughput_rps:.2f}", f"{100 * s.overall.slo_attainment:.1f}",
                      _ms(s.overall.ttft_ms)[2], _ms(s.overall.tpot_ms)[2], str(s.overall.num_dropped),
                      f"{cap.rate_scale:.3g}" if cap else "-", f"{cap.rate_rps:.1f}" if cap else "-")
    base = next((cap for label, _, cap in rows if label == "spatial" and cap and cap.rate_scale > 0), None)
    if base is not None and rows[0][2] is not None:
        table.caption = (f"{rows[0][0]} sustains {rows[0][2].rate_scale / base.rate_scale:.2f}x the rate spatial partitioning "
                         f"does at 99% within SLO (MuxServe reports up to 2.9x)")
    return table


def attainment_table(curves: dict[str, tuple[list[float], list[float]]]) -> Table:
    scales = next(iter(curves.values()))[0] if curves else []
    table = Table(title="SLO attainment (%) vs SLO scale")
    table.add_column("run")
    for k in scales:
        table.add_column(f"{k:g}x", justify="right")
    for label, (_, att) in curves.items():
        table.add_row(label, *[f"{100 * a:.1f}" for a in att])
    return table


def progress_bar(console=None) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
                    console=console, transient=True)


def evaluation_table(rows: list[tuple[str, str, Summary]], chosen: str) -> Table:
    """Candidate plans judged by simulation (for `muxplan solve --evaluate sim`)."""
    table = Table(title=f"Plans judged by simulation (SLO scale {rows[0][2].slo_scale:g})" if rows else "Plans judged by simulation")
    for col in ("solver", "policy", "req/s", "SLO %", "TTFT p99 ms", "TPOT p99 ms", "dropped", "chosen"):
        table.add_column(col, justify="left" if col in ("solver", "policy") else "right")
    for method, policy, s in rows:
        table.add_row(method, policy, f"{s.overall.throughput_rps:.2f}", f"{100 * s.overall.slo_attainment:.1f}",
                      _ms(s.overall.ttft_ms)[2], _ms(s.overall.tpot_ms)[2], str(s.overall.num_dropped), "*" if method == chosen else "")
    return table
