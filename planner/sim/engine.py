"""The event loop: replay a request table on a plan under one policy; ``simulate_plan`` is the entry point.

One heap holds job completions and periodic events (quota adaptation, usage samples); arrivals are
merged from the sorted request table. After every event the touched unit's policy schedules. A run
stops when every request has finished or been dropped, or at the horizon (unfinished ones are dropped
with that reason), so every arrival is accounted for exactly once.
"""
from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from muxplan.schema import Plan, Workload
from planner.sim.isolated import isolated_latency
from planner.sim.layout import SHED, build_layout, route_requests
from unitsched.policy import Policy, get_policy
from planner.sim.trace import RequestTable, build_request_table
from planner.sim.unit import DECODE_DONE, PREFILL_DONE, Book, UnitState
from profiler.cost_model import CostModel

ADAPT, SAMPLE = 2, 3
SAMPLE_PERIOD_S = 1.0


@dataclass(frozen=True)
class SimResult:
    """Per-request columns (``records``), per-unit usage samples and quota history, and run counters."""

    policy: str
    seed: int
    rate_scale: float
    model_names: tuple[str, ...]
    unit_ids: tuple[int, ...]
    records: dict[str, np.ndarray]
    timeline: dict[int, dict[str, np.ndarray]]
    quota_history: dict[int, list[tuple[float, tuple[int, ...]]]]
    num_decode_steps: int
    num_prefill_batches: int
    wall_s: float
    sim_end_s: float
    event_log: list[tuple] | None = field(default=None, compare=False)


def _horizon_s(table: RequestTable, drain_s: float | None) -> float:
    last = float(table.arrival_s[-1]) if table.num_requests else 0.0
    return last + (drain_s if drain_s is not None else max(60.0, 0.25 * last))


def run_table(plan: Plan, workload: Workload, table: RequestTable, cost: CostModel, policy: str | Policy = "adbs",
              seed: int = 0, rate_scale: float = 1.0, drain_s: float | None = None, log_events: bool = False,
              progress: Callable[[float, float], None] | None = None) -> SimResult:
    """Simulate ``table`` (already rescaled) on ``plan``; see module docstring."""
    started = time.perf_counter()
    pol = get_policy(policy) if isinstance(policy, str) else policy
    layout = build_layout(plan, workload, cost)
    pol.check(layout)
    unit_of, slot_of = route_requests(layout, table, seed, rate_scale)
    book = Book(table.arrival_s.tolist(), table.prompt_tokens.tolist(), table.output_tokens.tolist())
    heap: list = []
    counter = itertools.count()

    def push(t: float, kind: int, unit_pos: int, slot_idx: int) -> None:
        heapq.heappush(heap, (t, next(counter), kind, unit_pos, slot_idx))

    log: list | None = [] if log_events else None
    units = [UnitState(spec, pos, book, push, pol.initial_quotas(spec), pol.sm_cap_parts, log) for pos, spec in enumerate(layout.units)]
    quota_history = {u.spec.id: [(0.0, tuple(s.quota_bytes for s in u.slots))] for u in units}
    samples: dict[int, list[tuple[float, float, float]]] = {u.spec.id: [] for u in units}
    horizon = _horizon_s(table, drain_s)
    if pol.adapt_period_s:
        push(pol.adapt_period_s, ADAPT, -1, -1)
    push(SAMPLE_PERIOD_S, SAMPLE, -1, -1)
    arrivals, unit_list, slot_list = book.arrival_s, unit_of.tolist(), slot_of.tolist()
    n, i, now = len(arrivals), 0, 0.0
    inf = math.inf
    schedule = pol.schedule
    while book.num_open > 0:
        next_arrival = arrivals[i] if i < n else inf
        if heap and heap[0][0] <= next_arrival:
            now, _, kind, pos, idx = heapq.heappop(heap)
            if now > horizon:
                break
            if kind == DECODE_DONE:
                unit = units[pos]
                unit.finish_decode(unit.slots[idx], now)
                schedule(unit, now)
            elif kind == PREFILL_DONE:
                unit = units[pos]
                unit.finish_prefill(unit.slots[idx], now)
                schedule(unit, now)
            elif kind == ADAPT:
                _adapt(pol, units, quota_history, now)
                push(now + pol.adapt_period_s, ADAPT, -1, -1)
            else:
                _sample(units, samples, now)
                push(now + SAMPLE_PERIOD_S, SAMPLE, -1, -1)
                if progress is not None:
                    progress(now, horizon)
        elif i < n:
            now, req = next_arrival, i
            i += 1
            if now > horizon:
                break
            unit = _enqueue(book, units, unit_list[req], slot_list[req], req)
            if unit is not None:
                schedule(unit, now)
        else:
            break
    _drop_unfinished(book, n)
    return SimResult(
        policy=pol.name, seed=seed, rate_scale=rate_scale, model_names=table.model_names,
        unit_ids=tuple(u.spec.id for u in units), records=_records(plan, workload, table, cost, layout, book, unit_list),
        timeline=_timeline(samples), quota_history=quota_history,
        num_decode_steps=sum(u.num_decode_steps for u in units), num_prefill_batches=sum(u.num_prefill_batches for u in units),
        wall_s=time.perf_counter() - started, sim_end_s=now, event_log=log,
    )


