"""Rich tables for the foundation's contracts (catalog entries, clusters)."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from muxplan.catalog import kv_bytes_per_token, num_params, weight_bytes
from muxplan.schema import GpuSpec, ModelSpec

GIB = 2**30


WIDE = 1000
"""Columns of a console writing to a file or pipe: wide enough that no table is cut (an exported COLUMNS is ignored there)."""


def console(stderr: bool = False) -> Console:
    """A console that does not squeeze tables to 80 columns when output is a file, a pipe or a CI log."""
    out = Console(stderr=stderr)
    return out if out.is_terminal else Console(stderr=stderr, width=WIDE)


def progress_bar() -> Progress:
    """The progress display of long steps: on stderr (stdout stays clean for tables and --json), gone when done."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[note]}"),
                    TimeElapsedColumn(), console=console(stderr=True), transient=True)


def models_table(models: list[ModelSpec]) -> Table:
    table = Table(title="Models")
    for col in ("name", "family", "params", "layers", "hidden", "heads/kv", "head_dim", "vocab", "dtype", "weights GiB", "KV KiB/token"):
        table.add_column(col, justify="left" if col in ("name", "family", "dtype") else "right")
    for m in models:
        moe = f" ({m.num_experts}x{m.num_experts_per_token} MoE)" if m.num_experts else ""
        table.add_row(
            m.name, m.family + moe, f"{num_params(m) / 1e9:.2f}B", str(m.num_layers), str(m.hidden_size),
            f"{m.num_heads}/{m.num_kv_heads}", str(m.head_dim), str(m.vocab_size), m.dtype,
            f"{weight_bytes(m) / GIB:.1f}", f"{kv_bytes_per_token(m) / 1024:.0f}",
        )
    return table


def model_detail_table(m: ModelSpec) -> Table:
    table = Table(title=m.name, show_header=False)
    table.add_column("field")
    table.add_column("value", justify="right")
    for key, value in m.model_dump().items():
        table.add_row(key, str(value))
    table.add_row("derived: parameters", f"{num_params(m):,}")
    table.add_row("derived: active parameters", f"{num_params(m, active_only=True):,}")
    table.add_row("derived: weight bytes", f"{weight_bytes(m):,}")
    table.add_row("derived: KV bytes per token", f"{kv_bytes_per_token(m):,}")
    return table


def gpus_table(gpus: list[GpuSpec]) -> Table:
    table = Table(title="GPUs")
    for col in ("name", "memory GiB", "SMs", "bf16 TFLOP/s", "HBM GB/s", "link GB/s"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for g in gpus:
        table.add_row(
            g.name, f"{g.memory_bytes / GIB:.0f}", str(g.num_sms), f"{g.peak_bf16_flops / 1e12:.0f}",
            f"{g.hbm_bytes_per_s / 1e9:.0f}", f"{g.link_bytes_per_s / 1e9:.0f}",
        )
    return table


def _num(value: float, fmt: str) -> str:
    return "-" if value != value else format(value, fmt)  # NaN (no requests) prints as '-'


def workload_table(title: str, summary) -> Table:
    """Per-model rows of a muxplan.summary.WorkloadSummary plus a bold total line."""
    table = Table(title=title)
    columns = ("model", "catalog", "spec req/s", "requests", "req/s", "prompt mean", "p50", "p99",
               "output mean", "p50 ", "p99 ", "arrival CV")
    for col in columns:
        table.add_column(col, justify="left" if col in ("model", "catalog") else "right")
    for r in [*summary.models, summary.total]:
        table.add_row(
            r.name, r.model, f"{r.spec_rate_rps:.3f}", str(r.num_requests), f"{r.rate_rps:.3f}",
            _num(r.prompt_mean, ".1f"), _num(r.prompt_p50, ".0f"), _num(r.prompt_p99, ".0f"),
            _num(r.output_mean, ".1f"), _num(r.output_p50, ".0f"), _num(r.output_p99, ".0f"), _num(r.arrival_cv, ".2f"),
            style="bold" if r is summary.total else None, end_section=r is summary.models[-1],
        )
    return table
