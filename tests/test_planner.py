import itertools
import json

import pytest

from muxplan.catalog import get_gpu, get_model
from muxplan.cluster import load_cluster
from muxplan.files import InputError, load_contract
from muxplan.schema import Plan, SolverRecord
from muxplan.workload import load_workload, parse_model_counts, synthesize
from planner.estimator import DRAIN_FACTOR, UTIL_CAP, estimate_unit, served_rates
from planner.exact import solve_exact
from planner.greedy import place_greedy
from planner.placement import UnitChoice, build_plan, partitions
from profiler.plan_check import check_plan
from planner.solve import run_solver
from planner.tables import Demand, Option, demands_from_workload, model_options
from profiler.cost_model import load_cost_model
from tests.helpers import ROOT, run_cli

CM = load_cost_model()


def opt(p, d, sm=30, batch=8, kv=0):
    return Option(1, sm, 100, batch, p, d, kv, 0, 0)


def test_partitions_of_a_node():
    assert len(partitions(8)) == 10
    assert partitions(4) == ((4,), (2, 2), (2, 1, 1), (1, 1, 1, 1))


def test_estimator_closed_form_and_lp():
    assert UTIL_CAP == 1.0 and DRAIN_FACTOR == 0.0  # fitted by bench/fit_unit_model.py (hand-set 0.95 and 0.5 before)
    # all demand fits: served = routed
    assert served_rates([opt(0.1, 0.2), opt(0.1, 0.2)], [1.0, 1.0]) == [1.0, 1.0]
    # one model alone, overloaded: x (p + d) <= 1 -> x = 1 / (0.1 + 0.4) = 2
    assert served_rates([opt(0.1, 0.4)], [5.0]) == pytest.approx([2.0])
    # two models: max x1 + x2 s.t. 0.5 x1 + 0.1 (x1 + x2) <= 1, 0.5 x2 + 0.1 (x1 + x2) <= 1 -> 0.7 x = 1, x = 1/0.7 each
    assert served_rates([opt(0.1, 0.5), opt(0.1, 0.5)], [5.0, 5.0]) == pytest.approx([1 / 0.7, 1 / 0.7])
    # temporal: prefill and decode of everyone serialised: 0.6 (x1 + x2) <= 1
    assert sum(served_rates([opt(0.1, 0.5), opt(0.1, 0.5)], [5.0, 5.0], temporal=True)) == pytest.approx(1 / 0.6)


def stepped(tau, step=0.04):
    return Option(1, 30, 100, 8, 0.1, 0.2, 0, 0, 0, decode_step_s=step, tpot_limit_s=tau)


def test_estimator_tpot_limit_at_the_fitted_constants():
    # DRAIN_FACTOR 0: q = p = 0.1 per request; TPOT cap 1 - 0.04 / 0.1 = 0.6 does not bind:
    # 0.2 x + 0.1 (2 x) <= 1 -> x = 2.5 each (stalled share 0.1 x 5 = 0.5 <= 0.6)
    assert served_rates([stepped(0.1), stepped(0.1)], [5.0, 5.0]) == pytest.approx([2.5, 2.5])
    # tau = 0.05: prefills may stall decodes only 1 - 0.04 / 0.05 = 0.2 of the time: 0.1 (x1 + x2) <= 0.2 -> 2 in all
    assert sum(served_rates([stepped(0.05), stepped(0.05)], [5.0, 5.0])) == pytest.approx(2.0)
    assert served_rates([stepped(0.05, step=0.06)], [5.0]) == [0.0]
    # alone: min(1 / (q + d), cap / q) = min(1 / 0.3, 0.6 / 0.1)
    assert stepped(0.1).max_rps == pytest.approx(1 / 0.3)
    est = estimate_unit(get_gpu("A100-80GB"), [(None, stepped(0.05), 5.0), (None, stepped(0.05), 5.0)])
    assert est.stall_share == pytest.approx(0.2)


