"""What a plan change costs: the running processes of a plan, moves and restarts between two plans, and the
GPU blocks left free when some units stay where they are.

A *process* is one (unit location, served model, configuration) of a plan: location = (node, GPU ids), the
configuration = (TP, decode SM%, sequence quota, KV bytes). These are fixed when a process starts (MPS share,
KV arena), so anything else about them needs a restart; routing shares and admission quotas do not.
Between a current plan A and a new plan B:
    moves     = processes of B not in A   (started: a model moved or replicated to another unit, the members of a
                                          re-sliced unit, a process re-configured in place)
    restarts  = processes of A not in B   (stopped: the model left that unit, its unit was re-sliced or removed,
                                          or it was re-configured)
Moving a model from one unit to another is one move and one restart; adding a replica is one move.
"""
from __future__ import annotations

from dataclasses import dataclass

from muxplan.catalog import get_gpu
from muxplan.schema import Plan
from planner.tables import Demand, Option, tpot_limit_s
from profiler.memory import reserve_bytes, weight_bytes_per_gpu


@dataclass(frozen=True)
class Process:
    node: int
    gpu_ids: tuple[int, ...]
    model: str
    tp: int
    decode_sm_pct: int
    max_num_seqs: int
    kv_bytes: int


@dataclass(frozen=True)
class Migration:
    started: tuple[Process, ...]
    stopped: tuple[Process, ...]

    @property
    def moves(self) -> int:
        return len(self.started)

    @property
    def restarts(self) -> int:
        return len(self.stopped)


def processes(plan: Plan) -> list[Process]:
    return [Process(u.node, tuple(u.gpu_ids), m.name, m.tp, m.decode_sm_pct, m.max_num_seqs, m.kv_bytes)
            for u in plan.units for m in u.models]


def migration(old: Plan, new: Plan) -> Migration:
    a, b = processes(old), processes(new)
    return Migration(tuple(p for p in b if p not in a), tuple(p for p in a if p not in b))


def same_placement(old: Plan, new: Plan) -> bool:
    """Every unit at the same GPUs with the same models and configurations (routing shares may differ)."""
    return sorted(processes(old), key=repr) == sorted(processes(new), key=repr)


def running_option(demand: Demand, gpu, tp: int, decode_sm_pct: int, batch: int, kv_bytes: int, cost_model) -> Option:
    """The option a running process has under a new workload: its configuration (SM%, quota, KV bytes) stays, its
    per-request times follow the new mean lengths (the formulas of planner.tables)."""
    spec = demand.spec
    mean_in, mean_out = max(1, round(demand.mean_prompt_tokens)), max(1, round(demand.mean_output_tokens))
    p = cost_model.prefill_ms(spec, gpu, tp, 100, 1, mean_in) / 1e3
    step = cost_model.decode_ms(spec, gpu, tp, decode_sm_pct, batch, demand.context_tokens) / 1e3
    return Option(tp, decode_sm_pct, 100, batch, p, mean_out * step / batch, kv_bytes, weight_bytes_per_gpu(spec, tp),
                  reserve_bytes(spec, tp, max_num_seqs=batch), step, tpot_limit_s(demand, gpu, cost_model))


@dataclass(frozen=True)
class Location:
    """A unit of the current plan: where it is and what runs there (demand index, running option)."""

    node: int
    gpu: str
    gpu_ids: tuple[int, ...]
    members: tuple[tuple[int, Option], ...]

    @property
    def mesh_size(self) -> int:
        return len(self.gpu_ids)


def locations(plan: Plan, demands: list[Demand], cost_model) -> list[Location]:
    """The current plan's units with their running options under the new demands (a model the new workload no longer
    names keeps no member: its processes are stopped)."""
    index = {d.name: i for i, d in enumerate(demands)}
    out = []
    for u in plan.units:
        gpu = get_gpu(u.gpu, plan.cluster.gpus)
        members = tuple((index[m.name], running_option(demands[index[m.name]], gpu, m.tp, m.decode_sm_pct, m.max_num_seqs,
                                                         m.kv_bytes, cost_model)) for m in u.models if m.name in index)
        out.append(Location(u.node, u.gpu, tuple(u.gpu_ids), members))
    return out


def aligned_blocks(num_gpus: int) -> dict[int, list[tuple[int, ...]]]:
    """Per power-of-two size s, the aligned blocks [k s, (k+1) s) of a node (the only places a mesh of s may go)."""
    out, s = {}, 1
    while s <= num_gpus:
        out[s] = [tuple(range(k, k + s)) for k in range(0, num_gpus - s + 1, s)]
        s *= 2
    return out


def place_new_units(nodes: list[tuple[str, int]], occupied: dict[int, set[int]], sizes: list[tuple[str, int]]) -> list[tuple[int, list[int]]]:
    """(node, GPU ids) for each (GPU type, mesh size) request, largest first, first fit into fully free aligned blocks.
    Aligned power-of-two blocks nest, so this succeeds whenever the requests of size >= s need no more free s-blocks
    than there are, for every s (the count replan's master enforces)."""
    busy = {n: set(occupied.get(n, ())) for n in range(len(nodes))}
    out: list[tuple[int, list[int]] | None] = [None] * len(sizes)
    for k in sorted(range(len(sizes)), key=lambda k: -sizes[k][1]):
        gpu, s = sizes[k]
        for node, (node_gpu, num) in enumerate(nodes):
            block = next((b for b in aligned_blocks(num).get(s, []) if not busy[node] & set(b)), None) if node_gpu == gpu else None
            if block is not None:
                busy[node] |= set(block)
                out[k] = (node, list(block))
                break
        else:
            raise RuntimeError(f"internal error: no free aligned block of {s} {gpu} GPUs for a new unit")
    return out  # type: ignore[return-value]
