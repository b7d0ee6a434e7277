"""PNG plots of simulation results (matplotlib is imported lazily, with a file-only backend)."""
from __future__ import annotations

from pathlib import Path

from planner.sim.engine import SimResult
from planner.sim.metrics import Summary


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_attainment(curves: dict[str, tuple[list[float], list[float]]], path: str | Path) -> None:
    """SLO attainment vs SLO scale, one line per run (policy or plan)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (scales, att) in curves.items():
        ax.plot(scales, [100 * a for a in att], marker="o", label=label)
    ax.set_xlabel("SLO scale (x isolated latency)")
    ax.set_ylabel("requests within SLO (%)")
    ax.axhline(99, color="grey", lw=0.8, ls="--")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_throughput_vs_rate(probes: dict[str, list[Summary]], path: str | Path) -> None:
    """Throughput per model against the rate scale, from the max-rate search's probes (one panel per run)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(probes), figsize=(5 * len(probes), 4), squeeze=False)
    for ax, (label, summaries) in zip(axes[0], probes.items()):
        ordered = sorted(summaries, key=lambda s: s.rate_scale)
        scales = [s.rate_scale for s in ordered]
        for m in range(len(ordered[0].models) if ordered else 0):
            ax.plot(scales, [s.models[m].throughput_rps for s in ordered], marker=".", label=ordered[0].models[m].name)
        ax.set_xscale("log")
        ax.set_title(label)
        ax.set_xlabel("rate scale")
        ax.set_ylabel("throughput (req/s)")
    if probes:
        axes[0][0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_attainment_vs_rate(probes: dict[str, list[Summary]], path: str | Path, target: float = 0.99) -> None:
    """Overall SLO attainment against the rate scale, one line per run, with the target attainment."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, summaries in probes.items():
        ordered = sorted(summaries, key=lambda s: s.rate_scale)
        ax.plot([s.rate_scale for s in ordered], [100 * s.overall.slo_attainment for s in ordered], marker=".", label=label)
    ax.axhline(100 * target, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("rate scale (x the workload's arrival rates)")
    ax.set_ylabel("requests within SLO (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_usage(result: SimResult, path: str | Path) -> None:
    """SM (time-averaged per second) and KV pool usage over time, one line per unit."""
    plt = _pyplot()
    fig, (ax_sm, ax_kv) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for uid, series in result.timeline.items():
        ax_sm.plot(series["t_s"], series["sm_pct"], lw=0.8, label=f"unit {uid}")
        ax_kv.plot(series["t_s"], series["kv_pct"], lw=0.8)
    ax_sm.set_ylabel("SMs in use (%)")
    ax_kv.set_ylabel("KV pool used (%)")
    ax_kv.set_xlabel("simulated time (s)")
    ax_sm.set_title(f"policy {result.policy}")
    if result.timeline:
        ax_sm.legend(fontsize=6, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
