"""Run a plan: start the serving processes under a supervisor and serve the router until stopped."""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable

from executor.admission import Admission
from executor.identity import TOKEN_ENV, new_token
from executor.launcher import ENGINE_MAX_QUEUE, ProcessSpec, check_ports_free
from executor.router import Replica, RouterState, create_app
from executor.supervisor import Supervisor
from muxplan.files import InputError
from muxplan.schema import Plan


def router_state(plan: Plan, procs: list[ProcessSpec], api_key: str | None, hosts: dict[str, str] | None = None,
                 backend: str = "vllm") -> RouterState:
    """Replicas, shares and admission quotas; the engine schedules ADBS itself, so its admission is only its queue bound."""
    replicas: dict[str, list[Replica]] = {}
    quotas: dict[str, int] = {}
    predicted: dict[str, float] = {}
    by_unit = {u.id: u for u in plan.units}
    for p in procs:
        for m in by_unit[p.unit].models:
            if m.name in p.models:
                replicas.setdefault(m.name, []).append(Replica(m.name, f"http://{(hosts or {}).get(p.name, '127.0.0.1')}:{p.port}", m.routing_share, p.unit, p.name))
                quotas[m.name] = quotas.get(m.name, 0) + (ENGINE_MAX_QUEUE if backend == "engine" else m.max_num_seqs)
                predicted[m.name] = predicted.get(m.name, 0.0) + m.predicted_rps
    from executor.recorder import ObservedRates

    return RouterState(replicas, Admission(quotas), predicted, api_key, backend_token=os.environ.get(TOKEN_ENV),
                       observed=ObservedRates(sorted(replicas)))


def check_loadable(plan: Plan, plan_path: Path, backend: str = "vllm") -> None:
    """vLLM loads a local folder or a hub id, not a muxplan catalog name: say so before starting anything.
    The engine serves a catalog name with random weights at the real shapes (token-id prompts only)."""
    from muxplan.catalog import model_catalog

    if backend == "engine":
        return
    for u in plan.units:
        for k, m in enumerate(u.models):
            if m.model in model_catalog() and not Path(m.model).exists():
                raise InputError(f"{plan_path}: units[{u.id}].models[{k}].model: '{m.model}' is a catalog name; "
                                 "serving needs a local model folder (or a Hugging Face id) in the plan")


def procs_on_gpu(procs) -> bool:
    return any("CUDA_VISIBLE_DEVICES" in p.env for p in procs)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def serve(plan: Plan, procs: list[ProcessSpec], state_dir: Path, host: str, port: int, api_key: str | None,
          ray_address: str | None = None, backend: str = "vllm", progress: Callable[[str], None] = lambda line: None,
          record: Path | None = None, max_connections: int = 1024) -> None:
    """Blocks until SIGINT/SIGTERM; every child process is stopped on the way out.

    Locally a Supervisor runs the processes; with ``ray_address`` ("local" or a cluster address) each unit
    runs in a Ray actor placed on its node (executor.ray_host) and the router here reaches it over the network.
    One token per deployment goes to every backend and, through this process's environment, to the router
    (which runs here): ``MUXPLAN_BACKEND_TOKEN`` (random unless the caller's environment already sets it).
    """
    from executor.router_connection import ServerLimits
    from executor.router_server import serve as serve_router

    signal.signal(signal.SIGTERM, _raise_interrupt)  # clean up children on `kill`, not only on Ctrl-C
    state_dir.mkdir(parents=True, exist_ok=True)
    # An operator's own token (as in the launch script) wins, so tools outside the router can reach a backend.
    token = os.environ[TOKEN_ENV] = os.environ.get(TOKEN_ENV) or new_token()
    if ray_address:
        from executor.ray_host import RayDeployment

        supervisor = RayDeployment(procs, state_dir, ray_address, plan.cluster.num_gpus, token=token, progress=progress)
        state = router_state(plan, procs, api_key, supervisor.addresses, backend)
        supervisor.on_health = state.set_health
    else:
        check_ports_free(procs, host, port)
        state = router_state(plan, procs, api_key, backend=backend)
        supervisor = Supervisor(procs, state_dir, on_health=state.set_health, token=token, progress=progress)
    if record is not None:  # the served traffic as trace segments (executor.recorder), closed on the way out
        from executor.recorder import TraceRecorder

        state.recorder = TraceRecorder(record, {m.name: m.model for u in plan.units for m in u.models})
        progress(f"recording served requests to {record}/trace-NNNN.json")
    try:
        try:
            progress(f"starting {len(procs)} serving process{'es' if len(procs) != 1 else ''} (logs in {state_dir / 'logs'})")
            supervisor.start()
        except RuntimeError as exc:
            raise InputError(str(exc)) from None
        if not ray_address:  # rolling updates (`deploy --update`) are applied from a thread of this process
            from executor.update import Deployment, watch

            watch(Deployment(plan, procs, supervisor, state, state_dir, backend, port, api_key, procs_on_gpu(procs)), supervisor.stopping)
        models = sorted({m for p in procs for m in p.models})
        progress(f"serving {', '.join(models)} at http://{host}:{port}/v1 (OpenAI-compatible; Ctrl-C stops)")
        try:
            # returns on SIGINT/SIGTERM once requests in flight are done
            serve_router(create_app(state), host, port, limits=ServerLimits(max_connections=max_connections))
        except OSError as exc:
            raise InputError(str(exc)) from None
    except KeyboardInterrupt:
        pass
    finally:
        progress("stopping")
        supervisor.stop()
        if state.recorder is not None:
            state.recorder.close()
