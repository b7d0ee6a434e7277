"""MPS daemon lifecycle around a deployment's processes.

No GPU (and no NVIDIA MPS tools) exists here, so a stand-in `nvidia-cuda-mps-control` on PATH plays the
daemon: `-d` starts a background process owning $CUDA_MPS_PIPE_DIRECTORY/control, `quit` on stdin ends it.
"""
import os
import sys
import textwrap
from pathlib import Path

import pytest

from executor.launcher import ProcessSpec
from executor.mps import MpsDaemon, daemons_for
from executor.supervisor import Supervisor
from tests.helpers import alive, free_port

STAND_IN = textwrap.dedent("""\
    #!/usr/bin/env bash
    if [ "$1" = "-d" ]; then
      echo "$CUDA_VISIBLE_DEVICES" > "$CUDA_MPS_LOG_DIRECTORY/devices"
      setsid sleep 1000 < /dev/null > /dev/null 2>&1 &
      echo $! > "$CUDA_MPS_PIPE_DIRECTORY/daemon.pid"
      mkfifo "$CUDA_MPS_PIPE_DIRECTORY/control"
      exit 0
    fi
    read cmd
    if [ "$cmd" = quit ]; then kill "$(cat "$CUDA_MPS_PIPE_DIRECTORY/daemon.pid")"; rm -f "$CUDA_MPS_PIPE_DIRECTORY/control"; fi
""")
HEALTH_SERVER = ("import hashlib,http.server,json,sys,os\n"  # a stand-in backend: proves its identity on /health, tells its SM share on /sm
                 "class H(http.server.BaseHTTPRequestHandler):\n"
                 "    def do_GET(self):\n"
                 "        tok = hashlib.sha256(os.environ['MUXPLAN_BACKEND_TOKEN'].encode()).hexdigest()[:8]\n"
                 "        body = json.dumps({'models': ['m'], 'token_sha256_8': tok}) if self.path == '/health' else os.environ['CUDA_MPS_ACTIVE_THREAD_PERCENTAGE']\n"
                 "        self.send_response(200); self.end_headers(); self.wfile.write(body.encode())\n"
                 "    def log_message(self, *a): pass\n"
                 "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n")


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "nvidia-cuda-mps-control"
    tool.write_text(STAND_IN)
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def _env(state: Path, node: int, devices: str, sm: int) -> dict[str, str]:
    base = state / "mps" / f"node{node}"
    return {"CUDA_VISIBLE_DEVICES": devices, "CUDA_MPS_PIPE_DIRECTORY": str(base / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(base / "log"),
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(sm)}


def test_one_daemon_per_pipe_directory_seeing_its_processes_gpus(tmp_path):
    envs = [_env(tmp_path, 0, "GPU-a,GPU-b", 40), _env(tmp_path, 0, "GPU-b,GPU-c", 60), _env(tmp_path, 1, "GPU-x", 100), {"VLLM_TARGET_DEVICE": "cpu"}]
    daemons = daemons_for(envs)
    assert [(d.pipe_dir.parent.name, d.devices) for d in daemons] == [("node0", ("GPU-a", "GPU-b", "GPU-c")), ("node1", ("GPU-x",))]
    assert daemons_for([{"VLLM_TARGET_DEVICE": "cpu"}]) == []


def test_supervisor_starts_the_daemon_first_and_stops_it_last(stand_in):
    state = stand_in / "state"
    port = free_port()
    spec = ProcessSpec("unit0-m", 0, 0, ("m",), (0, 1), port, (sys.executable, "-c", HEALTH_SERVER, str(port)),
                       _env(state, 0, "GPU-a,GPU-b", 40), 40, 0)
    sup = Supervisor([spec], state, start_timeout_s=30)
    sup.start()
    pipe = state / "mps" / "node0" / "pipe"
    daemon_pid = int((pipe / "daemon.pid").read_text())
    try:
        assert (pipe / "control").exists() and alive(daemon_pid)
        assert (state / "mps" / "node0" / "log" / "devices").read_text().strip() == "GPU-a,GPU-b"
        import urllib.request

        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/sm").read() == b"40"  # the client's active-thread share
    finally:
        sup.stop()
    assert not (pipe / "control").exists() and not alive(daemon_pid)
    assert not alive(sup.running[0].proc.pid)


def test_a_daemon_already_running_is_used_but_not_stopped(stand_in):
    daemon = MpsDaemon(stand_in / "pipe", stand_in / "log", ("0",))
    daemon.start()
    other = MpsDaemon(stand_in / "pipe", stand_in / "log", ("0",))
    other.start()
    other.stop()
    assert daemon.running()
    daemon.stop()
    assert not daemon.running()


def test_missing_mps_tools_give_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="nvidia-cuda-mps-control is not on PATH"):
        MpsDaemon(tmp_path / "pipe", tmp_path / "log", ()).start()


def test_deploy_on_a_gpu_host_without_mps_tools_exits_2(tmp_path, tiny_models):
    from muxplan.files import save_contract
    from tests.engine_fixtures import VALID_SM, colocated_plan
    from tests.helpers import run_cli

    save_contract(tmp_path / "plan.json", colocated_plan({"a": tiny_models["llama"], "b": tiny_models["qwen"]}, sm=VALID_SM))
    proc = run_cli("deploy", tmp_path / "plan.json", "--gpu", "--state-dir", tmp_path / "state", "--port", free_port())
    if "nvidia-cuda-mps-control" in os.popen("command -v nvidia-cuda-mps-control").read():
        pytest.skip("this host has the MPS tools")
    assert proc.returncode == 2 and "nvidia-cuda-mps-control is not on PATH" in proc.stderr
    assert not (tmp_path / "state" / "deployment.json").exists()
