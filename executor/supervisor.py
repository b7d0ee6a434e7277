"""Starts, watches and stops the serving processes of a deployment.

Processes start one at a time, each after the previous answers /health (processes sharing a GPU must
not race for memory). A watcher thread polls every process: a dead or unhealthy one is reported to the
router (``on_health``) and restarted with exponential backoff. The state file in the state directory
is what `muxplan status` shows. ``stop`` terminates every process group (then kills what is left).
On GPU hosts the MPS control daemons the processes' environments name are started before the first
process and stopped after the last.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from executor.launcher import ProcessSpec
from executor.mps import daemons_for
from muxplan.files import write_text_atomic

STATE_FILE = "deployment.json"


@dataclass
class Running:
    spec: ProcessSpec
    proc: subprocess.Popen | None = None
    healthy: bool = False
    restarts: int = 0
    next_restart: float = 0.0
    backoff_s: float = 1.0


def is_healthy(port: int, host: str = "127.0.0.1", timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=timeout_s) as r:
            return r.status == 200
    except OSError:
        return False


class Supervisor:
    def __init__(self, specs: list[ProcessSpec], state_dir: Path, on_health: Callable[[str, bool], None] = lambda n, h: None,
                 start_timeout_s: float = 300.0, poll_s: float = 1.0, health_host: str = "127.0.0.1"):
        self.running = [Running(s) for s in specs]
        self.state_dir, self.on_health = state_dir, on_health
        self.start_timeout_s, self.poll_s, self.health_host = start_timeout_s, poll_s, health_host
        self.stopping = threading.Event()
        self.watcher: threading.Thread | None = None
        self.mps = daemons_for([s.env for s in specs])
        (state_dir / "logs").mkdir(parents=True, exist_ok=True)

    def _spawn(self, r: Running) -> None:
        log = open(self.state_dir / "logs" / f"{r.spec.name}.log", "ab")
        r.proc = subprocess.Popen(r.spec.argv, env={**os.environ, **r.spec.env}, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def _wait_healthy(self, r: Running) -> bool:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline and not self.stopping.is_set():
            if r.proc.poll() is not None:
                return False
            if is_healthy(r.spec.port, self.health_host):
                return True
            time.sleep(0.5)
        return False

    def start(self) -> None:
        """Start the MPS daemons, then every process in order, each once the previous is healthy; then watch them."""
        for daemon in self.mps:
            daemon.start()
        for r in self.running:
            self._spawn(r)
            r.healthy = self._wait_healthy(r)
            self.on_health(r.spec.name, r.healthy)
            self.write_state()
            if not r.healthy and not self.stopping.is_set():
                raise RuntimeError(f"{r.spec.name} did not become healthy; see {self.state_dir / 'logs' / (r.spec.name + '.log')}")
        self.watcher = threading.Thread(target=self._watch, daemon=True)
        self.watcher.start()

    def _watch(self) -> None:
        while not self.stopping.wait(self.poll_s):
            changed = False
            for r in self.running:
                alive = r.proc is not None and r.proc.poll() is None
                healthy = alive and is_healthy(r.spec.port, self.health_host)
                if healthy != r.healthy:
                    r.healthy, changed = healthy, True
                    self.on_health(r.spec.name, healthy)
                    if healthy:
                        r.backoff_s = 1.0
                if not alive and time.monotonic() >= r.next_restart and not self.stopping.is_set():
                    r.restarts += 1
                    r.next_restart = time.monotonic() + r.backoff_s
                    r.backoff_s = min(30.0, r.backoff_s * 2)
                    self._spawn(r)
                    changed = True
            if changed:
                self.write_state()

    def state_rows(self) -> list[dict]:
        """Per process: name, models, unit, pid, port, health, restarts (what `muxplan status` shows)."""
        return [{"name": r.spec.name, "models": list(r.spec.models), "unit": r.spec.unit, "pid": r.proc.pid if r.proc else None,
                 "port": r.spec.port, "healthy": r.healthy, "restarts": r.restarts} for r in self.running]

    def write_state(self) -> None:
        write_text_atomic(self.state_dir / STATE_FILE, json.dumps({"supervisor_pid": os.getpid(), "processes": self.state_rows()}, indent=1))

    def stop(self, grace_s: float = 15.0) -> None:
        """Terminate every process group; kill what has not exited after ``grace_s``."""
        self.stopping.set()
        if self.watcher:
            self.watcher.join(timeout=5)
        live = [r.proc for r in self.running if r.proc and r.proc.poll() is None]
        for p in live:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        for p in live:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for daemon in self.mps:
            daemon.stop()
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)
