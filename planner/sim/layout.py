"""The static shape of a simulation: which unit hosts which model with what SMs, KV and latency tables.

Checks a plan against the workload (every placed model must exist there) and routes every request to a
unit hosting its model, by routing share for replicated models (a seeded draw, so runs are repeatable).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from muxplan.catalog import get_gpu, get_model
from muxplan.files import InputError
from muxplan.schema import GpuSpec, ModelSpec, Plan, Workload
from planner.sim.trace import RequestTable
from profiler.cost_model import CostModel
from profiler.memory import kv_bytes_per_token_per_gpu
from unitsched.config import block_tokens
from unitsched.slot import SmShares


CONTEXT_STEP = 32  # tokens between the decode latencies the simulator asks the cost model for


@dataclass
class SlotSpec(SmShares):
    """One model on one unit, with memoised latencies (the cost model is the slow part of a step)."""

    unit: int
    index: int
    name: str
    model_idx: int
    spec: ModelSpec
    gpu: GpuSpec
    tp: int
    prefill_sm_pct: int
    decode_sm_pct: int
    max_num_seqs: int
    kv_bytes: int
    block_bytes: int
    block_tokens: int
    rate_rps: float
    cost: CostModel
    _prefill_memo: dict = field(default_factory=dict, repr=False)
    _decode_memo: dict = field(default_factory=dict, repr=False)

    @property
    def kv_bytes_per_token(self) -> float:
        return self.block_bytes / self.block_tokens

    def prefill_s(self, sm_pct: int, batch: int, tokens: int) -> float:
        key = (sm_pct, batch, tokens)
        value = self._prefill_memo.get(key)
        if value is None:
            value = self._prefill_memo[key] = self.cost.prefill_ms(self.spec, self.gpu, self.tp, sm_pct, batch, tokens) / 1e3
        return value

    def decode_s(self, sm_pct: int, batch: int, context_tokens: int) -> float:
        """Linear between the cost model's values at multiples of CONTEXT_STEP tokens: decode time is linear in the
        context (KV bytes read) within such a step, and the mean context of a batch changes every step, so exact
        memoisation would miss almost always."""
        base = context_tokens - context_tokens % CONTEXT_STEP
        key = (sm_pct, batch, base)
        line = self._decode_memo.get(key)
        if line is None:
            lo = self.cost.decode_ms(self.spec, self.gpu, self.tp, sm_pct, batch, max(1, base)) / 1e3
            hi = self.cost.decode_ms(self.spec, self.gpu, self.tp, sm_pct, batch, base + CONTEXT_STEP) / 1e3
            line = self._decode_memo[key] = (lo, (hi - lo) / (base + CONTEXT_STEP - max(1, base)))
        return line[0] + line[1] * (context_tokens - max(1, base))


@dataclass(frozen=True)
class UnitSpec:
    id: int
    node: int
    gpu: GpuSpec
    num_gpus: int
    slots: tuple[SlotSpec, ...]

    @property
    def pool_bytes(self) -> int:
        return sum(s.kv_bytes for s in self.slots)


@dataclass(frozen=True)
class Layout:
    units: tuple[UnitSpec, ...]
    replicas: dict[int, list[tuple[int, int, float]]]  # model idx -> [(unit pos, slot idx, share)]


def build_layout(plan: Plan, workload: Workload, cost: CostModel) -> Layout:
    """Resolve every placed model against the workload and the catalogs; bad references raise InputError."""
    index = {m.name: i for i, m in enumerate(workload.models)}
    units: list[UnitSpec] = []
    replicas: dict[int, list[tuple[int, int, float]]] = {}
    for u, unit in enumerate(plan.units):
        gpu = get_gpu(unit.gpu, plan.cluster.gpus)
        slots = []
        for j, placed in enumerate(unit.models):
            where = f"plan: units[{u}].models[{j}]"
            if placed.name not in index:
                raise InputError(f"{where}.name: '{placed.name}' is not a model of workload '{workload.name}'")
            if placed.tp != len(unit.gpu_ids):
                raise InputError(f"{where}.tp: {placed.tp} differs from the unit's {len(unit.gpu_ids)} GPUs")
            if placed.kv_bytes <= 0:
                raise InputError(f"{where}.kv_bytes: must be > 0 to serve requests")
            try:
                spec = get_model(placed.model)
            except InputError as exc:
                raise InputError(f"{where}.model: {exc}") from None
            slots.append(SlotSpec(
                unit=u, index=j, name=placed.name, model_idx=index[placed.name], spec=spec, gpu=gpu, tp=placed.tp,
                prefill_sm_pct=placed.prefill_sm_pct, decode_sm_pct=placed.decode_sm_pct,
                max_num_seqs=placed.max_num_seqs, kv_bytes=placed.kv_bytes, block_bytes=0, block_tokens=0,
                rate_rps=placed.rate_rps, cost=cost,
            ))
            replicas.setdefault(index[placed.name], []).append((u, j, placed.routing_share))
        for s in slots:  # one block size per unit (the engine's rule): sized once every head size is known
            s.block_tokens = block_tokens(s.spec.head_dim, [t.spec.head_dim for t in slots])
            s.block_bytes = s.block_tokens * kv_bytes_per_token_per_gpu(s.spec, s.tp)
        units.append(UnitSpec(id=unit.id, node=unit.node, gpu=gpu, num_gpus=len(unit.gpu_ids), slots=tuple(slots)))
    return Layout(units=tuple(units), replicas=replicas)


SHED = -2  # route_requests: the request is above the rate the plan admits for its model


def route_requests(layout: Layout, table: RequestTable, seed: int, rate_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(unit position, slot index) per request; -1 where no unit hosts the model, SHED where admission rejects it.

    A plan whose routing shares of a model sum to S < 1 admits S x its demand (the rest is shed at the door, as
    the router's admission does): at rate scale x a request is admitted with probability min(1, S / min(1, x)) (all
    of a lighter load, the plan's share S of a heavier one), then sent to a replica in proportion to its share
    (seeded draws, so runs repeat)."""
    unit = np.full(table.num_requests, -1, dtype=np.int64)
    slot = np.full(table.num_requests, -1, dtype=np.int64)
    rng = np.random.default_rng(seed)
    for model_idx in sorted(layout.replicas):
        where = np.flatnonzero(table.model == model_idx)
        places = layout.replicas[model_idx]
        shares = np.array([p[2] for p in places], dtype=np.float64)
        admitted = min(1.0, float(shares.sum()) / min(1.0, rate_scale))
        if len(places) == 1:
            pick = np.zeros(where.size, dtype=np.int64)
        else:
            pick = rng.choice(len(places), size=where.size, p=shares / shares.sum())
        unit[where] = np.array([p[0] for p in places])[pick]
        slot[where] = np.array([p[1] for p in places])[pick]
        if admitted < 1.0 - 1e-6:
            shed = where[rng.random(where.size) >= admitted]
            unit[shed] = SHED
    return unit, slot