def test_estimator_drain_and_tpot_limit(monkeypatch):
    import planner.estimator
    import planner.tables

    # the drain term at the hand-set constants the fit replaced (DRAIN_FACTOR 0.5, UTIL_CAP 0.95)
    for mod in (planner.estimator, planner.tables):
        monkeypatch.setattr(mod, "DRAIN_FACTOR", 0.5)
    monkeypatch.setattr(planner.estimator, "UTIL_CAP", 0.95)
    # drain = 0.5 x 0.04 = 0.02 -> q = 0.12 per request; TPOT cap 1 - 0.04 / 0.1 = 0.6 does not bind:
    # 0.2 x + 0.12 (2 x) <= 0.95 -> x = 0.95 / 0.44 each (0.12 x 4.32 = 0.52 <= 0.6)
    assert served_rates([stepped(0.1), stepped(0.1)], [5.0, 5.0]) == pytest.approx([0.95 / 0.44] * 2)
    # tau = 0.05: prefills may stall decodes only 1 - 0.04 / 0.05 = 0.2 of the time: 0.12 (x1 + x2) <= 0.2
    assert sum(served_rates([stepped(0.05), stepped(0.05)], [5.0, 5.0])) == pytest.approx(0.2 / 0.12)
    # a decode step above its TPOT limit can never meet the SLO: nothing is served
    assert served_rates([stepped(0.05, step=0.06)], [5.0]) == [0.0]
    assert stepped(0.1).max_rps == pytest.approx(min(0.95 / (0.12 + 0.2), 0.6 / 0.12))
    est = estimate_unit(get_gpu("A100-80GB"), [(None, stepped(0.05), 5.0), (None, stepped(0.05), 5.0)])
    assert est.stall_share == pytest.approx(0.2)


def test_estimator_rejects_memory_and_sm_overflow():
    gpu = get_gpu("A100-80GB")
    d = Demand("a", "llama-7b", get_model("llama-7b"), 1.0, 100, 100)
    est = estimate_unit(gpu, [(d, opt(0.1, 0.1, sm=90), 1.0), (d, opt(0.1, 0.1, sm=40), 1.0)])
    assert est.problems == ("decode SM shares 130% > 120%",)
    big = Option(1, 30, 100, 8, 0.1, 0.1, 200 * 2**30, 0, 0)
    assert "memory 200.0 GiB > usable" in estimate_unit(gpu, [(d, big, 1.0)]).problems[0]


def tiny_instance(rates=(6.0, 3.0, 1.0), models=("llama-7b", "llama-7b", "llama-13b"), cluster="1x2xA100-80GB"):
    w = synthesize([(m, 1) for m in models][:1] and parse_model_counts(",".join(f"{m}:1" for m in models)) if len(set(models)) == len(models)
                   else parse_model_counts(f"{models[0]}:{models.count(models[0])},{models[-1]}:1"), 1.0, 1.0, materialise=False)
    w = w.model_copy(update={"models": [m.model_copy(update={"rate_rps": r}) for m, r in zip(w.models, rates)]})
    return w, load_cluster(cluster)


def brute_force(demands, cluster, cm):
    """Every assignment of models to the meshes of every partition, best options by the estimator (single-replica)."""
    gpu = get_gpu(cluster.nodes[0].gpu)
    best = 0.0
    for part in partitions(cluster.nodes[0].num_gpus):
        for assign in itertools.product(range(len(part) + 1), repeat=len(demands)):
            total = 0.0
            for k, n in enumerate(part):
                members = [i for i, a in enumerate(assign) if a == k + 1]
                if not members:
                    continue
                choices = [[o for o in model_options(demands[i], gpu, n, cm) if o.decode_sm_pct < 100 or len(members) == 1] for i in members]
                unit_best = 0.0
                for combo in itertools.product(*choices):
                    est = estimate_unit(gpu, [(demands[i], o, demands[i].rate_rps) for i, o in zip(members, combo)])
                    unit_best = max(unit_best, est.total_rps if est.feasible else 0.0)
                total += unit_best
            best = max(best, total)
    return best


