"""Simulator behaviour on tiny cases with latencies computed by hand from the toy cost model."""
from __future__ import annotations

import numpy as np
import pytest

from muxplan.files import InputError
from planner.sim.engine import simulate_plan
from planner.sim.metrics import attainment_curve, summarize
from unitsched.policy import POLICIES, get_policy
from tests.sim_fixtures import ToyCost, make_plan, make_workload, placed

GIB = 2**30
BLOCK_BYTES = 16 * 524288  # llama-7b: 512 KiB of KV per token, 16-token blocks


def test_single_request_latency_is_prefill_plus_decode_steps():
    plan = make_plan([[placed("a", 10 * GIB)]])
    wl = make_workload(["a"], [(1.0, "a", 100, 6)])
    r = simulate_plan(plan, wl, ToyCost(ctx_ms=0.01)).records
    prefill_ms = 10 + 0.01 * 100  # batch 1, 100 tokens, full SMs
    decode_ms = sum(5 + 0.5 + 0.01 * ctx for ctx in range(100, 105))  # 5 steps at contexts 100..104
    assert r["first_token_s"][0] == pytest.approx(1.0 + prefill_ms / 1e3, abs=1e-12)
    assert r["finish_s"][0] == pytest.approx(1.0 + (prefill_ms + decode_ms) / 1e3, abs=1e-12)
    assert r["isolated_latency_s"][0] == pytest.approx((prefill_ms + decode_ms) / 1e3, abs=1e-12)
    assert r["dropped"][0] == "" and r["preemptions"][0] == 0


def test_single_token_output_finishes_at_prefill():
    plan = make_plan([[placed("a", 10 * GIB)]])
    r = simulate_plan(plan, make_workload(["a"], [(0.0, "a", 200, 1)]), ToyCost()).records
    assert r["finish_s"][0] == pytest.approx(0.012) and r["first_token_s"][0] == pytest.approx(0.012)


def _log(result):
    return [(round(t * 1e6), model, kind, batch) for t, _, model, kind, batch in result.event_log]


def test_adbs_interleaves_prefill_first_then_round_robin_decodes():
    plan = make_plan([[placed("a", 10 * GIB, 60, 40), placed("b", 10 * GIB, 60, 40)]])
    wl = make_workload(["a", "b"], [(0.0, "a", 100, 5), (0.001, "b", 200, 3), (0.002, "a", 50, 4)])
    result = simulate_plan(plan, wl, ToyCost(), log_events=True)
    # prefills of a and b overlap (6 + 6 parts <= 12); a's second prefill goes before any decode; decodes
    # alternate b, a while a's prefill holds 6 parts (only one 4-part decode fits), then run together.
    assert _log(result) == [
        (0, "a", "prefill", 1), (1000, "b", "prefill", 1), (18333, "a", "prefill", 1),
        (21000, "a", "decode", 1), (26500, "b", "decode", 1), (32000, "a", "decode", 1),
        (35833, "b", "decode", 1), (37500, "a", "decode", 2), (43500, "a", "decode", 2), (49500, "a", "decode", 1),
    ]
    assert result.records["finish_s"].round(6).tolist() == [0.0495, 0.041333, 0.055]


def test_adbs_holds_decodes_while_a_prefill_waits_for_sms():
    plan = make_plan([[placed("a", 10 * GIB, 100, 40), placed("b", 10 * GIB, 100, 40)]])
    wl = make_workload(["a", "b"], [(0.0, "a", 100, 3), (0.012, "b", 100, 2)])
    result = simulate_plan(plan, wl, ToyCost(), log_events=True)
    # b's 10-part prefill cannot join a's 4-part decode (14 > 12): a's next decode is held back until b's
    # prefill has run; then decodes go round-robin starting after a (b, then a).
    assert _log(result) == [
        (0, "a", "prefill", 1), (11000, "a", "decode", 1), (16500, "b", "prefill", 1),
        (27500, "b", "decode", 1), (27500, "a", "decode", 1),
    ]


