"""SLO-aware planning: the latency model by hand, shedding, the robust max-rate search, headroom and the closed loop."""
import pytest

from muxplan.catalog import get_gpu, get_model
from muxplan.cluster import load_cluster
from muxplan.schema import LengthDist, Workload, WorkloadModel
from muxplan.workload import parse_model_counts, synthesize
from planner.estimator import DRAIN_FACTOR, estimate_unit
from planner.latency import predict_unit
from planner.solve import run_solver, solve_and_compare
from planner.tables import demands_from_workload, model_options
from profiler.cost_model import load_cost_model
from tests.sim_fixtures import ToyCost, make_plan, make_workload, placed

CM = load_cost_model()
GIB = 2**30


def test_latency_of_a_lone_request_is_its_prefill_drain_and_decode_steps():
    w = Workload(models=[WorkloadModel(name="a", model="llama-7b", rate_rps=1e-6, prompt_tokens=LengthDist(kind="fixed", mean=100),
                                       output_tokens=LengthDist(kind="fixed", mean=50))], duration_s=10)
    d = demands_from_workload(w)[0]
    gpu = get_gpu("A100-80GB")
    o = model_options(d, gpu, 1, CM)[0]
    (pred,) = predict_unit(gpu, [(d, o, 1e-6)], [1e-6], CM)
    spec = get_model("llama-7b")
    # no load: no wait, no stall; TTFT = drain + prefill of 100 tokens, the drain charged DRAIN_FACTOR = 0 (fitted by
    # bench/fit_unit_model.py): TTFT = the prefill alone; TPOT = the decode step at batch 1, context C
    assert DRAIN_FACTOR == 0.0
    assert d.context_tokens == 100 + 50 // 2  # no request drawn in 10 s at 1e-6 req/s: C falls back to L_in + L_out / 2
    ttft = DRAIN_FACTOR * o.decode_step_s * 1e3 + CM.prefill_ms(spec, gpu, 1, 100, 1, 100)
    assert pred.ttft_ms == pytest.approx((ttft, ttft))
    step = CM.decode_ms(spec, gpu, 1, o.decode_sm_pct, 1, d.context_tokens)
    assert pred.tpot_ms == pytest.approx((step, step)) and pred.decode_batch == 1.0 and pred.slo_attainment == 1.0


def test_a_plan_serving_half_of_a_model_sheds_the_rest_but_not_a_lighter_load():
    from planner.sim.engine import simulate_plan

    rows = [(0.1 * k, "a", 10, 2) for k in range(200)]
    plan = make_plan([[placed("a", GIB, share=0.5)]])
    wl = make_workload(["a"], rows)
    shed = simulate_plan(plan, wl, ToyCost()).records["dropped"]
    assert 80 <= (shed == "shed: above the rate the plan admits").sum() <= 120
    lighter = simulate_plan(plan, wl, ToyCost(), rate_scale=0.5).records["dropped"]
    assert (lighter == "").all()


def test_max_rate_reports_the_highest_pass_above_every_failure_with_its_bracket():
    from planner.sim.capacity import max_rate_scale
    from planner.sim.trace import build_request_table

    plan = make_plan([[placed("a", 10 * GIB)]])
    wl = make_workload(["a"], [(0.0, "a", 100, 6), (1.0, "a", 100, 6)])
    cap = max_rate_scale(plan, wl, build_request_table(wl), ToyCost(), slo_scale=1.0, max_scale=64.0, steps=6)
    passed = [p.rate_scale for p in cap.probes if p.overall.slo_attainment >= 0.99]
    failed = [p.rate_scale for p in cap.probes if p.overall.slo_attainment < 0.99]
    assert cap.rate_scale == max(passed) and cap.bracket == (max(passed), min(f for f in failed if f > max(passed)))
    assert all(f > cap.rate_scale for f in failed) and cap.bracket[1] / cap.bracket[0] == pytest.approx(2 ** (1 / 64))


def small(rates, counts="llama-7b:2,llama-13b:1", cluster="1x4xA100-80GB"):
    w = synthesize(parse_model_counts(counts), 1.0, 1.0, duration_s=60, seed=0, materialise=False)
    w = w.model_copy(update={"models": [m.model_copy(update={"rate_rps": r}) for m, r in zip(w.models, rates)]})
    return w, load_cluster(cluster)


