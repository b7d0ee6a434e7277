"""One trace through the simulator and through the engine (tiny models on CPU, virtual clock, step latencies
from the same cost model) gives the same event log: jobs, batches, preemptions and quota changes."""
import heapq
import itertools
import json
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from executor.engine.engine import Engine, ServedModel  # noqa: E402
from executor.engine.sampler import SamplingParams  # noqa: E402
from planner.sim.engine import simulate_plan  # noqa: E402
from tests.engine_fixtures import colocated_plan  # noqa: E402
from tests.sim_fixtures import ToyCost, make_workload  # noqa: E402
from unitsched.adbs import Adbs  # noqa: E402
from unitsched.policy import UnitView, get_policy  # noqa: E402

PHYS_BLOCK_BYTES = 2 * 16 * 32 * 4  # 16 tokens of the unit's largest head size (32), K and V, float32


class FastAdbs(Adbs):
    adapt_period_s = 0.05  # several quota adaptations within a short trace


class VirtualJobs:
    """Runs every job on the model runner at once, and reports it finished at start + the cost model's latency
    (as the simulator computes it), earliest first; ``clock`` is the engine's clock, moved by the driver."""

    mechanism = "virtual"

    def __init__(self, cost, clock):
        self.cost, self.clock = cost, clock
        self.heap: list = []
        self.order = itertools.count()

    def submit(self, job, run) -> None:
        n = len(job.seqs)
        if job.kind == "prefill":
            ms = self.cost.prefill_ms(None, None, 1, job.sm_pct, n, round(sum(s.num_tokens for s in job.seqs) / n))
        else:
            ms = self.cost.decode_ms(None, None, 1, job.sm_pct, n, round(sum(s.num_tokens - 1 for s in job.seqs) / n))
        heapq.heappush(self.heap, (job.start_s + ms / 1e3, next(self.order), job, run(job)))

    def next_end_s(self) -> float:
        return self.heap[0][0] if self.heap else float("inf")

    def wait(self, timeout_s: float) -> list:
        if self.heap and self.heap[0][0] <= self.clock.now_s:
            end, _, job, tokens = heapq.heappop(self.heap)
            return [(job, tokens, end)]
        return []

    def poke(self) -> None:
        pass

    def close(self) -> None:
        pass


class Clock:
    def __init__(self):
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def replay_on_engine(engine: Engine, clock: Clock, rows, period_s: float | None) -> None:
    """Advance the clock event by event in the simulator's order (job ends before arrivals at equal times),
    stepping the engine once per event and once more after every finished job (the policy schedules then)."""
    jobs, i, next_adapt = engine.jobs, 0, period_s or float("inf")
    while i < len(rows) or engine.has_work():
        if engine.step():
            continue
        t_job = jobs.next_end_s()
        t_arrival = rows[i][0] if i < len(rows) else float("inf")
        if t_job == float("inf") and t_arrival == float("inf"):
            break
        t = min(t_job, t_arrival, next_adapt)
        clock.now_s = t
        if t == next_adapt:
            next_adapt = t + period_s
        elif t_arrival < t_job:
            arrival, model, prompt, output = rows[i]
            ids = [(7 * i + k) % 500 + 3 for k in range(prompt)]
            engine.add_request(model, ids, SamplingParams(max_tokens=output, temperature=0.0, ignore_eos=True, seed=0))
            i += 1


def trace_rows():
    rng = np.random.default_rng(5)
    times = np.sort(rng.uniform(0.0, 0.25, 26))
    return [(float(t), "a" if k % 3 else "b", int(rng.integers(10, 120)), int(rng.integers(3, 30))) for k, t in enumerate(times)]


KV_BYTES = {"a": 24 * 4 * PHYS_BLOCK_BYTES, "b": 16 * 2 * PHYS_BLOCK_BYTES}  # 24 blocks of a, 16 of b: preemption
RATES = {"a": 2.0, "b": 1.0}


def two_head_sizes(tiny_models, tmp_path) -> dict:
    """The tiny Llama (head size 32, 16-token blocks) and a model of head size 16 (32-token blocks, random weights)."""
    config = json.loads((tiny_models["llama"] / "config.json").read_text())
    config.update(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1, head_dim=16)
    small = tmp_path / "small.json"
    small.write_text(json.dumps(config))
    return {"a": tiny_models["llama"], "b": small}


