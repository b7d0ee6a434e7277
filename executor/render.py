"""Rich tables for deployments."""
from __future__ import annotations

from rich.table import Table


def processes_table(procs: list) -> Table:
    table = Table(title="Serving processes")
    for col in ("process", "unit", "node", "GPUs", "models", "port", "SM %", "mem limit GiB", "environment"):
        table.add_column(col, justify="right" if col in ("unit", "node", "port", "SM %", "mem limit GiB") else "left")
    for p in procs:
        env = " ".join(f"{k}={v}" for k, v in sorted(p.env.items()))
        table.add_row(p.name, str(p.unit), str(p.node), ",".join(map(str, p.gpu_ids)), ",".join(p.models), str(p.port),
                      str(p.sm_pct), f"{p.mem_limit_bytes / 2**30:.1f}" if p.mem_limit_bytes else "-", env)
    return table


def status_table(rows: list[dict]) -> Table:
    table = Table(title="Deployment")
    for col in ("process", "models", "unit", "pid", "port", "health", "restarts", "problem"):
        table.add_column(col, justify="right" if col in ("unit", "pid", "port", "restarts") else "left")
    for r in rows:
        table.add_row(r["name"], ",".join(r["models"]), str(r["unit"]), str(r["pid"]), str(r["port"]),
                      "healthy" if r["healthy"] else "down", str(r["restarts"]), r.get("problem", ""))
    return table
