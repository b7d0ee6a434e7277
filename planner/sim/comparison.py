"""Several simulations side by side: the same requests under different plans and policies.

A run is (label, plan, policy). ``--compare`` entries resolve to runs: a plan file (simulated under the
main policy), a policy name (the main plan under that policy), or a baseline the planner can build
(``spatial``: dedicated GPUs under the spatial policy; ``greedy``: the paper's greedy plan under ADBS).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from muxplan.files import InputError, load_contract
from muxplan.schema import Plan, Workload
from planner.sim.capacity import Capacity, max_rate_scale
from planner.sim.engine import SimResult, run_table
from planner.sim.metrics import Summary, attainment_curve, summarize
from planner.sim.trace import RequestTable
from planner.solve import run_solver
from profiler.cost_model import CostModel
from unitsched.policy import get_policy

SLO_SCALES = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0)
PLOT_RATE_SCALES = (0.25, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Run:
    label: str
    plan: Plan
    policy: str


@dataclass(frozen=True)
class RunOutcome:
    run: Run
    result: SimResult
    summary: Summary
    curve: tuple[tuple[float, ...], tuple[float, ...]]
    capacity: Capacity | None


def baseline_plan(name: str, plan: Plan, workload: Workload, cost: CostModel) -> Plan:
    """A baseline plan on the main plan's cluster, built by the planner (spatial or greedy)."""
    return run_solver(name, workload, plan.cluster, cost)


def resolve_runs(plan: Plan, plan_label: str, policy: str, compare: list[str], workload: Workload, cost: CostModel) -> list[Run]:
    get_policy(policy)
    runs = [Run(f"{plan_label}+{policy}", plan, policy)]
    for entry in compare:
        path = Path(entry)
        if path.suffix.lower() in (".json", ".yaml", ".yml") or path.exists():
            runs.append(Run(f"{path.stem}+{policy}", load_contract(path, Plan), policy))
        elif entry == "spatial":
            spatial = plan if all(len(u.models) == 1 for u in plan.units) else baseline_plan("spatial", plan, workload, cost)
            runs.append(Run("spatial", spatial, "spatial"))
        elif entry == "greedy":
            runs.append(Run("greedy+adbs", baseline_plan("greedy", plan, workload, cost), "adbs"))
        else:
            get_policy(entry)
            runs.append(Run(f"{plan_label}+{entry}", plan, entry))
    labels = [r.label for r in runs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise InputError(f"--compare: '{dup[0]}' is given twice")
    return runs


def run_all(runs: list[Run], workload: Workload, table: RequestTable, cost: CostModel, slo_scale: float, rate_scale: float = 1.0,
            max_rate: bool = False, seed: int = 0, on_step: Callable[[str, str], None] | None = None,
            on_progress: Callable[[float, float], None] | None = None) -> list[RunOutcome]:
    """Simulate every run on the same requests; optionally search each run's max rate at 99% SLO."""
    outcomes = []
    scaled = table.rescaled(rate_scale) if rate_scale != 1.0 else table
    for run in runs:
        if on_step:
            on_step(run.label, "simulating")
        result = run_table(run.plan, workload, scaled, cost, run.policy, seed=seed, rate_scale=rate_scale, progress=on_progress)
        summary = summarize(result, workload, slo_scale)
        curve = (SLO_SCALES, tuple(float(a) for a in attainment_curve(result, workload, SLO_SCALES)))
        capacity = None
        if max_rate:
            if on_step:
                on_step(run.label, "searching max rate")
            capacity = max_rate_scale(run.plan, workload, table, cost, run.policy, slo_scale, seed=seed,
                                      on_probe=lambda s: on_step and on_step(run.label, f"rate x{s.rate_scale:.3g}: {100 * s.overall.slo_attainment:.1f}%"))
        outcomes.append(RunOutcome(run, result, summary, curve, capacity))
    return outcomes


def rate_probes(outcome: RunOutcome, workload: Workload, table: RequestTable, cost: CostModel, seed: int = 0) -> list[Summary]:
    """Summaries over a range of rate scales (the max-rate search's probes when it ran)."""
    if outcome.capacity is not None:
        return list(outcome.capacity.probes)
    run = outcome.run
    return [summarize(run_table(run.plan, workload, table.rescaled(k), cost, run.policy, seed=seed, rate_scale=k), workload,
                      outcome.summary.slo_scale) for k in PLOT_RATE_SCALES]


def outcome_dict(outcome: RunOutcome) -> dict:
    cap = outcome.capacity
    return {
        "label": outcome.run.label,
        "summary": outcome.summary.to_dict(),
        "slo_attainment_curve": {"slo_scales": list(outcome.curve[0]), "attainment": list(outcome.curve[1])},
        "max_rate": None if cap is None else {"rate_scale": cap.rate_scale, "rate_rps": cap.rate_rps, "target": cap.target,
                                               "probes": [{"rate_scale": p.rate_scale, "slo_attainment": p.overall.slo_attainment,
                                                           "throughput_rps": p.overall.throughput_rps} for p in cap.probes]},
        "num_decode_steps": outcome.result.num_decode_steps,
        "wall_s": outcome.result.wall_s,
        "mean_unit_sm_pct": float(np.mean([np.mean(t["sm_pct"]) for t in outcome.result.timeline.values() if t["sm_pct"].size] or [0.0])),
    }
