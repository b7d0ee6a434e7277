"""Real servers for router tests: stub backends as subprocesses (bench/router_stub.py) and the router
itself on its own HTTP server in a thread of the test process, so tests can look at its state (admission slots)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import openai

from executor.admission import Admission
from executor.router import Limits, Replica, RouterState, create_app
from executor.router_connection import ServerLimits
from executor.router_server import Server
from tests.helpers import ROOT, free_port

TOKEN = "backend-secret"
API_KEY = "client-key"


class Stub:
    def __init__(self, name: str, models: list[str], token: str | None = TOKEN, context: int = 2048):
        self.name, self.models, self.token, self.context = name, models, token, context
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Stub":
        argv = [sys.executable, "-m", "bench.router_stub", "--port", str(self.port), "--models", ",".join(self.models),
                "--name", self.name, "--context", str(self.context)] + (["--token", self.token] if self.token else [])
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1).close()
                return self
            except OSError:
                assert self.proc.poll() is None, f"stub {self.name} exited"
                time.sleep(0.1)
        raise AssertionError(f"stub {self.name} did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc:
            self.proc.wait()

    def in_flight(self) -> int:
        return json.loads(urllib.request.urlopen(self.url + "/stub/in_flight", timeout=2).read())["in_flight"]


class RouterThread:
    def __init__(self, state: RouterState, limits: ServerLimits = ServerLimits()):
        self.state, self.port = state, free_port()
        self.app = create_app(state)
        self.server = Server(self.app, "127.0.0.1", self.port, limits)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "RouterThread":
        self.thread.start()
        assert self.server.started.wait(10), "router did not start"
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "router did not stop"

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=API_KEY, max_retries=0, **kw)

    def metrics(self) -> str:
        return urllib.request.urlopen(self.url + "/metrics", timeout=5).read().decode()

    def metric(self, name: str, model: str) -> float:
        for line in self.metrics().splitlines():
            if line.startswith(f'{name}{{model="{model}"') and "status" not in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def post(self, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def wait_probed(self, model: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while model not in self.state.context_tokens or not self.app.upstream.probe_rounds:  # every replica probed once
            assert time.monotonic() < deadline, f"the router never probed {model}"
            time.sleep(0.05)


def router_state(replicas: dict[str, list[Stub]], quota: int = 16, probe_s: float = 0.2, **limits) -> RouterState:
    reps = {m: [Replica(m, s.url, 1.0, k, s.name, healthy=True) for k, s in enumerate(stubs)] for m, stubs in replicas.items()}
    return RouterState(reps, Admission({m: quota for m in reps}), {m: 1.0 for m in reps}, api_key=API_KEY, backend_token=TOKEN,
                       limits=Limits(probe_s=probe_s, **limits))


def wait_until(cond, timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