def _enqueue(book: Book, units: list[UnitState], pos: int, slot: int, req: int) -> UnitState | None:
    """An arrival joins its slot's queue (its unit returned, to schedule) or is dropped (None)."""
    if pos < 0:
        book.drop(req, "shed: above the rate the plan admits" if pos == SHED else "model not placed in the plan")
        return None
    unit = units[pos]
    unit.slots[slot].queue.append(req)
    return unit


def _adapt(pol: Policy, units: list[UnitState], quota_history: dict, now: float) -> None:
    """The periodic quota adaptation on every unit, recorded, then each unit schedules."""
    for unit in units:
        pol.adapt(unit, now)
        quota_history[unit.spec.id].append((now, tuple(s.quota_bytes for s in unit.slots)))
        pol.schedule(unit, now)


def _sample(units: list[UnitState], samples: dict, now: float) -> None:
    """One usage sample per unit: (time, cumulative SM area, KV pool use in percent)."""
    for unit in units:
        unit._set_sm(now, 0)
        samples[unit.spec.id].append((now, unit.sm_area, 100.0 * unit.used_bytes / unit.pool_bytes))


def _drop_unfinished(book: Book, n: int) -> None:
    for req in range(n):
        if not book.dropped[req] and book.finish_s[req] != book.finish_s[req]:
            book.drop(req, "unfinished at the horizon")


def _records(plan: Plan, workload: Workload, table: RequestTable, cost: CostModel, layout, book: Book,
             unit_list: list[int]) -> dict[str, np.ndarray]:
    """The per-request columns of SimResult.records."""
    n = table.num_requests
    iso_ttft, iso_e2e = isolated_latency(layout, plan, workload, table, cost)
    return {
        "request": np.arange(n),
        "model": table.model,
        "unit": np.array([layout.units[u].id if u >= 0 else u for u in unit_list], dtype=np.int64),
        "arrival_s": table.arrival_s,
        "prompt_tokens": table.prompt_tokens,
        "output_tokens": table.output_tokens,
        "first_token_s": np.array(book.first_token_s),
        "finish_s": np.array(book.finish_s),
        "preemptions": np.array(book.preemptions, dtype=np.int64),
        "dropped": np.array(book.dropped, dtype=object),
        "isolated_ttft_s": iso_ttft,
        "isolated_latency_s": iso_e2e,
    }


def _timeline(samples: dict[int, list[tuple[float, float, float]]]) -> dict[int, dict[str, np.ndarray]]:
    """Per unit: sample times, SM use in percent over each sample interval, KV pool use in percent."""
    timeline = {}
    for uid, rows in samples.items():
        arr = np.array(rows, dtype=np.float64).reshape(-1, 3)
        area = np.diff(np.concatenate([[0.0], arr[:, 1]]))
        span = np.diff(np.concatenate([[0.0], arr[:, 0]]))
        timeline[uid] = {"t_s": arr[:, 0], "sm_pct": 10.0 * area / np.maximum(span, 1e-12), "kv_pct": arr[:, 2]}
    return timeline


def simulate_plan(plan: Plan, workload: Workload, cost_model: CostModel, policy: str | Policy = "adbs", seed: int = 0,
                  rate_scale: float = 1.0, table: RequestTable | None = None, **kwargs) -> SimResult:
    """Replay the workload's requests (arrivals ``rate_scale`` times faster) on ``plan`` under ``policy``."""
    table = build_request_table(workload) if table is None else table
    if rate_scale != 1.0:
        table = table.rescaled(rate_scale)
    return run_table(plan, workload, table, cost_model, policy, seed=seed, rate_scale=rate_scale, **kwargs)