def run_both(paths: dict, rows, policy_cls):
    """(simulator result, engine) after replaying ``rows`` on one unit hosting ``paths`` under the policy."""
    plan = colocated_plan(paths, rates={n: RATES[n] for n in paths}, sm=(60, 40))
    unit = plan.units[0]
    models = [m.model_copy(update={"kv_bytes": KV_BYTES[m.name]}) for m in unit.models]
    plan = plan.model_copy(update={"units": [unit.model_copy(update={"models": models})]})
    cost = ToyCost(ctx_ms=0.01)
    names = list(paths)
    sim = simulate_plan(plan, make_workload(names, rows, [RATES[n] for n in names]), cost, policy=policy_cls(), log_events=True)
    clock = Clock()
    served = [ServedModel(n, str(paths[n]), KV_BYTES[n], 60, 40, 64, RATES[n]) for n in names]
    engine = Engine(served, policy=policy_cls(), clock=clock, jobs=VirtualJobs(cost, clock), log_events=True)
    replay_on_engine(engine, clock, rows, policy_cls.adapt_period_s)
    return sim, engine


def event_log(log) -> list[tuple]:
    return [(round(t * 1e9), model, kind, n) for t, _, model, kind, n in log]


def test_simulator_and_engine_make_the_same_decisions_with_two_head_sizes_and_preemption(tiny_models, tmp_path):
    rows = trace_rows()
    kv_bytes = KV_BYTES
    sim, engine = run_both(two_head_sizes(tiny_models, tmp_path), rows, FastAdbs)
    assert isinstance(engine.scheduler, UnitView)
    assert [s.spec.block_tokens for s in engine.scheduler.slots] == [16, 32]
    sim_log = event_log(sim.event_log)
    assert event_log(engine.event_log) == sim_log
    assert engine.quota_history == sim.quota_history[0]
    by_id = sorted(engine.finished, key=lambda s: s.id)
    assert [s.num_preemptions for s in by_id] == sim.records["preemptions"].tolist()
    dropped = sim.records["dropped"].tolist()
    finished = [i for i, why in enumerate(dropped) if not why]
    assert [round(by_id[i].finish_s * 1e9) for i in finished] == [round(sim.records["finish_s"][i] * 1e9) for i in finished]
    assert [s.finish_reason for s in by_id] == ["length"] * len(rows)  # max_tokens reached, or (24) never fit b's quota

    # and what both decided, pinned: a change of policy or block rule on both sides still breaks the test
    assert [i for i, why in enumerate(dropped) if why] == [24] and dropped[24] == "kv: request larger than the model's KV quota"
    assert Counter((m, k) for _, m, k, _ in sim_log) == {("a", "prefill"): 13, ("a", "decode"): 70, ("b", "prefill"): 10,
                                                         ("b", "decode"): 42, ("a", "preempt"): 2, ("b", "preempt"): 2}
    assert [e for e in sim_log if e[2] == "preempt"] == [(227642761, "b", "preempt", 18), (260416094, "a", "preempt", 8),
                                                         (293805465, "b", "preempt", 18), (394065465, "a", "preempt", 17)]
    assert sim_log[:6] == [(11318798, "b", "prefill", 1), (12189428, "a", "prefill", 1), (28768798, "b", "prefill", 1),
                           (30006094, "a", "prefill", 2), (46152132, "a", "decode", 1), (50039428, "b", "decode", 2)]
    quotas = [q for _, q in sim.quota_history[0]]
    assert quotas[0] == (466033, 58255) and sum(quotas[0]) == sum(kv_bytes.values())
    assert quotas[6:10] == [(460208, 64080), (491520, 32768), (491520, 32768), (507904, 16384)]
    assert quotas[-1] == (509725, 14563)  # b is held at its floor: a quarter of its initial quota


def test_the_simulated_unit_implements_the_policy_contract():
    from planner.sim.layout import build_layout
    from planner.sim.unit import Book, UnitState
    from tests.sim_fixtures import make_plan, placed

    layout = build_layout(make_plan([[placed("a", 2**20)]]), make_workload(["a"], [(0.0, "a", 10, 2)]), ToyCost())
    unit = UnitState(layout.units[0], 0, Book([], [], []), lambda *event: None, [2**20], 12, None)
    assert isinstance(unit, UnitView) and not isinstance(object(), UnitView)


@pytest.mark.parametrize("policy", ["fcfs", "round-robin", "temporal", "spatial"])
def test_every_policy_decides_the_same_in_the_simulator_and_the_engine(tiny_models, tmp_path, policy):
    paths = two_head_sizes(tiny_models, tmp_path)
    if policy == "spatial":
        paths = {"a": paths["a"]}  # one model per unit
    rows = [r for r in trace_rows() if r[1] in paths]
    sim, engine = run_both(paths, rows, type(get_policy(policy)))
    log = event_log(sim.event_log)
    assert event_log(engine.event_log) == log
    assert engine.quota_history == sim.quota_history[0] and len(sim.quota_history[0]) == 1
    assert [s.num_preemptions for s in sorted(engine.finished, key=lambda s: s.id)] == sim.records["preemptions"].tolist()
    assert {k for _, _, k, _ in log} >= {"prefill", "decode"}
