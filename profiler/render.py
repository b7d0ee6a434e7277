"""Rich tables for profiles and calibration errors."""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from muxplan.files import atomic_path
from muxplan.schema import Profile


def error_table(title: str, rows: list) -> Table:
    table = Table(title=title)
    for col in ("group", "points", "MAPE %", "max APE %"):
        table.add_column(col, justify="left" if col == "group" else "right")
    for r in rows:
        style = "bold" if len(r.group.split()) == 1 else None
        table.add_row(r.group, str(r.num_points), f"{r.mape_pct:.1f}", f"{r.max_ape_pct:.1f}", style=style)
    return table


def profile_tables(profile: Profile) -> list[Table]:
    """One table per (phase, tp, sm): rows = batch, columns = tokens, cells = latency ms."""
    tables = []
    keys = sorted({(p.phase, p.tp, p.sm_pct) for p in profile.points})
    for phase, tp, sm in keys:
        pts = [p for p in profile.points if (p.phase, p.tp, p.sm_pct) == (phase, tp, sm)]
        tokens = sorted({p.tokens for p in pts})
        cells = {(p.batch, p.tokens): p.latency_ms for p in pts}
        table = Table(title=f"{profile.model} on {profile.gpu}: {phase} ms, tp={tp}, sm={sm}%")
        table.add_column("batch \\ tokens", justify="right")
        for t in tokens:
            table.add_column(str(t), justify="right")
        for b in sorted({p.batch for p in pts}):
            table.add_row(str(b), *(f"{cells[(b, t)]:.2f}" if (b, t) in cells else "-" for t in tokens))
        tables.append(table)
    return tables


def plot_profiles(profiles: list[Profile], out: str | Path) -> None:
    """One PNG at ``out``: a row per profile, latency vs batch for each SM% (prefill, decode) at the median token count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(len(profiles), 2, figsize=(11, 4 * len(profiles)), squeeze=False)
    for profile, axes in zip(profiles, grid):
        for ax, phase in zip(axes, ("prefill", "decode")):
            pts = [p for p in profile.points if p.phase == phase and p.tp == min(q.tp for q in profile.points)]
            if not pts:
                ax.set_axis_off()
                continue
            tokens = sorted({p.tokens for p in pts})[len({p.tokens for p in pts}) // 2]
            for sm in sorted({p.sm_pct for p in pts}):
                line = sorted((p.batch, p.latency_ms) for p in pts if p.sm_pct == sm and p.tokens == tokens)
                ax.plot([b for b, _ in line], [ms for _, ms in line], marker="o", label=f"{sm}% SMs")
            ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="latency ms",
                   title=f"{profile.model} on {profile.gpu}: {phase}, {tokens} tokens")
            ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out) as tmp:  # no half-written plot
        fig.savefig(tmp)
    plt.close(fig)
