"""The plan contract checked against its cluster, the catalogs and the memory model: what every command that
reads a plan runs (planner and executor alike), so a plan one command rejects no other command accepts."""
from __future__ import annotations

from pathlib import Path

from muxplan.catalog import get_gpu, get_model
from muxplan.files import InputError, load_contract
from muxplan.schema import Plan, Workload
from profiler.memory import reserve_bytes, usable_bytes, weight_bytes_per_gpu
from unitsched.config import SM_BUDGET_PCT

TIME_SLICED_DEVICE = "cpu"  # a device without SM partitions: jobs run in turn, SM shares are time shares


def check_plan(plan: Plan, workload: Workload | None = None, model_files_optional: bool = False) -> list[str]:
    """Every violated constraint, one line each: unit ids, GPU ranges and disjointness, mesh shape, models, memory, SM, routing.

    ``model_files_optional`` (deploy): a model that names no catalog entry and no file or folder here (a Hugging Face
    id, or a local folder not built yet: the server resolves it when it starts) is no problem; its unit's memory is
    then not checked. A file or folder that is there must still be a readable model config.
    """
    problems = []
    used: dict[tuple[int, int], int] = {}
    shares: dict[str, float] = {}
    names = {m.name for m in workload.models} if workload else None
    first_with_id: dict[int, int] = {}
    for i, u in enumerate(plan.units):
        where = f"units[{i}]"
        if u.id in first_with_id:
            problems.append(f"{where}.id: {u.id} is also the id of units[{first_with_id[u.id]}]")
        first_with_id.setdefault(u.id, i)
        if u.node >= len(plan.cluster.nodes):
            problems.append(f"{where}.node: {u.node} does not exist (the cluster has {len(plan.cluster.nodes)} nodes)")
            continue
        node = plan.cluster.nodes[u.node]
        n = len(u.gpu_ids)
        if n & (n - 1) or len(set(u.gpu_ids)) != n:
            problems.append(f"{where}.gpu_ids: need a power-of-two number of distinct GPUs, got {u.gpu_ids}")
        if u.gpu != node.gpu:
            problems.append(f"{where}.gpu: {u.gpu} but node {u.node} has {node.gpu}")
        for g in u.gpu_ids:
            if not 0 <= g < node.num_gpus:
                problems.append(f"{where}.gpu_ids: GPU {g} is not on node {u.node} ({node.num_gpus} GPUs)")
            elif (u.node, g) in used:
                problems.append(f"{where}.gpu_ids: GPU {g} of node {u.node} is also in units[{used[(u.node, g)]}]")
            used.setdefault((u.node, g), i)
        mem, mem_known = 0, True
        for k, m in enumerate(u.models):
            try:
                spec = get_model(m.model)
            except InputError as exc:
                if not (model_files_optional and not _names_a_file(m.model)):
                    problems.append(f"{where}.models[{k}].model: {exc}")
                mem_known = False
                continue
            mem += weight_bytes_per_gpu(spec, m.tp) + reserve_bytes(spec, m.tp, max_num_seqs=m.max_num_seqs) + m.kv_bytes
            if m.tp != n:
                problems.append(f"{where}.models[{k}].tp: {m.tp} != mesh size {n}")
            if m.kv_bytes <= 0:
                problems.append(f"{where}.models[{k}].kv_bytes: must be > 0 to serve requests")
            if m.decode_sm_pct > m.prefill_sm_pct:
                problems.append(f"{where}.models[{k}]: decode SM% {m.decode_sm_pct} above prefill SM% {m.prefill_sm_pct}")
            if names is not None and m.name not in names:
                problems.append(f"{where}.models[{k}].name: '{m.name}' is not a model of workload '{workload.name}'")
            shares[m.name] = shares.get(m.name, 0.0) + m.routing_share
        placed = [m.name for m in u.models]
        if len(set(placed)) != len(placed):
            problems.append(f"{where}.models: a model is placed twice on one unit ({', '.join(sorted({x for x in placed if placed.count(x) > 1}))})")
        try:
            gpu = get_gpu(u.gpu, plan.cluster.gpus)
        except InputError as exc:
            problems.append(f"{where}.gpu: {exc}")
            continue
        if mem_known and mem > usable_bytes(gpu):
            problems.append(f"{where}: memory {mem / 2**30:.1f} GiB > usable {usable_bytes(gpu) / 2**30:.1f} GiB per GPU")
        sm = sum(m.decode_sm_pct for m in u.models)
        # a device without SM partitions (the CPU) runs jobs in turn: its SM shares are time shares, not a budget
        if len(u.models) > 1 and plan.solver.method != "temporal" and u.gpu != TIME_SLICED_DEVICE and sm > SM_BUDGET_PCT:
            problems.append(f"{where}: decode SM shares {sm}% > {SM_BUDGET_PCT}%")
    problems += [f"routing shares of '{name}' sum to {s:.3f} > 1" for name, s in shares.items() if s > 1 + 1e-4]
    return problems


def _names_a_file(ref: str) -> bool:
    try:
        return Path(ref).exists()
    except (OSError, ValueError):  # too long for a path, or a NUL byte
        return False


def load_plan(path: str | Path, workload: Workload | None = None, model_files_optional: bool = False) -> Plan:
    """The one way a command reads a plan: schema, then every constraint of :func:`check_plan`; problems raise InputError."""
    plan = load_contract(path, Plan)
    problems = check_plan(plan, workload, model_files_optional)
    if problems:
        raise InputError([f"{path}: {p}" for p in problems])
    return plan