def test_headroom_is_proven_and_no_worse_than_one_replica_per_mesh():
    w, cluster = small([6.0, 3.0, 1.0])
    plan = run_solver("exact", w, cluster, CM, objective="headroom", time_limit_s=20)
    s = plan.solver
    assert s.value == s.headroom and s.bound >= s.value - 1e-9 and s.gap == pytest.approx((s.bound - s.value) / s.bound)
    # brute force without replication: each model alone on one GPU (4 GPUs, 3 models); headroom is the smallest
    # over models of (rate served alone at scale -> its best single-GPU rate) / demand
    demands = demands_from_workload(w)
    gpu = get_gpu("A100-80GB")
    alone = min(max(o.max_rps for o in model_options(d, gpu, 1, CM)) / d.rate_rps for d in demands)
    assert s.value >= alone * (1 - 1e-6)
    # the plan routes exactly the demand, and every unit serves it
    for u in plan.units:
        members = [(next(d for d in demands if d.name == m.name), None, m.rate_rps) for m in u.models]
        assert sum(m.predicted_rps for m in u.models) == pytest.approx(sum(r for _, _, r in members), rel=1e-6)
    assert plan.served_rps == pytest.approx(plan.demand_rps, rel=1e-6)


def test_goodput_spends_spare_gpus_on_headroom():
    w, cluster = small([2.0, 1.0, 0.5])
    plan = run_solver("exact", w, cluster, CM, objective="goodput", time_limit_s=20)
    assert plan.served_rps == pytest.approx(plan.demand_rps, rel=1e-6) and plan.solver.gap == 0.0
    assert plan.solver.headroom > 1.0 and plan.num_gpus_used == 4
    only_demand = run_solver("exact", w, cluster, CM, objective="min-gpus", time_limit_s=20)
    assert only_demand.num_gpus_used < 4


def test_min_gpus_says_when_no_plan_meets_the_slo():
    from muxplan.files import InputError

    w, cluster = small([500.0, 500.0, 500.0], cluster="1x2xA100-80GB")
    with pytest.raises(InputError, match=r"min-gpus: impossible to serve all 1[45]\d\d\.\d\d req/s"):
        run_solver("exact", w, cluster, CM, objective="min-gpus", time_limit_s=10)


def test_closed_loop_tightens_a_model_whose_simulation_misses_its_prediction(monkeypatch):
    import planner.tables as tables
    import planner.verify as verify

    w, cluster = small([9.0, 6.0, 3.0], cluster="1x2xA100-80GB")
    w = w.model_copy(update={"duration_s": 60.0})
    tables._CACHE.clear()
    real_iso = tables.isolated_step_s
    # an optimistic unit model: it believes the isolated decode step is 3x slower, so it allows 3x the TPOT
    monkeypatch.setattr(tables, "isolated_step_s", lambda *a: (real_iso(*a)[0], 3 * real_iso(*a)[1]))
    seen = []
    real = verify.simulated_check

    def spy(plan, *args, **kwargs):
        out = real(plan, *args, **kwargs)
        seen.append(out[0])
        return out

    monkeypatch.setattr(verify, "simulated_check", spy)
    plan = solve_and_compare("exact", w, cluster, CM, time_limit_s=30, compare=False, verify=True)
    tables._CACHE.clear()
    assert verify.missed(seen[0])  # the first plan promised more than it delivered
    assert plan.check.rounds == len(seen) >= 2
    assert plan.check.simulated_goodput_rps == max(c.simulated_goodput_rps for c in seen)
    assert plan.check.simulated_slo_attainment >= seen[0].simulated_slo_attainment


def test_a_model_no_option_can_serve_within_its_slo_is_reported_so():
    from muxplan.schema import Slo

    w, cluster = small([1.0, 1.0, 1.0])
    tight = w.model_copy(update={"models": [w.models[0].model_copy(update={"slo": Slo(tpot_ms=0.001)}), *w.models[1:]]})
    plan = run_solver("exact", tight, cluster, CM, time_limit_s=10)
    (unserved,) = plan.unserved
    assert unserved.name == w.models[0].name and unserved.served_rps == 0.0
    assert unserved.reason == "not placed: no option meets its SLO (the decode step alone exceeds the TPOT limit) on any mesh"


def test_fit_loss_and_search_pick_the_constant_that_matches_the_simulator():
    from bench.fit_unit_model import coordinate_search, loss

    # synthetic: the prediction of instance i at constant c is served 10 c (simulated 9.5), attainment 1 - |c - 0.9|
    # (simulated 1.0) and headroom 2 c (simulated 1.9): each term is smallest at c = 0.95 and the grid holds it
    def rows(c):
        return [{"served_err": abs(10 * c - 9.5) / 9.5, "curve_err": abs(c - 0.9), "headroom_log_err": __import__("math").log(2 * c / 1.9)}]

    # loss at c = 0.95: 0 + 0.05 + 0.25 x 0 = 0.05; at 0.9: 0.5 / 9.5 + 0 + 0.25 ln(1.8 / 1.9) -> 0.0526 + 0.0135
    assert loss(rows(0.95)) == pytest.approx(0.05)
    assert loss(rows(0.9)) == pytest.approx(0.5 / 9.5 + 0.25 * abs(__import__("math").log(1.8 / 1.9)))
    best, value, trail = coordinate_search(lambda v: loss(rows(v["C"])), {"C": (0.5, 0.9, 0.95, 1.0, 1.2)}, {"C": 1.0})
    assert best == {"C": 0.95} and value == pytest.approx(0.05) and len(trail) == 5