def test_exact_matches_brute_force_and_backends_agree():
    w, cluster = tiny_instance(rates=(30.0, 20.0))
    w = w.model_copy(update={"models": w.models[:2]})
    demands = demands_from_workload(w)
    expected = brute_force(demands, cluster, CM)
    values = {}
    for backend in ("highs", "cbc", "cpsat"):
        sol = solve_exact(demands, cluster, CM, budget=30, backend=backend)
        assert sol.bound >= sol.value - 1e-6
        values[backend] = sol.value
        plan = build_plan(cluster, demands, list(sol.units), SolverRecord(method="exact", objective="throughput", value=sol.value))
        assert check_plan(plan, w) == []
        assert plan.served_rps == pytest.approx(sol.value, rel=0.01)  # estimator agrees with the objective
    # replication may beat the single-replica brute force, never lose to it
    assert values["highs"] >= expected - 1e-6
    assert values["cpsat"] == pytest.approx(values["highs"], rel=2e-3)
    assert values["cbc"] == pytest.approx(values["highs"], rel=1e-4)


def test_exact_beats_or_ties_greedy_and_every_plan_checks():
    w = synthesize(parse_model_counts("llama-7b:3,llama-13b:2,llama-30b:1"), 0.9, 30.0, materialise=False)
    cluster = load_cluster("1x8xA100-80GB")
    plans = {m: run_solver(m, w, cluster, CM, time_limit_s=20) for m in ("exact", "greedy", "spatial", "temporal")}
    for plan in plans.values():
        assert check_plan(plan, w) == []
        if plan.unserved:  # no GPU idle while demand is unserved
            assert plan.num_gpus_used == cluster.num_gpus
    assert plans["exact"].served_rps >= plans["greedy"].served_rps - 1e-6
    assert plans["exact"].solver.gap is not None and plans["exact"].solver.bound >= plans["exact"].served_rps - 1e-6


def test_check_plan_catches_violations(tmp_path):
    w = synthesize(parse_model_counts("llama-7b:2"), 1.0, 2.0, materialise=False)
    plan = run_solver("spatial", w, load_cluster("1x2xA100-80GB"), CM)
    u = plan.units[0]
    bad = plan.model_copy(update={"units": [u, u.model_copy(update={"id": 1})]})
    problems = check_plan(bad, w)
    assert f"units[1].gpu_ids: GPU {u.gpu_ids[0]} of node 0 is also in units[0]" in problems
    assert any("routing shares of 'llama-7b-0' sum to" in p or "routing shares of 'llama-7b-1' sum to" in p for p in problems)
    huge = plan.model_copy(update={"units": [u.model_copy(update={"models": [u.models[0].model_copy(update={"kv_bytes": 90 * 2**30})]})]})
    assert "memory" in check_plan(huge, w)[0]


def test_infeasible_inputs_exit_2(tmp_path):
    w = synthesize(parse_model_counts("llama-65b:1"), 1.0, 1.0, materialise=False)
    from muxplan.files import save_contract

    save_contract(tmp_path / "w.json", w)
    proc = run_cli("solve", "--workload", tmp_path / "w.json", "--cluster", "1x1xL4", "--solver", "greedy")
    assert proc.returncode == 2 and "no model fits on any mesh" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_solve_show_diff(tmp_path):
    out_a, out_b = tmp_path / "a.json", tmp_path / "b.json"
    proc = run_cli("solve", "--workload", ROOT / "examples/small/workload.yaml", "--cluster", ROOT / "examples/small/cluster.yaml",
                   "--time-limit", "10", "--out", out_a, "--json", check=True)
    summary = json.loads(proc.stdout)
    plan = load_contract(out_a, Plan)
    assert summary["solver"] == "exact" and summary["served_rps"] == pytest.approx(plan.served_rps)
    assert [c["method"] for c in summary["considered"]] == ["exact", "greedy", "spatial", "temporal"]
    run_cli("solve", "--workload", ROOT / "examples/small/workload.yaml", "--cluster", "1x4xA100-80GB", "--solver", "spatial",
            "--no-compare", "--out", out_b, check=True)
    assert "constraints: all satisfied" in run_cli("plan", "show", out_a, check=True).stdout
    assert "Plan diff" in run_cli("plan", "diff", out_a, out_b, check=True).stdout


