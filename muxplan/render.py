"""Rich tables for the foundation's contracts (catalog entries, clusters)."""
from __future__ import annotations

from rich.table import Table

from muxplan.catalog import kv_bytes_per_token, num_params, weight_bytes
from muxplan.schema import GpuSpec, ModelSpec

GIB = 2**30


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
