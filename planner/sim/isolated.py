"""Isolated latency of every request: batch 1 on full GPUs, the yardstick of the scale-k SLO.

The yardstick must not depend on the plan being judged, so each model runs on the smallest
power-of-two mesh its weights fit (on the GPU type hosting it, else the cluster's first node). The
decode part is (output - 1) steps at the mean context prompt + (output - 2) / 2, exact for latencies
linear in context. Latencies are evaluated once per distinct length (on a grid when there are many).
"""
from __future__ import annotations

import numpy as np

from muxplan.catalog import get_gpu, get_model
from muxplan.schema import Plan, Workload
from planner.sim.layout import Layout
from planner.sim.trace import RequestTable
from profiler.cost_model import CostModel
from profiler.memory import isolated_tp

MAX_DISTINCT = 1024
GRID_POINTS = 256


def _evaluate(fn, values: np.ndarray) -> np.ndarray:
    """fn at each value; on a log grid with interpolation when there are many distinct values."""
    distinct, inverse = np.unique(values, return_inverse=True)
    if distinct.size <= MAX_DISTINCT:
        return np.array([fn(int(v)) for v in distinct])[inverse]
    grid = np.unique(np.round(np.geomspace(distinct[0], distinct[-1], GRID_POINTS)).astype(np.int64))
    return np.interp(values, grid, np.array([fn(int(v)) for v in grid]))


def isolated_latency(layout: Layout, plan: Plan, workload: Workload, table: RequestTable, cost: CostModel) -> tuple[np.ndarray, np.ndarray]:
    """(TTFT, end-to-end latency) in seconds per request of ``table``."""
    ttft = np.zeros(table.num_requests)
    e2e = np.zeros(table.num_requests)
    gpu_of = {s.model_idx: s.gpu for u in layout.units for s in u.slots}
    default_gpu = get_gpu(plan.cluster.nodes[0].gpu, plan.cluster.gpus)
    for m, wm in enumerate(workload.models):
        where = np.flatnonzero(table.model == m)
        if not where.size:
            continue
        ttft[where], e2e[where] = isolated_request_s(get_model(wm.model), gpu_of.get(m, default_gpu), cost,
                                                     table.prompt_tokens[where], table.output_tokens[where])
    return ttft, e2e


def isolated_request_s(spec, gpu, cost: CostModel, prompt: np.ndarray, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(TTFT, end-to-end latency) in seconds of requests of one model with these lengths (module docstring)."""
    tp = isolated_tp(spec, gpu)
    pre = _evaluate(lambda p: cost.prefill_ms(spec, gpu, tp, 100, 1, p) / 1e3, prompt)
    mid = np.round(prompt + np.maximum(output - 2, 0) / 2).astype(np.int64)
    dec = _evaluate(lambda c: cost.decode_ms(spec, gpu, tp, 100, 1, c) / 1e3, mid)
    return pre, pre + (output - 1) * dec