def test_zero_gpu_cluster_exits_2(tmp_path):
    cluster = tmp_path / "c.yaml"
    cluster.write_text("schema_version: 1\nnodes:\n  - {gpu: A100-80GB, num_gpus: 0}\n")
    proc = run_cli("solve", "--workload", ROOT / "examples/small/workload.yaml", "--cluster", cluster)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {cluster}: nodes[0].num_gpus: Input should be greater than 0"


def test_objectives_fairness_and_min_gpus():
    w = synthesize(parse_model_counts("llama-7b:2,llama-13b:1"), 1.0, 3.0, materialise=False)
    cluster = load_cluster("1x4xA100-80GB")
    fair = run_solver("exact", w, cluster, CM, objective="fairness", time_limit_s=10)
    assert fair.solver.value == pytest.approx(1.0, abs=1e-3)  # everyone fully served at this light load
    fewest = run_solver("exact", w, cluster, CM, objective="min-gpus", time_limit_s=10)
    assert fewest.solver.value == fewest.num_gpus_used < cluster.num_gpus
    assert fewest.served_rps == pytest.approx(fewest.demand_rps, rel=1e-6)
    heavy = w.model_copy(update={"models": [m.model_copy(update={"rate_rps": 500.0}) for m in w.models]})
    with pytest.raises(InputError, match=r"min-gpus: impossible to serve all 1[45]\d\d\.\d\d req/s"):
        run_solver("exact", heavy, cluster, CM, objective="min-gpus", time_limit_s=10)


def test_estimator_small_lp_matches_a_general_lp_solver():
    import numpy as np
    from scipy.optimize import linprog

    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 5))
        p, d, r = rng.uniform(0.005, 0.2, n), rng.uniform(0.05, 1.5, n), rng.uniform(0.5, 30, n)
        step, tau = rng.uniform(0.0, 0.05, n), rng.uniform(0.06, 0.3, n)
        options = [Option(1, 30, 100, 8, pi, di, 0, 0, 0, decode_step_s=si, tpot_limit_s=ti) for pi, di, si, ti in zip(p, d, step, tau)]
        got = served_rates(options, list(r))
        q = p + DRAIN_FACTOR * step.max()
        a_ub = [[q[j] + (d[i] if i == j else 0.0) for j in range(n)] for i in range(n)] + [list(q)]
        b_ub = [UTIL_CAP] * n + [min(UTIL_CAP, float(min(1 - step / tau)))]
        res = linprog([-1.0] * n, A_ub=a_ub, b_ub=b_ub, bounds=list(zip([0.0] * n, r)), method="highs")
        assert sum(got) == pytest.approx(-res.fun, rel=1e-9)
        assert all(0 <= x <= ri + 1e-12 for x, ri in zip(got, r))
        assert all(row @ np.array(got) <= rhs + 1e-9 for row, rhs in zip(np.array(a_ub), b_ub))


def test_enumerated_pricing_is_exact_and_the_milp_a_relaxation():
    import numpy as np

    from planner.exact import _price
    from planner.pricing import price_enumerated

    w = synthesize(parse_model_counts("llama-7b:4,llama-13b:2,llama-30b:1"), 0.9, 30.0, order="shuffled", materialise=False)
    demands = demands_from_workload(w)
    gpu = get_gpu("A100-80GB")
    rng = np.random.default_rng(3)
    tied = [0.1 if d.ref == "llama-7b" else 0.2 if d.ref == "llama-13b" else 0.5 for d in demands]
    for pi in (tied, [p * float(rng.uniform(0.8, 1.2)) for p in tied], [float(v) for v in rng.choice([0.0, 0.3, 1.0], len(demands))]):
        for n in (1, 2, 4):
            priced = price_enumerated(demands, gpu, n, CM, pi)
            assert priced.exact
            bound, value, members = priced.dual_bound, priced.value, priced.members
            milp = _price(demands, gpu, n, CM, pi, 60)
            # the MILP counts the drain at each model's own decode step (a relaxation): its dual bound covers the
            # exact optimum, and its column, re-rated by the estimator, is no better than the enumeration's
            assert milp.dual_bound >= value * (1 - 1e-6) and milp.value <= value * (1 + 1e-6) + 1e-9 and bound >= value
            # the column is what the estimator serves: every member's routed rate is served
            est = estimate_unit(gpu, [(demands[i], o, x) for i, o, x in members])
            assert est.feasible and est.total_rps == pytest.approx(sum(x for _, _, x in members), rel=1e-6)
            assert sum(pi[i] * x for i, _, x in members) == pytest.approx(value, rel=1e-6)