def test_fit_recovers_the_util_cap_an_overloaded_unit_was_simulated_with():
    from bench.fit_unit_model import Fixed, constants, coordinate_search, evaluate_all, loss, predict_at
    from planner.latency import PlacedDemand

    w = Workload(models=[WorkloadModel(name="a", model="llama-7b", rate_rps=50.0, prompt_tokens=LengthDist(kind="fixed", mean=100),
                                       output_tokens=LengthDist(kind="fixed", mean=50))], duration_s=10)
    d = demands_from_workload(w)[0]
    gpu = get_gpu("A100-80GB")
    fx = Fixed("toy", [(gpu, [PlacedDemand(d, 1, 50, 16, d.rate_rps, 1.0)])], d.rate_rps, 0.0, CM, {}, 0.0)
    # the 'simulator' is the unit model itself at UTIL_CAP 0.98: the fit must find 0.98 again from 0.9
    with constants(UTIL_CAP=0.98):
        probes = [{"scale": s, "rps": predict_at(fx, s)[0], "slo": predict_at(fx, s)[1]} for s in (0.25, 0.5, 1.0)]
    fx.sim = {"probes": probes, "max_rate_scale": 0.5}
    served = {c: evaluate_all([fx], {"UTIL_CAP": c})[0]["served_pred"] for c in (0.9, 0.98)}
    assert served[0.9] < served[0.98] < d.rate_rps  # overloaded at x1: served = UTIL_CAP / (q + d) grows with the cap
    best, _, _ = coordinate_search(lambda v: loss(evaluate_all([fx], v)), {"UTIL_CAP": (0.9, 0.95, 0.98, 1.0)}, {"UTIL_CAP": 0.9})
    assert best == {"UTIL_CAP": 0.98}


def test_backlog_and_admission_of_a_fixed_plan_by_hand():
    from planner.latency import PlacedDemand, backlog_met, routed_at

    slack = [-1.0, 5.0, 10.0, 20.0]  # one missed request; three that could have waited 5, 10 and 20 s more
    # within capacity: every arrival served, 3 of 4 within SLO -> 4 x 0.75
    assert backlog_met(4.0, 5.0, 10.0, slack) == pytest.approx(3.0)
    # twice the capacity over 10 s: waits grow to 10 x (10 / 5 - 1) = 10 s, uniform; met = mean(clip(slack / 10, 0, 1))
    # = (0 + 0.5 + 1 + 1) / 4 = 0.625 of the 10 req/s
    assert backlog_met(10.0, 5.0, 10.0, slack) == pytest.approx(6.25)
    assert backlog_met(10.0, 0.0, 10.0, slack) == 0.0
    # a replica routed 2 req/s of a model whose plan admits half its demand (the simulator's admission): at x2 it gets
    # 4; at x0.75 the plan admits min(1, 0.5 / 0.75) of the requests -> 2 x min(1, 0.75 / 0.5) = 2; at x0.25 all -> 1
    placed = PlacedDemand(None, 1, 50, 8, 2.0, 0.5)
    assert [routed_at(placed, s) for s in (2.0, 0.75, 0.25)] == pytest.approx([4.0, 2.0, 1.0])


def test_the_considered_table_judges_every_solver_by_its_max_rate_predicted_and_simulated():
    from planner.latency import plan_units, predicted_headroom
    from planner.sim.capacity import max_rate_scale
    from planner.sim.trace import build_request_table
    from planner.solve import MAX_RATE_STEPS, SOLVERS

    w, cluster = small([6.0, 3.0, 1.0])
    plan = solve_and_compare("exact", w, cluster, CM, time_limit_s=10, compare=True, verify=True)
    rows = {c.method: c for c in plan.considered}
    assert set(rows) == set(SOLVERS)
    table = build_request_table(w)
    span_s = float(table.arrival_s[-1] - table.arrival_s[0])
    units, demand = plan_units(plan, demands_from_workload(w))
    assert plan.predicted_max_rate_scale == rows["exact"].predicted_max_rate_scale == predicted_headroom(units, demand, CM, span_s)
    assert plan.predicted_max_rate_scale > 1.0  # 4 GPUs for 10 req/s: room to spare, and the model says so
    sim = max_rate_scale(plan, w, table, CM, plan.check.policy, plan.check.slo_scale, steps=MAX_RATE_STEPS).rate_scale
    assert rows["exact"].simulated_max_rate_scale == sim >= 1.0
    # the unit model describes ADBS units: spatial and temporal plans get no prediction, but every plan is simulated
    assert rows["spatial"].predicted_max_rate_scale is None and rows["temporal"].predicted_max_rate_scale is None
    assert all(r.simulated_max_rate_scale is not None for r in rows.values())
