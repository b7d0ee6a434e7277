"""Multi-node deployment through Ray.

Each unit gets a placement group with one bundle holding the unit's GPUs (logical GPUs in tests), and a
Ray actor in that bundle runs the unit's processes under its own Supervisor (executor.supervisor) on
that node. The head keeps the router: it learns each actor's node address, polls the actors' health
into the router, and writes the combined state file that `muxplan status` reads.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path
from typing import Callable

from executor.launcher import ProcessSpec
from executor.supervisor import STATE_FILE, start_ticks
from muxplan.files import write_text_atomic


def _with_host(argv: tuple[str, ...], host: str) -> tuple[str, ...]:
    out = list(argv)
    if "--host" in out:
        out[out.index("--host") + 1] = host
    return tuple(out)


class UnitHostImpl:
    """Runs inside the Ray actor: one supervisor for one unit's processes."""

    def __init__(self, specs: list[ProcessSpec], state_dir: str, token: str):
        import ray

        from executor.supervisor import Supervisor

        gpu_ids = [str(int(g)) for g in ray.get_gpu_ids()]
        if gpu_ids and os.environ.get("MUXPLAN_RAY_LOGICAL_GPUS") != "1":  # real GPUs: the ones Ray gave this bundle
            specs = [dataclasses.replace(s, env={**s.env, "CUDA_VISIBLE_DEVICES": ",".join(gpu_ids)}) for s in specs]
        ip = ray.util.get_node_ip_address()
        specs = [dataclasses.replace(s, argv=_with_host(s.argv, ip)) for s in specs]  # reachable from the head's router
        self.supervisor = Supervisor(specs, Path(state_dir), health_host=ip, token=token)

    def address(self) -> str:
        import ray

        return ray.util.get_node_ip_address()

    def start(self) -> None:
        self.supervisor.start()

    def state(self) -> list[dict]:
        return self.supervisor.state_rows()

    def stop(self) -> None:
        self.supervisor.stop()


class RayDeployment:
    """The head's view: actors per unit, their addresses, health polling and the state file."""

    def __init__(self, procs: list[ProcessSpec], state_dir: Path, address: str, num_gpus: int,
                 on_health: Callable[[str, bool], None] = lambda name, healthy: None, poll_s: float = 1.0, token: str = "",
                 progress: Callable[[str], None] = lambda line: None):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if address == "local":
            os.environ.setdefault("MUXPLAN_RAY_LOGICAL_GPUS", "1")
            ray.init(num_gpus=num_gpus, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"MUXPLAN_RAY_LOGICAL_GPUS": os.environ["MUXPLAN_RAY_LOGICAL_GPUS"]}})
        else:
            ray.init(address=address, log_to_driver=False)
        self.ray, self.state_dir, self.on_health, self.poll_s, self.progress = ray, state_dir, on_health, poll_s, progress
        host_cls = ray.remote(UnitHostImpl)
        self.actors = []
        for unit in sorted({p.unit for p in procs}):
            specs = [p for p in procs if p.unit == unit]
            pg = placement_group([{"GPU": len(specs[0].gpu_ids), "CPU": 0.01}])
            ray.get(pg.ready(), timeout=120)
            strategy = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=0)
            actor = host_cls.options(num_cpus=0.01, num_gpus=len(specs[0].gpu_ids), scheduling_strategy=strategy).remote(
                specs, str(state_dir / f"unit{unit}"), token)
            self.actors.append((specs, actor))
        self.addresses = {s.name: ray.get(actor.address.remote()) for specs, actor in self.actors for s in specs}
        self.stopping = threading.Event()

    def start(self) -> None:
        pending = {actor.start.remote(): specs for specs, actor in self.actors}
        for k, (ref, specs) in enumerate(pending.items(), 1):
            self.ray.get(ref)
            self.progress(f"[{k}/{len(pending)}] unit {specs[0].unit} healthy on {self.addresses[specs[0].name]}: "
                          f"{', '.join(s.name for s in specs)}")
        self.poll()
        threading.Thread(target=self._watch, daemon=True).start()

    def poll(self) -> None:
        rows = [row for _, actor in self.actors for row in self.ray.get(actor.state.remote())]
        for row in rows:
            self.on_health(row["name"], row["healthy"])
        write_text_atomic(self.state_dir / STATE_FILE, json.dumps({"supervisor_pid": os.getpid(), "supervisor_start_ticks": start_ticks(os.getpid()),
                                                                   "ray": True, "processes": rows}, indent=1))

    def _watch(self) -> None:
        while not self.stopping.wait(self.poll_s):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the head must keep serving while Ray reconnects
                continue

    def stop(self) -> None:
        self.stopping.set()
        try:
            self.ray.get([actor.stop.remote() for _, actor in self.actors], timeout=60)
        finally:
            self.ray.shutdown()
            (self.state_dir / STATE_FILE).unlink(missing_ok=True)