def _brute_force_pricing(demands, gpu, n, pi):
    """max sum pi_i x_i over every unit of mesh size n: every member set, every option vector (non-maximal ones too)
    within SM and memory, rated by the estimator's LP."""
    import numpy as np

    from planner.estimator import DRAIN_FACTOR, SM_BUDGET_PCT, UTIL_CAP, best_rates
    from profiler.memory import usable_bytes

    usable = usable_bytes(gpu)
    opts = {i: [o for o in model_options(d, gpu, n, CM) if o.decode_sm_pct < 100 and o.mem_bytes <= usable]
            for i, d in enumerate(demands) if pi[i] > 0}
    best = 0.0
    for k in (1, 2, 3, 4):
        for members in itertools.combinations(sorted(opts), k):
            combos = [c for c in itertools.product(*(opts[i] for i in members))
                      if sum(o.decode_sm_pct for o in c) <= SM_BUDGET_PCT and sum(o.mem_bytes for o in c) <= usable]
            if not combos:
                continue
            W = np.array([[pi[i] for i in members]] * len(combos))
            R = np.array([[demands[i].rate_rps for i in members]] * len(combos))
            T = np.array([[o.decode_step_s for o in c] for c in combos])
            Q = np.array([[o.prefill_s_per_req for o in c] for c in combos]) + DRAIN_FACTOR * T.max(axis=1, keepdims=True)
            D = np.array([[o.decode_s_per_req for o in c] for c in combos])
            pmax = np.minimum(UTIL_CAP, np.array([min(o.prefill_cap for o in c) for c in combos]))
            best = max(best, float(best_rates(W, R, Q, D, pmax)[0].max()))
    return best


@pytest.mark.parametrize("counts,n", [("llama-7b:2,llama-13b:2", 1), ("llama-7b:3,llama-13b:1", 2), ("llama-7b:2,llama-30b:1", 4)])
def test_branch_and_bound_pricing_equals_brute_force(counts, n):
    """The pricing search (bounds, dominance of option vectors, twins) returns the optimum of every unit there is."""
    import numpy as np

    from planner.pricing import price_enumerated

    gpu = get_gpu("A100-80GB")
    for order, seed in (("shuffled", 1), ("size", 2)):
        demands = demands_from_workload(synthesize(parse_model_counts(counts), 0.9, 12.0, order=order, duration_s=60, seed=seed))
        rng = np.random.default_rng(seed)
        for pi in ([1.0] * len(demands), [float(v) for v in rng.uniform(0.1, 1.0, len(demands))]):
            priced = price_enumerated(demands, gpu, n, CM, pi)
            brute = _brute_force_pricing(demands, gpu, n, pi)
            assert priced.exact and priced.value == pytest.approx(brute, rel=1e-7)
            assert brute <= priced.dual_bound <= brute * (1 + 1e-6) + 1e-9
            # a floor above the optimum proves that nothing beats it
            above = price_enumerated(demands, gpu, n, CM, pi, floor=brute * 1.01)
            assert above.exact and brute <= above.dual_bound <= brute * 1.01 + 1e-6


def test_exact_is_deterministic():
    w = synthesize(parse_model_counts("llama-7b:4,llama-13b:2,llama-30b:1"), 0.7, 60.0, order="shuffled", materialise=False)
    cluster = load_cluster("1x8xA100-80GB")
    a, b = (run_solver("exact", w, cluster, CM, time_limit_s=20, seed=1) for _ in range(2))
    assert a.served_rps == b.served_rps and a.solver.bound == b.solver.bound
    assert [u.model_dump() for u in a.units] == [u.model_dump() for u in b.units]


