"""Rolling update of a running deployment to a new plan (`muxplan deploy --update new.json`).

The CLI drops a request (STATE_DIR/update-request.json, temp file + rename) that the serving process picks up; the
serving process applies it and records every step in STATE_DIR/update.json (also temp file + rename), which the CLI
follows. Steps, in order:
  1. diff: a running process is kept when the new plan has the same process (same node, GPUs, models with the same
     TP, SM shares, quota and KV bytes): routing shares and admission quotas change without a restart;
  2. gap check: a new process whose GPUs cannot hold it beside the old ones there (GPU hosts: weights + reserve + KV)
     has to wait for them to stop; a model all of whose replicas stop first would have none while it loads: the update
     is refused before anything starts unless ``allow_gap``;
  3. start every new process that fits, each until healthy (a failure rolls back: the new ones stop, routing stays);
  4. route: replicas, shares and admission quotas of the new plan, in one assignment the event loop sees atomically;
  5. stop the old processes (SIGTERM: each finishes what it holds), then start those that had to wait.
The diff makes a step idempotent: re-running an interrupted update resumes it, updating back to the old plan rolls it back.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from muxplan.files import write_text_atomic
from muxplan.schema import Plan

REQUEST_FILE = "update-request.json"
LOG_FILE = "update.json"
DRAIN_S = 1.0  # after routing moves away, before old processes get SIGTERM: requests already picked reach them


def process_key(plan: Plan, unit_id: int, models: tuple[str, ...]) -> tuple:
    """What a process is, apart from its routing: where it runs and how each of its models is configured."""
    unit = next(u for u in plan.units if u.id == unit_id)
    configs = sorted((m.name, m.tp, m.prefill_sm_pct, m.decode_sm_pct, m.max_num_seqs, m.kv_bytes, m.model)
                     for m in unit.models if m.name in models)
    return (unit.node, tuple(unit.gpu_ids), tuple(configs))


@dataclass(frozen=True)
class Diff:
    keep: tuple[tuple[str, object], ...]  # (old process name, new spec it stands for)
    start: tuple[object, ...]  # new ProcessSpecs
    stop: tuple[str, ...]  # old process names
    wait: tuple[object, ...] = ()  # new specs that start only after the old processes stopped (memory)
    gap_models: tuple[str, ...] = ()


def plan_diff(old: Plan, old_procs, new: Plan, new_procs, on_gpu: bool = False) -> Diff:
    old_keys = {process_key(old, p.unit, p.models): p.name for p in old_procs}
    keep, start = [], []
    for spec in new_procs:
        name = old_keys.pop(process_key(new, spec.unit, spec.models), None)
        (keep.append((name, spec)) if name else start.append(spec))
    stop = tuple(old_keys.values())
    wait = tuple(s for s in start if on_gpu and not _fits_beside(old, old_procs, new, s))
    kept_models = {m for _, s in keep for m in s.models} | {m for s in start if s not in wait for m in s.models}
    stopped = {m for p in old_procs if p.name in stop for m in p.models}
    gap = tuple(sorted(m for m in stopped if m not in kept_models and any(m in s.models for s in wait)))
    return Diff(tuple(keep), tuple(s for s in start if s not in wait), stop, wait, gap)


def _unit_bytes(plan: Plan, unit_id: int, models) -> int:
    from muxplan.catalog import get_model
    from profiler.memory import reserve_bytes, weight_bytes_per_gpu

    unit = next(u for u in plan.units if u.id == unit_id)
    total = 0
    for m in unit.models:
        if m.name in models:
            try:
                spec = get_model(m.model)
                total += weight_bytes_per_gpu(spec, m.tp) + reserve_bytes(spec, m.tp, max_num_seqs=m.max_num_seqs)
            except Exception:  # a hub id: weights unknown here, count its KV only
                pass
            total += m.kv_bytes
    return total


def _fits_beside(old: Plan, old_procs, new: Plan, spec) -> bool:
    """Whether the new process fits on its GPUs while every old process there still runs (GPU hosts)."""
    from muxplan.catalog import get_gpu
    from profiler.memory import usable_bytes

    unit = next(u for u in new.units if u.id == spec.unit)
    used = sum(_unit_bytes(old, p.unit, p.models) for p in old_procs if p.node == spec.node and set(p.gpu_ids) & set(spec.gpu_ids))
    return used + _unit_bytes(new, spec.unit, spec.models) <= usable_bytes(get_gpu(unit.gpu, new.cluster.gpus))


class UpdateLog:
    """STATE_DIR/update.json: the request, every step with its state, and the outcome."""

    def __init__(self, state_dir: Path, request: dict):
        self.path = state_dir / LOG_FILE
        self.data = {"id": request.get("id"), "from": request.get("from"), "to": request.get("plan"), "status": "running", "steps": []}
        self.save()

    def step(self, text: str, status: str = "done") -> None:
        self.data["steps"].append({"step": text, "status": status, "at": time.time()})
        self.save()

    def finish(self, status: str, message: str = "") -> None:
        self.data.update(status=status, message=message)
        self.save()

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps(self.data, indent=1))


class Deployment:
    """What the serving process holds: the plan in force, its processes, the supervisor and the router state."""

    def __init__(self, plan: Plan, procs, supervisor, state, state_dir: Path, backend: str, port: int, api_key, on_gpu: bool = False):
        self.plan, self.procs, self.supervisor, self.state = plan, list(procs), supervisor, state
        self.state_dir, self.backend, self.port, self.api_key, self.on_gpu = state_dir, backend, port, api_key, on_gpu
        self.generation = 0

    def poll(self) -> None:
        """Apply a pending update request, if any (called every half second from a thread of the serving process)."""
        path = self.state_dir / REQUEST_FILE
        if not path.exists():
            return
        request = json.loads(path.read_text())
        path.unlink()
        log = UpdateLog(self.state_dir, request)
        try:
            self.apply(Path(request["plan"]), bool(request.get("allow_gap")), log)
        except Exception as exc:  # the update fails, the deployment keeps serving what it served
            log.finish("failed", f"{type(exc).__name__}: {exc}")

    def apply(self, plan_path: Path, allow_gap: bool, log: UpdateLog) -> None:
        from executor.deployment import router_state
        from executor.launcher import build_processes
        from profiler.plan_check import load_plan

        new = load_plan(plan_path, model_files_optional=True)
        missing = sorted({m.name for u in new.units for m in u.models} - set(self.state.replicas))
        if missing:
            return log.finish("refused", f"{plan_path}: units: serves {', '.join(missing)}, which this deployment does not "
                                         "(the router's model list is fixed at start)")
        self.generation += 1
        kept_path = self.state_dir / f"plan-g{self.generation}.json"  # the engine servers read their plan: keep a copy
        shutil.copyfile(plan_path, kept_path)
        base = max(p.port for p in self.procs) + 1
        specs = build_processes(new, self.backend, kept_path, self.state_dir, base_port=base, on_gpu=self.on_gpu)
        specs = [replace(s, name=f"{s.name}.g{self.generation}") for s in specs]
        diff = plan_diff(self.plan, self.procs, new, specs, self.on_gpu)
        log.step(f"diff: keep {len(diff.keep)}, start {len(diff.start) + len(diff.wait)}, stop {len(diff.stop)}")
        if diff.gap_models and not allow_gap:
            return log.finish("refused", f"memory forces {', '.join(diff.gap_models)} to have no replica while the new processes "
                                         "load; run again with --allow-gap to accept that")
        started = []
        for spec in diff.start:
            log.step(f"start {spec.name} ({', '.join(spec.models)}) on port {spec.port}", "running")
            if not self.supervisor.add(spec):
                for s in started:  # roll back: the running processes and the routing are untouched
                    self.supervisor.remove(s.name)
                log.step(f"rolled back: stopped {len(started)} new process(es)")
                return log.finish("failed", f"{spec.name} did not become healthy; see {self.state_dir / 'logs' / (spec.name + '.log')}")
            started.append(spec)
            log.step(f"started {spec.name}")
        old_specs = {p.name: p for p in self.procs}
        # a kept process stays on its port under its name; only its unit id is the new plan's
        procs = [replace(old_specs[old], unit=spec.unit) for old, spec in diff.keep] + started
        self._route(router_state(new, procs, self.api_key, backend=self.backend))
        log.step("routing: replicas, shares and quotas of the new plan")
        # the point of no return: from here the new plan is in force; a process running that it does not name (the old
        # ones, or what an interrupted update left) is stopped now or by the next update
        self.plan, self.procs = new, procs
        in_force = {p.name for p in procs} | {s.name for s in diff.wait}
        strays = [r.spec.name for r in self.supervisor.running if r.spec.name not in in_force]
        time.sleep(DRAIN_S)
        for name in strays:
            log.step(f"stop {name}", "running")
            self.supervisor.remove(name)
            log.step(f"stopped {name}")
        for spec in diff.wait:
            log.step(f"start {spec.name} (after the old processes on its GPUs stopped)", "running")
            if not self.supervisor.add(spec):
                return log.finish("failed", f"{spec.name} did not become healthy (the models it serves may have no replica)")
            procs.append(spec)
            self._route(router_state(new, procs, self.api_key, backend=self.backend))
            log.step(f"started {spec.name}; routing updated")
        log.finish("done")

    def _route(self, fresh) -> None:
        healthy = {r.spec.name: r.healthy for r in self.supervisor.running}
        for reps in fresh.replicas.values():
            for r in reps:
                r.healthy = healthy.get(r.process, False)
        self.state.admission.quotas.update(fresh.admission.quotas)
        self.state.replicas = fresh.replicas  # one assignment: a request sees the old routing or the new one


def watch(deployment: Deployment, stopping) -> None:
    """Poll for update requests every half second until the deployment stops."""
    import threading

    def loop():
        while not stopping.wait(0.5):
            deployment.poll()

    threading.Thread(target=loop, name="deploy-update", daemon=True).start()


def request_update(state_dir: Path, plan_path: Path, allow_gap: bool) -> str:
    """Drop an update request for the serving process (temp file + rename); its id, to follow STATE_DIR/update.json."""
    import uuid

    rid = uuid.uuid4().hex[:12]
    write_text_atomic(state_dir / REQUEST_FILE, json.dumps({"id": rid, "plan": str(plan_path.resolve()), "allow_gap": allow_gap}))
    return rid


def follow(state_dir: Path, rid: str, echo, timeout_s: float = 1800.0) -> dict:
    """Print each step of update ``rid`` as it is recorded; the final record."""
    shown, deadline = 0, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            data = json.loads((state_dir / LOG_FILE).read_text())
        except (OSError, ValueError):
            data = {}
        if data.get("id") == rid:
            for s in data["steps"][shown:]:
                echo(f"{s['step']}" + ("" if s["status"] == "done" else " ..."))
            shown = len(data["steps"])
            if data["status"] != "running":
                return data
        time.sleep(0.2)
    return {"status": "failed", "message": f"no answer from the deployment within {timeout_s:g} s"}
