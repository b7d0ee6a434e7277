"""Rich rendering of plans: units, headline, the solvers considered, and plan diffs."""
from __future__ import annotations

from rich.table import Table

from muxplan.schema import Plan

GIB = 2**30


def headline(plan: Plan) -> str:
    s = plan.solver
    gap = f"{s.gap * 100:.2f}%" if s.gap is not None else "n/a"
    bound = f"{s.bound:.2f}" if s.bound is not None else "n/a"
    line = (f"[bold]{s.method}[/] ({s.objective}): served {plan.served_rps:.2f} / {plan.demand_rps:.2f} req/s, "
            f"GPUs used {plan.num_gpus_used} / {plan.cluster.num_gpus}, value {s.value:.3f}, bound {bound}, gap {gap}, "
            f"{s.seconds:.2f} s, status {s.status}")
    if plan.predicted_goodput_rps is not None:
        room = f", headroom x{s.headroom:.3f} (capacity)" if s.headroom is not None else ""
        if plan.predicted_max_rate_scale is not None:
            room += f", max rate x{plan.predicted_max_rate_scale:.2f} at 99% within SLO"
        line += (f"\npredicted: goodput {plan.predicted_goodput_rps:.2f} req/s within SLO, SLO attainment "
                 f"{100 * (plan.predicted_slo_attainment or 0):.2f}%{room}")
    if plan.check is not None:
        c = plan.check
        line += (f"\nsimulated ({c.policy}, SLO {c.slo_scale:g}x, {c.rounds} closed-loop round{'s' if c.rounds > 1 else ''}): "
                 f"served {c.simulated_rps:.2f} req/s, goodput {c.simulated_goodput_rps:.2f} req/s, SLO attainment "
                 f"{100 * c.simulated_slo_attainment:.2f}%")
    return line


def units_table(plan: Plan) -> Table:
    table = Table(title="Units")
    for col in ("unit", "node", "GPUs", "stall %", "model", "TP", "prefill SM%", "decode SM%", "KV GiB", "quota", "rate req/s",
                "predicted req/s", "TTFT p99 ms", "TPOT p99 ms", "SLO %"):
        table.add_column(col, justify="left" if col in ("model", "GPUs") else "right")
    for u in plan.units:
        for k, m in enumerate(u.models):
            first = k == 0
            stall = f"{100 * u.stall_share:.0f}" if first and u.stall_share is not None else ""
            table.add_row(str(u.id) if first else "", str(u.node) if first else "", ",".join(map(str, u.gpu_ids)) if first else "", stall,
                          m.name, str(m.tp), str(m.prefill_sm_pct), str(m.decode_sm_pct), f"{m.kv_bytes / GIB:.1f}",
                          str(m.max_num_seqs), f"{m.rate_rps:.2f}", f"{m.predicted_rps:.2f}",
                          f"{m.predicted_ttft_ms[1]:.0f}" if m.predicted_ttft_ms else "-", f"{m.predicted_tpot_ms[1]:.0f}" if m.predicted_tpot_ms else "-",
                          f"{100 * m.predicted_slo_attainment:.1f}" if m.predicted_slo_attainment is not None else "-",
                          end_section=k == len(u.models) - 1)
    return table


def check_table(plan: Plan) -> Table:
    """Per model: predicted vs simulated served rate and SLO attainment."""
    table = Table(title="Predicted vs simulated, per model")
    for col in ("model", "predicted req/s", "simulated req/s", "predicted SLO %", "simulated SLO %"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for m in plan.check.models:
        table.add_row(m.name, f"{m.predicted_rps:.2f}", f"{m.simulated_rps:.2f}",
                      f"{100 * m.predicted_slo_attainment:.1f}" if m.predicted_slo_attainment is not None else "-",
                      f"{100 * m.simulated_slo_attainment:.1f}")
    return table


def unserved_table(plan: Plan) -> Table:
    table = Table(title="Unserved demand")
    for col in ("model", "demand req/s", "served req/s", "reason"):
        table.add_column(col, justify="right" if "req/s" in col else "left")
    for u in plan.unserved:
        table.add_row(u.name, f"{u.demand_rps:.2f}", f"{u.served_rps:.2f}", u.reason)
    return table


def considered_table(plan: Plan) -> Table:
    table = Table(title="Solvers considered (predicted by the unit model, judged by simulation)")
    for col in ("solver", "predicted req/s", "GPUs used", "seconds", "gap", "simulated SLO %", "simulated goodput req/s",
                "max rate x at 99% pred / sim", "chosen"):
        table.add_column(col, justify="left" if col == "solver" else "right")
    for c in plan.considered:
        rate = "-" if c.predicted_max_rate_scale is None and c.simulated_max_rate_scale is None else (
            f"{c.predicted_max_rate_scale:.2f}" if c.predicted_max_rate_scale is not None else "-") + " / " + (
            f"{c.simulated_max_rate_scale:.2f}" if c.simulated_max_rate_scale is not None else "-")
        table.add_row(c.method, f"{c.served_rps:.2f}", str(c.num_gpus_used), f"{c.seconds:.2f}",
                      f"{c.gap * 100:.2f}%" if c.gap is not None else "-",
                      f"{100 * c.simulated_slo_attainment:.2f}" if c.simulated_slo_attainment is not None else "-",
                      f"{c.simulated_goodput_rps:.2f}" if c.simulated_goodput_rps is not None else "-", rate,
                      "*" if c.chosen else "", style="bold" if c.chosen else None)
    return table


def diff_table(a: Plan, b: Plan) -> Table:
    """Per model: where it runs and its routed rate / shares in each plan."""
    def where(plan: Plan) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for u in plan.units:
            for m in u.models:
                out.setdefault(m.name, []).append(f"n{u.node}:{','.join(map(str, u.gpu_ids))} sm{m.decode_sm_pct} {m.rate_rps:.2f}r/s")
        return out

    wa, wb = where(a), where(b)
    table = Table(title="Plan diff (node:GPUs decode-SM% routed rate)")
    for col in ("model", "a", "b", "change"):
        table.add_column(col)
    for name in sorted(set(wa) | set(wb)):
        ra, rb = wa.get(name, []), wb.get(name, [])
        if ra != rb:
            moved = {x.split()[0] for x in ra} != {x.split()[0] for x in rb}
            table.add_row(name, "; ".join(ra) or "-", "; ".join(rb) or "-", "moved" if moved else "shares changed")
    return table


def plan_tables(plan: Plan) -> list[Table]:
    """The tables of a plan report: units, unserved demand (if any), solvers considered (if recorded)."""
    tables = [units_table(plan)]
    if plan.unserved:
        tables.append(unserved_table(plan))
    if plan.check is not None and plan.check.models:
        tables.append(check_table(plan))
    if plan.considered:
        tables.append(considered_table(plan))
    return tables
