"""Starts, watches and stops the serving processes of a deployment.

Processes start one at a time, each after the previous is healthy (processes sharing a GPU must not race
for memory), with a line of progress per step (``progress``). Each runs under executor.guard in a session
of its own, so its whole process group goes with it; the guards hold the read end of a pipe whose write
end only this process has, so every backend dies with the supervisor, even after kill -9.

Health is identity (executor.identity): a backend counts only if it proves it is this deployment's, so a
squatter on a port is never taken for it; before (re)starting, a port some other process holds is refused.
A watcher thread polls every process: a change is reported to the router (``on_health``); a dead process
is restarted with exponential backoff; a live one unhealthy for ``hang_s`` (after it was healthy) or never
healthy within ``start_timeout_s`` has its group killed and is restarted too. The state file in the state
directory is what `muxplan status` shows. ``stop`` terminates every group (then kills what is left).
On GPU hosts the MPS control daemons the processes' environments name are started before the first
process and stopped after the last.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from executor.identity import TOKEN_ENV, check_backend, new_token
from executor.launcher import ProcessSpec, port_free
from executor.mps import daemons_for
from muxplan.files import write_text_atomic

STATE_FILE = "deployment.json"
PROGRESS_EVERY_S = 10.0


@dataclass
class Running:
    spec: ProcessSpec
    proc: subprocess.Popen | None = None
    healthy: bool = False
    ever_healthy: bool = False  # since the last spawn
    restarts: int = 0
    next_restart: float = 0.0
    backoff_s: float = 1.0
    spawned_at: float = 0.0
    unhealthy_since: float = 0.0
    problem: str = ""
    retired: bool = False  # stopped on purpose by a rolling update


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (with the pid, it names a process uniquely)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def supervisor_alive(state: dict) -> bool:
    """Is the supervisor that wrote this state file still running (same pid, same start time)?"""
    pid, ticks = state.get("supervisor_pid"), state.get("supervisor_start_ticks")
    return isinstance(pid, int) and start_ticks(pid) is not None and (ticks is None or start_ticks(pid) == ticks)


def _signal_group(proc: subprocess.Popen | None, sig: int) -> None:
    if proc is not None:
        try:
            os.killpg(proc.pid, sig)  # the guard leads its group: pgid == its pid
        except (ProcessLookupError, PermissionError):
            pass


class Supervisor:
    def __init__(self, specs: list[ProcessSpec], state_dir: Path, on_health: Callable[[str, bool], None] = lambda n, h: None,
                 start_timeout_s: float = 300.0, poll_s: float = 1.0, health_host: str = "127.0.0.1", token: str | None = None,
                 progress: Callable[[str], None] = lambda line: None, hang_s: float = 30.0):
        self.running = [Running(s) for s in specs]
        self.state_dir, self.on_health, self.progress = state_dir, on_health, progress
        self.start_timeout_s, self.poll_s, self.health_host, self.hang_s = start_timeout_s, poll_s, health_host, hang_s
        self.token = token or new_token()
        self.stopping = threading.Event()
        self.watcher: threading.Thread | None = None
        self.mps = daemons_for([s.env for s in specs])
        self._death_r, self._death_w = os.pipe()  # guards watch the read end; EOF = this process is gone
        (state_dir / "logs").mkdir(parents=True, exist_ok=True)

    def log_path(self, r: Running) -> Path:
        return self.state_dir / "logs" / f"{r.spec.name}.log"

    def _spawn(self, r: Running) -> bool:
        """Start the process under its guard; False (and ``problem`` says why) when its port is taken."""
        _signal_group(r.proc, signal.SIGKILL)  # whatever is left of a previous instance
        if not port_free(self.health_host, r.spec.port):
            r.proc, r.problem = None, f"port {r.spec.port} is taken by another process"
            return False
        env = {**os.environ, **r.spec.env, TOKEN_ENV: self.token, "VLLM_API_KEY": self.token}
        with open(self.log_path(r), "ab") as log:
            argv = (sys.executable, "-m", "executor.guard", str(self._death_r), "--", *r.spec.argv)
            r.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True, pass_fds=(self._death_r,), cwd=os.getcwd())
        r.spawned_at, r.ever_healthy, r.problem = time.monotonic(), False, ""
        return True

    def check(self, r: Running) -> str | None:
        """None when ``r`` is running, healthy and ours; else why not."""
        if r.proc is None or r.proc.poll() is not None:
            return r.problem or "not running"
        return check_backend(self.health_host, r.spec.port, r.spec.models, self.token)

    def _wait_healthy(self, r: Running, step: str) -> bool:
        deadline = time.monotonic() + self.start_timeout_s
        next_note = time.monotonic() + PROGRESS_EVERY_S
        while time.monotonic() < deadline and not self.stopping.is_set():
            if r.proc.poll() is not None:
                self.progress(f"{step} {r.spec.name} exited with status {r.proc.returncode}; see {self.log_path(r)}")
                return False
            why = self.check(r)
            if why is None:
                return True
            if time.monotonic() >= next_note:
                self.progress(f"{step} {r.spec.name} still starting ({time.monotonic() - r.spawned_at:.0f} s; {why})")
                next_note += PROGRESS_EVERY_S
            time.sleep(0.5)
        return False

    def start(self) -> None:
        """Start the MPS daemons, then every process in order, each once the previous is healthy; then watch them."""
        for daemon in self.mps:
            daemon.start()
        for k, r in enumerate(self.running, 1):
            step = f"[{k}/{len(self.running)}]"
            if not self._spawn(r):
                raise RuntimeError(f"{r.spec.name}: {r.problem}")
            self.progress(f"{step} starting {r.spec.name} ({', '.join(r.spec.models)}) on port {r.spec.port}, pid {r.proc.pid}, "
                          f"log {self.log_path(r)}")
            r.healthy = r.ever_healthy = self._wait_healthy(r, step)
            self.on_health(r.spec.name, r.healthy)
            self.write_state()
            if not r.healthy and not self.stopping.is_set():
                raise RuntimeError(f"{r.spec.name} did not become healthy; see {self.log_path(r)}")
            if r.healthy:
                self.progress(f"{step} {r.spec.name} healthy after {time.monotonic() - r.spawned_at:.1f} s")
        self.watcher = threading.Thread(target=self._watch, daemon=True, name="supervisor-watch")
        self.watcher.start()

    def _watch(self) -> None:
        while not self.stopping.wait(self.poll_s):
            changed = False
            now = time.monotonic()
            for r in self.running:
                if r.retired:  # being stopped by a rolling update: never restart it
                    continue
                alive = r.proc is not None and r.proc.poll() is None
                why = self.check(r) if alive else (r.problem or "not running")
                healthy = why is None
                if healthy != r.healthy:
                    r.healthy, changed = healthy, True
                    r.unhealthy_since = now
                    self.on_health(r.spec.name, healthy)
                if healthy:
                    r.ever_healthy, r.backoff_s = True, 1.0
                elif why != r.problem:
                    r.problem, changed = why, True
                if alive and not healthy and (now - r.unhealthy_since >= self.hang_s if r.ever_healthy
                                              else now - r.spawned_at >= self.start_timeout_s):
                    _signal_group(r.proc, signal.SIGKILL)  # wedged: take the whole group down, restarted below
                    r.proc.wait()
                    alive = False
                if not alive and now >= r.next_restart and not self.stopping.is_set():
                    r.restarts += 1
                    r.next_restart = now + r.backoff_s
                    r.backoff_s = min(30.0, r.backoff_s * 2)
                    self._spawn(r)
                    changed = True
            if changed:
                self.write_state()

    def add(self, spec: ProcessSpec) -> bool:
        """Start one more process (a rolling update's new one) and watch it from then on; True once it is healthy."""
        r = Running(spec)
        if not self._spawn(r):
            return False
        r.healthy = r.ever_healthy = self._wait_healthy(r, "[update]")
        self.running = self.running + [r]  # a new list: the watcher iterates the old one safely
        self.on_health(spec.name, r.healthy)
        self.write_state()
        return r.healthy

    def remove(self, name: str, grace_s: float = 30.0) -> None:
        """Stop one process (its whole group): SIGTERM lets it finish the requests it holds, SIGKILL after ``grace_s``."""
        gone = [r for r in self.running if r.spec.name == name]
        self.running = [r for r in self.running if r.spec.name != name]
        for r in gone:
            r.retired = True
            _signal_group(r.proc, signal.SIGTERM)
            try:
                r.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(r.proc, signal.SIGKILL)
            r.proc.wait()
        self.write_state()

    def state_rows(self) -> list[dict]:
        """Per process: name, models, unit, pid (its guard, leading its process group), port, health, restarts, problem."""
        return [{"name": r.spec.name, "models": list(r.spec.models), "unit": r.spec.unit, "pid": r.proc.pid if r.proc else None,
                 "port": r.spec.port, "healthy": r.healthy, "restarts": r.restarts, "problem": "" if r.healthy else r.problem}
                for r in self.running]

    def write_state(self) -> None:
        state = {"supervisor_pid": os.getpid(), "supervisor_start_ticks": start_ticks(os.getpid()), "processes": self.state_rows()}
        write_text_atomic(self.state_dir / STATE_FILE, json.dumps(state, indent=1))

    def stop(self, grace_s: float = 15.0) -> None:
        """Terminate every process group; kill what has not exited after ``grace_s``."""
        self.stopping.set()
        if self.watcher:
            self.watcher.join(timeout=5)
        procs = [r.proc for r in self.running if r.proc is not None]
        for p in procs:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(p, signal.SIGKILL)  # also what a guard left behind, if anything
            p.wait()
        os.close(self._death_w)
        os.close(self._death_r)
        for daemon in self.mps:
            daemon.stop()
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)