def test_adbs_quota_moves_toward_the_hot_model():
    quota = 10 * BLOCK_BYTES
    plan = make_plan([[placed("hot", quota, 100, 20), placed("cold", quota, 100, 20)]])
    # 1500 one-block requests keep the hot model's quota full (>= 90% of the time); cold gets none
    wl = make_workload(["hot", "cold"], [(0.0, "hot", 1, 16)] * 1500)
    result = simulate_plan(plan, wl, ToyCost())
    history = result.quota_history[0]
    assert history[0] == (0.0, (quota, quota))
    assert history[1] == (8.0, (quota + quota // 10, quota - quota // 10))  # hot takes 10% of its quota from cold
    assert all(sum(q) == 2 * quota for _, q in history)
    assert history[-1][1][0] > history[1][1][0]  # and keeps growing while it stays hot


@pytest.mark.parametrize("policy", ["adbs", "fcfs", "round-robin", "temporal"])
def test_every_arrival_finishes_or_is_dropped_with_a_reason(policy):
    rng = np.random.default_rng(7)
    names = ["a", "b", "c", "ghost"]
    rows = [(float(t), names[rng.integers(4)], int(rng.integers(1, 300)), int(rng.integers(1, 200)))
            for t in np.sort(rng.uniform(0, 5, 300))]
    plan = make_plan([[placed("a", 40 * BLOCK_BYTES, 60, 40, share=0.5), placed("b", 30 * BLOCK_BYTES, 60, 40)],
                      [placed("a", 40 * BLOCK_BYTES, 60, 40, share=0.5), placed("c", 12 * BLOCK_BYTES, 60, 40)]])
    wl = make_workload(names, rows)
    r = simulate_plan(plan, wl, ToyCost(), policy=policy, drain_s=3.0).records
    assert r["request"].tolist() == list(range(300))
    finished = np.isfinite(r["finish_s"])
    dropped = r["dropped"] != ""
    assert (finished ^ dropped).all()
    assert (r["finish_s"][finished] >= r["first_token_s"][finished]).all()
    assert (r["first_token_s"][finished] >= r["arrival_s"][finished]).all()
    ghost = r["model"] == names.index("ghost")
    assert set(r["dropped"][ghost]) == {"model not placed in the plan"}
    assert (r["unit"][ghost] == -1).all() and set(r["unit"][r["model"] == 0]) == {0, 1}


def test_runs_are_deterministic_under_a_seed():
    rows = [(0.01 * i, "a", 50 + i, 20) for i in range(100)]
    plan = make_plan([[placed("a", 10 * GIB, share=0.5)], [placed("a", 10 * GIB, share=0.5)]])
    wl = make_workload(["a"], rows)
    one, two = (simulate_plan(plan, wl, ToyCost(), seed=3) for _ in range(2))
    other = simulate_plan(plan, wl, ToyCost(), seed=4)
    for key in one.records:
        assert one.records[key].tolist() == two.records[key].tolist()
    assert not np.array_equal(one.records["unit"], other.records["unit"])
    assert sorted(np.bincount(one.records["unit"]).tolist()) == sorted(np.bincount(one.records["unit"], minlength=2).tolist())


def test_plan_naming_a_model_missing_from_the_workload_is_an_input_error():
    plan = make_plan([[placed("a", GIB), placed("nope", GIB)]])
    with pytest.raises(InputError, match=r"units\[0\]\.models\[1\]\.name: 'nope' is not a model of workload"):
        simulate_plan(plan, make_workload(["a"], [(0.0, "a", 10, 2)]), ToyCost())


def test_spatial_policy_rejects_colocated_units_and_unknown_policies():
    plan = make_plan([[placed("a", GIB), placed("b", GIB)]])
    wl = make_workload(["a", "b"], [(0.0, "a", 10, 2)])
    with pytest.raises(InputError, match=r"units\[0\]\.models: spatial needs one model per unit, got a, b"):
        simulate_plan(plan, wl, ToyCost(), policy="spatial")
    with pytest.raises(InputError, match="policy: unknown 'lifo'"):
        get_policy("lifo")
    assert sorted(POLICIES) == ["adbs", "fcfs", "round-robin", "spatial", "temporal"]


def test_summary_and_slo_attainment_follow_isolated_latency():
    plan = make_plan([[placed("a", 10 * GIB)]])
    wl = make_workload(["a"], [(0.0, "a", 100, 6), (0.0, "a", 100, 6)])
    result = simulate_plan(plan, wl, ToyCost())
    # arrivals are taken one at a time: prefills of 11 ms back to back (a full-SM prefill leaves no room for
    # a decode), then 5 steps at batch 2 (6 ms): both end at 52 ms vs isolated 11 + 5 x 5.5 = 38.5 ms
    assert result.records["first_token_s"].tolist() == pytest.approx([0.011, 0.022])
    assert result.records["finish_s"].tolist() == pytest.approx([0.052, 0.052])
    assert attainment_curve(result, wl, [1.0, 52 / 38.5, 2.0]).tolist() == [0.0, 1.0, 1.0]
    s = summarize(result, wl, slo_scale=1.0)
    assert s.overall.num_finished == 2 and s.overall.slo_attainment == 0.0
    assert s.overall.ttft_ms[0] == pytest.approx(16.5) and s.overall.tpot_ms[0] == pytest.approx(7.1)
    assert s.overall.throughput_rps == pytest.approx(2 / 0.052)


def test_rank_plans_prefers_the_plan_that_meets_more_slos():
    from planner.sim.evaluate import rank_plans

    rows = [(0.01 * i, "a", 100, 20) for i in range(200)]
    wl = make_workload(["a"], rows)
    one_gpu = make_plan([[placed("a", 10 * GIB)]])
    two_gpus = make_plan([[placed("a", 10 * GIB, share=0.5)], [placed("a", 10 * GIB, share=0.5)]])
    ranked = rank_plans([one_gpu, two_gpus], wl, ToyCost(), slo_scale=5.0)
    assert [v.index for v in ranked] == [1, 0]
    assert [v.summary.overall.slo_attainment for v in ranked] == [0.225, 0.0]


def test_temporal_runs_one_job_at_a_time_prefills_first_then_decodes_round_robin():
    plan = make_plan([[placed("a", 10 * GIB, 60, 40), placed("b", 10 * GIB, 60, 40)]])
    wl = make_workload(["a", "b"], [(0.0, "a", 100, 3), (0.001, "b", 100, 3), (0.015, "a", 100, 2)])
    result = simulate_plan(plan, wl, ToyCost(), policy="temporal", log_events=True)
    # full SMs: prefill 11 ms, decode step 5.5 ms (batch 1) / 6 ms (batch 2); never two jobs at once
    assert _log(result) == [
        (0, "a", "prefill", 1), (11000, "b", "prefill", 1), (22000, "a", "prefill", 1),
        (33000, "a", "decode", 2), (39000, "b", "decode", 1), (44500, "a", "decode", 1), (50000, "b", "decode", 1),
    ]


def test_max_rate_scale_brackets_then_bisects_to_the_overlap_threshold():
    from planner.sim.capacity import max_rate_scale
    from planner.sim.trace import build_request_table

    plan = make_plan([[placed("a", 10 * GIB)]])
    wl = make_workload(["a"], [(0.0, "a", 100, 6), (1.0, "a", 100, 6)])
    # alone each takes 11 + 5 x 5.5 = 38.5 ms; at SLO scale 1 both meet it only while the second arrives
    # after the first finished: gap 1/x >= 38.5 ms, i.e. x <= 25.97
    cap = max_rate_scale(plan, wl, build_request_table(wl), ToyCost(), slo_scale=1.0, max_scale=64.0, steps=6)
    assert 1 / 0.0385 / 2 ** (1 / 64) <= cap.rate_scale <= 1 / 0.0385
    assert [p.rate_scale for p in cap.probes][:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0] and len(cap.probes) == 12
    assert cap.rate_rps == pytest.approx(cap.rate_scale * 2.0)  # 2 requests over 1 s


def test_compare_entries_resolve_to_runs_and_duplicates_are_rejected(tmp_path):
    from muxplan.files import save_contract
    from planner.sim.comparison import resolve_runs

    plan = make_plan([[placed("a", GIB)]])
    other = make_plan([[placed("a", GIB, share=0.5)], [placed("a", GIB, share=0.5)]])
    save_contract(tmp_path / "two.json", other)
    wl = make_workload(["a"], [(0.0, "a", 10, 2)])
    runs = resolve_runs(plan, "one", "adbs", [str(tmp_path / "two.json"), "temporal", "spatial"], wl, ToyCost())
    assert [(r.label, r.policy, len(r.plan.units)) for r in runs] == [
        ("one+adbs", "adbs", 1), ("two+adbs", "adbs", 2), ("one+temporal", "temporal", 1), ("spatial", "spatial", 1)]
    with pytest.raises(InputError, match="--compare: 'one\\+temporal' is given twice"):
        resolve_runs(plan, "one", "adbs", ["temporal", "temporal"], wl, ToyCost())


def test_blocks_are_one_size_per_unit_so_a_smaller_head_fits_more_tokens():
    from planner.sim.layout import build_layout
    from profiler.memory import kv_bytes_per_token_per_gpu

    small = placed("b", GIB).model_copy(update={"model": "llama-3.2-1b"})  # head size 64 beside llama-7b's 128
    layout = build_layout(make_plan([[placed("a", GIB), small], [placed("c", GIB)]]), make_workload(["a", "b", "c"], []), ToyCost())
    (a, b), (c,) = layout.units[0].slots, layout.units[1].slots
    assert (a.block_tokens, b.block_tokens, c.block_tokens) == (16, 32, 16)
    assert a.block_bytes == 16 * 524288 and b.block_bytes == 32 * kv_bytes_per_token_per_gpu(b.spec, 1)
    assert a.block_bytes // (a.spec.num_layers * a.spec.num_kv_heads) == b.block_bytes // (b.spec.num_layers * b.spec.num_kv_heads)


def test_a_model_planned_at_rate_zero_still_gets_kv_quota():
    # b is placed with rate 0: it still starts with a tenth of a's weight (8 GiB pool: 8/1.1 and 0.8/1.1 GiB), so
    # its requests are served instead of dropped as larger than its quota
    plan = make_plan([[placed("a", 4 * GIB, decode_sm=50, rate=1.0), placed("b", 4 * GIB, decode_sm=50, rate=0.0)]])
    rows = [(0.5 * k, "b", 10, 2) for k in range(40)]
    result = simulate_plan(plan, make_workload(["a", "b"], rows), ToyCost())
    quotas = result.quota_history[0]
    assert quotas[0][1] == (int(8 * GIB / 1.1), 8 * GIB - int(8 * GIB / 1.1))
    assert (result.records["dropped"] == "").all() and all(sum(q) == 8 * GIB for _, q in quotas)
