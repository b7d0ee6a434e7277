"""From chosen units to a Plan: mesh partitions, GPU packing, plan building and the plan checker."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from muxplan.catalog import get_gpu
from muxplan.files import InputError
from muxplan.schema import Cluster, PlacedModel, Plan, SolverRecord, Unit, Unserved, Workload
from planner.estimator import estimate_unit
from planner.tables import Demand, Option

EPS = 1e-6


class Member(NamedTuple):
    """One model on a unit: its demand index, the option it runs with and the rate routed to it."""

    index: int
    option: Option
    rate_rps: float


@dataclass(frozen=True)
class UnitChoice:
    """A unit before GPU ids are assigned: mesh size, GPU type and members (plain 3-tuples become Members)."""

    mesh_size: int
    gpu: str
    members: tuple[Member, ...]

    def __post_init__(self):
        object.__setattr__(self, "members", tuple(Member(*m) for m in self.members))


def served_per_model(units: list[UnitChoice], num_models: int) -> list[float]:
    """Per model, the rates its replicas in ``units`` serve, summed."""
    served = [0.0] * num_models
    for u in units:
        for i, _, r in u.members:
            served[i] += r
    return served


@lru_cache(maxsize=None)
def partitions(node_size: int, largest: int | None = None) -> tuple[tuple[int, ...], ...]:
    """Ways to cut a node into power-of-two meshes, sizes descending (8 GPUs: 10 ways)."""
    largest = largest or 1 << (node_size.bit_length() - 1)
    if node_size == 0:
        return ((),)
    out = []
    size = largest
    while size >= 1:
        if size <= node_size:
            out += [(size, *rest) for rest in partitions(node_size - size, size)]
        size //= 2
    return tuple(out)


def pack_units(cluster: Cluster, units: list[UnitChoice]) -> list[tuple[int, list[int]]]:
    """First-fit decreasing of power-of-two meshes into aligned GPU blocks of each node; (node, gpu ids) per unit."""
    free = {i: [True] * node.num_gpus for i, node in enumerate(cluster.nodes)}
    placed: list[tuple[int, list[int]] | None] = [None] * len(units)
    for k in sorted(range(len(units)), key=lambda k: -units[k].mesh_size):
        u = units[k]
        for i, node in enumerate(cluster.nodes):
            if node.gpu != u.gpu:
                continue
            starts = range(0, node.num_gpus - u.mesh_size + 1, u.mesh_size)
            start = next((s for s in starts if all(free[i][s:s + u.mesh_size])), None)
            if start is not None:
                free[i][start:start + u.mesh_size] = [False] * u.mesh_size
                placed[k] = (i, list(range(start, start + u.mesh_size)))
                break
        else:
            raise InputError(f"cannot pack a {u.mesh_size}-GPU {u.gpu} mesh into the cluster's free GPUs")
    return placed  # type: ignore[return-value]


def inputs_digest(workload: Workload, cluster: Cluster, cost_label: str) -> str:
    blob = json.dumps([[m.model_dump(mode="json") for m in workload.models], cluster.model_dump(mode="json"), cost_label], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _any_option(demand: Demand, cluster: Cluster, cost_model) -> bool:
    """Whether the model has an option within its SLO on some mesh of some GPU type of the cluster."""
    from planner.tables import model_options

    for node in cluster.nodes:
        gpu, n = get_gpu(node.gpu, cluster.gpus), 1
        while n <= node.num_gpus:
            if model_options(demand, gpu, n, cost_model):
                return True
            n *= 2
    return False


def build_plan(
    cluster: Cluster, demands: list[Demand], units: list[UnitChoice], solver: SolverRecord,
    cost_label: str = "", workload_name: str = "", temporal: bool = False, cost_model=None,
) -> Plan:
    """Assign GPU ids, estimate every unit with the one yardstick (and, given the cost model, predict latencies
    and SLO attainment per model), and record unserved demand."""
    from planner.latency import predict_unit

    overrides = cluster.gpus
    placement = pack_units(cluster, units)
    served = [0.0] * len(demands)
    met = [0.0] * len(demands)
    out_units = []
    for uid, (u, (node, gpu_ids)) in enumerate(zip(units, placement)):
        gpu = get_gpu(u.gpu, overrides)
        members = [(demands[i], o, r) for i, o, r in u.members]
        est = estimate_unit(gpu, members, temporal)
        preds = predict_unit(gpu, members, list(est.served_rps), cost_model) if cost_model is not None and not temporal else None
        placed = []
        for k, ((i, o, routed), got) in enumerate(zip(u.members, est.served_rps)):
            d = demands[i]
            served[i] += got
            pred = preds[k] if preds else None
            met[i] += got * (pred.slo_attainment if pred else 1.0)
            placed.append(PlacedModel(
                name=d.name, model=d.ref, tp=u.mesh_size, prefill_sm_pct=o.prefill_sm_pct, decode_sm_pct=o.decode_sm_pct,
                kv_bytes=o.kv_bytes_per_gpu, max_num_seqs=o.batch, routing_share=min(1.0, max(routed / d.rate_rps, EPS) if d.rate_rps else 1.0),
                rate_rps=routed, predicted_rps=got, predicted_ttft_ms=list(pred.ttft_ms) if pred else None,
                predicted_tpot_ms=list(pred.tpot_ms) if pred else None, predicted_slo_attainment=pred.slo_attainment if pred else None,
            ))
        out_units.append(Unit(id=uid, node=node, gpu=u.gpu, gpu_ids=gpu_ids, models=placed, predicted_rps=est.total_rps,
                              stall_share=None if temporal else est.stall_share))
    unserved = []
    for d, s in zip(demands, served):
        if d.rate_rps - s > EPS * max(1.0, d.rate_rps):
            placed_anywhere = any(demands[i].name == d.name for u in units for i, _, _ in u.members)
            reason = "placed, but its units are saturated" if placed_anywhere else "not placed: no mesh with room left"
            if not placed_anywhere and cost_model is not None and not _any_option(d, cluster, cost_model):
                reason = "not placed: no option meets its SLO (the decode step alone exceeds the TPOT limit) on any mesh"
            unserved.append(Unserved(name=d.name, demand_rps=d.rate_rps, served_rps=s, reason=reason))
    demand = sum(d.rate_rps for d in demands)
    predicted = cost_model is not None and not temporal
    return Plan(
        workload=workload_name, cluster=cluster, cost_model=cost_label, solver=solver, units=out_units, unserved=unserved,
        demand_rps=demand, served_rps=sum(served), num_gpus_used=sum(u.mesh_size for u in units),
        predicted_slo_attainment=min(1.0, sum(met) / demand) if predicted and demand > 0 else None,
        predicted_goodput_rps=sum(met) if predicted else None,
    )
