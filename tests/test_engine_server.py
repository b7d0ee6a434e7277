"""The engine's OpenAI server as a real process, talked to with the official `openai` client; and `muxplan deploy --backend engine`."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from muxplan.files import save_contract
from tests.engine_fixtures import VALID_SM, colocated_plan
from tests.helpers import ROOT, alive, free_port, get

openai = pytest.importorskip("openai")
pytest.importorskip("torch")
pytest.importorskip("fastapi")


TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _wait_healthy(proc, port: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while get(f"http://127.0.0.1:{port}/health") != 200:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "server did not become healthy"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engine-server")
    save_contract(tmp / "plan.json", colocated_plan({"tiny-llama": tiny_models["llama"], "tiny-qwen": tiny_models["qwen"]}, sm=VALID_SM))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "executor.engine.server", "--plan", str(tmp / "plan.json"), "--unit", "0",
                             "--port", str(port), "--max-queue", "4"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "MUXPLAN_BACKEND_TOKEN": TOKEN})
    _wait_healthy(proc, port)
    yield {"port": port, "proc": proc}
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)


def client(port: int, key: str = TOKEN):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=60)


def test_two_models_at_once_completions_chat_and_streaming(server):
    c = client(server["port"])

    def complete(model):
        out = c.completions.create(model=model, prompt="Hello, how are", max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
        return out.model, out.choices[0].finish_reason, out.usage.completion_tokens, out.usage.prompt_tokens

    def chat(model):
        out = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, seed=4,
                                        extra_body={"ignore_eos": True})
        return out.choices[0].message.role, out.choices[0].finish_reason, out.usage.completion_tokens

    def stream(model):
        chunks = list(c.completions.create(model=model, prompt="The quick brown", max_tokens=7, stream=True, temperature=0,
                                           extra_body={"ignore_eos": True}))
        return "".join(ch.choices[0].text for ch in chunks), chunks[-1].choices[0].finish_reason

    with ThreadPoolExecutor(4) as pool:
        completions = list(pool.map(complete, ["tiny-llama", "tiny-qwen"]))
        chats = list(pool.map(chat, ["tiny-llama", "tiny-qwen"]))
        streams = list(pool.map(stream, ["tiny-llama", "tiny-qwen"]))
    assert completions == [("tiny-llama", "length", 6, 5), ("tiny-qwen", "length", 6, 5)]
    assert chats == [("assistant", "length", 5)] * 2
    for model, (text, reason) in zip(["tiny-llama", "tiny-qwen"], streams):
        assert reason == "length"
        whole = c.completions.create(model=model, prompt="The quick brown", max_tokens=7, temperature=0, extra_body={"ignore_eos": True})
        assert text == whole.choices[0].text  # streamed deltas add up to the same greedy answer
    chat_chunks = list(c.chat.completions.create(model="tiny-qwen", messages=[{"role": "user", "content": "Hi"}], max_tokens=3, stream=True))
    assert chat_chunks[0].choices[0].delta.role == "assistant" and chat_chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert [m.id for m in c.models.list().data] == ["tiny-llama", "tiny-qwen"]


def test_bad_requests_get_400_unknown_model_404(server):
    c = client(server["port"])
    with pytest.raises(openai.NotFoundError, match="served models: tiny-llama, tiny-qwen"):
        c.completions.create(model="gpt-x", prompt="Hi", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="temperature: Input should be less than or equal to 2"):
        c.completions.create(model="tiny-llama", prompt="Hi", temperature=3)
    with pytest.raises(openai.BadRequestError, match=r"prompt: token ids must be in 0\.\.\d+"):
        c.completions.create(model="tiny-llama", prompt=[1, 2, 10**6])
    with pytest.raises(openai.BadRequestError, match="messages: List should have at least 1 item"):
        c.chat.completions.create(model="tiny-llama", messages=[])
    req = urllib.request.Request(f"http://127.0.0.1:{server['port']}/v1/completions", data=b"{nope", headers={"Content-Type": "application/json", **AUTH})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req)
    assert err.value.code == 400 and json.loads(err.value.read())["error"]["message"] == "(body): not valid JSON"


def test_full_queue_gets_429_with_retry_after_and_accepted_requests_finish(server):
    c = client(server["port"])
    long = dict(prompt="Hello", max_tokens=400, temperature=0, extra_body={"ignore_eos": True})
    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(c.completions.create, model=m, **long) for m in ("tiny-llama", "tiny-qwen", "tiny-llama", "tiny-qwen")]
        deadline = time.monotonic() + 30
        while json.loads(urllib.request.urlopen(f"http://127.0.0.1:{server['port']}/health").read())["in_flight"] < 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(openai.RateLimitError) as err:
            c.completions.create(model="tiny-llama", prompt="Hi", max_tokens=1)
        assert err.value.response.headers["retry-after"] == "1"
        assert [f.result().usage.completion_tokens for f in running] == [400] * 4
    metrics = urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{server['port']}/metrics", headers=AUTH)).read().decode()
    assert 'muxplan_engine_requests_total{finish_reason="rejected",model="tiny-llama"} 1.0' in metrics
    assert 'muxplan_engine_sm_mechanism{mechanism="serial"} 1.0' in metrics
    assert 'muxplan_engine_kv_blocks_used{model="tiny-qwen"} 0.0' in metrics
    assert "muxplan_engine_ttft_seconds_bucket" in metrics and "muxplan_engine_tpot_seconds_count" in metrics


def test_deploy_engine_backend_behind_the_router(tiny_models, tmp_path):
    save_contract(tmp_path / "plan.json", colocated_plan({"tiny-llama": tiny_models["llama"], "tiny-qwen": tiny_models["qwen"]}, sm=VALID_SM))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "muxplan", "deploy", str(tmp_path / "plan.json"), "--backend", "engine", "--port", str(port),
                             "--state-dir", str(tmp_path / "state"), "--max-connections", "64"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(proc, port)
        c = client(port)
        for model in ("tiny-llama", "tiny-qwen"):
            out = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, extra_body={"ignore_eos": True})
            assert out.usage.completion_tokens == 3
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert "muxplan_router_client_connections_max 64.0" in metrics.splitlines()
        rows = json.loads((tmp_path / "state" / "deployment.json").read_text())["processes"]
        assert [(r["name"], r["models"]) for r in rows] == [("unit0", ["tiny-llama", "tiny-qwen"])]
        pids = [r["pid"] for r in rows]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    time.sleep(0.5)
    assert [p for p in pids if alive(p)] == []
    assert not os.path.exists(tmp_path / "state" / "deployment.json")
