"""The supervisor with real engine servers: a dead engine loop, kill -9 of the supervisor, port squatters,
the backend token and loopback binding, per-process startup progress."""
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import psutil
import pytest

from executor.identity import check_backend
from executor.launcher import ProcessSpec
from executor.supervisor import Supervisor
from muxplan.files import save_contract
from tests.engine_fixtures import colocated_plan
from tests.helpers import ROOT, free_port, get, run_cli

pytest.importorskip("fastapi")


def engine_spec(plan, port: int, *extra: str) -> ProcessSpec:
    argv = (sys.executable, "-m", "executor.engine.server", "--plan", str(plan), "--unit", "0", "--port", str(port), *extra)
    return ProcessSpec("unit0", 0, 0, ("tiny-llama",), (0,), port, argv, {})


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def gone(procs: list[psutil.Process], within_s: float) -> list[psutil.Process]:
    """The processes still alive (not zombies) after ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        left = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@pytest.fixture
def plan(tiny_models, tmp_path):
    save_contract(tmp_path / "plan.json", colocated_plan({"tiny-llama": tiny_models["llama"]}))
    return tmp_path / "plan.json"


def test_a_dead_engine_loop_fails_health_at_once_ends_streams_with_an_error_and_is_restarted(plan, tmp_path):
    port = free_port()
    lines = []
    sup = Supervisor([engine_spec(plan, port, "--fail-after-jobs", "3")], tmp_path / "state", poll_s=0.2, progress=lines.append)
    sup.start()
    try:
        assert lines[0].startswith(f"[1/1] starting unit0 (tiny-llama) on port {port}, pid ")
        assert lines[-1].startswith("[1/1] unit0 healthy after ")
        first = sup.running[0].proc.pid
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", headers={
            "Authorization": f"Bearer {sup.token}", "Content-Type": "application/json"},
            data=json.dumps({"model": "tiny-llama", "prompt": "Hi", "max_tokens": 50, "stream": True, "ignore_eos": True}).encode())
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200
            events = [line for line in r.read().decode().split("\n\n") if line]
        ended = time.monotonic()
        assert "[DONE]" not in events[-1] and json.loads(events[-1].removeprefix("data: "))["error"] == {
            "message": "engine failed: RuntimeError: injected fault after 3 jobs", "type": "server_error", "code": 503}
        assert get(f"http://127.0.0.1:{port}/health") in (503, 0)  # dead now (or already gone)
        assert time.monotonic() - ended < 1.0
        deadline = time.monotonic() + 120
        while not (sup.running[0].restarts >= 1 and sup.running[0].healthy):
            assert time.monotonic() < deadline, sup.state_rows()
            time.sleep(0.2)
        assert sup.running[0].proc.pid != first and check_backend("127.0.0.1", port, ("tiny-llama",), sup.token) is None
        procs = tree(sup.running[0].proc.pid)
    finally:
        sup.stop()
    assert gone(procs, 5) == []


class Squatter(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # answers 200 {} to everything, as the stand-in of the hostile test did
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_a_squatter_is_never_taken_for_the_backend_and_its_port_is_refused(plan, tmp_path):
    squat = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Squatter)
    threading.Thread(target=squat.serve_forever, daemon=True).start()
    port = squat.server_address[1]
    try:
        assert check_backend("127.0.0.1", port, ("tiny-llama",), "tok") == "/v1/models: does not serve tiny-llama"
        sup = Supervisor([engine_spec(plan, port)], tmp_path / "state")
        with pytest.raises(RuntimeError, match=f"unit0: port {port} is taken by another process"):
            sup.start()
        sup.stop()
        proc = run_cli("deploy", plan, "--backend", "engine", "--port", port - 1, "--state-dir", tmp_path / "st")
        assert proc.returncode == 2 and proc.stderr.strip() == (
            f"error: --port: port {port} (unit0) is already in use on 127.0.0.1; stop what listens there or pick another --port")
    finally:
        squat.shutdown()


def test_backends_bind_loopback_need_the_token_and_die_with_a_killed_supervisor(plan, tmp_path):
    port = free_port()
    while not _bindable(port + 1):  # refusing connections is not enough: an outgoing connection may hold the port
        port = free_port()
    state = tmp_path / "state"
    deploy = subprocess.Popen([sys.executable, "-m", "muxplan", "deploy", str(plan), "--backend", "engine", "--port", str(port),
                               "--host", "0.0.0.0", "--state-dir", str(state)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = []
        for line in deploy.stdout:
            out.append(line)
            if " at http://" in line or deploy.poll() is not None:
                break
        assert out[0] == "muxplan deploy: starting 1 serving process (logs in %s)\n" % (state / "logs")
        assert out[1].startswith(f"muxplan deploy: [1/1] starting unit0 (tiny-llama) on port {port + 1}, pid ")
        assert out[-2].startswith("muxplan deploy: [1/1] unit0 healthy after ")
        assert out[-1] == f"muxplan deploy: serving tiny-llama at http://0.0.0.0:{port}/v1 (OpenAI-compatible; Ctrl-C stops)\n"
        row = json.loads((state / "deployment.json").read_text())["processes"][0]
        backend = tree(row["pid"])
        listening = {c.laddr for p in backend for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        assert listening == {("127.0.0.1", port + 1)}  # loopback only, though the front door is on 0.0.0.0
        assert get(f"http://127.0.0.1:{port + 1}/v1/models") == 401
        assert "healthy" in run_cli("status", "--state-dir", state, check=True).stdout
        os.kill(deploy.pid, signal.SIGKILL)
        deploy.wait()
        assert gone(backend, 5) == []
        status = run_cli("status", "--state-dir", state)
        assert status.returncode == 1 and status.stderr.strip() == (
            f"error: the supervisor (pid {deploy.pid}) is not running: the deployment is down and {state / 'deployment.json'} is stale")
        assert "supervisor dead" in status.stdout
    finally:
        if deploy.poll() is None:
            deploy.kill()


def _bindable(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
