"""Deterministic budgets: counted work decides every stop, so a busy machine gets the same plan as a quiet one."""
import os
import subprocess
import sys
import time

import pytest

import planner.budget as budget_mod
from bench.paper_plans import PAPER_COUNTS
from muxplan.cluster import load_cluster
from muxplan.workload import synthesize
from planner.budget import LIMIT_SHARE, SAFETY, WORK_PER_S, Budget, as_budget, for_limit
from planner.exact import WALL_NOTE
from planner.solve import run_solver
from profiler.cost_model import load_cost_model

CM = load_cost_model()


def test_charges_reach_every_parent_and_shares_are_of_what_is_left():
    root = Budget(10.0)
    assert root.total_units == 10.0 * WORK_PER_S and root.left_s == 10.0
    root.charge(2000.0)
    child = root.share(0.5)  # half of the 8 s left
    assert child.total_units == 4000.0
    grandchild = child.at_most(1.0)
    grandchild.charge(600.0)
    assert (grandchild.used_units, child.used_units, root.used_units) == (600.0, 600.0, 2600.0)
    assert child.left_s == pytest.approx(3.4) and root.left_s == pytest.approx(7.4)
    assert child.at_most(100.0).total_units == 3400.0  # never more than the parent has left
    grandchild.charge(400.0)
    assert grandchild.exhausted() and not child.exhausted() and not root.exhausted()
    assert grandchild.wall_deadline == root.wall_deadline  # one safety stop for the whole solve
    assert as_budget(root) is root and as_budget(3).total_units == 3000.0


def test_a_time_limit_spends_its_share_as_work_and_keeps_the_whole_limit_for_the_safety_stop():
    t = time.perf_counter()
    b = for_limit(10.0)
    assert LIMIT_SHARE == 0.9 and b.total_units == 9000.0 and b.left_s == pytest.approx(9.0)
    assert t + SAFETY * 10.0 <= b.wall_deadline <= time.perf_counter() + SAFETY * 10.0


def test_a_simulation_is_charged_by_what_it_replayed():
    import numpy as np

    import planner.verify as verify
    from muxplan.workload import parse_model_counts
    from planner.sim.trace import build_request_table

    wl = synthesize(parse_model_counts("llama-7b:2"), 1.0, 2.0, duration_s=20, seed=1)
    plan = run_solver("greedy", wl, load_cluster("1x1xA100-80GB"), CM, time_limit_s=1)
    table = build_request_table(wl)
    result = verify.run_table(plan, wl, table, CM, verify.policy_for(plan.solver.method, plan))
    counts = (table.num_requests, result.num_decode_steps, result.num_prefill_batches)
    assert counts[0] == len(wl.requests) and counts[1] > counts[0] > 0  # each request decodes over many steps
    assert verify.sim_work(result) == pytest.approx(float(np.dot(verify.SIM_UNITS, counts)))
    b = Budget(10.0)
    verify.simulated_check(plan, wl, CM, table=table, budget=b)
    assert b.used_units == pytest.approx(verify.sim_work(result))  # the same replay: the same charge


def test_a_plans_report_is_charged_per_plan_and_placed_model():
    from muxplan.workload import parse_model_counts
    from planner.solve import REPORT_UNITS, report_work

    wl = synthesize(parse_model_counts("llama-7b:3"), 1.0, 2.0, duration_s=20, seed=1)
    b = Budget(10.0)
    plan = run_solver("spatial", wl, load_cluster("1x4xA100-80GB"), CM, budget=b)  # spatial itself counts nothing
    assert sum(len(u.models) for u in plan.units) == 3
    assert b.used_units == pytest.approx(report_work(plan)) == pytest.approx(REPORT_UNITS[0] + 3 * REPORT_UNITS[1])


def test_the_wall_clock_safety_stop_is_recorded_up_the_tree(monkeypatch):
    monkeypatch.setattr(budget_mod, "SAFETY", 0.0)
    root = Budget(5.0)
    child = root.share(0.5)
    time.sleep(0.01)
    assert child.exhausted() and child.wall_stopped and root.wall_stopped
    assert not Budget(5.0, None).wall_stopped


def _loaded_instance():
    return synthesize(PAPER_COUNTS, 0.9, top_rate=40.0, duration_s=60, seed=1, order="shuffled")


BURN = "while True: pass"  # one process per core: the solver shares its core with one of them


def test_a_solve_stopped_by_its_budget_gives_the_same_plan_on_a_busy_machine(monkeypatch):
    monkeypatch.setattr(budget_mod, "SAFETY", 50.0)  # this test is about counted work, not the safety stop
    wl, cluster = _loaded_instance(), load_cluster("4x8xA100-80GB")

    def solve():
        t = time.perf_counter()
        plan = run_solver("exact", wl, cluster, CM, objective="goodput", time_limit_s=1.5)
        return plan, time.perf_counter() - t

    quiet, quiet_s = solve()
    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(os.cpu_count() or 2)]
    try:
        busy, busy_s = solve()
    finally:
        for b in burners:
            b.kill()
            b.wait()
    # the budget, not convergence, stopped it: a loaded shuffled instance needs far more than 1.5 s of work
    assert "stopped at its work budget" in quiet.solver.status and WALL_NOTE not in quiet.solver.status
    assert busy_s > 1.1 * quiet_s  # the machine really was busier
    assert busy.solver.value == quiet.solver.value and busy.solver.bound == quiet.solver.bound
    assert busy.solver.status == quiet.solver.status
    assert [u.model_dump() for u in busy.units] == [u.model_dump() for u in quiet.units]


def test_a_solve_cut_by_the_wall_clock_says_so(monkeypatch):
    monkeypatch.setattr(budget_mod, "SAFETY", 0.05)
    plan = run_solver("exact", _loaded_instance(), load_cluster("4x8xA100-80GB"), CM, objective="goodput", time_limit_s=2.0)
    assert plan.solver.status.endswith(WALL_NOTE) and plan.units