def test_same_architecture_models_with_close_sample_means_share_one_estimate():
    from muxplan.schema import TraceRow, Workload, WorkloadModel

    rows = [TraceRow(arrival_s=float(k), model="a", prompt_tokens=100, output_tokens=200) for k in range(3)]
    rows += [TraceRow(arrival_s=float(k), model="b", prompt_tokens=108, output_tokens=190) for k in range(1)]  # within 10%
    rows += [TraceRow(arrival_s=float(k), model="c", prompt_tokens=300, output_tokens=50) for k in range(2)]  # other architecture
    models = [WorkloadModel(name=n, model=ref, rate_rps=1.0) for n, ref in (("a", "llama-7b"), ("b", "llama-7b"), ("c", "llama-13b"))]
    demands = demands_from_workload(Workload(models=models, requests=rows))
    assert [(d.mean_prompt_tokens, d.mean_output_tokens) for d in demands] == [(102.0, 197.5), (102.0, 197.5), (300.0, 50.0)]
    far = rows[:3] + [TraceRow(arrival_s=0.0, model="b", prompt_tokens=150, output_tokens=200)] + rows[4:]  # 50% apart: kept apart
    demands = demands_from_workload(Workload(models=models, requests=far))
    assert [(d.mean_prompt_tokens, d.mean_output_tokens) for d in demands][:2] == [(100.0, 200.0), (150.0, 200.0)]


def test_sm_budget_applies_to_gpus_not_to_a_time_sliced_cpu():
    from muxplan.cluster import parse_cluster_shorthand
    from muxplan.schema import PlacedModel, Unit

    def plan_on(gpu):
        models = [PlacedModel(name=n, model="llama-3.2-1b", tp=1, prefill_sm_pct=100, decode_sm_pct=100, kv_bytes=2**20, max_num_seqs=8,
                              routing_share=1.0, rate_rps=1.0, predicted_rps=1.0) for n in ("a", "b")]
        return Plan(cluster=parse_cluster_shorthand(f"1x1x{gpu}"), solver=SolverRecord(method="spatial", objective="goodput", value=2.0),
                    units=[Unit(id=0, node=0, gpu=gpu, gpu_ids=[0], models=models, predicted_rps=2.0)], demand_rps=2.0, served_rps=2.0,
                    num_gpus_used=1)

    assert check_plan(plan_on("A100-80GB")) == ["units[0]: decode SM shares 200% > 120%"]
    assert check_plan(plan_on("cpu")) == []


def test_executor_imports_nothing_from_the_planner():
    import re

    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "executor").rglob("*.py")
                 if re.search(r"^\s*(from|import) planner\b", p.read_text(), re.M)]
    assert offenders == []


def test_polish_rates_moves_load_to_the_unit_with_room_and_keeps_the_estimator_exact():
    from planner.master import polish_rates

    # unit 1 hosts A and B (q = 0.05 s, d = 0.01 s each): with A at 10 req/s, B gets at most 8 (0.06 x 10 + 0.05 x_B <= 1);
    # unit 2 hosts A alone (up to 1 / 0.06 = 16.67 req/s). Moving A to unit 2 lets unit 1 serve B's 10 (0.06 x 10 <= 1).
    spec = get_model("llama-7b")
    a, b = Demand("a", "llama-7b", spec, 10.0, 100, 100), Demand("b", "llama-7b", spec, 10.0, 100, 100)
    o = opt(0.05, 0.01)
    units = [UnitChoice(1, "A100-80GB", ((0, o, 10.0), (1, o, 8.0))), UnitChoice(1, "A100-80GB", ((0, o, 10.0),))]
    polished, served = polish_rates(units, [a, b], [1.0, 1.0])
    assert served == pytest.approx([10.0, 10.0], abs=1e-6)
    assert sum(r for u in polished for i, _, r in u.members if i == 1) == pytest.approx(10.0, abs=1e-6)
    for u in polished:  # every unit serves exactly what it is routed (the plan's prediction is the estimator's)
        rates = [r for _, _, r in u.members]
        assert served_rates([m for _, m, _ in u.members], rates) == pytest.approx(rates, abs=1e-9)
    # already the best rates: returned unchanged
    best = [UnitChoice(1, "A100-80GB", ((1, o, 10.0),)), UnitChoice(1, "A100-80GB", ((0, o, 10.0),))]
    assert polish_rates(best, [a, b], [1.0, 1.0]) == (best, [10.0, 10.0])
