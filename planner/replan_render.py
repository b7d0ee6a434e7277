"""Rich tables of `muxplan replan`: the budgeted plan next to the from-scratch optimum, the moves, value per budget."""
from __future__ import annotations

from rich.table import Table

from muxplan.schema import Plan
from planner.migration import Migration, Process


def _rate(plan: Plan, p: Process) -> float:
    for u in plan.units:
        if u.node == p.node and tuple(u.gpu_ids) == p.gpu_ids:
            return sum(m.predicted_rps for m in u.models if m.name == p.model and m.decode_sm_pct == p.decode_sm_pct
                       and m.max_num_seqs == p.max_num_seqs)
    return 0.0


def comparison_table(current: Plan, budgeted: Plan, scratch: Plan, moved: Migration, scratch_moved: Migration) -> Table:
    table = Table(title="Replan: budgeted vs from scratch")
    for col in ("plan", "value", "bound", "gap %", "served req/s", "GPUs", "moves", "restarts", "seconds"):
        table.add_column(col, justify="left" if col == "plan" else "right")
    table.add_row("current (as planned)", "", "", "", f"{current.served_rps:.2f}", str(current.num_gpus_used), "0", "0", "")
    for label, plan, mig, s in (("budgeted", budgeted, moved, budgeted.solver), ("from scratch", scratch, scratch_moved, scratch.solver)):
        table.add_row(label, f"{s.value:.3f}", f"{s.bound:.3f}" if s.bound is not None else "n/a",
                      f"{100 * s.gap:.2f}" if s.gap is not None else "n/a", f"{plan.served_rps:.2f}", str(plan.num_gpus_used),
                      str(mig.moves), str(mig.restarts), f"{s.seconds:.1f}")
    return table


def moves_table(current: Plan, new: Plan, moved: Migration) -> Table:
    """Every process started (what it serves in the new plan) and stopped (what it served before)."""
    table = Table(title="Moves (processes started) and restarts (processes stopped)")
    for col in ("change", "model", "node", "GPUs", "decode SM%", "quota", "req/s"):
        table.add_column(col, justify="left" if col in ("change", "model", "GPUs") else "right")
    for kind, procs, plan in (("start", moved.started, new), ("stop", moved.stopped, current)):
        for p in sorted(procs, key=lambda p: (p.model, p.node, p.gpu_ids)):
            table.add_row(kind, p.model, str(p.node), ",".join(map(str, p.gpu_ids)), str(p.decode_sm_pct), str(p.max_num_seqs),
                          f"{_rate(plan, p):.2f}")
    return table


def curve_table(curve: tuple[tuple[int, float], ...]) -> Table:
    """The best value at each move budget: what the k-th move buys is the step from k - 1."""
    table = Table(title="Value per move budget")
    for col in ("max moves", "value", "gain over previous"):
        table.add_column(col, justify="right")
    prev = None
    for k, v in curve:
        table.add_row(str(k), f"{v:.3f}", "" if prev is None else f"{v - prev:+.3f}")
        prev = v
    return table
