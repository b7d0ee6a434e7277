"""The paper sweep's grid and its spatial layout, shared by the sweep benchmarks."""
from __future__ import annotations

import argparse

from muxplan.catalog import get_gpu, get_model, num_params
from muxplan.schema import Cluster, PlacedModel, Plan, SolverRecord, Unit, Workload
from profiler.memory import kv_capacity_bytes

PAPER_COUNTS = [("llama-7b", 12), ("llama-13b", 4), ("llama-30b", 2), ("llama-65b", 1)]  # the paper's 19 models
SPATIAL_GPUS = ((20e9, 1), (45e9, 4), (1e15, 8))  # paper §5: 7B/13B one GPU, 30B four, 65B eight


def add_grid_args(ap: argparse.ArgumentParser) -> None:
    """--alphas, --scales, --orders: the sweep's popularity skews, top-rate scales (x 40 req/s) and rank orders."""
    ap.add_argument("--alphas", default="0.7,0.9,1.3,1.7,2.1")
    ap.add_argument("--scales", default="0.5,0.75,1.0,1.25")
    ap.add_argument("--orders", default="size,shuffled")


def grid(args: argparse.Namespace):
    """(order, alpha, scale) of every sweep instance, in the sweep's order."""
    for order in args.orders.split(","):
        for alpha in map(float, args.alphas.split(",")):
            for s in map(float, args.scales.split(",")):
                yield order, alpha, s


def paper_spatial_plan(workload: Workload, cluster: Cluster) -> Plan:
    """Every model on its own GPUs (the paper's spatial baseline), packed node by node, largest first."""
    gpu = get_gpu(cluster.nodes[0].gpu, cluster.gpus)
    models = sorted(workload.models, key=lambda m: -num_params(get_model(m.model)))
    free = [node.num_gpus for node in cluster.nodes]
    units = []
    for m in models:
        tp = next(n for limit, n in SPATIAL_GPUS if num_params(get_model(m.model)) < limit)
        node = next((i for i, f in enumerate(free) if f >= tp), None)
        if node is None:
            continue
        first = cluster.nodes[node].num_gpus - free[node]
        free[node] -= tp
        kv = kv_capacity_bytes([get_model(m.model)], gpu, tp)
        units.append(Unit(id=len(units), node=node, gpu=gpu.name, gpu_ids=list(range(first, first + tp)), predicted_rps=m.rate_rps,
                          models=[PlacedModel(name=m.name, model=m.model, tp=tp, prefill_sm_pct=100, decode_sm_pct=100, kv_bytes=kv,
                                              max_num_seqs=256, routing_share=1.0, rate_rps=m.rate_rps, predicted_rps=m.rate_rps)]))
    demand = sum(m.rate_rps for m in workload.models)
    return Plan(workload=workload.name, cluster=cluster, solver=SolverRecord(method="spatial-paper", objective="none", value=0.0),
                units=units, demand_rps=demand, served_rps=sum(u.predicted_rps for u in units),
                num_gpus_used=sum(len(u.gpu_ids) for u in units))
